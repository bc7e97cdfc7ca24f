#!/usr/bin/env python3
"""Offline checks of the observability wiring (scripts/lib/check-k8s.sh runs them).

  dashboards   every helm/exchange/dashboards/*.json parses, has a unique uid and
               title, queries the ${datasource} variable, and is rendered into a
               ConfigMap the Grafana sidecar loads (label grafana_dashboard)
  metric names every PromQL expression of the dashboards (panels and variables) and
               of the rendered PrometheusRule parses (promql-parser, the Rust
               crate's bindings from PyPI), its metric names read here agree with the
               parser's, and it uses only: recording rules the rule
               defines; the exchange's own metrics listed in METRICS.txt; or known
               exporter, Istio, kube-state-metrics and Collector metrics (by prefix
               AND by name: EXTERNAL below); functions PromQL has
  METRICS.txt  no duplicates; every name is used by a dashboard or a rule; every name
               is registered in the Rust sources (services/*/src, libs/*/src) as a
               string literal - a _bucket/_sum/_count series only for a name
               registered as a histogram, and a histogram never by its bare name
  alerts       the rule covers error ratio, p99 latency, ingest lag, stale feed and
               pod restarts; every alert has `for`, a severity and a summary
  collector    the OpenTelemetry Collector values: only keys the upstream chart has,
               deployment mode, an image; the traces pipeline receives OTLP (gRPC
               and HTTP), runs memory_limiter first and batch, and exports only to
               Jaeger's collector; every component a pipeline names is defined; OTLP
               gRPC published on 4317; its own metrics scraped (ServiceMonitor)
  wiring       the chart's telemetry.otlpEndpoint (and every rendered
               OTEL_EXPORTER_OTLP_ENDPOINT), Istio's otel-tracing provider and the
               chart's networkPolicy.otelCollector all name that Collector (the
               release and namespace scripts/cluster-up installs it as)
  alerting     Alertmanager is on; every route names a defined receiver; the default
               receiver is the alert-logger webhook, whose URL is the Service in
               alert-logger.yaml; the Grafana sidecar's label and folder annotation
               are the chart's
  alert-logger its script really logs: it is run on loopback, sent an Alertmanager
               webhook message, and must print one JSON line per alert

--self-test breaks each input in memory in many ways; it fails unless every break
is caught (and the unbroken inputs pass).
"""
import argparse
import copy
import glob
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

try:  # PyPI promql-parser (bindings of the Rust promql-parser crate): a real PromQL parser.
    import promql_parser
except ImportError:  # pragma: no cover - check-k8s.sh installs it and passes --require-parser
    promql_parser = None

# ---- PromQL -------------------------------------------------------------------------
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time", "min_over_time",
    "minute", "month", "pi", "predict_linear", "present_over_time", "quantile_over_time", "rad",
    "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp",
    "vector", "year",
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "atan2"}
# Grafana's Prometheus variable functions (templating queries).
GRAFANA_FUNCTIONS = {"label_values", "label_names", "metrics", "query_result"}

# Metrics the exchange does not define, that dashboards and rules may use: each must
# also have one of the prefixes. Sources: postgres_exporter v0.17 (collector/
# pg_stat_database.go, pg_database.go, pg_locks.go, pg_setting.go; pg_up),
# redis_exporter v1.66 (exporter/exporter.go metric maps; redis_up), Istio's standard
# metrics, kube-state-metrics, the OpenTelemetry Collector's internal metrics.
EXTERNAL_PREFIXES = ("istio_", "pg_", "redis_", "kube_", "otelcol_")
EXTERNAL = {
    "istio_requests_total", "istio_request_duration_milliseconds_bucket",
    "istio_request_duration_milliseconds_sum", "istio_request_duration_milliseconds_count",
    "istio_request_bytes_bucket", "istio_request_bytes_sum", "istio_request_bytes_count",
    "istio_response_bytes_bucket", "istio_response_bytes_sum", "istio_response_bytes_count",
    "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
    "pg_up", "pg_database_size_bytes", "pg_settings_max_connections", "pg_locks_count",
    "pg_stat_database_numbackends", "pg_stat_database_xact_commit", "pg_stat_database_xact_rollback",
    "pg_stat_database_blks_read", "pg_stat_database_blks_hit", "pg_stat_database_tup_returned",
    "pg_stat_database_tup_fetched", "pg_stat_database_tup_inserted", "pg_stat_database_tup_updated",
    "pg_stat_database_tup_deleted", "pg_stat_database_conflicts", "pg_stat_database_temp_files",
    "pg_stat_database_temp_bytes", "pg_stat_database_deadlocks",
    "redis_up", "redis_connected_clients", "redis_blocked_clients", "redis_memory_used_bytes",
    "redis_memory_max_bytes", "redis_commands_processed_total", "redis_commands_total",
    "redis_commands_duration_seconds_total", "redis_keyspace_hits_total", "redis_keyspace_misses_total",
    "redis_evicted_keys_total", "redis_expired_keys_total", "redis_db_keys", "redis_pubsub_channels",
    "redis_rejected_connections_total", "redis_connections_received_total", "redis_uptime_in_seconds",
    "kube_pod_container_status_restarts_total", "kube_deployment_status_replicas_available",
    "otelcol_receiver_accepted_spans_total", "otelcol_receiver_refused_spans_total",
    "otelcol_exporter_sent_spans_total", "otelcol_exporter_send_failed_spans_total",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_names(expr):
    """(metric names, function names) an expression uses."""
    e = STRING.sub('""', expr)
    e = VARIABLE.sub("1", e)
    e = re.sub(r"\{[^{}]*\}", " ", e)                     # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)                   # ranges and subqueries
    e = re.sub(r"\boffset\s+-?\w+", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", r"\1 ", e)
    e = re.sub(r"(?<![\w:.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w:])", " ", e)
    e = re.sub(r"(?<![\w:])0x[0-9a-fA-F]+", " ", e)
    metrics, functions = set(), set()
    for m in IDENT.finditer(e):
        word = m.group(0)
        if word in KEYWORDS:
            continue
        if re.match(r"\s*(\(|(by|without)\b)", e[m.end():]):
            functions.add(word)
        else:
            metrics.add(word)
    return metrics, functions


def as_promql(expr):
    """A Grafana query as plain PromQL: its $variables replaced by values of their kind."""
    e = re.sub(r"\$\{?__(?:rate_interval|interval|range)(?:_ms|_s)?\}?", "5m", expr)
    return re.sub(r"\$\{[^}]*\}|\$\w+", "x", e)


def parsed_names(expr):
    """Metric names by the real parser (None when it is not installed); raises on a syntax error."""
    if promql_parser is None:
        return None
    names = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
    promql_parser.walk(promql_parser.parse(as_promql(expr)), visit)
    return names


def template_query_expr(query):
    """The PromQL inside a Grafana Prometheus variable query, or None."""
    q = query.get("query", "") if isinstance(query, dict) else str(query or "")
    m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*", q, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*label_values\(\s*[A-Za-z_]\w*\s*\)\s*", q)
    if m:
        return None
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", q, re.S)
    if m:
        return m.group(1)
    return q or None


# ---- inputs -------------------------------------------------------------------------
def load_inputs(a):
    inp = {"dashboards": {}, "dashboard_errors": []}
    for path in sorted(glob.glob(os.path.join(a.dashboards, "*.json"))):
        with open(path, encoding="utf-8") as f:
            inp["dashboards"][os.path.basename(path)] = f.read()
    with open(a.metrics, encoding="utf-8") as f:
        inp["metrics_txt"] = f.read()
    with open(a.render, encoding="utf-8") as f:
        inp["render"] = [d for d in yaml.safe_load_all(f) if isinstance(d, dict) and d.get("kind")]
    for key, path in (("collector", a.collector_values), ("chart_values", a.chart_values),
                      ("istio_operator", a.istio_operator), ("kps", a.kps_values)):
        with open(path, encoding="utf-8") as f:
            inp[key] = yaml.safe_load(f)
    with open(a.alert_logger, encoding="utf-8") as f:
        inp["alert_logger"] = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    inp["sources"] = {}
    for root in a.sources:
        for path in sorted(glob.glob(os.path.join(root, "*", "src", "**", "*.rs"), recursive=True)):
            with open(path, encoding="utf-8") as f:
                inp["sources"][path] = f.read()
    with open(a.istio_monitoring, encoding="utf-8") as f:
        inp["istio_monitoring"] = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    inp["kps_release"] = a.kps_release
    inp["collector_namespace"] = a.collector_namespace
    inp["collector_release"] = a.collector_release
    return inp


class Checker:
    def __init__(self, inp, run_logger=True, require_parser=False):
        self.inp = inp
        self.require_parser = require_parser
        self.errors = []
        self.run_logger = run_logger
        self.used = {}          # metric name -> where
        self.records = set()

    def err(self, msg):
        self.errors.append(msg)

    # ---- dashboards -----------------------------------------------------------------
    def dashboards(self):
        uids, titles = {}, {}
        parsed = {}
        for name, text in self.inp["dashboards"].items():
            try:
                d = json.loads(text)
            except ValueError as e:
                self.err(f"dashboard {name} does not parse: {e}")
                continue
            parsed[name] = d
            for key, seen in (("uid", uids), ("title", titles)):
                v = d.get(key)
                if not v:
                    self.err(f"dashboard {name} has no {key}")
                elif v in seen:
                    self.err(f"dashboard {name}: {key} {v!r} is also {seen[v]}'s")
                else:
                    seen[v] = name
            var_names = {v.get("name") for v in (d.get("templating") or {}).get("list") or []}
            if "datasource" not in var_names:
                self.err(f"dashboard {name} has no datasource variable")
            for v in (d.get("templating") or {}).get("list") or []:
                if v.get("type") == "query":
                    expr = template_query_expr(v.get("query"))
                    if expr:
                        self.use_expr(expr, f"dashboard {name} variable {v.get('name')}")
            panels = list(d.get("panels") or [])
            if not panels:
                self.err(f"dashboard {name} has no panels")
            for p in panels:
                panels += p.get("panels") or []
            for p in panels:
                if p.get("type") == "row":
                    continue
                where = f"dashboard {name} panel {p.get('title')!r}"
                targets = p.get("targets") or []
                if not targets:
                    self.err(f"{where} has no query")
                uid = ((p.get("datasource") or {}).get("uid"))
                if uid != "${datasource}":
                    self.err(f"{where} does not use the ${{datasource}} variable (uid {uid!r})")
                for t in targets:
                    expr = t.get("expr")
                    if not expr or not expr.strip():
                        self.err(f"{where} target {t.get('refId')} has no expr")
                        continue
                    self.use_expr(expr, where)
        self.parsed_dashboards = parsed

    def rendered_dashboards(self):
        cms = [d for d in self.inp["render"] if d["kind"] == "ConfigMap"
               and ((d["metadata"].get("labels") or {}).get("grafana_dashboard"))]
        files = {}
        for cm in cms:
            for k, v in (cm.get("data") or {}).items():
                files[k] = v
        for name in self.inp["dashboards"]:
            if name not in files:
                self.err(f"dashboard {name} is not rendered into a ConfigMap with the grafana_dashboard label")
                continue
            try:
                json.loads(files[name])
            except ValueError as e:
                self.err(f"dashboard {name} as rendered does not parse: {e}")
            if "__NAMESPACE__" in files[name]:
                self.err(f"dashboard {name} as rendered still has __NAMESPACE__")

    # ---- rules ------------------------------------------------------------------------
    def rules(self):
        prs = [d for d in self.inp["render"] if d["kind"] == "PrometheusRule"]
        if not prs:
            self.err("the render has no PrometheusRule (render with monitoring.prometheusRule.enabled=true)")
            return
        alerts = {}
        for pr in prs:
            for g in pr["spec"].get("groups") or []:
                for r in g.get("rules") or []:
                    if "record" in r:
                        self.records.add(r["record"])
        for pr in prs:
            for g in pr["spec"].get("groups") or []:
                for r in g.get("rules") or []:
                    name = r.get("record") or r.get("alert")
                    self.use_expr(str(r.get("expr", "")), f"rule {name}")
                    if "alert" in r:
                        alerts[r["alert"]] = r
                        if not r.get("for"):
                            self.err(f"alert {r['alert']} has no `for` (it would fire on one bad scrape)")
                        if not (r.get("labels") or {}).get("severity"):
                            self.err(f"alert {r['alert']} has no severity label")
                        if not (r.get("annotations") or {}).get("summary"):
                            self.err(f"alert {r['alert']} has no summary annotation")
        # What the alerts must cover, and a metric each must be computed from.
        need = {
            "error ratio": ("ExchangeGrpcErrorRatio", "exchange:grpc_server_failures:rate5m"),
            "p99 latency": ("ExchangeGrpcLatencyP99", "exchange:grpc_server_latency_p99_seconds:5m"),
            "mesh error ratio": ("ExchangeHighErrorRatio", "exchange:errors:rate1m"),
            "ingest lag": ("ExchangeIngestLagHigh", "ingestor_event_lag_seconds_bucket"),
            "stale feed": ("ExchangeFeedStale", "ingestor_events_total"),
            "pod restarts": ("ExchangePodRestarting", "kube_pod_container_status_restarts_total"),
        }
        for what, (alert, metric) in need.items():
            if alert not in alerts:
                self.err(f"missing alert {alert} ({what})")
            elif metric not in promql_names(str(alerts[alert]["expr"]))[0]:
                self.err(f"alert {alert} ({what}) does not use {metric}")

    # ---- metric names -------------------------------------------------------------------
    def use_expr(self, expr, where):
        metrics, functions = promql_names(expr)
        try:
            names = parsed_names(expr)
        except Exception as e:  # the parser raises its own error types
            self.err(f"{where}: does not parse as PromQL: {str(e).splitlines()[0][:120]}")
            names = None
        if names is not None and names != metrics:
            self.err(f"{where}: metric names read {sorted(metrics)} but the PromQL parser finds {sorted(names)}")
        for f in sorted(functions - FUNCTIONS - GRAFANA_FUNCTIONS):
            self.err(f"{where}: unknown function {f}()")
        for m in metrics:
            self.used.setdefault(m, where)

    def metrics_txt(self):
        names = []
        for i, line in enumerate(self.inp["metrics_txt"].splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", line):
                self.err(f"METRICS.txt line {i}: {line!r} is not a metric name")
                continue
            names.append(line)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            self.err(f"METRICS.txt lists {dup} twice")
        return set(names)

    def check_names(self):
        own = self.metrics_txt()
        for name, where in sorted(self.used.items()):
            if ":" in name:
                if name not in self.records:
                    self.err(f"{where}: recording rule {name} is not defined by the PrometheusRule")
            elif name in own:
                continue
            elif name.startswith(EXTERNAL_PREFIXES) and name in EXTERNAL:
                continue
            elif name.startswith(EXTERNAL_PREFIXES):
                self.err(f"{where}: unknown metric {name} (not a known exporter/Istio/kube/Collector metric)")
            else:
                self.err(f"{where}: unknown metric {name} (not in METRICS.txt, not a known exporter/Istio/kube metric)")
        for name in sorted(own - set(self.used)):
            self.err(f"METRICS.txt lists {name}, but no dashboard or rule uses it")
        for name in sorted(own):
            self.check_registered(name)

    def literal_sites(self, name):
        """(path, line index, lines) of every "name" string literal in the Rust sources."""
        out = []
        lit = f'"{name}"'
        for path, text in self.inp["sources"].items():
            if lit not in text:
                continue
            lines = text.splitlines()
            for i, line in enumerate(lines):
                if lit in line:
                    out.append((path, i, lines))
        return out

    @staticmethod
    def is_histogram(site):
        """The literal is the name of a histogram: its definition (back to the `static`
        or `fn` it belongs to, at most 8 lines up) builds a Histogram."""
        path, i, lines = site
        start = i
        while start > max(0, i - 8) and not re.search(r"\b(static|fn)\b", lines[start]):
            start -= 1
        context = "\n".join(lines[start: i + 1])
        return bool(re.search(r"Histogram|histogram\(", context))

    def check_registered(self, name):
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        exact = self.literal_sites(name)
        if exact:
            if any(self.is_histogram(s) for s in exact):
                self.err(f"METRICS.txt: {name} is registered as a histogram: use {name}_bucket, _sum or _count")
            return
        if base:
            sites = self.literal_sites(base)
            if not sites:
                self.err(f"METRICS.txt: {name} is not registered in the Rust sources (no \"{base}\" or \"{name}\")")
            elif not any(self.is_histogram(s) for s in sites):
                self.err(f"METRICS.txt: {name}: {base} is registered but not a histogram, so it has no {name[len(base):]} series")
            return
        self.err(f"METRICS.txt: {name} is not registered in the Rust sources (no \"{name}\" string literal)")

    # ---- the Collector ----------------------------------------------------------------
    # Top-level values of the upstream opentelemetry-collector chart (its values.schema.json
    # refuses any other key).
    COLLECTOR_KEYS = {
        "enabled", "global", "nameOverride", "fullnameOverride", "mode", "namespaceOverride", "presets",
        "configMap", "config", "alternateConfig", "image", "imagePullSecrets", "command", "serviceAccount",
        "clusterRole", "podSecurityContext", "securityContext", "nodeSelector", "tolerations", "affinity",
        "topologySpreadConstraints", "priorityClassName", "extraEnvs", "extraEnvsFrom", "extraVolumes",
        "extraVolumeMounts", "extraManifests", "ports", "useGOMEMLIMIT", "resources", "podAnnotations",
        "podLabels", "additionalLabels", "hostNetwork", "hostAliases", "dnsPolicy", "dnsConfig",
        "replicaCount", "revisionHistoryLimit", "annotations", "extraContainers", "initContainers",
        "lifecycleHooks", "livenessProbe", "readinessProbe", "startupProbe", "service", "ingress",
        "podMonitor", "serviceMonitor", "podDisruptionBudget", "autoscaling", "rollout", "prometheusRule",
        "statefulset", "networkPolicy", "shareProcessNamespace", "internalTelemetryViaOTLP",
    }
    # Components the chart defines itself (merged under `config`).
    CHART_DEFAULTS = {"extensions": {"health_check"}, "processors": {"batch", "memory_limiter"},
                      "exporters": {"debug"}, "receivers": {"otlp"}}
    JAEGER_OTLP = "jaeger-collector.istio-system.svc.cluster.local:4317"

    def collector_service(self):
        v = self.inp["collector"] or {}
        name = v.get("fullnameOverride") or (
            self.inp["collector_release"] if "opentelemetry-collector" in self.inp["collector_release"]
            else f"{self.inp['collector_release']}-opentelemetry-collector")
        return f"{name}.{self.inp['collector_namespace']}.svc.cluster.local"

    def collector(self):
        v = self.inp["collector"]
        if not isinstance(v, dict):
            self.err("collector values: not a YAML map")
            return
        for k in sorted(set(v) - self.COLLECTOR_KEYS):
            self.err(f"collector values: {k} is not a value of the opentelemetry-collector chart")
        if v.get("mode") != "deployment":
            self.err(f"collector values: mode is {v.get('mode')!r}, expected deployment (one Service for every sender)")
        if not (v.get("image") or {}).get("repository"):
            self.err("collector values: image.repository is required by the chart")
        cfg = v.get("config") or {}
        defined = {kind: {k for k, c in (cfg.get(kind) or {}).items() if c is not None} | self.CHART_DEFAULTS.get(kind, set())
                   for kind in ("receivers", "processors", "exporters", "connectors", "extensions")}
        pipelines = {k: p for k, p in ((cfg.get("service") or {}).get("pipelines") or {}).items() if p is not None}
        for pname, p in pipelines.items():
            for kind in ("receivers", "processors", "exporters"):
                for comp in p.get(kind) or []:
                    if comp not in defined[kind] and comp not in defined["connectors"]:
                        self.err(f"collector values: pipeline {pname} names {kind[:-1]} {comp}, which is undefined")
        traces = pipelines.get("traces")
        if not traces:
            self.err("collector values: no traces pipeline")
            return
        otlp = (cfg.get("receivers") or {}).get("otlp") or {}
        protocols = otlp.get("protocols") or {}
        if "otlp" not in (traces.get("receivers") or []):
            self.err("collector values: the traces pipeline does not receive OTLP")
        for proto, port in (("grpc", 4317), ("http", 4318)):
            if proto not in protocols:
                self.err(f"collector values: the otlp receiver does not take {proto}")
            elif not str((protocols[proto] or {}).get("endpoint", "")).endswith(f":{port}"):
                self.err(f"collector values: the otlp receiver's {proto} endpoint is not on port {port}")
        procs = traces.get("processors") or []
        if not procs or procs[0] != "memory_limiter":
            self.err(f"collector values: memory_limiter must be the first processor of the traces pipeline (got {procs})")
        if "batch" not in procs:
            self.err("collector values: the traces pipeline has no batch processor")
        exporters = traces.get("exporters") or []
        if not exporters:
            self.err("collector values: the traces pipeline exports nowhere")
        for ex in exporters:
            conf = (cfg.get("exporters") or {}).get(ex) or {}
            if not ex.split("/")[0] in ("otlp", "otlp_grpc"):
                self.err(f"collector values: traces exporter {ex} is not OTLP/gRPC to Jaeger")
            elif conf.get("endpoint") != self.JAEGER_OTLP:
                self.err(f"collector values: exporter {ex} sends to {conf.get('endpoint')!r}, not Jaeger's collector {self.JAEGER_OTLP}")
        ports = v.get("ports") or {}
        otlp_port = ports.get("otlp") or {}
        if not otlp_port.get("enabled", True) or otlp_port.get("servicePort", 4317) != 4317:
            self.err("collector values: the Service does not publish OTLP/gRPC on 4317")
        if (v.get("serviceMonitor") or {}).get("enabled") and not (ports.get("metrics") or {}).get("enabled"):
            self.err("collector values: serviceMonitor is on but ports.metrics is off (nothing to scrape)")
        if not (v.get("serviceMonitor") or {}).get("enabled") and not (v.get("podMonitor") or {}).get("enabled"):
            self.err("collector values: the Collector's own metrics (otelcol_*) are not scraped")

    # ---- who points at the Collector ----------------------------------------------------
    def wiring(self):
        host = self.collector_service()
        want = f"http://{host}:4317"
        got = ((self.inp["chart_values"] or {}).get("telemetry") or {}).get("otlpEndpoint")
        if got != want:
            self.err(f"helm/exchange telemetry.otlpEndpoint {got!r} does not point at the Collector ({want})")
        for cm in (d for d in self.inp["render"] if d["kind"] == "ConfigMap"):
            ep = (cm.get("data") or {}).get("OTEL_EXPORTER_OTLP_ENDPOINT")
            if ep is not None and ep != want:
                self.err(f"ConfigMap/{cm['metadata']['name']}: OTEL_EXPORTER_OTLP_ENDPOINT {ep} does not point at the Collector ({want})")
        providers = (((self.inp["istio_operator"] or {}).get("spec") or {}).get("meshConfig") or {}).get("extensionProviders") or []
        otel = [p for p in providers if p.get("name") == "otel-tracing"]
        if not otel:
            self.err("istio install profile: no otel-tracing extension provider")
        for p in otel:
            o = p.get("opentelemetry") or {}
            if o.get("service") != host or o.get("port") != 4317:
                self.err(f"istio install profile: otel-tracing sends to {o.get('service')}:{o.get('port')}, not the Collector {host}:4317")
        np = ((self.inp["chart_values"] or {}).get("networkPolicy") or {}).get("otelCollector") or {}
        if (np.get("namespaceSelector") or {}).get("kubernetes.io/metadata.name") != self.inp["collector_namespace"]:
            self.err(f"helm/exchange networkPolicy.otelCollector.namespaceSelector {np.get('namespaceSelector')} "
                     f"is not the Collector's namespace {self.inp['collector_namespace']}")
        pod = np.get("podSelector") or {}
        if pod and pod != {"app.kubernetes.io/name": "opentelemetry-collector"}:
            self.err(f"helm/exchange networkPolicy.otelCollector.podSelector {pod} does not select the Collector's pods")
        if 4317 not in (np.get("ports") or []):
            self.err("helm/exchange networkPolicy.otelCollector.ports does not open 4317 (OTLP/gRPC)")

    # ---- what a stock kube-prometheus-stack selects --------------------------------------
    def selection(self):
        """A stock kube-prometheus-stack's Prometheus selects PodMonitors, ServiceMonitors
        and PrometheusRules labelled release: <its release name>; everything this
        repository defines must carry it, or a cluster with a stock stack ignores it."""
        want = self.inp["kps_release"]
        objs = [(f"helm/exchange {d['kind']}/{d['metadata']['name']}", d) for d in self.inp["render"]
                if d.get("kind") in ("PodMonitor", "ServiceMonitor", "PrometheusRule")]
        objs += [(f"istio/monitoring {d['kind']}/{d['metadata']['name']}", d) for d in self.inp["istio_monitoring"]
                 if d.get("kind") in ("PodMonitor", "ServiceMonitor", "PrometheusRule")]
        if not objs:
            self.err("no PodMonitor/ServiceMonitor/PrometheusRule to check (monitoring render?)")
        for where, d in objs:
            got = ((d.get("metadata") or {}).get("labels") or {}).get("release")
            if got != want:
                self.err(f"{where}: label release={got!r}, a stock kube-prometheus-stack (release {want}) selects release={want!r}")
        sm = (self.inp["collector"] or {}).get("serviceMonitor") or {}
        if sm.get("enabled") and (sm.get("extraLabels") or {}).get("release") != want:
            self.err(f"collector values: serviceMonitor.extraLabels has no release={want!r}: a stock "
                     f"kube-prometheus-stack would not scrape the Collector")

    # ---- Alertmanager and Grafana ----------------------------------------------------
    def alerting(self):
        kps = self.inp["kps"] or {}
        am = kps.get("alertmanager") or {}
        if not am.get("enabled"):
            self.err("kube-prometheus-stack: alertmanager is not enabled (alerts would go nowhere)")
        cfg = am.get("config") or {}
        receivers = {r.get("name"): r for r in cfg.get("receivers") or []}
        route = cfg.get("route") or {}

        def walk(r, where):
            rec = r.get("receiver")
            if rec is not None and rec not in receivers:
                self.err(f"kube-prometheus-stack: {where} routes to receiver {rec!r}, which is not defined")
            for i, sub in enumerate(r.get("routes") or []):
                walk(sub, f"{where}.routes[{i}]")
        walk(route, "route")
        svc = next((d for d in self.inp["alert_logger"] if d.get("kind") == "Service"), None)
        dep = next((d for d in self.inp["alert_logger"] if d.get("kind") == "Deployment"), None)
        if not svc or not dep:
            self.err("alert-logger.yaml: no Service or Deployment")
            return
        url = f"http://{svc['metadata']['name']}.{svc['metadata'].get('namespace', 'default')}.svc:{svc['spec']['ports'][0]['port']}/"
        default = receivers.get(route.get("receiver")) or {}
        hooks = [w.get("url", "") for w in default.get("webhook_configs") or []]
        if not any(h.startswith(url) for h in hooks):
            self.err(f"kube-prometheus-stack: the default receiver {route.get('receiver')!r} is not the alert-logger webhook ({url}); got {hooks}")
        dash = (((kps.get("grafana") or {}).get("sidecar") or {}).get("dashboards") or {})
        labels = (((self.inp["chart_values"] or {}).get("monitoring") or {}).get("grafanaDashboard") or {}).get("labels") or {}
        if labels.get(dash.get("label")) != dash.get("labelValue"):
            self.err(f"Grafana's sidecar loads label {dash.get('label')}={dash.get('labelValue')!r}, the chart labels dashboards {labels}")
        if dash.get("folderAnnotation") != "grafana_folder":
            self.err("Grafana's sidecar does not read the grafana_folder annotation the chart sets")

    def alert_logger_runs(self):
        cm = next((d for d in self.inp["alert_logger"] if d.get("kind") == "ConfigMap"), None)
        script = ((cm or {}).get("data") or {}).get("alert_logger.py")
        if not script:
            self.err("alert-logger.yaml: no alert_logger.py in its ConfigMap")
            return
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "alert_logger.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(script)
            out = os.path.join(tmp, "out")
            with open(out, "w", encoding="utf-8") as log:
                proc = subprocess.Popen([sys.executable, "-u", path], env={**os.environ, "PORT": str(port)},
                                        stdout=log, stderr=subprocess.STDOUT)
            try:
                message = {"receiver": "alert-logger", "status": "firing", "alerts": [
                    {"status": "firing", "labels": {"alertname": "ExchangeFeedStale", "severity": "critical", "namespace": "exchange"},
                     "annotations": {"summary": "No market event"}, "startsAt": "2025-01-01T00:00:00Z"},
                    {"status": "resolved", "labels": {"alertname": "ExchangePodRestarting", "severity": "warning"},
                     "annotations": {"summary": "restarts"}, "startsAt": "2025-01-01T00:00:00Z"}]}
                status = None
                for _ in range(50):
                    try:
                        req = urllib.request.Request(f"http://127.0.0.1:{port}/alerts", data=json.dumps(message).encode(),
                                                     headers={"content-type": "application/json"})
                        with urllib.request.urlopen(req, timeout=2) as resp:
                            status = resp.status
                        break
                    except OSError:
                        if proc.poll() is not None:
                            break
                        time.sleep(0.1)
                time.sleep(0.2)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
            with open(out, encoding="utf-8") as f:
                lines = f.read().splitlines()
        logged = []
        for line in lines:
            try:
                logged.append(json.loads(line))
            except ValueError:
                pass
        names = [(x.get("alertname"), x.get("status")) for x in logged if isinstance(x, dict)]
        if status != 200 or ("ExchangeFeedStale", "firing") not in names or ("ExchangePodRestarting", "resolved") not in names:
            self.err(f"alert-logger did not log the alerts it was sent (HTTP {status}; logged {names}; output {lines[-3:]})")

    def run(self):
        if self.require_parser and promql_parser is None:
            self.err("the PromQL parser is not installed (pip install promql-parser): expressions are not syntax-checked")
        self.dashboards()
        self.rendered_dashboards()
        self.rules()
        self.check_names()
        self.collector()
        self.wiring()
        self.alerting()
        self.selection()
        if self.run_logger:
            self.alert_logger_runs()
        return self


# ---- self-test ------------------------------------------------------------------------
def mutations():
    """(description, expected fragment, mutate(inp))."""
    def dash(inp, name="exchange-trading.json"):
        return json.loads(inp["dashboards"][name])

    def put(inp, d, name="exchange-trading.json"):
        inp["dashboards"][name] = json.dumps(d)

    def first_target(d):
        for p in d["panels"]:
            if p.get("targets"):
                return p["targets"][0]

    def m_json(inp):
        inp["dashboards"]["exchange-mesh.json"] = inp["dashboards"]["exchange-mesh.json"][:-40]

    def m_own_typo(inp):
        d = dash(inp)
        first_target(d)["expr"] = 'sum(rate(grpc_server_handled_totl{namespace="$namespace"}[5m]))'
        put(inp, d)

    def m_exporter_typo(inp):
        d = dash(inp, "exchange-stores.json")
        first_target(d)["expr"] = 'sum(rate(pg_stat_database_xact_commits{namespace="$namespace"}[5m]))'
        put(inp, d, "exchange-stores.json")

    def m_function(inp):
        d = dash(inp)
        first_target(d)["expr"] = 'sum(rat(grpc_server_handled_total{namespace="$namespace"}[5m]))'
        put(inp, d)

    def m_variable(inp):
        d = dash(inp, "exchange-golden-signals.json")
        for v in d["templating"]["list"]:
            if v["name"] == "app":
                v["query"]["query"] = 'label_values(service_infos{namespace="$namespace"}, app)'
        put(inp, d, "exchange-golden-signals.json")

    def m_datasource(inp):
        d = dash(inp)
        d["panels"][1]["datasource"] = {"type": "prometheus", "uid": "prometheus"}
        put(inp, d)

    def m_uid(inp):
        d = dash(inp)
        d["uid"] = "exchange-mesh"
        put(inp, d)

    def rule_list(inp):
        pr = next(x for x in inp["render"] if x["kind"] == "PrometheusRule")
        return [r for g in pr["spec"]["groups"] for r in g["rules"]]

    def m_record(inp):
        for r in rule_list(inp):
            if r.get("alert") == "ExchangeGrpcErrorRatio":
                r["expr"] = r["expr"].replace("exchange:grpc_server_failures:rate5m", "exchange:grpc_server_failure:rate5m")

    def m_rule_metric(inp):
        for r in rule_list(inp):
            if r.get("alert") == "ExchangeIngestLagHigh":
                r["expr"] = r["expr"].replace("ingestor_event_lag_seconds_bucket", "ingestor_event_latency_seconds_bucket")

    def m_missing_alert(inp):
        pr = next(x for x in inp["render"] if x["kind"] == "PrometheusRule")
        for g in pr["spec"]["groups"]:
            g["rules"] = [r for r in g["rules"] if r.get("alert") != "ExchangeFeedStale"]

    def m_alert_for(inp):
        for r in rule_list(inp):
            if r.get("alert") == "ExchangePodRestarting":
                del r["for"]

    def m_txt_unregistered(inp):
        inp["metrics_txt"] += "\norder_orders_total\n"
        d = dash(inp)
        first_target(d)["expr"] = 'sum(rate(order_orders_total{namespace="$namespace"}[5m]))'
        put(inp, d)

    def m_txt_missing(inp):
        inp["metrics_txt"] = "\n".join(x for x in inp["metrics_txt"].splitlines() if x.strip() != "service_info")

    def m_txt_unused(inp):
        inp["metrics_txt"] += "\ngrpc_client_handling_seconds_count\n"

    def m_txt_gauge_bucket(inp):
        inp["metrics_txt"] += "\nmarket_data_write_queue_bucket\n"
        d = dash(inp)
        first_target(d)["expr"] = 'histogram_quantile(0.9, sum by (le) (rate(market_data_write_queue_bucket[5m])))'
        put(inp, d)

    def m_txt_bare_histogram(inp):
        inp["metrics_txt"] += "\ngrpc_server_handling_seconds\n"
        d = dash(inp)
        first_target(d)["expr"] = 'max(grpc_server_handling_seconds{namespace="$namespace"})'
        put(inp, d)

    def m_not_rendered(inp):
        inp["render"] = [x for x in inp["render"] if not (x["kind"] == "ConfigMap" and x["metadata"]["name"].endswith("-stores"))]

    def m_collector_undefined(inp):
        inp["collector"]["config"]["service"]["pipelines"]["traces"]["exporters"].append("otlp/tempo")

    def m_collector_backend(inp):
        inp["collector"]["config"]["exporters"]["otlp/jaeger"]["endpoint"] = "tempo.monitoring.svc:4317"

    def m_collector_order(inp):
        inp["collector"]["config"]["service"]["pipelines"]["traces"]["processors"] = ["batch", "memory_limiter"]

    def m_collector_key(inp):
        inp["collector"]["standaloneCollector"] = {"enabled": True}

    def m_collector_http(inp):
        del inp["collector"]["config"]["receivers"]["otlp"]["protocols"]["http"]

    def m_chart_endpoint(inp):
        inp["chart_values"]["telemetry"]["otlpEndpoint"] = "http://jaeger-collector.istio-system.svc.cluster.local:4317"

    def m_render_endpoint(inp):
        cm = next(x for x in inp["render"] if x["kind"] == "ConfigMap" and "OTEL_EXPORTER_OTLP_ENDPOINT" in (x.get("data") or {}))
        cm["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://jaeger-collector.istio-system.svc.cluster.local:4317"

    def m_istio(inp):
        for p in inp["istio_operator"]["spec"]["meshConfig"]["extensionProviders"]:
            if p["name"] == "otel-tracing":
                p["opentelemetry"]["service"] = "jaeger-collector.istio-system.svc.cluster.local"

    def m_netpol(inp):
        inp["chart_values"]["networkPolicy"]["otelCollector"]["namespaceSelector"] = {"kubernetes.io/metadata.name": "istio-system"}

    def m_am_off(inp):
        inp["kps"]["alertmanager"]["enabled"] = False

    def m_am_receiver(inp):
        inp["kps"]["alertmanager"]["config"]["route"]["routes"][0]["receiver"] = "slack"

    def m_am_url(inp):
        for r in inp["kps"]["alertmanager"]["config"]["receivers"]:
            for w in r.get("webhook_configs") or []:
                w["url"] = "http://alert-log.monitoring.svc:8080/alerts"

    def m_grafana_label(inp):
        inp["kps"]["grafana"]["sidecar"]["dashboards"]["label"] = "dashboard"

    def m_syntax(inp):
        d = dash(inp, "exchange-mesh.json")
        t = first_target(d)
        t["expr"] = t["expr"][:-1]
        put(inp, d, "exchange-mesh.json")

    def m_logger(inp):
        cm = next(x for x in inp["alert_logger"] if x.get("kind") == "ConfigMap")
        cm["data"]["alert_logger.py"] = cm["data"]["alert_logger.py"].replace('"alertname": labels.get("alertname")', '"name": labels.get("alertname")')

    def m_podmonitor_release(inp):
        pm = next(d for d in inp["render"] if d.get("kind") == "PodMonitor")
        pm["metadata"]["labels"].pop("release", None)

    def m_istio_monitor_release(inp):
        sm = next(d for d in inp["istio_monitoring"] if d.get("kind") == "ServiceMonitor")
        sm["metadata"].pop("labels", None)

    def m_collector_release(inp):
        inp["collector"]["serviceMonitor"].pop("extraLabels", None)

    return [
        ("a PodMonitor a stock kube-prometheus-stack ignores", "a stock kube-prometheus-stack (release", m_podmonitor_release),
        ("istiod's ServiceMonitor without the release label", "istio/monitoring ServiceMonitor/istiod: label release=None", m_istio_monitor_release),
        ("the Collector's ServiceMonitor without the release label", "serviceMonitor.extraLabels has no release", m_collector_release),
        ("a dashboard that is not JSON", "does not parse", m_json),
        ("an exchange metric misspelt", "unknown metric grpc_server_handled_totl", m_own_typo),
        ("an exporter metric misspelt", "unknown metric pg_stat_database_xact_commits", m_exporter_typo),
        ("a function that does not exist", "unknown function rat()", m_function),
        ("a variable query on a metric that does not exist", "unknown metric service_infos", m_variable),
        ("a panel on a fixed data source", "does not use the ${datasource} variable", m_datasource),
        ("two dashboards with one uid", "uid 'exchange-mesh' is also", m_uid),
        ("an alert on an undefined recording rule", "recording rule exchange:grpc_server_failure:rate5m is not defined", m_record),
        ("an alert on a metric that does not exist", "unknown metric ingestor_event_latency_seconds_bucket", m_rule_metric),
        ("the stale-feed alert missing", "missing alert ExchangeFeedStale", m_missing_alert),
        ("an alert without `for`", "ExchangePodRestarting has no `for`", m_alert_for),
        ("METRICS.txt naming a metric the services do not register", "order_orders_total is not registered in the Rust sources", m_txt_unregistered),
        ("a used metric missing from METRICS.txt", "unknown metric service_info", m_txt_missing),
        ("METRICS.txt naming a metric nothing uses", "lists grpc_client_handling_seconds_count, but no dashboard or rule uses it", m_txt_unused),
        ("a _bucket series of a gauge", "market_data_write_queue is registered but not a histogram", m_txt_gauge_bucket),
        ("a histogram by its bare name", "grpc_server_handling_seconds is registered as a histogram", m_txt_bare_histogram),
        ("a dashboard the chart does not render", "exchange-stores.json is not rendered", m_not_rendered),
        ("a Collector pipeline naming an undefined exporter", "names exporter otlp/tempo, which is undefined", m_collector_undefined),
        ("the Collector exporting somewhere else", "not Jaeger's collector", m_collector_backend),
        ("memory_limiter after batch", "memory_limiter must be the first processor", m_collector_order),
        ("a Collector value the chart does not have", "standaloneCollector is not a value of the opentelemetry-collector chart", m_collector_key),
        ("the Collector not taking OTLP/HTTP", "does not take http", m_collector_http),
        ("the chart exporting straight to Jaeger", "telemetry.otlpEndpoint", m_chart_endpoint),
        ("a rendered service exporting straight to Jaeger", "OTEL_EXPORTER_OTLP_ENDPOINT http://jaeger-collector", m_render_endpoint),
        ("the sidecars' spans bypassing the Collector", "otel-tracing sends to jaeger-collector", m_istio),
        ("NetworkPolicy opening another namespace than the Collector's", "is not the Collector's namespace", m_netpol),
        ("Alertmanager off", "alertmanager is not enabled", m_am_off),
        ("a route to an undefined receiver", "routes to receiver 'slack'", m_am_receiver),
        ("the webhook URL not the alert-logger Service", "is not the alert-logger webhook", m_am_url),
        ("Grafana's sidecar on another label", "Grafana's sidecar loads label dashboard", m_grafana_label),
        ("an alert logger that does not log the alert", "alert-logger did not log", m_logger),
        ("an expression with a missing parenthesis", "does not parse as PromQL", m_syntax),
    ]


def self_test(inp, require_parser=False):
    base = Checker(copy.deepcopy(inp), require_parser=require_parser).run()
    if base.errors:
        print(f"self-test: the unbroken inputs already fail: {base.errors[:3]}")
        return 1
    failed = 0
    for desc, fragment, mutate in mutations():
        x = copy.deepcopy(inp)
        mutate(x)
        if mutate.__name__ == "m_syntax" and promql_parser is None:
            failed += 1
            print(f"  MISSED: {desc} (no PromQL parser installed)")
            continue
        c = Checker(x, run_logger=mutate.__name__ == "m_logger", require_parser=require_parser).run()
        hit = [e for e in c.errors if fragment in e]
        if hit:
            print(f"  caught: {desc}: {hit[0][:150]}")
        else:
            failed += 1
            print(f"  MISSED: {desc} (expected an error containing {fragment!r}; got {c.errors[:3]})")
    total = len(mutations())
    print(f"self-test: {total - failed}/{total} deliberate observability breaks caught")
    return 1 if failed else 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--render", required=True, help="the chart rendered with PodMonitors and the PrometheusRule on")
    ap.add_argument("--dashboards", default="helm/exchange/dashboards")
    ap.add_argument("--metrics", default="helm/exchange/dashboards/METRICS.txt")
    ap.add_argument("--sources", action="append", default=None, help="Rust source roots (default services, libs)")
    ap.add_argument("--chart-values", default="helm/exchange/values.yaml")
    ap.add_argument("--collector-values", default="scripts/lib/k8s/otel-collector-values.yaml")
    ap.add_argument("--collector-namespace", default="monitoring")
    ap.add_argument("--collector-release", default="otel-collector")
    ap.add_argument("--kps-release", default="kube-prometheus-stack",
                    help="the kube-prometheus-stack release scripts/cluster-up installs (its selectors want release=<it>)")
    ap.add_argument("--istio-monitoring", default="istio/monitoring/prometheus-operator.yaml")
    ap.add_argument("--istio-operator", default="istio/install/istio-operator.yaml")
    ap.add_argument("--kps-values", default="scripts/lib/k8s/kube-prometheus-stack-values.yaml")
    ap.add_argument("--alert-logger", default="scripts/lib/k8s/alert-logger.yaml")
    ap.add_argument("--self-test", action="store_true", help="break the inputs in many ways; fail unless every break is caught")
    ap.add_argument("--require-parser", action="store_true", help="fail when the PromQL parser (promql-parser) is missing")
    a = ap.parse_args(argv)
    a.sources = a.sources or ["services", "libs"]
    inp = load_inputs(a)
    if a.self_test:
        return self_test(inp, a.require_parser)
    c = Checker(inp, require_parser=a.require_parser).run()
    for e in c.errors:
        print(f"VIOLATION {e}")
    own = c.metrics_txt()
    ext = {n for n in c.used if ":" not in n and n not in own}
    print(f"{len(inp['dashboards'])} dashboards, {len(c.used)} metric names ({len(own)} the exchange's, "
          f"{len(ext)} exporter/Istio/kube, {len([n for n in c.used if ':' in n])} recording rules), "
          f"{len(c.errors)} violations")
    return 1 if c.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
