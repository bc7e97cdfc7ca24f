#!/usr/bin/env python3
"""Static checks of a rendered exchange chart (with the mesh-wide pieces in istio/mesh).

Schema validation (validate-manifests) says each object is well formed; this says the
objects fit together the way the mesh needs:

  workloads   app + version labels, named ports, probes (gRPC readiness and a startup
              probe for gRPC containers), requests and limits, Pod Security
              "restricted", a rendered ServiceAccount, config checksum, a grace period
              longer than preStop + DRAIN_DELAY + SHUTDOWN_TIMEOUT
  services    named ports with appProtocol, a selector that selects a pod template,
              target ports that exist, and a NetworkPolicy that lets someone in on
              every port
  istio       every VirtualService destination is a rendered Service port; every
              subset exists in a DestinationRule whose labels select a pod template of
              that Service; weights sum to 100; subsets do not overlap; gateways exist
  edge        ingress Gateways serve HTTPS and redirect HTTP; ingress routes match no
              routing header (x-canary, x-preview, any a mesh route matches on) and
              remove them all from requests, and remove x-served-by from responses
              (unless --allow-served-by)
  wiring      every call the chart wires (URLs in ConfigMaps/env, DATABASE_URL,
              REDIS_URL) is allowed by the NetworkPolicies on both ends and, with
              --mesh, by an AuthorizationPolicy; every policy selects a rendered
              workload; every principal names a rendered ServiceAccount in the
              release's namespace (-n), of the release (--release) when given, or
              the ingress gateway; namespace-wide rules name only that namespace
  reflection  every gRPC server has reflection off (GRPC_REFLECTION=false), unless
              --allow-reflection (the load-test overlay)
  monitoring  every PodMonitor selects pods that have its port, which a NetworkPolicy
              opens to Prometheus and (in the mesh) the sidecar does not intercept;
              when PodMonitors are rendered, every http-metrics port is scraped by
              one; every workload exporting traces (OTEL_EXPORTER_OTLP_ENDPOINT) may
              reach the collector's namespace and port; every image has a pinned tag;
              --expect-store-exporters: Postgres and Redis each have an exporter
              container that a PodMonitor scrapes
  probes      in the mesh, every pod admits the kubelet from its node on the sidecar
              agent's ports (15020: the probes Istio rewrites; 15021: the sidecar's
              readiness), even under default deny
  drain       in the mesh, every pod keeps its sidecar for all but the last 10 s
              of its grace period (proxy.istio.io/config terminationDrainDuration)
  images      the exchange's images are deployed by an immutable tag (a commit),
              never by a version label (v1, v2) or latest: a re-pushed tag is not
              pulled again (IfNotPresent) and changes no pod spec
  replicas    a Deployment an HPA scales states at least the HPA's minimum (a first
              install would otherwise start one pod)
  scaled down a Deployment scaled to zero (a canary candidate after a failed analysis)
              gets no share of any route and no header route (its calls would get
              503s), and no HPA or PodDisruptionBudget names it;
              --expect-scaled-down APP=VERSION: that Deployment is scaled to zero
  faults      a route with a fault matches named unary calls only: never the
              catch-all, never a stream path, and carries no retries or timeout
              (Istio turns them off on a route with a fault)
  edge health the ingress answers the services' probe paths (/healthz, /readyz)
              itself instead of forwarding them (unless --allow-health)
  monitors    every PodMonitor, ServiceMonitor and PrometheusRule carries the
              labels a stock kube-prometheus-stack selects (--monitor-label)
  jobs        every CronJob: concurrencyPolicy Forbid, a starting deadline, an active
              deadline, a backoff limit, history limits, restartPolicy Never/OnFailure,
              its pods as restricted as the services' (the workload checks above), no
              Service selecting them; in the mesh a job pod's sidecar is a native
              sidecar (or there is none), or the Job never completes; a pod without a
              sidecar calling one with a sidecar is refused by STRICT mTLS
  stores      the bundled Postgres keeps its data (PGDATA) on a PersistentVolumeClaim,
              never an emptyDir; a CloudNativePG Cluster (a CRD validate-manifests does
              not know) is checked structurally here (the fields the chart sets, their
              types), with storage, and its Services (<cluster>-rw/-ro/-r) and pods
              stand in for the wiring and NetworkPolicy checks
  sidecars    in the mesh, every pod with a sidecar is selected by exactly one Sidecar
              of the release, with outboundTrafficPolicy REGISTRY_ONLY, whose egress
              imports every host the pod calls (each URL in its environment, the API
              server when it mounts a token, the Collector its sidecar's spans go to)
              and never every host of the mesh ("*/*"); a host outside the cluster
              needs a ServiceEntry naming it and its port (--allow-open-egress: the
              render turns istio.sidecarScoping and istio.egress.registryOnly off)
  gate        the release gate's Job: never retried, its own deadline before the
              Job's, cleaned up, a native sidecar; its ServiceAccount bound to a Role
              that may only get/list/patch VirtualServices (each one it patches
              rendered and named) and get/patch the scale of named Deployments (a
              canary's: its candidate among them); its calls to Prometheus and the API
              server allowed by its NetworkPolicy (its load to the gateway is a wired
              call above)
  strategies  --expect-rolling / --expect-canary / --expect-bluegreen assert the
              shape each values-<strategy>.yaml promises
  transition  --transition FROM TO (two renders, upgrade FROM -> TO): no Deployment
              changes its selector (immutable: the upgrade would fail), and every
              share of traffic TO routes (every weighted or default route, and the
              Services' selectors) reaches pods of a Deployment FROM already runs,
              whose pods match the destination before and after, so nothing is
              routed to pods that do not exist yet while the new ones start (a
              Deployment FROM scales to zero runs no pod)

Exit status 1 when anything is violated (each violation on its own line).
--self-test breaks a good render in many ways and fails unless every break is caught.
"""
import argparse
import copy
import glob
import os
import re
import sys

import yaml

CLUSTER_DOMAIN = "cluster.local"
# The mesh ingress gateway's identity (istio/install): the one caller from outside the release.
INGRESS_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
# Where Prometheus runs (kube-prometheus-stack in namespace monitoring) and where the
# OpenTelemetry Collector's pods are (the upstream chart's name label): the defaults
# of networkPolicy.prometheus and networkPolicy.otelCollector.
PROMETHEUS_PEER = ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"})
COLLECTOR_POD_LABELS = {"app.kubernetes.io/name": "opentelemetry-collector"}
HEALTH_PATH_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/",
                        "/grpc.reflection.v1alpha.ServerReflection/")


def load_docs(paths):
    docs = []
    for path in paths:
        files = sorted(glob.glob(os.path.join(path, "*.yaml"))) if os.path.isdir(path) else [path]
        for f in files:
            with open(f, encoding="utf-8") as fh:
                docs += [d for d in yaml.safe_load_all(fh) if isinstance(d, dict) and d.get("kind")]
    return docs


def name_of(obj):
    return (obj.get("metadata") or {}).get("name", "?")


def ident(obj):
    return f"{obj['kind']}/{name_of(obj)}"


def selects(selector, labels):
    """Kubernetes label selector semantics (matchLabels + matchExpressions, or a plain map)."""
    if selector is None:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        ml = selector.get("matchLabels") or {}
        exprs = selector.get("matchExpressions") or []
    else:
        ml, exprs = selector, []
    for k, v in ml.items():
        if labels.get(k) != v:
            return False
    for e in exprs:
        key, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def duration_seconds(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(text).strip())
    if not m:
        return None
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


# ---- CloudNativePG: a CRD validate-manifests has no schema for -------------------------
# The fields of a Cluster the chart sets, and their types: a dict is an object with
# exactly these optional keys, ("map", T) an object of any keys with values T, [T] a
# list, a set the allowed values.
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
CNPG_CLUSTER_SHAPE = {
    "apiVersion": {"postgresql.cnpg.io/v1"},
    "kind": {"Cluster"},
    "metadata": {"name": str, "labels": ("map", str), "annotations": ("map", str)},
    "spec": {
        "instances": int,
        "imageName": str,
        "primaryUpdateStrategy": {"unsupervised", "supervised"},
        "enableSuperuserAccess": bool,
        "storage": {"size": str, "storageClass": str},
        "postgresql": {"parameters": ("map", str)},
        "bootstrap": {"initdb": {"database": str, "owner": str,
                                 "postInitApplicationSQLRefs": {"configMapRefs": [{"name": str, "key": str}]}}},
        "managed": {"roles": [{"name": str, "ensure": {"present", "absent"}, "login": bool, "inherit": bool,
                               "connectionLimit": int, "comment": str, "passwordSecret": {"name": str}}]},
        "inheritedMetadata": {"labels": ("map", str), "annotations": ("map", str)},
        "resources": {"requests": ("map", str), "limits": ("map", str)},
        "affinity": {"enablePodAntiAffinity": bool, "topologyKey": str, "podAntiAffinityType": {"preferred", "required"}},
        "monitoring": {"enablePodMonitor": bool},
    },
}
CNPG_REQUIRED = (("spec", "instances"), ("spec", "imageName"), ("spec", "storage", "size"))


def shape_errors(value, shape, path):
    """Where value does not fit shape (see CNPG_CLUSTER_SHAPE)."""
    out = []
    if isinstance(shape, set):
        if value not in shape:
            out.append(f"{path}: {value!r} is not one of {sorted(shape)}")
    elif isinstance(shape, tuple) and shape[0] == "map":
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        for k, v in value.items():
            out += shape_errors(v, shape[1], f"{path}.{k}")
    elif isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        for i, v in enumerate(value):
            out += shape_errors(v, shape[0], f"{path}[{i}]")
    elif isinstance(shape, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        for k, v in value.items():
            if k not in shape:
                out.append(f"{path}: unknown field {k!r}")
            else:
                out += shape_errors(v, shape[k], f"{path}.{k}")
    elif shape is int:
        if not isinstance(value, int) or isinstance(value, bool):
            out.append(f"{path}: expected an integer, got {value!r}")
    elif not isinstance(value, shape):
        out.append(f"{path}: expected {shape.__name__}, got {type(value).__name__} {value!r}")
    return out


def cnpg_stand_ins(clusters):
    """Stand-ins for what the CloudNativePG operator makes of each Cluster: its instance
    pods (primary and replicas, with the inherited labels) and Services <name>-rw
    (primary), -ro (replicas) and -r (any), port 5432."""
    pods, services = [], {}
    for c in clusters:
        name = name_of(c)
        spec = c.get("spec") or {}
        inherited = ((spec.get("inheritedMetadata") or {}).get("labels") or {})
        n = spec.get("instances") if isinstance(spec.get("instances"), int) else 1
        for i in range(max(n, 1)):
            role = "primary" if i == 0 else "replica"
            labels = dict(inherited, **{"cnpg.io/cluster": name, "cnpg.io/podRole": "instance",
                                        "cnpg.io/instanceRole": role})
            pods.append({"kind": "CNPGInstance", "metadata": {"name": f"{name}-{i + 1}"},
                         "spec": {"template": {"metadata": {"labels": labels},
                                               "spec": {"containers": [{"name": "postgres", "ports": [
                                                   {"name": "postgresql", "containerPort": 5432},
                                                   {"name": "status", "containerPort": 8000}]}]}}}})
        for suffix, extra in (("rw", {"cnpg.io/instanceRole": "primary"}), ("ro", {"cnpg.io/instanceRole": "replica"}), ("r", {})):
            services[f"{name}-{suffix}"] = {"kind": "Service", "metadata": {"name": f"{name}-{suffix}"},
                                            "spec": {"selector": dict({"cnpg.io/cluster": name, "cnpg.io/podRole": "instance"}, **extra),
                                                     "ports": [{"name": "postgres", "port": 5432, "targetPort": 5432,
                                                                "appProtocol": "tcp"}]}}
    return pods, services


# Workloads that run to completion: no probes, nothing calls them, no drain.
JOB_KINDS = ("CronJob", "Job")


class Render:
    def __init__(self, docs, namespace, mesh_docs=(), release=None, external_principals=()):
        self.docs = docs
        self.ns = namespace
        self.release = release
        self.external_principals = set(external_principals)
        self.mesh = list(mesh_docs)
        self.errors = []
        by = {}
        for d in docs:
            by.setdefault(d["kind"], []).append(d)
        self.by = by
        self.workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet") + JOB_KINDS]
        self.services = {name_of(s): s for s in by.get("Service", [])}
        # A CloudNativePG Cluster's pods and Services are made by its operator: stand-ins
        # (kind CNPGInstance, not workloads) let the wiring and NetworkPolicy checks see them.
        self.cnpg_pods, self.cnpg_services = cnpg_stand_ins(by.get("Cluster", []))
        self.configmaps = {name_of(c): c for c in by.get("ConfigMap", [])}
        self.secrets = {name_of(s) for s in by.get("Secret", [])}
        self.service_accounts = {name_of(s) for s in by.get("ServiceAccount", [])}
        self.netpols = by.get("NetworkPolicy", [])

    def err(self, msg):
        self.errors.append(msg)

    # ---- lookups -----------------------------------------------------------------
    @staticmethod
    def template(w):
        if w["kind"] == "CronJob":
            return w["spec"]["jobTemplate"]["spec"]["template"]
        return w["spec"]["template"]

    def pod_templates(self):
        """Workloads and the stand-ins of operator-made pods (what selectors may select)."""
        return self.workloads + self.cnpg_pods + self.gate_pods()

    def gate_pods(self):
        """The release gate's pods: a Job per analysis run (scripts/canary renders it; not
        part of the release), so a release render holds only its ServiceAccount and
        NetworkPolicy. A stand-in with the ServiceAccount's selector labels (the Job's
        pod labels) lets the policies that name those pods be checked."""
        if any(w["kind"] == "Job" and "GATE_MODE" in str(w) for w in self.workloads):
            return []
        out = []
        for cm in self.configmaps.values():
            if "release_gate.py" not in (cm.get("data") or {}):
                continue
            for sa in self.by.get("ServiceAccount", []):
                labels = (sa.get("metadata") or {}).get("labels") or {}
                if name_of(sa) == name_of(cm) and labels.get("app.kubernetes.io/name"):
                    sel = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance") if k in labels}
                    out.append({"kind": "ReleaseGateJob", "metadata": {"name": name_of(sa)},
                                "spec": {"template": {"metadata": {"labels": sel}, "spec": {"containers": []}}}})
        return out

    def has_sidecar(self, w):
        """In a mesh render, the pod gets a sidecar unless told not to."""
        if not self.in_mesh():
            return False
        meta = self.template(w).get("metadata") or {}
        for where in (meta.get("labels") or {}, meta.get("annotations") or {}):
            if str(where.get("sidecar.istio.io/inject", "")).lower() == "false":
                return False
        return True

    @staticmethod
    def tlabels(w):
        return (Render.template(w).get("metadata") or {}).get("labels") or {}

    def service_for_host(self, host):
        h = host
        for suffix in (f".svc.{CLUSTER_DOMAIN}", ".svc", f".{self.ns}"):
            if h.endswith(suffix):
                h = h[: -len(suffix)]
        if "." in h:
            return None
        return self.services.get(h) or self.cnpg_services.get(h)

    def templates_of_service(self, svc):
        sel = svc["spec"].get("selector") or {}
        if not sel:
            return []
        return [w for w in self.pod_templates() if selects(sel, self.tlabels(w))]

    @staticmethod
    def containers(w):
        spec = Render.template(w)["spec"]
        return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])

    @staticmethod
    def container_ports(w):
        out = []
        for c in Render.template(w)["spec"].get("containers") or []:
            out += c.get("ports") or []
        return out

    def resolve_port(self, w, port):
        """A NetworkPolicy/Service port (name or number) -> container port number in w, or None."""
        for p in self.container_ports(w):
            if port == p.get("name") or (isinstance(port, int) and port == p.get("containerPort")):
                return p["containerPort"]
        return None

    def env_of(self, container):
        env = {}
        for ef in container.get("envFrom") or []:
            cm = self.configmaps.get((ef.get("configMapRef") or {}).get("name"))
            if cm:
                env.update({k: str(v) for k, v in (cm.get("data") or {}).items()})
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = str(e["value"])
        return env

    # ---- workloads ---------------------------------------------------------------
    def check_workloads(self):
        for w in self.workloads:
            wid = ident(w)
            labels = self.tlabels(w)
            for key in ("app", "version"):
                if not labels.get(key):
                    self.err(f"{wid}: pod template has no '{key}' label (Kiali needs app and version)")
            spec = self.template(w)["spec"]
            psc = spec.get("securityContext") or {}
            for host in ("hostNetwork", "hostPID", "hostIPC"):
                if spec.get(host):
                    self.err(f"{wid}: {host} is not allowed (restricted)")
            for v in spec.get("volumes") or []:
                if "hostPath" in v:
                    self.err(f"{wid}: hostPath volume {v.get('name')} is not allowed (restricted)")
            sa = spec.get("serviceAccountName")
            if not sa:
                self.err(f"{wid}: no serviceAccountName (one ServiceAccount per service)")
            elif sa not in self.service_accounts:
                self.err(f"{wid}: ServiceAccount {sa} is not rendered")
            uses_cm = False
            for c in self.containers(w):
                cid = f"{wid} container {c.get('name')}"
                self.check_restricted(cid, psc, c.get("securityContext") or {})
                for p in c.get("ports") or []:
                    if not p.get("name"):
                        self.err(f"{cid}: port {p.get('containerPort')} is not named")
                if c in (spec.get("initContainers") or []):
                    continue
                if w["kind"] in JOB_KINDS:
                    # A job runs to completion: no probes, no grace period to drain.
                    self.check_limits(cid, c)
                    continue
                for probe in ("readinessProbe", "livenessProbe"):
                    if not c.get(probe):
                        self.err(f"{cid}: no {probe}")
                if any(p.get("name") == "grpc" for p in c.get("ports") or []):
                    if "grpc" not in (c.get("readinessProbe") or {}):
                        self.err(f"{cid}: serves gRPC but its readinessProbe is not a gRPC health probe")
                    if not c.get("startupProbe"):
                        self.err(f"{cid}: serves gRPC but has no startupProbe")
                    live = (c.get("livenessProbe") or {}).get("grpc")
                    if not live or live.get("service") != "liveness":
                        self.err(f"{cid}: serves gRPC but its livenessProbe is not gRPC health 'liveness'")
                self.check_limits(cid, c)
                for ef in c.get("envFrom") or []:
                    ref = (ef.get("configMapRef") or {}).get("name")
                    if ref:
                        uses_cm = True
                        if ref not in self.configmaps:
                            self.err(f"{cid}: envFrom ConfigMap {ref} is not rendered")
                self.check_grace(cid, spec, c)
            if uses_cm and "checksum/config" not in ((self.template(w).get("metadata") or {}).get("annotations") or {}):
                self.err(f"{wid}: reads a ConfigMap but has no checksum/config annotation (config changes would not roll pods)")

    def check_limits(self, cid, c):
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if not (res.get(kind) or {}).get(r):
                    self.err(f"{cid}: no resources.{kind}.{r}")

    def check_cronjobs(self):
        """Scheduled jobs: one run at a time, bounded in time and retries, history kept
        small; in the mesh a sidecar that stops with the job (a native sidecar) or none."""
        for w in self.workloads:
            if w["kind"] != "CronJob":
                continue
            wid = ident(w)
            spec = w["spec"]
            jspec = spec["jobTemplate"]["spec"]
            if spec.get("concurrencyPolicy") != "Forbid":
                self.err(f"{wid}: concurrencyPolicy is {spec.get('concurrencyPolicy', 'Allow (the default)')}, not Forbid: "
                         f"a slow run and the next would work on the same rows at once")
            if not spec.get("startingDeadlineSeconds"):
                self.err(f"{wid}: no startingDeadlineSeconds (after 100 missed schedules the CronJob stops starting runs)")
            if not jspec.get("activeDeadlineSeconds"):
                self.err(f"{wid}: no activeDeadlineSeconds: a hung run holds the schedule (Forbid) forever")
            if "backoffLimit" not in jspec:
                self.err(f"{wid}: no backoffLimit (the default retries a failing run 6 times)")
            for key in ("successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
                if key not in spec:
                    self.err(f"{wid}: no {key}")
            pod = self.template(w)
            if pod["spec"].get("restartPolicy") not in ("Never", "OnFailure"):
                self.err(f"{wid}: restartPolicy {pod['spec'].get('restartPolicy')} (a Job's pods: Never or OnFailure)")
            if self.has_sidecar(w):
                ann = (pod.get("metadata") or {}).get("annotations") or {}
                if str(ann.get("sidecar.istio.io/nativeSidecar", "")).lower() != "true":
                    self.err(f"{wid}: its pods get a classic Istio sidecar, which keeps running after the job exits, so "
                             f"the Job never completes: make it a native sidecar (sidecar.istio.io/nativeSidecar: \"true\")")
            for svc in self.services.values():
                sel = svc["spec"].get("selector") or {}
                if sel and selects(sel, self.tlabels(w)):
                    self.err(f"Service/{name_of(svc)} selects the pods of {wid}: a job's pod would receive the Service's traffic")

    # The pods the release gate's Prometheus runs as (kube-prometheus-stack).
    PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}

    def check_release_gate(self):
        """The release gate's Job (templates/release-gate-job.yaml): one pod, never
        retried, its own deadline below the Job's, cleaned up; a token bound to a Role
        that may only read and patch VirtualServices (every one it is told to patch
        rendered and named); and every call it makes allowed: the gateway (its load, a
        wired URL, checked with the others), Prometheus's namespace and port, and the
        API server (443/6443)."""
        for w in self.workloads:
            if w["kind"] != "Job":
                continue
            c = (self.template(w)["spec"].get("containers") or [{}])[0]
            env = self.env_of(c)
            if "GATE_MODE" not in env:
                continue
            wid = ident(w)
            spec, pod = w["spec"], self.template(w)["spec"]
            if spec.get("backoffLimit") != 0:
                self.err(f"{wid}: backoffLimit {spec.get('backoffLimit', '6 (the default)')}: a second pod would analyse again from the start")
            deadline = spec.get("activeDeadlineSeconds")
            if not deadline or float(env.get("GATE_DEADLINE", "inf")) >= deadline:
                self.err(f"{wid}: the gate's own deadline ({env.get('GATE_DEADLINE')} s) must end before the Job's "
                         f"activeDeadlineSeconds ({deadline}), or Kubernetes stops it before it rolls back")
            if "ttlSecondsAfterFinished" not in spec:
                self.err(f"{wid}: no ttlSecondsAfterFinished: every analysis run's Job would stay forever")
            if pod.get("restartPolicy") != "Never":
                self.err(f"{wid}: restartPolicy {pod.get('restartPolicy')}, not Never")
            if self.has_sidecar(w) and str(((self.template(w).get("metadata") or {}).get("annotations") or {})
                                           .get("sidecar.istio.io/nativeSidecar", "")).lower() != "true":
                self.err(f"{wid}: a classic sidecar keeps the Job from completing (sidecar.istio.io/nativeSidecar)")
            if pod.get("automountServiceAccountToken") is not True:
                self.err(f"{wid}: mounts no ServiceAccount token, so it cannot patch the VirtualServices")
            sa = pod.get("serviceAccountName")
            roles = {name_of(r): r for r in self.by.get("Role", [])}
            bound = [roles.get(b["roleRef"]["name"]) for b in self.by.get("RoleBinding", [])
                     if b["roleRef"].get("kind") == "Role" and any(
                         s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in b.get("subjects") or [])]
            if not bound or None in bound:
                self.err(f"{wid}: ServiceAccount {sa} is bound to no rendered Role")
            names, scalable = set(), set()
            for role in filter(None, bound):
                for rule in role.get("rules") or []:
                    verbs = set(rule.get("verbs") or [])
                    if rule.get("apiGroups") == ["networking.istio.io"] and rule.get("resources") == ["virtualservices"] \
                            and verbs <= {"get", "list", "patch"}:
                        names |= set(rule.get("resourceNames") or ["*"])
                    elif rule.get("apiGroups") == ["apps"] and rule.get("resources") == ["deployments/scale"] \
                            and verbs <= {"get", "patch"} and rule.get("resourceNames"):
                        scalable |= set(rule["resourceNames"])
                    else:
                        self.err(f"{ident(role)}: the gate may only get/list/patch VirtualServices and get/patch "
                                 f"the scale of named Deployments, not {rule}")
            if env.get("GATE_MODE") == "canary" and env.get("GATE_WORKLOAD") not in scalable:
                self.err(f"{wid}: its Role may not scale the candidate {env.get('GATE_WORKLOAD')} to zero after a failed analysis")
            vs = {name_of(v) for v in self.by.get("VirtualService", [])}
            for n in [x for x in env.get("GATE_VIRTUALSERVICE", "").split(",") if x]:
                if n not in vs:
                    self.err(f"{wid}: GATE_VIRTUALSERVICE names {n}, which is not rendered")
                if "*" not in names and n not in names:
                    self.err(f"{wid}: its Role may not patch VirtualService {n}")
            m = self.URL.match(env.get("GATE_PROMETHEUS_URL", ""))
            if not m:
                self.err(f"{wid}: GATE_PROMETHEUS_URL is not a URL")
            else:
                host, port = m.group(1), int(m.group(2) or 80)
                parts = host.split(".")
                ns = parts[1] if len(parts) > 2 else self.ns
                if self.netpols and not self.np_admits(w, "egress", port, {"kubernetes.io/metadata.name": ns},
                                                       self.PROMETHEUS_POD_LABELS):
                    self.err(f"NetworkPolicy: {wid} -> Prometheus {host}:{port} (GATE_PROMETHEUS_URL) is not allowed")
            if self.netpols and not any(self.np_admits(w, "egress", p, {}, {}) for p in (443, 6443)):
                self.err(f"NetworkPolicy: {wid} -> the Kubernetes API server (443/6443) is not allowed")

    def check_restricted(self, cid, psc, csc):
        def eff(key):
            return csc[key] if key in csc else psc.get(key)
        if eff("runAsNonRoot") is not True:
            self.err(f"{cid}: runAsNonRoot is not true (restricted)")
        if eff("runAsUser") == 0:
            self.err(f"{cid}: runs as uid 0 (restricted)")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            self.err(f"{cid}: seccompProfile is not RuntimeDefault (restricted)")
        if csc.get("allowPrivilegeEscalation") is not False:
            self.err(f"{cid}: allowPrivilegeEscalation is not false (restricted)")
        if csc.get("privileged"):
            self.err(f"{cid}: privileged (restricted)")
        caps = csc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            self.err(f"{cid}: capabilities do not drop ALL (restricted)")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            self.err(f"{cid}: adds capabilities {sorted(extra)} (restricted)")
        if csc.get("readOnlyRootFilesystem") is not True:
            self.err(f"{cid}: root filesystem is not read-only")

    def check_grace(self, cid, spec, c):
        env = {e["name"]: e.get("value") for e in c.get("env") or [] if "value" in e}
        if "SHUTDOWN_TIMEOUT" not in env and "DRAIN_DELAY" not in env:
            return
        need = sum(duration_seconds(env.get(k, "0")) or 0 for k in ("DRAIN_DELAY", "SHUTDOWN_TIMEOUT"))
        pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        need += pre
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if not grace > need:
            self.err(f"{cid}: terminationGracePeriodSeconds {grace} does not exceed preStop {pre}s + "
                     f"DRAIN_DELAY + SHUTDOWN_TIMEOUT = {need:g}s")

    # ---- data stores ------------------------------------------------------------------
    def check_store_data(self):
        """Postgres keeps its data on a PersistentVolumeClaim: PGDATA lies under a mount
        of a volumeClaimTemplate (never an emptyDir, which a rescheduled pod loses); a
        CloudNativePG Cluster states its storage (a PVC per instance)."""
        for w in self.workloads:
            for c in self.containers(w):
                env = {e["name"]: e.get("value") for e in c.get("env") or [] if "value" in e}
                pgdata = env.get("PGDATA")
                if not pgdata:
                    continue
                cid = f"{ident(w)} container {c.get('name')}"
                mounts = sorted((m for m in c.get("volumeMounts") or []
                                 if pgdata == m["mountPath"] or pgdata.startswith(m["mountPath"].rstrip("/") + "/")),
                                key=lambda m: len(m["mountPath"]), reverse=True)
                if not mounts:
                    self.err(f"{cid}: PGDATA {pgdata} is on the container's own filesystem, not a PersistentVolumeClaim")
                    continue
                vol = mounts[0]["name"]
                claims = {(t.get("metadata") or {}).get("name") for t in (w["spec"].get("volumeClaimTemplates") or [])}
                pod_vols = {v["name"]: v for v in self.template(w)["spec"].get("volumes") or []}
                if w["kind"] != "StatefulSet" or vol not in claims or vol in pod_vols:
                    kind = next((k for k in ("emptyDir", "hostPath", "configMap") if k in (pod_vols.get(vol) or {})), "no claim")
                    self.err(f"{cid}: PGDATA {pgdata} is on volume {vol} ({kind}), not a PersistentVolumeClaim "
                             f"(volumeClaimTemplates): the database is lost with the pod")
        for cl in self.by.get("Cluster", []):
            size = ((cl.get("spec") or {}).get("storage") or {}).get("size")
            if not size or not QUANTITY.match(str(size)):
                self.err(f"{ident(cl)}: no spec.storage.size (a PersistentVolumeClaim per instance)")

    def check_cnpg(self):
        """A CloudNativePG Cluster, which validate-manifests does not know: the fields the
        chart sets with their types, a pinned image, a bootstrap SQL ConfigMap that is
        rendered, and every service reaching it as a managed role whose password Secret
        is the one its DATABASE_URL reads."""
        for cl in self.by.get("Cluster", []):
            cid = ident(cl)
            if cl.get("apiVersion") != "postgresql.cnpg.io/v1":
                continue  # another operator's Cluster: not ours to judge
            for e in shape_errors(cl, CNPG_CLUSTER_SHAPE, cid):
                self.err(e)
            spec = cl.get("spec") or {}
            for path in CNPG_REQUIRED:
                v = cl
                for k in path:
                    v = v.get(k) if isinstance(v, dict) else None
                if v in (None, ""):
                    self.err(f"{cid}: {'.'.join(path)} is required")
            if isinstance(spec.get("instances"), int) and spec["instances"] < 1:
                self.err(f"{cid}: spec.instances {spec['instances']} (at least 1)")
            image = str(spec.get("imageName", ""))
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if image and "@sha256:" not in image and (not tag or tag == "latest"):
                self.err(f"{cid}: imageName {image} is not pinned to a version")
            refs = (((spec.get("bootstrap") or {}).get("initdb") or {}).get("postInitApplicationSQLRefs") or {}).get("configMapRefs") or []
            for ref in refs if isinstance(refs, list) else []:
                cm = self.configmaps.get(ref.get("name"))
                if cm is None or ref.get("key") not in (cm.get("data") or {}):
                    self.err(f"{cid}: bootstrap SQL ConfigMap {ref.get('name')} key {ref.get('key')} is not rendered")
            roles = {r.get("name"): r for r in ((spec.get("managed") or {}).get("roles") or []) if isinstance(r, dict)}
            for w in self.workloads:
                for c in self.template(w)["spec"].get("containers") or []:
                    url = self.env_of(c).get("DATABASE_URL", "")
                    m = re.match(r"^postgres(?:ql)?://([^:@/]+):\$\(([A-Za-z_][A-Za-z0-9_]*)\)@([^:/?]+)", url)
                    if not m or not m.group(3).startswith(f"{name_of(cl)}-"):
                        continue
                    role, var = m.group(1), m.group(2)
                    ref = next(((e.get("valueFrom") or {}).get("secretKeyRef") for e in c.get("env") or [] if e["name"] == var), None)
                    r = roles.get(role)
                    if r is None or r.get("ensure", "present") != "present" or not r.get("login"):
                        self.err(f"{ident(w)}: DATABASE_URL logs in as {role}, which {cid} does not manage as a login role")
                    elif not ref or ref.get("name") != (r.get("passwordSecret") or {}).get("name") or ref.get("key") != "password":
                        self.err(f"{ident(w)}: DATABASE_PASSWORD is not the `password` of Secret "
                                 f"{(r.get('passwordSecret') or {}).get('name')}, which {cid} sets on role {role}")

    # ---- services and network policies --------------------------------------------
    def ingress_allows(self, w, port_number):
        """Some NetworkPolicy selecting w admits traffic from somewhere on port_number."""
        labels = self.tlabels(w)
        for np in self.netpols:
            spec = np["spec"]
            if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
                continue
            if not selects(spec.get("podSelector") or {}, labels) and spec.get("podSelector"):
                continue
            for rule in spec.get("ingress") or []:
                ports = rule.get("ports")
                if not ports:
                    return True
                for p in ports:
                    if self.resolve_port(w, p.get("port")) == port_number:
                        return True
        return False

    def check_services(self):
        for name, svc in self.services.items():
            sid = f"Service/{name}"
            tpls = self.templates_of_service(svc)
            if not tpls:
                self.err(f"{sid}: selector selects no rendered pod template")
            for p in svc["spec"].get("ports") or []:
                pname = p.get("name")
                if not pname:
                    self.err(f"{sid}: port {p.get('port')} is not named")
                if not p.get("appProtocol"):
                    self.err(f"{sid}: port {pname or p.get('port')} has no appProtocol")
                target = p.get("targetPort", p.get("port"))
                for w in tpls:
                    number = self.resolve_port(w, target)
                    if number is None:
                        self.err(f"{sid}: targetPort {target} is not a container port of {ident(w)}")
                    elif not self.ingress_allows(w, number):
                        self.err(f"{sid}: no NetworkPolicy allows anyone into {ident(w)} on port {pname or number}")

    def check_netpols(self):
        for np in self.netpols:
            spec = np["spec"]
            sel = spec.get("podSelector") or {}
            if sel and not any(selects(sel, self.tlabels(w)) for w in self.pod_templates()):
                self.err(f"{ident(np)}: podSelector selects no rendered pod template")
            for direction, peers_key in (("ingress", "from"), ("egress", "to")):
                for rule in spec.get(direction) or []:
                    for peer in rule.get(peers_key) or []:
                        ps = peer.get("podSelector")
                        if ps and "namespaceSelector" not in peer and "ipBlock" not in peer:
                            if not any(selects(ps, self.tlabels(w)) for w in self.pod_templates()):
                                self.err(f"{ident(np)}: {direction} peer {ps.get('matchLabels', ps)} selects no rendered pod template")

    def np_allows(self, src, dst, port_number):
        """Both ends' NetworkPolicies allow src pods -> dst pods on port_number."""
        def allowed(direction, owner, peer, peer_key, port_owner):
            policies = [np for np in self.netpols
                        if direction.capitalize() in (np["spec"].get("policyTypes") or [])
                        and selects(np["spec"].get("podSelector") or {}, self.tlabels(owner))]
            if not policies:
                return True  # not isolated in this direction
            for np in policies:
                for rule in np["spec"].get(direction) or []:
                    peers = rule.get(peer_key)
                    if peers and not any(
                        "podSelector" in p and "namespaceSelector" not in p and selects(p["podSelector"], self.tlabels(peer))
                        for p in peers
                    ):
                        continue
                    ports = rule.get("ports")
                    if not ports or any(self.resolve_port(port_owner, p.get("port")) == port_number
                                        or p.get("port") == port_number for p in ports):
                        return True
            return False
        return allowed("egress", src, dst, "to", dst) and allowed("ingress", dst, src, "from", dst)

    # ---- wiring (who calls whom) ----------------------------------------------------
    URL = re.compile(r"^(?:https?|wss?|grpc|postgres(?:ql)?|redis)://(?:[^@/]*@)?([^:/?]+)(?::(\d+))?")

    def edges(self):
        """(caller workload, callee Service, port number, env var) for every wired URL."""
        out = []
        for w in self.workloads:
            for c in self.template(w)["spec"].get("containers") or []:
                for key, val in sorted(self.env_of(c).items()):
                    m = self.URL.match(val)
                    if not m:
                        continue
                    svc = self.service_for_host(m.group(1))
                    if svc is None:
                        if m.group(1).endswith(f".{self.ns}.svc.{CLUSTER_DOMAIN}"):
                            self.err(f"{ident(w)}: {key} points at {m.group(1)}, which is not a rendered Service")
                        continue
                    port = int(m.group(2) or 80)
                    sport = next((p for p in svc["spec"]["ports"] if p["port"] == port), None)
                    if sport is None:
                        self.err(f"{ident(w)}: {key} uses port {port}, which Service/{name_of(svc)} does not publish")
                        continue
                    out.append((w, svc, sport, key))
        return out

    def check_wiring(self, aps):
        for w, svc, sport, key in self.edges():
            for dst in self.templates_of_service(svc):
                number = self.resolve_port(dst, sport.get("targetPort", sport["port"]))
                if number is None:
                    continue
                if self.netpols and not self.np_allows(w, dst, number):
                    self.err(f"NetworkPolicy: {ident(w)} -> {ident(dst)}:{number} ({key}) is wired but not allowed")
                if self.has_sidecar(dst) and self.in_mesh() and not self.has_sidecar(w):
                    self.err(f"mesh: {ident(w)} has no sidecar but calls {ident(dst)}:{number} ({key}), whose sidecar "
                             f"admits only mTLS (STRICT): the call is refused")
                if aps is not None and self.has_sidecar(dst) and not self.ap_allows(aps, w, dst, number):
                    self.err(f"AuthorizationPolicy: {ident(w)} -> {ident(dst)}:{number} ({key}) is wired but not allowed by any AuthorizationPolicy")

    # ---- Redis ACL ------------------------------------------------------------------
    # What each service may touch in Redis, under its REDIS_PREFIX: keys and channels.
    REDIS_SCOPE = {"gateway": ({"rl:*"}, set()), "market-data": ({"md:*"}, {"md:ch:*"})}
    # Never granted to a service's user: whole-keyspace, admin and destructive commands.
    REDIS_FORBIDDEN = {"+@all", "allcommands", "+@dangerous", "+@admin", "+@keyspace", "allkeys", "allchannels",
                       "nopass", "+flushall", "+flushdb", "+config", "+keys", "+debug", "+acl", "+shutdown",
                       "+module", "+monitor", "+replicaof", "+slaveof", "+swapdb", "+migrate", "+restore",
                       "+sync", "+psync", "+save", "+bgsave", "+bgrewriteaof", "+script", "+script|flush",
                       "+script|kill", "+function", "+failover", "+cluster", "+client", "+client|kill", "+scan"}
    CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://([^:@/]*):([^@/]*)@")

    @staticmethod
    def redis_options(container):
        """A redis-server container's command line as {option: [values...]} (lists of lists for repeated options)."""
        opts = {}
        cur = None
        for a in list(container.get("command") or [])[1:] + list(container.get("args") or []):
            a = str(a)
            if a.startswith("--"):
                cur = []
                opts.setdefault(a[2:], []).append(cur)
            elif cur is not None:
                cur.append(a)
        return opts

    def check_credentials(self):
        """No URL anywhere carries a password in plain text: only $(VAR) from a Secret."""
        for w in self.workloads:
            for c in self.containers(w):
                for key, val in sorted(self.env_of(c).items()):
                    m = self.CREDENTIALS.match(val)
                    if m and m.group(2) and not re.fullmatch(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", m.group(2)):
                        self.err(f"{ident(w)} container {c.get('name')}: {key} has a password in plain text")

    def check_reflection(self, allowed=False):
        """gRPC server reflection describes every method to whoever reaches the port:
        off (GRPC_REFLECTION=false; the binaries default to on) unless allowed."""
        if allowed:
            return
        for w in self.workloads:
            for c in self.containers(w):
                env = self.env_of(c)
                if "GRPC_ADDR" in env and env.get("GRPC_REFLECTION", "true").lower() != "false":
                    self.err(f"{ident(w)} container {c.get('name')}: gRPC reflection is on (GRPC_REFLECTION={env.get('GRPC_REFLECTION', 'unset')})")

    def check_redis(self):
        redis = [(w, c) for w in self.workloads for c in self.template(w)["spec"].get("containers") or []
                 if "redis-server" in " ".join(map(str, c.get("command") or [])) or "/redis:" in f"/{c.get('image', '')}"]
        for w, c in redis:
            cid = f"{ident(w)} container {c.get('name')}"
            opts = self.redis_options(c)
            if [v for v in opts.get("protected-mode", [["yes"]])][-1] != ["yes"]:
                self.err(f"{cid}: Redis protected mode is not on")
            refs = {e["name"]: (e.get("valueFrom") or {}).get("secretKeyRef") for e in c.get("env") or []}
            users = {}
            for rule in opts.get("user", []):
                if rule:
                    users[rule[0]] = rule[1:]
            if not users:
                self.err(f"{cid}: Redis has no ACL users (--user): every client is the default user, with every key")
                continue
            default = users.get("default")
            if default is None:
                self.err(f"{cid}: the Redis default user is not configured (it would have no password and every command)")
            elif ([r for r in default if r in ("on", "off")] or ["off"])[-1] == "on":
                granted = [r for r in default if r.startswith(("+", "~", "%", "&")) or r in ("allkeys", "allchannels", "allcommands", "nopass")]
                if "nopass" in default or not any(r.startswith((">", "#")) for r in default):
                    self.err(f"{cid}: the Redis default user is on without a password")
                if set(granted) - {"+ping"}:
                    self.err(f"{cid}: the Redis default user may do more than PING: {sorted(set(granted) - {'+ping'})}")
                probe = " ".join(map(str, ((c.get("readinessProbe") or {}).get("exec") or {}).get("command") or []))
                if "redis-cli" in probe and "REDISCLI_AUTH" not in {e["name"] for e in c.get("env") or []}:
                    self.err(f"{cid}: the probes run redis-cli without REDISCLI_AUTH, but the default user needs a password")
            self.redis_users = getattr(self, "redis_users", {})
            for name, rules in users.items():
                if name == "default":
                    continue
                uid = f"{cid}: Redis user {name}"
                for r in rules:
                    if r in self.REDIS_FORBIDDEN or r in ("~*", "&*", "%R~*", "%W~*", "%RW~*"):
                        self.err(f"{uid} is granted {r}")
                if "on" not in rules:
                    self.err(f"{uid} is not on")
                pw = [r[1:] for r in rules if r.startswith(">")]
                m = re.fullmatch(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", pw[0]) if len(pw) == 1 else None
                if not m or not refs.get(m.group(1)):
                    self.err(f"{uid} needs exactly one password, >$(VAR) with VAR from a Secret (got {len(pw)})")
                    secret = None
                else:
                    secret = (refs[m.group(1)]["name"], refs[m.group(1)]["key"])
                plus = [i for i, r in enumerate(rules) if r.startswith("+")]
                if "-@all" not in rules or (plus and rules.index("-@all") > plus[0]):
                    self.err(f"{uid}: commands are not an allow-list (-@all before any +)")
                if "+@connection" in rules and ("-@dangerous" not in rules or rules.index("-@dangerous") < rules.index("+@connection")):
                    self.err(f"{uid}: +@connection without a later -@dangerous grants CLIENT KILL and the like")
                keys = [re.sub(r"^%[RW]*~", "~", r)[1:] for r in rules if r.startswith(("~", "%"))]
                channels = [r[1:] for r in rules if r.startswith("&")]
                self.redis_users[name] = {"secret": secret, "keys": keys, "channels": channels, "where": cid}
        self.redis_workloads = {name_of(w) for w, _ in redis}

    def check_redis_clients(self):
        """Each service reaches the bundled Redis as its own ACL user, with its password
        from a Secret, and that user reaches only its own keys (under REDIS_PREFIX)."""
        users = getattr(self, "redis_users", None)
        if users is None:
            return
        for w in self.workloads:
            for c in self.template(w)["spec"].get("containers") or []:
                env = self.env_of(c)
                url = env.get("REDIS_URL")
                if not url:
                    continue
                m = self.URL.match(url)
                svc = self.service_for_host(m.group(1)) if m else None
                if svc is None or not any(name_of(t) in self.redis_workloads for t in self.templates_of_service(svc)):
                    continue
                wid = f"{ident(w)}"
                cred = re.match(r"^redis://([^:@/]+):\$\(([A-Za-z_][A-Za-z0-9_]*)\)@", url)
                if not cred:
                    self.err(f"{wid}: REDIS_URL does not name an ACL user with a $(VAR) password: {url}")
                    continue
                user, var = cred.groups()
                ref = next(((e.get("valueFrom") or {}).get("secretKeyRef") for e in c.get("env") or [] if e["name"] == var), None)
                if user not in users:
                    self.err(f"{wid}: REDIS_URL user {user} is not a Redis ACL user")
                    continue
                acl = users[user]
                if not ref or (ref["name"], ref["key"]) != acl["secret"]:
                    self.err(f"{wid}: REDIS_URL password ${var} is not the Secret key Redis gives user {user} ({acl['secret']})")
                prefix = env.get("REDIS_PREFIX", "")
                for kind, pats in (("keys", acl["keys"]), ("channels", acl["channels"])):
                    for pat in pats:
                        if not pat.startswith(prefix):
                            self.err(f"{acl['where']}: Redis user {user} may reach {kind} {pat} outside its REDIS_PREFIX {prefix!r}")
                app = self.tlabels(w).get("app")
                if app in self.REDIS_SCOPE:
                    want_keys, want_channels = self.REDIS_SCOPE[app]
                    got_keys = {p[len(prefix):] if p.startswith(prefix) else p for p in acl["keys"]}
                    got_channels = {p[len(prefix):] if p.startswith(prefix) else p for p in acl["channels"]}
                    if got_keys != want_keys:
                        self.err(f"{acl['where']}: Redis user {user} ({app}) may reach keys {sorted(got_keys)}, "
                                 f"expected only {sorted(want_keys)}")
                    if got_channels != want_channels:
                        self.err(f"{acl['where']}: Redis user {user} ({app}) may reach channels {sorted(got_channels)}, "
                                 f"expected only {sorted(want_channels)}")

    # ---- monitoring ------------------------------------------------------------------
    @staticmethod
    def peer_admits(peer, ns_labels, pod_labels):
        """A NetworkPolicy peer admits pods with pod_labels in a namespace with ns_labels
        (another namespace than the policy's: a bare podSelector never does)."""
        if "ipBlock" in peer:
            return peer["ipBlock"].get("cidr") == "0.0.0.0/0"
        if "namespaceSelector" not in peer:
            return False
        if not selects(peer["namespaceSelector"] or {}, ns_labels) and (peer["namespaceSelector"] or {}):
            return False
        ps = peer.get("podSelector")
        return not ps or selects(ps, pod_labels)

    def np_admits(self, w, direction, port, ns_labels, pod_labels):
        """The NetworkPolicies selecting w let it talk to (egress) or be reached by
        (ingress) pods with pod_labels in a namespace with ns_labels on port (a
        number, or a name of one of w's container ports)."""
        policies = [np for np in self.netpols
                    if direction.capitalize() in (np["spec"].get("policyTypes") or [])
                    and selects(np["spec"].get("podSelector") or {}, self.tlabels(w))]
        if not policies:
            return True
        key = "from" if direction == "ingress" else "to"
        number = self.resolve_port(w, port) if direction == "ingress" else port
        for np in policies:
            for rule in np["spec"].get(direction) or []:
                peers = rule.get(key)
                if peers and not any(self.peer_admits(p, ns_labels, pod_labels) for p in peers):
                    continue
                ports = rule.get("ports")
                if not ports:
                    return True
                for p in ports:
                    if p.get("port") == port or (number is not None and (
                            p.get("port") == number or (direction == "ingress" and self.resolve_port(w, p.get("port")) == number))):
                        return True
        return False

    @staticmethod
    def excluded_ports(w):
        ann = (Render.template(w).get("metadata") or {}).get("annotations") or {}
        return {x.strip() for x in str(ann.get("traffic.sidecar.istio.io/excludeInboundPorts", "")).split(",") if x.strip()}

    def check_monitoring(self):
        istio = bool(self.by.get("AuthorizationPolicy") or self.by.get("VirtualService"))
        monitors = self.by.get("PodMonitor", [])
        scraped = set()
        for pm in monitors:
            pid = ident(pm)
            sel = (pm["spec"].get("selector") or {})
            tpls = [w for w in self.workloads if selects(sel, self.tlabels(w))]
            if not tpls:
                self.err(f"{pid}: selector selects no rendered pod template")
            for ep in pm["spec"].get("podMetricsEndpoints") or []:
                port = ep.get("port")
                for w in tpls:
                    number = self.resolve_port(w, port)
                    if number is None:
                        self.err(f"{pid}: {ident(w)} has no container port {port}")
                        continue
                    scraped.add((ident(w), number))
                    if self.netpols and not self.np_admits(w, "ingress", port, *PROMETHEUS_PEER):
                        self.err(f"{pid}: no NetworkPolicy lets Prometheus scrape {ident(w)} on port {port} (Prometheus cannot scrape it)")
                    if istio and str(number) not in self.excluded_ports(w):
                        self.err(f"{pid}: {ident(w)} port {port} ({number}) is intercepted by the sidecar "
                                 f"(STRICT mTLS refuses Prometheus): add it to traffic.sidecar.istio.io/excludeInboundPorts")
        if monitors:
            for w in self.workloads:
                for c in self.template(w)["spec"].get("containers") or []:
                    for p in c.get("ports") or []:
                        if p.get("name") == "http-metrics" and (ident(w), p["containerPort"]) not in scraped:
                            self.err(f"{ident(w)} container {c.get('name')}: port http-metrics is not scraped by any PodMonitor")
        for w in self.workloads:
            for c in self.containers(w):
                image = str(c.get("image", ""))
                tag = image.rsplit("/", 1)[-1].partition(":")[2]
                if "@sha256:" not in image and (not tag or tag == "latest"):
                    self.err(f"{ident(w)} container {c.get('name')}: image {image} is not pinned to a version")
                ep = self.env_of(c).get("OTEL_EXPORTER_OTLP_ENDPOINT")
                if not ep or not self.netpols:
                    continue
                m = re.match(r"^https?://([^:/]+):(\d+)", ep)
                if not m:
                    self.err(f"{ident(w)} container {c.get('name')}: OTEL_EXPORTER_OTLP_ENDPOINT {ep} has no host:port")
                    continue
                host, port = m.group(1), int(m.group(2))
                parts = host.split(".")
                ns = parts[1] if len(parts) > 2 and parts[2] == "svc" else self.ns
                if not self.np_admits(w, "egress", port, {"kubernetes.io/metadata.name": ns}, COLLECTOR_POD_LABELS):
                    self.err(f"{ident(w)} container {c.get('name')}: NetworkPolicy egress does not allow {ns}:{port}, "
                             f"so it cannot reach the trace collector {host}")

    def expect_store_exporters(self):
        """The bundled Postgres and Redis each run an exporter that a PodMonitor scrapes."""
        for app in ("postgresql", "redis"):
            ws = [w for w in self.workloads if self.tlabels(w).get("app") == app]
            if not ws:
                self.err(f"store exporters: no {app} workload rendered")
            for w in ws:
                has = [c for c in self.template(w)["spec"].get("containers") or []
                       if any(p.get("name") == "http-metrics" for p in c.get("ports") or [])]
                if not has:
                    self.err(f"store exporters: {ident(w)} has no metrics exporter (no container port http-metrics)")
                    continue
                if not any(selects(pm["spec"].get("selector") or {}, self.tlabels(w))
                           and any(ep.get("port") == "http-metrics" for ep in pm["spec"].get("podMetricsEndpoints") or [])
                           for pm in self.by.get("PodMonitor", [])):
                    self.err(f"store exporters: {ident(w)}: its exporter is not scraped by any PodMonitor")

    # ---- istio -------------------------------------------------------------------
    def check_istio(self):
        drs = {}
        for dr in self.by.get("DestinationRule", []):
            host = dr["spec"]["host"]
            svc = self.service_for_host(host)
            if svc is None:
                self.err(f"{ident(dr)}: host {host} is not a rendered Service")
                continue
            if name_of(svc) in drs:
                self.err(f"{ident(dr)}: a second DestinationRule for {host}")
            drs[name_of(svc)] = dr
            tpls = self.templates_of_service(svc)
            names = [s["name"] for s in dr["spec"].get("subsets") or []]
            if len(names) != len(set(names)):
                self.err(f"{ident(dr)}: duplicate subset names {names}")
            picked = {}
            for s in dr["spec"].get("subsets") or []:
                hit = [w for w in tpls if selects(s.get("labels") or {}, self.tlabels(w))]
                if not hit:
                    self.err(f"{ident(dr)}: subset {s['name']} labels {s.get('labels')} select no pod template of Service/{name_of(svc)}")
                for w in hit:
                    if ident(w) in picked:
                        self.err(f"{ident(dr)}: subsets {picked[ident(w)]} and {s['name']} both select {ident(w)}")
                    picked[ident(w)] = s["name"]
        self.drs = drs
        gateways = {f"{(g['metadata'].get('namespace') or self.ns)}/{name_of(g)}"
                    for g in self.by.get("Gateway", []) + [m for m in self.mesh if m["kind"] == "Gateway"]}
        mesh_hosts = {}
        for vs in self.by.get("VirtualService", []):
            vid = ident(vs)
            gws = vs["spec"].get("gateways") or ["mesh"]
            for g in gws:
                if g == "mesh":
                    continue
                full = g if "/" in g else f"{self.ns}/{g}"
                if self.mesh or self.by.get("Gateway"):
                    if full not in gateways:
                        self.err(f"{vid}: gateway {g} is not defined (istio/mesh or the chart)")
            if "mesh" in gws:
                for h in vs["spec"].get("hosts") or []:
                    if h == "*" or h.startswith("*"):
                        self.err(f"{vid}: wildcard host {h} bound to the mesh would capture all traffic")
                    if h in mesh_hosts:
                        self.err(f"{vid}: host {h} is also routed by {mesh_hosts[h]}")
                    mesh_hosts[h] = vid
            for i, route in enumerate(vs["spec"].get("http") or []):
                rid = f"{vid} route {route.get('name', i)}"
                dests = route.get("route") or []
                if route.get("directResponse") or route.get("redirect"):
                    continue
                if not dests:
                    self.err(f"{rid}: no destinations")
                weights = [d.get("weight") for d in dests]
                if len(dests) > 1:
                    if any(x is None for x in weights):
                        self.err(f"{rid}: several destinations but not all weighted")
                    elif sum(weights) != 100:
                        self.err(f"{rid}: weights {weights} sum to {sum(weights)}, not 100")
                elif len(dests) == 1 and weights[0] not in (None, 100):
                    self.err(f"{rid}: single destination with weight {weights[0]}")
                for d in dests:
                    self.check_destination(rid, d["destination"])
                self.check_retries(rid, route)

    # ---- the edge ------------------------------------------------------------------
    # Routing headers that pin unreleased builds; whatever a mesh route matches on is one too.
    ROUTING_HEADERS = {"x-canary", "x-preview"}

    def check_edge(self, allow_served_by=False):
        """The public entry: HTTPS with port 80 redirecting; routing headers from the
        internet neither select a route nor travel into the mesh; x-served-by (pod
        names and versions) does not leave it unless allowed."""
        for g in self.by.get("Gateway", []) + [m for m in self.mesh if m["kind"] == "Gateway"]:
            gid = ident(g)
            servers = g["spec"].get("servers") or []
            for srv in servers:
                proto = (srv.get("port") or {}).get("protocol", "").upper()
                if proto in ("HTTP", "HTTP2") and not (srv.get("tls") or {}).get("httpsRedirect"):
                    self.err(f"{gid}: port {srv['port'].get('number')} serves plain HTTP without httpsRedirect")
            if not any((s_.get("port") or {}).get("protocol", "").upper() == "HTTPS"
                       and (s_.get("tls") or {}).get("credentialName") for s_ in servers):
                self.err(f"{gid}: no HTTPS server with a certificate (tls.credentialName)")
        routing = set(self.ROUTING_HEADERS)
        edge = []
        for vs in self.by.get("VirtualService", []):
            gws = vs["spec"].get("gateways") or ["mesh"]
            if any(g != "mesh" for g in gws):
                edge.append(vs)
            else:
                for r in vs["spec"].get("http") or []:
                    for m in r.get("match") or []:
                        routing |= set((m.get("headers") or {}).keys())
        for vs in edge:
            for i, r in enumerate(vs["spec"].get("http") or []):
                rid = f"{ident(vs)} route {r.get('name', i)}"
                if r.get("directResponse"):
                    continue  # answered by the ingress itself: nothing reaches the mesh
                for m in r.get("match") or []:
                    hit = sorted(set((m.get("headers") or {}).keys()) & routing)
                    if hit:
                        self.err(f"{rid}: the ingress route matches routing header {', '.join(hit)}, which anyone on the internet can send")
                hdrs = r.get("headers") or {}
                removed = set((hdrs.get("request") or {}).get("remove") or [])
                missing = sorted(routing - removed)
                if missing:
                    self.err(f"{rid}: does not remove routing header(s) {', '.join(missing)} from internet requests")
                if not allow_served_by and "x-served-by" not in ((hdrs.get("response") or {}).get("remove") or []):
                    self.err(f"{rid}: x-served-by (pod names and versions) reaches the internet")

    # Retry conditions under which the request may already have been processed.
    UNSAFE_RETRY = {"unavailable", "5xx", "gateway-error", "reset", "retriable-status-codes",
                    "internal", "deadline-exceeded", "cancelled", "resource-exhausted", "unknown"}
    # Services every RPC of which is idempotent (by key) or a read.
    RETRY_SAFE_APPS = {"inventory", "market-data"}

    def check_retries(self, rid, route):
        """Retrying after the request may have reached the service is only safe
        where every call is idempotent: elsewhere a retry can act twice."""
        on = {c.strip() for c in ((route.get("retries") or {}).get("retryOn") or "").split(",") if c.strip()}
        unsafe = sorted(on & self.UNSAFE_RETRY)
        if not unsafe:
            return
        for d in route.get("route") or []:
            svc = self.service_for_host(d["destination"]["host"])
            apps = {self.tlabels(w).get("app") for w in self.templates_of_service(svc)} if svc else set()
            for app in sorted(a for a in apps if a not in self.RETRY_SAFE_APPS):
                self.err(f"{rid}: retries on {','.join(unsafe)} to {app}, whose calls are not all idempotent")

    def check_destination(self, rid, dest):
        svc = self.service_for_host(dest["host"])
        if svc is None:
            self.err(f"{rid}: destination host {dest['host']} is not a rendered Service")
            return
        port = (dest.get("port") or {}).get("number")
        if port is not None and port not in [p["port"] for p in svc["spec"]["ports"]]:
            self.err(f"{rid}: destination port {port} is not a port of Service/{name_of(svc)}")
        subset = dest.get("subset")
        if subset:
            dr = self.drs.get(name_of(svc))
            sub = next((s for s in (dr["spec"].get("subsets") or []) if s["name"] == subset), None) if dr else None
            if sub is None:
                self.err(f"{rid}: subset {subset} of {dest['host']} is in no DestinationRule")
            elif not self.subset_templates(svc, subset):
                self.err(f"{rid}: subset {subset} selects no pod template")

    def subset_templates(self, svc, subset):
        dr = self.drs.get(name_of(svc))
        if not dr:
            return []
        sub = next((s for s in dr["spec"].get("subsets") or [] if s["name"] == subset), None)
        if not sub:
            return []
        return [w for w in self.templates_of_service(svc) if selects(sub.get("labels") or {}, self.tlabels(w))]

    def dest_templates(self, dest):
        svc = self.service_for_host(dest["host"])
        if svc is None:
            return []
        if dest.get("subset"):
            return self.subset_templates(svc, dest["subset"])
        return self.templates_of_service(svc)

    def mesh_vs_for(self, app):
        for vs in self.by.get("VirtualService", []):
            if "mesh" not in (vs["spec"].get("gateways") or ["mesh"]):
                continue
            for h in vs["spec"].get("hosts") or []:
                svc = self.service_for_host(h)
                if svc and any(self.tlabels(w).get("app") == app for w in self.templates_of_service(svc)):
                    return vs
        return None

    # ---- mesh policies -------------------------------------------------------------
    def principal(self, w):
        return f"{CLUSTER_DOMAIN}/ns/{self.ns}/sa/{self.template(w)['spec'].get('serviceAccountName', 'default')}"

    def check_mesh(self):
        pas = [m for m in self.mesh if m["kind"] == "PeerAuthentication"]
        if not any((m["spec"].get("mtls") or {}).get("mode") == "STRICT" and not m["spec"].get("selector")
                   and m["metadata"].get("namespace") in ("istio-system", self.ns) for m in pas):
            self.err("mesh: no namespace- or mesh-wide PeerAuthentication with mTLS STRICT")
        # The release's own policies (the chart renders them) and any left in istio/.
        aps = [m for m in self.by.get("AuthorizationPolicy", []) + [m for m in self.mesh if m["kind"] == "AuthorizationPolicy"]
               if m["metadata"].get("namespace", self.ns) == self.ns]
        if not any(not m.get("spec") for m in aps):
            self.err(f"mesh: no default-deny (empty) AuthorizationPolicy in namespace {self.ns}")
        for ap in aps:
            spec = ap.get("spec") or {}
            sel = (spec.get("selector") or {}).get("matchLabels")
            if sel and not any(selects(sel, self.tlabels(w)) for w in self.workloads):
                self.err(f"{ident(ap)}: selector {sel} selects no rendered workload")
            for rule in spec.get("rules") or []:
                sources = [f.get("source") or {} for f in rule.get("from") or []]
                if not sources:
                    self.err(f"{ident(ap)}: a rule without `from` allows every caller")
                for src in sources:
                    for p in src.get("principals") or []:
                        self.check_principal(ap, p)
                    for n in src.get("namespaces") or []:
                        if n != self.ns:
                            self.err(f"{ident(ap)}: a rule names namespace {n}, not the release's namespace {self.ns}")
                    if src.get("namespaces") and not src.get("principals"):
                        paths = [x for t in rule.get("to") or [] for x in (t.get("operation") or {}).get("paths") or []]
                        if not paths or not all(x.startswith(HEALTH_PATH_PREFIXES) for x in paths):
                            self.err(f"{ident(ap)}: a namespace-wide rule must be limited to health/reflection paths")
        for w in self.workloads:
            if w["kind"] in JOB_KINDS:
                continue  # nothing calls a job: the namespace's default deny is all it needs
            if not any(((ap.get("spec") or {}).get("selector") or {}).get("matchLabels")
                       and selects(ap["spec"]["selector"]["matchLabels"], self.tlabels(w)) for ap in aps):
                self.err(f"mesh: no ALLOW policy selects {ident(w)}; with default deny nothing can reach it")
        return aps

    def check_principal(self, ap, p):
        """A principal names a ServiceAccount of this release in its namespace (or the
        ingress gateway's), so a release elsewhere or under another name is covered."""
        if p == "*":
            self.err(f"{ident(ap)}: principal * allows every caller")
            return
        if p in self.external_principals:
            return
        m = re.fullmatch(r"([^/]+)/ns/([^/]+)/sa/([^/]+)", p)
        if not m:
            self.err(f"{ident(ap)}: principal {p} is not <trust domain>/ns/<namespace>/sa/<account>")
        elif m.group(1) != CLUSTER_DOMAIN:
            self.err(f"{ident(ap)}: principal {p} is not in trust domain {CLUSTER_DOMAIN}")
        elif m.group(2) != self.ns:
            self.err(f"{ident(ap)}: principal {p} names namespace {m.group(2)}, not the release's namespace {self.ns}")
        elif m.group(3) not in self.service_accounts:
            self.err(f"{ident(ap)}: principal {p} is not a rendered ServiceAccount")
        elif self.release and not m.group(3).startswith(f"{self.release}-"):
            self.err(f"{ident(ap)}: principal {p} does not name a ServiceAccount of release {self.release}")

    def ap_allows(self, aps, src, dst, port_number):
        who = self.principal(src)
        for ap in aps:
            spec = ap.get("spec") or {}
            sel = (spec.get("selector") or {}).get("matchLabels")
            if not sel or not selects(sel, self.tlabels(dst)) or spec.get("action", "ALLOW") != "ALLOW":
                continue
            for rule in spec.get("rules") or []:
                if not any(who in ((f.get("source") or {}).get("principals") or []) for f in rule.get("from") or []):
                    continue
                ports = [str(x) for t in rule.get("to") or [] for x in (t.get("operation") or {}).get("ports") or []]
                if not ports or str(port_number) in ports:
                    return True
        return False

    # ---- kubelet probes, sidecar drain, images, replicas, faults, edge health -------
    SIDECAR_AGENT_PORTS = (15020, 15021)

    def in_mesh(self):
        return bool(self.by.get("VirtualService") or self.by.get("AuthorizationPolicy"))

    def np_admits_node(self, w, port):
        """The NetworkPolicies selecting w admit the node (the kubelet) on port: a rule
        with no `from` (any source) or with an ipBlock peer (node addresses)."""
        policies = [np for np in self.netpols
                    if "Ingress" in (np["spec"].get("policyTypes") or ["Ingress"])
                    and selects(np["spec"].get("podSelector") or {}, self.tlabels(w))]
        if not policies:
            return True
        for np in policies:
            for rule in np["spec"].get("ingress") or []:
                peers = rule.get("from")
                if peers and not any("ipBlock" in x for x in peers):
                    continue
                ports = rule.get("ports")
                if not ports or any(x.get("port") == port for x in ports):
                    return True
        return False

    def check_probes_in_mesh(self):
        """Istio rewrites the kubelet's HTTP/TCP/gRPC probes to the sidecar agent
        (15020) and adds the sidecar's readiness probe (15021): under default deny
        both must be open to the node, or no pod ever becomes ready."""
        if not self.in_mesh() or not self.netpols:
            return
        for w in self.workloads:
            for port in self.SIDECAR_AGENT_PORTS:
                if not self.np_admits_node(w, port):
                    self.err(f"{ident(w)}: no NetworkPolicy admits the kubelet on {port} (the sidecar agent's "
                             f"{'rewritten probes' if port == 15020 else 'readiness'}): the pods never become ready under default deny")

    def check_sidecar_drain(self):
        """The sidecar must outlive the application's shutdown: Envoy's default drain
        (5 s) would cut clients off while the application is still finishing."""
        if not self.in_mesh():
            return
        import json
        for w in self.workloads:
            if w["kind"] in JOB_KINDS:
                continue  # a job serves nothing: its sidecar stops when it exits (native sidecar)
            spec = self.template(w)["spec"]
            grace = spec.get("terminationGracePeriodSeconds", 30)
            ann = (self.template(w).get("metadata") or {}).get("annotations") or {}
            try:
                cfg = json.loads(ann.get("proxy.istio.io/config") or "{}")
            except ValueError:
                self.err(f"{ident(w)}: proxy.istio.io/config is not JSON")
                continue
            drain = duration_seconds(cfg.get("terminationDrainDuration", "5s"))
            if drain is None or not (grace - 10 <= drain < grace):
                self.err(f"{ident(w)}: the sidecar drains {cfg.get('terminationDrainDuration', '5s (the default)')} of a "
                         f"{grace} s grace period: it must stay up for all but the last 10 s "
                         f"(proxy.istio.io/config terminationDrainDuration)")

    # ---- sidecar scoping and the egress allow-list ------------------------------------
    ANY_URL = re.compile(r"^([a-z][a-z0-9+.-]*)://(?:[^@/]*@)?(\[[^]]*\]|[^:/?]+)(?::(\d+))?")
    SCHEME_PORTS = {"http": 80, "ws": 80, "grpc": 80, "https": 443, "wss": 443, "postgres": 5432,
                    "postgresql": 5432, "redis": 6379, "rediss": 6379, "redis-sentinel": 26379,
                    "rediss-sentinel": 26379}
    LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")

    def in_cluster(self, host):
        """<service>.<namespace>.svc.<cluster domain> for a host inside the cluster (a bare
        name is a Service of the release's namespace), None for a host outside it."""
        h = host.lower().rstrip(".")
        if "." not in h:
            return f"{h}.{self.ns}.svc.{CLUSTER_DOMAIN}"
        if h.endswith(".svc"):
            h = f"{h}.{CLUSTER_DOMAIN}"
        if h.endswith(f".svc.{CLUSTER_DOMAIN}") and h.count(".") == 2 + CLUSTER_DOMAIN.count(".") + 1:
            return h
        return None

    def token_mounted(self, w):
        spec = self.template(w)["spec"]
        if "automountServiceAccountToken" in spec:
            return spec["automountServiceAccountToken"] is True
        sa = next((s for s in self.by.get("ServiceAccount", []) if name_of(s) == spec.get("serviceAccountName")), None)
        return sa is None or sa.get("automountServiceAccountToken", True) is True

    def calls_of(self, w, collectors):
        """(host, port, why) of every call w makes: every URL in its containers'
        environment (loopback aside), the API server when it mounts a token, and the
        Collector its sidecar sends its own spans to (Istio's otel-tracing provider,
        which check_observability.py pins to the Collector the services export to)."""
        out = []
        for c in self.containers(w):
            for key, val in sorted(self.env_of(c).items()):
                m = self.ANY_URL.match(val)
                if not m or m.group(2).lower() in self.LOOPBACK:
                    continue
                out.append((m.group(2).lower(), int(m.group(3) or self.SCHEME_PORTS.get(m.group(1), 80)), key))
        if self.token_mounted(w):
            out.append((f"kubernetes.default.svc.{CLUSTER_DOMAIN}", 443, "the API server (a mounted token)"))
        for host, port in sorted(collectors):
            out.append((host, port, "the Collector: its sidecar's spans"))
        return out

    @staticmethod
    def dns_matches(pattern, host):
        pattern = pattern.lower()
        if pattern == "*":
            return True
        if pattern.startswith("*."):
            return host.endswith(pattern[1:])
        return pattern == host

    def sidecar_imports(self, sc, namespace, host):
        """The Sidecar's egress holds host of namespace (a Service there, or a ServiceEntry)."""
        for eg in (sc.get("spec") or {}).get("egress") or []:
            for entry in eg.get("hosts") or []:
                ns, _, dns = str(entry).partition("/")
                ns = self.ns if ns == "." else ns
                if ns != "~" and ns in ("*", namespace) and self.dns_matches(dns, host):
                    return True
        return False

    def service_entry_for(self, host, port):
        """A ServiceEntry of the release's namespace, visible there, naming host:port."""
        for se in self.by.get("ServiceEntry", []):
            if (se.get("metadata") or {}).get("namespace", self.ns) != self.ns:
                continue
            spec = se.get("spec") or {}
            if not set(spec.get("exportTo") or ["*"]) & {"*", ".", self.ns}:
                continue
            named = any(self.dns_matches(h, host) for h in spec.get("hosts") or []) or host in (spec.get("addresses") or [])
            if named and any(p.get("number") == port for p in spec.get("ports") or []):
                return se
        return None

    def check_sidecars(self, allow_open=False):
        """Every pod with a sidecar is selected by exactly one Sidecar of the release,
        whose egress imports every host the pod calls (a host outside the cluster also
        needs a ServiceEntry, or REGISTRY_ONLY drops the call) and nothing beyond its
        namespaces (never every host of the mesh, "*/*"), with outboundTrafficPolicy
        REGISTRY_ONLY; --allow-open-egress accepts pods without a Sidecar, "*/*" and the
        mesh's default policy (istio.sidecarScoping and istio.egress.registryOnly off)."""
        if not self.in_mesh():
            return
        sidecars = [s for s in self.by.get("Sidecar", []) if (s.get("metadata") or {}).get("namespace", self.ns) == self.ns]
        collectors = set()
        for w in self.workloads:
            for c in self.containers(w):
                m = self.ANY_URL.match(self.env_of(c).get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
                if m:
                    collectors.add((m.group(2).lower(), int(m.group(3) or 80)))

        def selector(sc):
            return ((sc.get("spec") or {}).get("workloadSelector") or {}).get("labels")

        for sc in sidecars:
            sid = ident(sc)
            sel = selector(sc)
            if sel and not any(selects(sel, self.tlabels(w)) for w in self.workloads + self.gate_pods()):
                self.err(f"{sid}: workloadSelector {sel} selects no rendered pod template")
            mode = ((sc.get("spec") or {}).get("outboundTrafficPolicy") or {}).get("mode")
            if mode != "REGISTRY_ONLY" and not allow_open:
                self.err(f"{sid}: outboundTrafficPolicy is {mode or 'the mesh default (ALLOW_ANY)'}, not REGISTRY_ONLY: "
                         f"its pods may call any host on the internet (istio.egress.registryOnly)")
            hosts = [str(h) for eg in (sc.get("spec") or {}).get("egress") or [] for h in eg.get("hosts") or []]
            if not hosts:
                self.err(f"{sid}: no egress hosts")
            if "*/*" in hosts and not allow_open:
                self.err(f"{sid}: egress \"*/*\" imports every host of the mesh (istio.sidecarScoping is off)")
        for w in self.workloads + self.gate_pods():
            if not self.has_sidecar(w):
                continue
            wid = ident(w)
            labels = self.tlabels(w)
            chosen = [s for s in sidecars if selector(s) and selects(selector(s), labels)] \
                or [s for s in sidecars if not selector(s)]
            if not chosen:
                if not allow_open:
                    self.err(f"{wid}: no Sidecar selects it: its Envoy holds every service of the mesh and may call any host")
                continue
            if len(chosen) > 1:
                self.err(f"{wid}: {len(chosen)} Sidecars select it ({', '.join(ident(s) for s in chosen)}): Istio applies one of them")
                continue
            sc = chosen[0]
            registry_only = ((sc.get("spec") or {}).get("outboundTrafficPolicy") or {}).get("mode") == "REGISTRY_ONLY"
            for host, port, why in self.calls_of(w, collectors):
                fq = self.in_cluster(host)
                if fq:
                    if not self.sidecar_imports(sc, fq.split(".")[1], fq):
                        self.err(f"{ident(sc)}: egress does not cover {fq}:{port}, which {wid} calls ({why}): "
                                 f"list {fq.split('.')[1]}/{fq}")
                elif registry_only:
                    se = self.service_entry_for(host, port)
                    if se is None:
                        self.err(f"{wid} calls {host}:{port} ({why}), which no ServiceEntry names: REGISTRY_ONLY drops it")
                    elif not self.sidecar_imports(sc, (se.get("metadata") or {}).get("namespace", self.ns), host):
                        self.err(f"{ident(sc)}: egress does not cover {host}:{port}, which {wid} calls ({why}) "
                                 f"through {ident(se)}: list ./{host}")

    MUTABLE_TAG = re.compile(r"^(latest|v[0-9]+)$")

    def check_image_tags(self):
        """The exchange's own images (container named as the pod's app) are deployed by
        an immutable tag: a re-pushed tag (v1, v2, latest) is not pulled again under
        IfNotPresent and changes no pod spec, so a rebuild would never reach the pods."""
        versions = {self.tlabels(w).get("version") for w in self.workloads}
        for w in self.workloads:
            # A job runs its service's image (container named after the service).
            app = self.tlabels(w).get("exchange.dev/job-of") or self.tlabels(w).get("app")
            for c in self.template(w)["spec"].get("containers") or []:
                image = str(c.get("image", ""))
                if c.get("name") != app or "@sha256:" in image:
                    continue
                path, _, tag = image.rpartition(":")
                if not path.endswith(f"/{app}"):
                    continue
                if self.MUTABLE_TAG.match(tag) or tag in versions:
                    self.err(f"{ident(w)} container {app}: image {image} uses the mutable tag {tag} "
                             f"(scripts/build-images re-pushes it; pods keep the old build): deploy the commit tag")

    def check_hpa_replicas(self):
        hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in self.by.get("HorizontalPodAutoscaler", [])}
        for w in self.workloads:
            h = hpas.get(name_of(w))
            if w["kind"] != "Deployment" or h is None:
                continue
            want = h["spec"].get("minReplicas", 1)
            if w["spec"].get("replicas", 1) < want:
                self.err(f"{ident(w)}: states {w['spec'].get('replicas', 'no')} replicas under an HPA with minReplicas "
                         f"{want}: a first install starts fewer pods than the minimum (and --wait accepts them)")

    @staticmethod
    def replicas(w):
        return (w.get("spec") or {}).get("replicas", 1)

    def check_scaled_down(self):
        """A Deployment scaled to zero (a canary candidate after a failed analysis) has
        no pods: a route giving it a share, or pinning calls to it, answers 503 (no
        healthy upstream); an HPA naming it contradicts its count, a PDB guards nothing."""
        empty = {name_of(w) for w in self.workloads if w["kind"] == "Deployment" and self.replicas(w) == 0}
        if not empty:
            return
        for h in self.by.get("HorizontalPodAutoscaler", []):
            t = h["spec"].get("scaleTargetRef") or {}
            if t.get("kind") == "Deployment" and t.get("name") in empty:
                self.err(f"{ident(h)}: scales Deployment/{t['name']}, which is scaled to zero "
                         f"(its minReplicas {h['spec'].get('minReplicas', 1)} contradicts that)")
        for pdb in self.by.get("PodDisruptionBudget", []):
            hit = sorted(n for n in empty for w in self.workloads
                         if name_of(w) == n and selects(pdb["spec"].get("selector"), self.tlabels(w)))
            if hit:
                self.err(f"{ident(pdb)}: guards {', '.join(hit)}, which is scaled to zero")
        for vs in self.by.get("VirtualService", []):
            for i, r in enumerate(vs["spec"].get("http") or []):
                rid = f"{ident(vs)} route {r.get('name', i)}"
                dests = r.get("route") or []
                pinned = any(m.get("headers") for m in r.get("match") or [])
                for d in dests:
                    tpls = self.dest_templates(d["destination"])
                    if not tpls or any(name_of(w) not in empty for w in tpls):
                        continue
                    names = ", ".join(sorted(name_of(w) for w in tpls))
                    weight = d.get("weight", 100)
                    if pinned and weight:
                        self.err(f"{rid}: pins calls to {names}, which is scaled to zero (they would get 503s)")
                    elif weight:
                        self.err(f"{rid}: sends {weight}% to {names}, which is scaled to zero (503s)")

    def expect_scaled_down(self, app, version):
        ds = [d for d in self.deployments_of(app) if self.tlabels(d).get("version") == version]
        if len(ds) != 1:
            self.err(f"scaled down {app} {version}: expected one Deployment, found {[ident(d) for d in ds]}")
        elif self.replicas(ds[0]) != 0:
            self.err(f"scaled down {app} {version}: {ident(ds[0])} states {self.replicas(ds[0])} replicas, not 0")

    @staticmethod
    def route_paths(route):
        out = []
        for m in route.get("match") or []:
            uri = m.get("uri") or {}
            for kind in ("prefix", "exact", "regex"):
                if kind in uri:
                    out.append(uri[kind])
        return out

    @staticmethod
    def is_stream_route(route):
        return (not route.get("fault") and not route.get("timeout") and route.get("match")
                and (route.get("retries") or {}).get("attempts") == 0)

    def check_faults(self):
        """Istio enables neither retries nor timeouts on a route with a fault: a fault
        on the catch-all route switches them off for every call, and on a stream it
        aborts the stream. Faults belong on routes of their own, for named unary calls."""
        for vs in self.by.get("VirtualService", []):
            routes = vs["spec"].get("http") or []
            streams = [x for r in routes if self.is_stream_route(r) for x in self.route_paths(r)]
            for i, r in enumerate(routes):
                if not r.get("fault"):
                    continue
                rid = f"{ident(vs)} route {r.get('name', i)}"
                paths = self.route_paths(r)
                if not paths:
                    self.err(f"{rid}: a fault on a route matching every call (Istio then turns off its retries and timeout): "
                             f"give the faults a route of their own for named unary calls")
                for fp in paths:
                    for sp in streams:
                        if fp.startswith(sp) or sp.startswith(fp):
                            self.err(f"{rid}: the fault reaches the stream path {sp}")
                if r.get("timeout") or (r.get("retries") or {}).get("attempts"):
                    self.err(f"{rid}: carries retries/timeout beside a fault, which Istio does not apply: the render "
                             f"would promise retries that never happen")

    @staticmethod
    def try_seconds(route):
        """How long one attempt of a unary route may take: its per-try timeout, within
        its route timeout (None: no bound, or not a unary route)."""
        if route.get("fault") or Render.is_stream_route(route):
            return None
        bounds = [duration_seconds(route["timeout"])] if route.get("timeout") else []
        retries = route.get("retries") or {}
        if retries.get("attempts") and retries.get("perTryTimeout"):
            bounds.append(duration_seconds(retries["perTryTimeout"]))
        bounds = [b for b in bounds if b is not None]
        return min(bounds) if bounds else None

    # Work a placement does besides waiting on inventory (book, market list, database).
    PLACEMENT_SLACK = 2

    def check_placement_timeouts(self):
        """A placement waits up to PLAN_TTL on inventory, then answers PENDING. A mesh
        timeout shorter than that resets a placement that goes on to execute, and the
        client, told it failed, places it again: every route to a pod with PLAN_TTL must
        give an attempt longer than PLAN_TTL, and the edge routes longer still."""
        longest = 0
        for vs in self.by.get("VirtualService", []):
            for i, r in enumerate(vs["spec"].get("http") or []):
                limit = self.try_seconds(r)
                if limit is None:
                    continue
                for d in r.get("route") or []:
                    for w in self.dest_templates(d["destination"]):
                        for c in self.template(w)["spec"].get("containers") or []:
                            ttl = duration_seconds(self.env_of(c).get("PLAN_TTL", ""))
                            if ttl is None:
                                continue
                            need = ttl + self.PLACEMENT_SLACK
                            longest = max(longest, limit)
                            if limit < need:
                                self.err(f"{ident(vs)} route {r.get('name', i)}: an attempt may take {limit:g} s, but a "
                                         f"placement to {ident(w)} waits up to PLAN_TTL {ttl:g} s (+{self.PLACEMENT_SLACK} s): "
                                         f"the mesh would reset placements that execute, and their retries place them "
                                         f"twice (raise timeout and retries.perTryTimeout)")
        if not longest:
            return
        for vs in self.by.get("VirtualService", []):
            if all(g == "mesh" for g in vs["spec"].get("gateways") or ["mesh"]):
                continue
            for i, r in enumerate(vs["spec"].get("http") or []):
                limit = self.try_seconds(r)
                if limit is not None and limit <= longest:
                    self.err(f"{ident(vs)} route {r.get('name', i)}: the edge gives an attempt {limit:g} s, no longer than "
                             f"a placement's route inside the mesh ({longest:g} s): the ingress would answer a placement "
                             f"that executes as failed (raise timeout and retries.perTryTimeout)")

    def check_edge_health(self, allow=False):
        """The services' probe paths are for the kubelet: the ingress answers them itself."""
        if allow:
            return
        for vs in self.by.get("VirtualService", []):
            if all(g == "mesh" for g in vs["spec"].get("gateways") or ["mesh"]):
                continue
            hidden = set()
            for i, r in enumerate(vs["spec"].get("http") or []):
                if r.get("directResponse"):
                    for m in r.get("match") or []:
                        uri = m.get("uri") or {}
                        hidden |= {uri.get("exact"), uri.get("prefix")} - {None}
                    continue
                for d in r.get("route") or []:
                    for w in self.dest_templates(d["destination"]):
                        for c in self.template(w)["spec"].get("containers") or []:
                            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                                get = (c.get(probe) or {}).get("httpGet") or {}
                                port = get.get("port")
                                number = self.resolve_port(w, port) if port is not None else None
                                routed = (d["destination"].get("port") or {}).get("number")
                                svc = self.service_for_host(d["destination"]["host"])
                                target = next((self.resolve_port(w, sp.get("targetPort", sp["port"])) for sp in
                                               (svc["spec"]["ports"] if svc else []) if sp["port"] == routed), None)
                                path = get.get("path")
                                if path and number is not None and number == target and not any(
                                        path == h or path.startswith(h.rstrip("/") + "/") for h in hidden):
                                    self.err(f"{ident(vs)} route {r.get('name', i)}: the {probe} path {path} of "
                                             f"{ident(w)} is reachable from the internet (istio.ingress.hiddenPaths)")
                                    hidden.add(path)

    def check_monitor_labels(self, want):
        for m in list(self.by.get("PodMonitor", [])) + list(self.by.get("ServiceMonitor", [])) \
                + list(self.by.get("PrometheusRule", [])) + [x for x in self.mesh if x["kind"] in ("PodMonitor", "ServiceMonitor", "PrometheusRule")]:
            labels = (m.get("metadata") or {}).get("labels") or {}
            missing = {k: v for k, v in want.items() if labels.get(k) != v}
            if missing:
                self.err(f"{ident(m)}: lacks the label(s) {missing} a stock kube-prometheus-stack selects "
                         f"it by: Prometheus would ignore it")

    # ---- strategies ------------------------------------------------------------------
    def deployments_of(self, app):
        return [w for w in self.workloads if w["kind"] == "Deployment" and self.tlabels(w).get("app") == app]

    def expect_rolling(self, app, version, replicas):
        ds = self.deployments_of(app)
        if len(ds) != 1:
            self.err(f"rolling {app}: expected one Deployment, found {[ident(d) for d in ds]}")
            return
        d = ds[0]
        if self.tlabels(d).get("version") != version:
            self.err(f"rolling {app}: pod version is {self.tlabels(d).get('version')}, expected {version}")
        st = d["spec"].get("strategy") or {}
        ru = st.get("rollingUpdate") or {}
        if st.get("type", "RollingUpdate") != "RollingUpdate" or str(ru.get("maxSurge")) != "1" or str(ru.get("maxUnavailable")) != "0":
            self.err(f"rolling {app}: strategy {st} is not RollingUpdate maxSurge 1 / maxUnavailable 0")
        hpa = next((h for h in self.by.get("HorizontalPodAutoscaler", [])
                    if h["spec"]["scaleTargetRef"]["name"] == name_of(d)), None)
        have = hpa["spec"]["minReplicas"] if hpa else d["spec"].get("replicas", 1)
        if have != replicas:
            self.err(f"rolling {app}: {have} replicas, expected {replicas}")

    def header_routes(self, vs, header, value):
        out = []
        for r in vs["spec"].get("http") or []:
            for m in r.get("match") or []:
                if ((m.get("headers") or {}).get(header) or {}).get("exact") == value:
                    out.append(r)
                    break
        return out

    def plain_routes(self, vs):
        return [r for r in vs["spec"].get("http") or []
                if not any(m.get("headers") for m in r.get("match") or [])]

    def expect_canary(self, app, stable, candidate, weight, header, value):
        versions = sorted(self.tlabels(d).get("version") for d in self.deployments_of(app))
        if versions != sorted([stable, candidate]):
            self.err(f"canary {app}: Deployment versions {versions}, expected {stable} and {candidate}")
        vs = self.mesh_vs_for(app)
        if vs is None:
            self.err(f"canary {app}: no mesh VirtualService")
            return
        pinned = self.header_routes(vs, header, value)
        if not pinned:
            self.err(f"canary {app}: no route matches header {header}: {value}")
        for r in pinned:
            dests = r.get("route") or []
            vers = {self.tlabels(w).get("version") for d in dests for w in self.dest_templates(d["destination"])}
            if len(dests) != 1 or vers != {candidate}:
                self.err(f"canary {app}: header route {r.get('name')} reaches versions {sorted(vers)}, expected only {candidate}")
        plain = self.plain_routes(vs)
        if not plain:
            self.err(f"canary {app}: no weighted default route")
        for r in plain:
            got = {}
            for d in r.get("route") or []:
                vers = {self.tlabels(w).get("version") for w in self.dest_templates(d["destination"])}
                if len(vers) != 1:
                    self.err(f"canary {app}: route {r.get('name')} destination reaches versions {sorted(vers)}")
                    continue
                got[vers.pop()] = d.get("weight", 100)
            want = {stable: 100 - weight, candidate: weight}
            if got != want:
                self.err(f"canary {app}: route {r.get('name')} weights {got}, expected {want}")

    def expect_bluegreen(self, app, live, header, value):
        ds = self.deployments_of(app)
        colors = sorted(self.tlabels(d).get("color") or "" for d in ds)
        if colors != ["blue", "green"]:
            self.err(f"bluegreen {app}: Deployment colors {colors}, expected blue and green")
            return
        idle = "green" if live == "blue" else "blue"
        vs = self.mesh_vs_for(app)
        if vs is None:
            self.err(f"bluegreen {app}: no mesh VirtualService")
            return
        def reached(route):
            return {self.tlabels(w).get("color") for d in route.get("route") or [] for w in self.dest_templates(d["destination"])}
        plain = self.plain_routes(vs)
        if not plain:
            self.err(f"bluegreen {app}: no live route")
        for r in plain:
            got = reached(r)
            if got != {live} or len(r.get("route") or []) != 1:
                self.err(f"bluegreen {app}: live route {r.get('name')} reaches {sorted(got)}, expected exactly one color: {live}")
        preview = self.header_routes(vs, header, value)
        if not preview:
            self.err(f"bluegreen {app}: no preview route on header {header}: {value}")
        for r in preview:
            got = reached(r)
            if got != {idle}:
                self.err(f"bluegreen {app}: preview route {r.get('name')} reaches {sorted(got)}, expected the idle color {idle}")
        svc = next((s for s in self.services.values()
                    if any(self.tlabels(w).get("app") == app for w in self.templates_of_service(s))), None)
        if svc is not None and {self.tlabels(w).get("color") for w in self.templates_of_service(svc)} != {"blue", "green"}:
            self.err(f"bluegreen {app}: Service/{name_of(svc)} must select both colors (Istio subsets need both endpoints)")

    def expect_ha(self):
        """values-ha.yaml: Postgres as a CloudNativePG Cluster of at least two instances
        on different nodes, every DATABASE_URL on its primary (-rw); Redis through Sentinels."""
        clusters = [c for c in self.by.get("Cluster", []) if c.get("apiVersion") == "postgresql.cnpg.io/v1"]
        if len(clusters) != 1:
            self.err(f"ha: expected one CloudNativePG Cluster, found {len(clusters)}")
            return
        cl = clusters[0]
        spec = cl.get("spec") or {}
        if not isinstance(spec.get("instances"), int) or spec["instances"] < 2:
            self.err(f"ha: {ident(cl)} has {spec.get('instances')} instance(s): no replica to fail over to")
        if not (spec.get("affinity") or {}).get("enablePodAntiAffinity"):
            self.err(f"ha: {ident(cl)} may put its instances on one node")
        if any(w["kind"] == "StatefulSet" and self.tlabels(w).get("app") == "postgresql" for w in self.workloads):
            self.err("ha: the bundled Postgres StatefulSet is rendered beside the Cluster")
        for w in self.workloads:
            for c in self.template(w)["spec"].get("containers") or []:
                env = self.env_of(c)
                url = env.get("DATABASE_URL")
                if url:
                    m = self.URL.match(url)
                    host = m.group(1).split(".")[0] if m else ""
                    if host != f"{name_of(cl)}-rw":
                        self.err(f"ha: {ident(w)} DATABASE_URL points at {host or url}, not the primary {name_of(cl)}-rw")
                if "REDIS_URL" in env and not env["REDIS_URL"].startswith(("redis-sentinel://", "rediss-sentinel://")):
                    self.err(f"ha: {ident(w)} REDIS_URL does not go through the Sentinels: {env['REDIS_URL']}")

    def external_secret_refs(self):
        refs = set()
        for w in self.workloads:
            for c in self.containers(w):
                for e in c.get("env") or []:
                    ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and ref["name"] not in self.secrets:
                        refs.add((ref["name"], ref["key"]))
        return refs


DEFAULT_MONITOR_LABELS = {"release": "kube-prometheus-stack"}


def run_checks(docs, namespace, mesh_docs, expectations, provided_secrets=None, release=None,
               external_principals=(INGRESS_PRINCIPAL,), allow_served_by=False, allow_reflection=False,
               allow_health=False, monitor_labels=None, allow_open_egress=False):
    r = Render(docs, namespace, mesh_docs, release, external_principals)
    if not docs:
        r.err("the render is empty")
    r.check_workloads()
    r.check_cronjobs()
    r.check_release_gate()
    r.check_store_data()
    r.check_cnpg()
    r.check_services()
    r.check_netpols()
    r.check_istio()
    r.check_edge(allow_served_by)
    aps = r.check_mesh() if mesh_docs else None
    r.check_wiring(aps)
    r.check_credentials()
    r.check_reflection(allow_reflection)
    r.check_redis()
    r.check_redis_clients()
    r.check_monitoring()
    r.check_probes_in_mesh()
    r.check_sidecar_drain()
    r.check_sidecars(allow_open_egress)
    r.check_image_tags()
    r.check_hpa_replicas()
    r.check_scaled_down()
    r.check_faults()
    r.check_placement_timeouts()
    r.check_edge_health(allow_health)
    r.check_monitor_labels(DEFAULT_MONITOR_LABELS if monitor_labels is None else monitor_labels)
    for kind, args in expectations:
        getattr(r, f"expect_{kind}")(*args)
    if provided_secrets is not None:
        for name, key in sorted(r.external_secret_refs() - provided_secrets):
            r.err(f"Secret {name} key {key} is referenced but scripts/deploy does not create it")
    return r


# ---- upgrades from one render to another ------------------------------------------------
def transition_errors(from_docs, to_docs, namespace):
    """Upgrading FROM -> TO (one helm upgrade): what breaks or drops traffic."""
    a, b = Render(from_docs, namespace), Render(to_docs, namespace)
    b.check_istio()  # fills b.drs
    b.errors = []
    errors = []
    old = {name_of(w): w for w in a.workloads if w["kind"] == "Deployment"}
    for w in b.workloads:
        o = old.get(name_of(w))
        if w["kind"] == "Deployment" and o is not None and o["spec"].get("selector") != w["spec"].get("selector"):
            errors.append(f"Deployment/{name_of(w)} changes its selector (immutable): the upgrade fails "
                          f"({o['spec'].get('selector')} -> {w['spec'].get('selector')})")
    serving_apps = {a.tlabels(w).get("app") for w in old.values()}

    def kept(templates, selectors):
        """Deployments of templates that FROM already runs (not scaled to zero), unchanged
        selector, whose FROM pods every selector in selectors selects (they receive the
        traffic at once)."""
        out = []
        for w in templates:
            o = old.get(name_of(w))
            if o is None or w["kind"] != "Deployment" or o["spec"].get("selector") != w["spec"].get("selector") \
                    or o["spec"].get("replicas", 1) == 0:
                continue
            if all(selects(sel, a.tlabels(o)) for sel in selectors):
                out.append(name_of(w))
        return out

    routed_apps = set()
    for vs in b.by.get("VirtualService", []):
        for i, r in enumerate(vs["spec"].get("http") or []):
            if any(m.get("headers") for m in r.get("match") or []):
                continue  # only requests that ask for it (canary pin, preview)
            for d in r.get("route") or []:
                weight = d.get("weight", 100)
                if not weight:
                    continue
                dest = d["destination"]
                svc = b.service_for_host(dest["host"])
                if svc is None:
                    continue
                tpls = b.dest_templates(dest)
                apps = {b.tlabels(w).get("app") for w in tpls}
                routed_apps |= apps
                if not tpls or not (apps & serving_apps):
                    continue
                selectors = [svc["spec"].get("selector") or {}]
                if dest.get("subset"):
                    dr = b.drs.get(name_of(svc))
                    sub = next((x for x in (dr["spec"].get("subsets") or []) if x["name"] == dest["subset"]), None) if dr else None
                    selectors.append((sub or {}).get("labels") or {})
                if not kept(tpls, selectors):
                    errors.append(f"{ident(vs)} route {r.get('name', i)}: {weight}% of {'/'.join(sorted(apps))} traffic goes to "
                                  f"{', '.join(sorted(name_of(w) for w in tpls))}, whose pods FROM does not run (or the "
                                  f"destination does not select them yet): those requests fail until the new pods are ready")
    for name, svc in b.services.items():
        tpls = b.templates_of_service(svc)
        apps = {b.tlabels(w).get("app") for w in tpls}
        if not tpls or apps & routed_apps or not (apps & serving_apps) or all(w["kind"] != "Deployment" for w in tpls):
            continue
        if not kept(tpls, [svc["spec"].get("selector") or {}]):
            errors.append(f"Service/{name}: selects only {', '.join(sorted(name_of(w) for w in tpls))}, whose pods FROM "
                          f"does not run: the Service has no endpoint until the new pods are ready")
    return errors


def plan_switch(to_docs, namespace, existing):
    """--set overrides for a first upgrade that starts the new Deployments without
    routing default traffic to them (scripts/deploy runs it, waits, then upgrades
    to the real values): a candidate at weight 0, blue/green live on a color that
    runs. existing: names of the release's Deployments in the cluster now."""
    b = Render(to_docs, namespace)
    b.check_istio()
    deps = {name_of(w): w for w in b.workloads if w["kind"] == "Deployment"}
    have_apps = {b.tlabels(w).get("app") for n, w in deps.items() if n in existing}
    out = []
    for vs in b.by.get("VirtualService", []):
        for r in vs["spec"].get("http") or []:
            if any(m.get("headers") for m in r.get("match") or []):
                continue
            for d in r.get("route") or []:
                if not d.get("weight", 100):
                    continue
                tpls = b.dest_templates(d["destination"])
                if not tpls or any(name_of(w) in existing for w in tpls):
                    continue
                for w in tpls:
                    app = b.tlabels(w).get("app")
                    role = (w["metadata"].get("labels") or {}).get("exchange.dev/track-role")
                    if app not in have_apps:
                        continue  # a new service: nothing serves it yet, nothing to drop
                    if role == "candidate":
                        out.append(f"services.{app}.canary.weight=0")
                    elif role == "live":
                        other = next((name_of(x) for x in deps.values() if b.tlabels(x).get("app") == app
                                      and name_of(x) in existing and b.tlabels(x).get("color")), None)
                        if other:
                            out.append(f"services.{app}.bluegreen.live={b.tlabels(deps[other]).get('color')}")
    return sorted(set(out))


def transition_mutations():
    """Breaks of a good TO render that the transition check must catch."""
    def m_rename(to):
        # The old naming: the serving Deployment gets a strategy-specific name.
        for d in to:
            if d["kind"] == "Deployment" and (d["spec"]["template"]["metadata"]["labels"].get("exchange.dev/track") == "primary"):
                d["metadata"]["name"] += "-v1"
                d["spec"]["selector"]["matchLabels"]["version"] = "v1"

    def m_selector(to):
        for d in to:
            if d["kind"] == "Deployment":
                d["spec"]["selector"]["matchLabels"]["color"] = "blue"
                d["spec"]["template"]["metadata"]["labels"]["color"] = "blue"
                break

    def m_subset(to):
        # Subsets selecting a label the running pods do not have yet.
        for d in to:
            if d["kind"] == "DestinationRule":
                for sub in d["spec"].get("subsets") or []:
                    sub["labels"] = {"color": sub["name"]}
    return [("the serving Deployment renamed (old naming)", "whose pods FROM does not run", m_rename),
            ("a Deployment's selector changed", "changes its selector", m_selector),
            ("subsets on labels the running pods lack", "whose pods FROM does not run", m_subset)]


def parse_expectations(a):
    out = []
    for spec in a.expect_rolling or []:
        app, rest = spec.split("=")
        version, replicas = rest.split(":")
        out.append(("rolling", (app, version, int(replicas))))
    for spec in a.expect_canary or []:
        app, rest = spec.split("=", 1)
        stable, candidate, weight, hdr = rest.split(":", 3)
        h, v = hdr.split("=")
        out.append(("canary", (app, stable, candidate, int(weight), h, v)))
    for spec in a.expect_bluegreen or []:
        app, rest = spec.split("=", 1)
        live, hdr = rest.split(":", 1)
        h, v = hdr.split("=")
        out.append(("bluegreen", (app, live, h, v)))
    for spec in a.expect_scaled_down or []:
        app, version = spec.split("=", 1)
        out.append(("scaled_down", (app, version)))
    if a.expect_store_exporters:
        out.append(("store_exporters", ()))
    if a.expect_ha:
        out.append(("ha", ()))
    return out


# ---- self-test: every deliberate break must be caught --------------------------------
def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and name_of(d) == name)


def mutations(prefix):
    """(description, expected message fragment, which render, mutate(docs, mesh))."""
    p = prefix

    def m_weights(docs, mesh):
        r = next(x for x in find(docs, "VirtualService", f"{p}-inventory")["spec"]["http"] if x["name"] == "canary-weighted")
        r["route"][0]["weight"] = 80

    def m_subset(docs, mesh):
        for s in find(docs, "DestinationRule", f"{p}-inventory")["spec"]["subsets"]:
            if s["name"] == "canary":
                s["name"] = "candidate"

    def m_subset_labels(docs, mesh):
        for s in find(docs, "DestinationRule", f"{p}-inventory")["spec"]["subsets"]:
            if s["name"] == "canary":
                s["labels"] = {"version": "v9"}

    def m_kubelet(docs, mesh):
        np = find(docs, "NetworkPolicy", f"{p}-order")
        np["spec"]["ingress"] = [r for r in np["spec"]["ingress"]
                                 if not any(x.get("port") == 15020 for x in r.get("ports") or [])]

    def m_store_drain(docs, mesh):
        del find(docs, "StatefulSet", f"{p}-postgresql")["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]

    def m_mutable_tag(docs, mesh):
        c = find(docs, "Deployment", f"{p}-order")["spec"]["template"]["spec"]["containers"][0]
        c["image"] = c["image"].rsplit(":", 1)[0] + ":v1"

    def m_hpa_replicas(docs, mesh):
        del find(docs, "Deployment", f"{p}-order")["spec"]["replicas"]

    def md_routes(docs):
        return find(docs, "VirtualService", f"{p}-market-data")["spec"]["http"]

    def m_fault_catchall(docs, mesh):
        md_routes(docs)[-1]["fault"] = {"abort": {"percentage": {"value": 2}, "grpcStatus": "UNAVAILABLE"}}

    def m_fault_stream(docs, mesh):
        r = copy.deepcopy(md_routes(docs)[0])
        r["name"] = "fault-primary"
        r["fault"] = {"abort": {"percentage": {"value": 2}, "grpcStatus": "UNAVAILABLE"}}
        md_routes(docs).insert(1, r)

    def m_edge_health(docs, mesh):
        vs = find(docs, "VirtualService", f"{p}-gateway-ingress")
        vs["spec"]["http"] = [r for r in vs["spec"]["http"] if not r.get("directResponse")]

    def m_monitor_label(docs, mesh):
        find(docs, "PodMonitor", f"{p}-order")["metadata"]["labels"].pop("release", None)

    def m_port_name(docs, mesh):
        del find(docs, "Service", f"{p}-order")["spec"]["ports"][0]["name"]

    def m_container_port_name(docs, mesh):
        del find(docs, "Deployment", f"{p}-order")["spec"]["template"]["spec"]["containers"][0]["ports"][1]["name"]

    def m_version_label(docs, mesh):
        del find(docs, "Deployment", f"{p}-order")["spec"]["template"]["metadata"]["labels"]["version"]

    def m_probe(docs, mesh):
        del find(docs, "Deployment", f"{p}-market-data")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]

    def m_liveness(docs, mesh):
        c = find(docs, "Deployment", f"{p}-order")["spec"]["template"]["spec"]["containers"][0]
        c["livenessProbe"] = {"grpc": {"port": 50052, "service": ""}, "periodSeconds": 10}

    def m_limits(docs, mesh):
        del find(docs, "Deployment", f"{p}-gateway")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]

    def m_root(docs, mesh):
        find(docs, "Deployment", f"{p}-user")["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = False

    def m_escalation(docs, mesh):
        del find(docs, "StatefulSet", f"{p}-postgresql")["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"]

    def m_grace(docs, mesh):
        find(docs, "Deployment", f"{p}-order")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20

    def m_netpol(docs, mesh):
        docs.remove(find(docs, "NetworkPolicy", f"{p}-order"))

    def m_netpol_edge(docs, mesh):
        np = find(docs, "NetworkPolicy", f"{p}-inventory")
        np["spec"]["ingress"] = [r for r in np["spec"]["ingress"]
                                 if not any((x.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "order"
                                            for x in r.get("from") or [])]

    def m_bg_both(docs, mesh):
        vs = find(docs, "VirtualService", f"{p}-user")
        r = next(x for x in vs["spec"]["http"] if x["name"].startswith("live-"))
        d = copy.deepcopy(r["route"][0])
        d["destination"]["subset"] = "green" if d["destination"]["subset"] == "blue" else "blue"
        r["route"][0]["weight"] = 50
        d["weight"] = 50
        r["route"].append(d)

    def m_bg_preview(docs, mesh):
        vs = find(docs, "VirtualService", f"{p}-user")
        r = next(x for x in vs["spec"]["http"] if x["name"].startswith("preview-"))
        r["route"][0]["destination"]["subset"] = next(x for x in vs["spec"]["http"] if x["name"].startswith("live-"))["route"][0]["destination"]["subset"]

    def m_canary_header(docs, mesh):
        vs = find(docs, "VirtualService", f"{p}-inventory")
        vs["spec"]["http"] = [x for x in vs["spec"]["http"] if x["name"] != "canary-pinned"]

    def m_scaled_down(docs, mesh):
        # The candidate at 0 replicas with everything else as at 10 %: weight, pin, HPA, PDB.
        find(docs, "Deployment", f"{p}-inventory-canary")["spec"]["replicas"] = 0

    def m_scaled_down_pin(docs, mesh):
        m_scaled_down(docs, mesh)
        for r in find(docs, "VirtualService", f"{p}-inventory")["spec"]["http"]:
            for d in r["route"]:
                if len(r["route"]) > 1:
                    d["weight"] = 0 if d["destination"]["subset"] == "canary" else 100

    def m_rolling_surge(docs, mesh):
        find(docs, "Deployment", f"{p}-order")["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = "25%"

    def m_vs_host(docs, mesh):
        find(docs, "VirtualService", f"{p}-order")["spec"]["http"][-1]["route"][0]["destination"]["host"] = f"{p}-orders.exchange.svc.cluster.local"

    def m_ap_reserve(docs, mesh):
        ap = find(docs, "AuthorizationPolicy", f"{p}-inventory")
        for rule in ap["spec"]["rules"]:
            for f in rule.get("from") or []:
                pr = (f.get("source") or {}).get("principals") or []
                if any(x.endswith("/sa/exchange-order") for x in pr):
                    f["source"]["principals"] = [x for x in pr if not x.endswith("/sa/exchange-order")] or ["cluster.local/ns/exchange/sa/exchange-user"]

    def m_ap_open(docs, mesh):
        ap = find(docs, "AuthorizationPolicy", f"{p}-inventory")
        ap["spec"]["rules"].append({"to": [{"operation": {"paths": ["/exchange.inventory.v1.InventoryService/*"]}}]})

    def m_ap_namespace(docs, mesh):
        ap = find(docs, "AuthorizationPolicy", f"{p}-order")
        ap["spec"]["rules"][0]["from"][0]["source"]["principals"] = [f"cluster.local/ns/elsewhere/sa/{p}-gateway"]

    def m_ap_health_namespace(docs, mesh):
        ap = find(docs, "AuthorizationPolicy", f"{p}-user")
        for rule in ap["spec"]["rules"]:
            for f in rule.get("from") or []:
                if f["source"].get("namespaces"):
                    f["source"]["namespaces"] = ["elsewhere"]

    def redis_args(docs):
        return find(docs, "Deployment", f"{p}-redis")["spec"]["template"]["spec"]["containers"][0]["args"]

    def m_redis_protected(docs, mesh):
        a = redis_args(docs)
        a[a.index("--protected-mode") + 1] = "no"

    def m_redis_gateway_md(docs, mesh):
        a = redis_args(docs)
        a.insert(a.index("~rl:*") + 1, "~md:*")

    def m_redis_dangerous(docs, mesh):
        a = redis_args(docs)
        a.insert(a.index("&md:ch:*") + 1, "+flushall")

    def m_redis_default(docs, mesh):
        a = redis_args(docs)
        a[a.index(">$(REDIS_DEFAULT_PASSWORD)")] = "nopass"

    def m_redis_plain(docs, mesh):
        c = find(docs, "Deployment", f"{p}-market-data")["spec"]["template"]["spec"]["containers"][0]
        e = next(x for x in c["env"] if x["name"] == "REDIS_URL")
        e["value"] = e["value"].replace("$(REDIS_PASSWORD)", "hunter2")

    def m_redis_borrowed_user(docs, mesh):
        c = find(docs, "Deployment", f"{p}-gateway")["spec"]["template"]["spec"]["containers"][0]
        e = next(x for x in c["env"] if x["name"] == "REDIS_URL")
        e["value"] = e["value"].replace("redis://gateway:", "redis://market-data:")

    def ingress_routes(docs):
        return find(docs, "VirtualService", f"{p}-gateway-ingress")["spec"]["http"]

    def m_edge_redirect(docs, mesh):
        for g in mesh:
            if g["kind"] == "Gateway":
                for srv in g["spec"]["servers"]:
                    srv.get("tls", {}).pop("httpsRedirect", None)

    def m_edge_https(docs, mesh):
        for g in mesh:
            if g["kind"] == "Gateway":
                g["spec"]["servers"] = [x for x in g["spec"]["servers"] if x["port"]["protocol"] != "HTTPS"]

    def m_edge_match(docs, mesh):
        r = copy.deepcopy(ingress_routes(docs)[-1])
        r["name"] = "pinned"
        r["match"] = [{"headers": {"x-canary": {"exact": "true"}}}]
        ingress_routes(docs).insert(0, r)

    def m_edge_strip(docs, mesh):
        for r in ingress_routes(docs):
            if "headers" in r:
                r["headers"]["request"]["remove"] = ["x-canary"]

    def m_edge_served_by(docs, mesh):
        for r in ingress_routes(docs):
            if "headers" in r:
                r["headers"].pop("response", None)

    def m_default_deny(docs, mesh):
        docs.remove(find(docs, "AuthorizationPolicy", f"{p}-allow-nothing"))

    def m_strict(docs, mesh):
        for m in mesh:
            if m["kind"] == "PeerAuthentication":
                m["spec"]["mtls"]["mode"] = "PERMISSIVE"

    def m_checksum(docs, mesh):
        del find(docs, "Deployment", f"{p}-order")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    def m_sa(docs, mesh):
        docs.remove(find(docs, "ServiceAccount", f"{p}-order"))

    def m_retry_order(docs, mesh):
        for r in find(docs, "VirtualService", f"{p}-order")["spec"]["http"]:
            if r.get("retries"):
                r["retries"]["retryOn"] = "connect-failure,refused-stream,unavailable"

    def m_reflection(docs, mesh):
        find(docs, "ConfigMap", f"{p}-order")["data"]["GRPC_REFLECTION"] = "true"

    def m_unscraped_exporter(docs, mesh):
        docs.remove(find(docs, "PodMonitor", f"{p}-postgresql"))

    def m_exporter_netpol(docs, mesh):
        np = find(docs, "NetworkPolicy", f"{p}-redis")
        for rule in np["spec"]["ingress"]:
            rule["ports"] = [x for x in rule.get("ports") or [] if x.get("port") != "http-metrics"]

    def m_exporter_intercepted(docs, mesh):
        del find(docs, "StatefulSet", f"{p}-postgresql")["spec"]["template"]["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"]

    def m_no_exporter(docs, mesh):
        spec = find(docs, "Deployment", f"{p}-redis")["spec"]["template"]["spec"]
        spec["containers"] = [c for c in spec["containers"] if c["name"] != "redis-exporter"]

    def m_exporter_latest(docs, mesh):
        for c in find(docs, "StatefulSet", f"{p}-postgresql")["spec"]["template"]["spec"]["containers"]:
            if c["name"] == "postgres-exporter":
                c["image"] = c["image"].rsplit(":", 1)[0] + ":latest"

    def m_podmonitor_port(docs, mesh):
        find(docs, "PodMonitor", f"{p}-order")["spec"]["podMetricsEndpoints"][0]["port"] = "metrics"

    def m_exporter_acl(docs, mesh):
        a = redis_args(docs)
        a.insert(a.index("exporter") + 5, "~*")

    def m_trace_egress(docs, mesh):
        np = find(docs, "NetworkPolicy", f"{p}-order")
        np["spec"]["egress"] = [r for r in np["spec"]["egress"]
                                if not any(x.get("port") == 4317 for x in r.get("ports") or [])]

    def job_pod(docs, job):
        return find(docs, "CronJob", f"{p}-{job}")["spec"]["jobTemplate"]["spec"]["template"]

    def m_job_classic_sidecar(docs, mesh):
        del job_pod(docs, "market-data-backfill")["metadata"]["annotations"]["sidecar.istio.io/nativeSidecar"]

    def m_job_no_sidecar(docs, mesh):
        pod = job_pod(docs, "user-retention")
        pod["metadata"]["labels"]["sidecar.istio.io/inject"] = "false"
        del pod["metadata"]["annotations"]["sidecar.istio.io/nativeSidecar"]

    def m_job_db_egress(docs, mesh):
        np = find(docs, "NetworkPolicy", f"{p}-user-retention")
        np["spec"]["egress"] = [r for r in np["spec"]["egress"] if not any(x.get("port") == 5432 for x in r.get("ports") or [])]

    def m_job_upbit_ap(docs, mesh):
        ap = find(docs, "AuthorizationPolicy", f"{p}-upbit-sim")
        ap["spec"]["rules"] = [r for r in ap["spec"]["rules"] if "backfill" not in str(r)]

    def m_job_overlap(docs, mesh):
        find(docs, "CronJob", f"{p}-market-data-retention")["spec"]["concurrencyPolicy"] = "Allow"

    def m_job_deadline(docs, mesh):
        del find(docs, "CronJob", f"{p}-market-data-retention")["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]

    def m_job_root(docs, mesh):
        job_pod(docs, "user-retention")["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = False

    def m_job_tag(docs, mesh):
        c = job_pod(docs, "user-retention")["spec"]["containers"][0]
        c["image"] = c["image"].rsplit(":", 1)[0] + ":v1"

    def m_job_selected(docs, mesh):
        find(docs, "Service", f"{p}-user")["spec"]["selector"] = {"app.kubernetes.io/instance": "exchange"}

    def sidecar_hosts(docs, name):
        return find(docs, "Sidecar", f"{p}-{name}")["spec"]["egress"][0]["hosts"]

    def m_sidecar_call(docs, mesh):
        hosts = sidecar_hosts(docs, "order")
        hosts[:] = [h for h in hosts if "inventory" not in h]

    def m_sidecar_collector(docs, mesh):
        hosts = sidecar_hosts(docs, "redis")
        hosts[:] = [h for h in hosts if "otel-collector" not in h] or ["~/*"]

    def m_sidecar_missing(docs, mesh):
        docs.remove(find(docs, "Sidecar", f"{p}-user-retention"))

    def m_sidecar_twice(docs, mesh):
        extra = copy.deepcopy(find(docs, "Sidecar", f"{p}-gateway"))
        extra["metadata"]["name"] = f"{p}-gateway-extra"
        docs.append(extra)

    def m_sidecar_allow_any(docs, mesh):
        del find(docs, "Sidecar", f"{p}-market-data")["spec"]["outboundTrafficPolicy"]

    def m_sidecar_unscoped(docs, mesh):
        sidecar_hosts(docs, "ingestor")[:] = ["*/*"]

    def m_pgdata_emptydir(docs, mesh):
        ss = find(docs, "StatefulSet", f"{p}-postgresql")
        ss["spec"]["volumeClaimTemplates"] = []
        ss["spec"]["template"]["spec"]["volumes"].append({"name": "data", "emptyDir": {}})

    return [
        ("CronJob pods with a classic sidecar (the Job never completes)", "the Job never completes", "base", m_job_classic_sidecar),
        ("CronJob without a sidecar calling Postgres under STRICT mTLS", "has no sidecar but calls", "base", m_job_no_sidecar),
        ("CronJob without egress to Postgres", "CronJob/exchange-user-retention -> StatefulSet/exchange-postgresql:5432 (DATABASE_URL) is wired but not allowed", "base", m_job_db_egress),
        ("backfill job not allowed into upbit-sim", "CronJob/exchange-market-data-backfill -> Deployment/exchange-upbit-sim:9090 (UPBIT_REST_URL) is wired but not allowed by any AuthorizationPolicy", "base", m_job_upbit_ap),
        ("CronJob runs overlapping", "not Forbid", "base", m_job_overlap),
        ("CronJob without an active deadline", "no activeDeadlineSeconds", "base", m_job_deadline),
        ("CronJob running as root", "CronJob/exchange-user-retention container user: runAsNonRoot", "base", m_job_root),
        ("CronJob on a re-pushed tag", "CronJob/exchange-user-retention container user: image", "base", m_job_tag),
        ("Service selecting a job's pods", "selects the pods of CronJob", "base", m_job_selected),
        ("Postgres data on an emptyDir", "not a PersistentVolumeClaim", "base", m_pgdata_emptydir),
        ("Sidecar without a wired call", "Sidecar/exchange-order: egress does not cover exchange-inventory", "base", m_sidecar_call),
        ("Sidecar without the Collector its spans go to", "Sidecar/exchange-redis: egress does not cover otel-collector", "base", m_sidecar_collector),
        ("CronJob without a Sidecar", "CronJob/exchange-user-retention: no Sidecar selects it", "base", m_sidecar_missing),
        ("two Sidecars for one workload", "2 Sidecars select it", "canary", m_sidecar_twice),
        ("Sidecar open to any host (ALLOW_ANY)", "not REGISTRY_ONLY", "base", m_sidecar_allow_any),
        ("Sidecar importing every host of the mesh", "imports every host of the mesh", "bluegreen", m_sidecar_unscoped),
        ("canary weights do not sum to 100", "sum to", "canary", m_weights),
        ("probe ports closed to the kubelet", "no NetworkPolicy admits the kubelet on 15020", "base", m_kubelet),
        ("Postgres' sidecar on the default 5 s drain", "the sidecar drains 5s (the default)", "base", m_store_drain),
        ("service image on a re-pushed tag", "uses the mutable tag v1", "base", m_mutable_tag),
        ("HPA-owned Deployment without replicas", "states no replicas under an HPA", "base", m_hpa_replicas),
        ("fault on the catch-all route", "a fault on a route matching every call", "base", m_fault_catchall),
        ("fault on a stream", "the fault reaches the stream path", "base", m_fault_stream),
        ("health endpoint forwarded from the internet", "reachable from the internet", "base", m_edge_health),
        ("PodMonitor a stock kube-prometheus-stack ignores", "lacks the label(s) {'release'", "monitoring", m_monitor_label),
        ("subset missing from the DestinationRule", "in no DestinationRule", "canary", m_subset),
        ("subset labels select no pod", "select no pod template", "canary", m_subset_labels),
        ("Service port without a name", "is not named", "base", m_port_name),
        ("container port without a name", "is not named", "base", m_container_port_name),
        ("pod without a version label", "'version' label", "base", m_version_label),
        ("container without a readiness probe", "no readinessProbe", "base", m_probe),
        ("liveness probe on readiness health", "livenessProbe is not gRPC health 'liveness'", "base", m_liveness),
        ("container without limits", "resources.limits", "base", m_limits),
        ("container running as root", "runAsNonRoot", "base", m_root),
        ("privilege escalation allowed", "allowPrivilegeEscalation", "base", m_escalation),
        ("grace period shorter than the drain", "terminationGracePeriodSeconds", "base", m_grace),
        ("Service without a NetworkPolicy allow", "no NetworkPolicy allows", "base", m_netpol),
        ("wired call blocked by NetworkPolicy", "is wired but not allowed", "base", m_netpol_edge),
        ("blue/green live route to both colors", "exactly one color", "bluegreen", m_bg_both),
        ("blue/green preview to the live color", "idle color", "bluegreen", m_bg_preview),
        ("canary without the header pin", "no route matches header", "canary", m_canary_header),
        ("candidate scaled to zero but weighted", "sends 10% to exchange-inventory-canary, which is scaled to zero", "canary", m_scaled_down),
        ("candidate scaled to zero but pinned", "pins calls to exchange-inventory-canary, which is scaled to zero", "canary", m_scaled_down_pin),
        ("candidate scaled to zero under its HPA", "scales Deployment/exchange-inventory-canary, which is scaled to zero", "canary", m_scaled_down),
        ("candidate scaled to zero with a PDB", "PodDisruptionBudget/exchange-inventory-canary: guards exchange-inventory-canary", "canary", m_scaled_down),
        ("rolling update with the wrong surge", "maxSurge 1", "rolling", m_rolling_surge),
        ("VirtualService to a Service that does not exist", "not a rendered Service", "base", m_vs_host),
        ("AuthorizationPolicy missing a wired caller", "not allowed by any AuthorizationPolicy", "base", m_ap_reserve),
        ("AuthorizationPolicy rule open to everyone", "without `from`", "base", m_ap_open),
        ("AuthorizationPolicy naming another namespace's caller", "not the release's namespace", "base", m_ap_namespace),
        ("health rule open to another namespace", "names namespace elsewhere", "base", m_ap_health_namespace),
        ("no default-deny AuthorizationPolicy", "no default-deny", "base", m_default_deny),
        ("plain HTTP at the edge without a redirect", "without httpsRedirect", "base", m_edge_redirect),
        ("no HTTPS at the edge", "no HTTPS server", "base", m_edge_https),
        ("ingress route honouring x-canary", "matches routing header x-canary", "base", m_edge_match),
        ("ingress not removing x-preview", "does not remove routing header(s) x-preview", "base", m_edge_strip),
        ("x-served-by leaving the mesh", "x-served-by (pod names and versions) reaches the internet", "base", m_edge_served_by),
        ("Redis protected mode off", "protected mode is not on", "base", m_redis_protected),
        ("Redis gateway user reaching market data", "may reach keys ['md:*', 'rl:*']", "base", m_redis_gateway_md),
        ("Redis user granted FLUSHALL", "is granted +flushall", "base", m_redis_dangerous),
        ("Redis default user without a password", "default user is on without a password", "base", m_redis_default),
        ("Redis password in plain text", "password in plain text", "base", m_redis_plain),
        ("Redis user of another service", "is not the Secret key Redis gives user market-data", "base", m_redis_borrowed_user),
        ("mTLS not STRICT", "STRICT", "base", m_strict),
        ("pod without a config checksum", "checksum/config", "base", m_checksum),
        ("ServiceAccount not rendered", "ServiceAccount", "base", m_sa),
        ("order retried after it may have acted", "whose calls are not all idempotent", "base", m_retry_order),
        ("gRPC reflection on", "gRPC reflection is on", "base", m_reflection),
        ("Postgres exporter without a PodMonitor", "is not scraped by any PodMonitor", "monitoring", m_unscraped_exporter),
        ("Redis exporter closed to Prometheus", "Prometheus cannot scrape", "monitoring", m_exporter_netpol),
        ("Postgres exporter behind the sidecar", "is intercepted by the sidecar", "monitoring", m_exporter_intercepted),
        ("Redis without its exporter", "has no metrics exporter", "monitoring", m_no_exporter),
        ("exporter image not pinned", "is not pinned to a version", "monitoring", m_exporter_latest),
        ("PodMonitor on a port the pods do not have", "has no container port metrics", "monitoring", m_podmonitor_port),
        ("Redis exporter user reaching every key", "Redis user exporter is granted ~*", "monitoring", m_exporter_acl),
        ("service that cannot reach the trace collector", "cannot reach the trace collector", "base", m_trace_egress),
    ]


def self_test(renders, namespace, mesh_docs, expectations_by_render, prefix):
    failed = 0
    for desc, fragment, which, mutate in mutations(prefix):
        if which not in renders:
            failed += 1
            print(f"  MISSED: {desc} (no {which} render given: --self-test-monitoring)")
            continue
        docs = copy.deepcopy(renders[which])
        mesh = copy.deepcopy(mesh_docs)
        mutate(docs, mesh)
        r = run_checks(docs, namespace, mesh, expectations_by_render.get(which, []),
                       allow_served_by=which not in ("base", "monitoring"))
        hit = [e for e in r.errors if fragment in e]
        if hit:
            print(f"  caught: {desc}: {hit[0]}")
        else:
            failed += 1
            print(f"  MISSED: {desc} (expected an error containing {fragment!r}; got {r.errors[:3]})")
    return failed


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("render", nargs="?", help="rendered manifests (helm template output)")
    ap.add_argument("-n", "--namespace", default="exchange")
    ap.add_argument("--mesh", action="append", default=[], help="istio/ files or directories to check with the render")
    ap.add_argument("--expect-rolling", action="append", metavar="APP=VERSION:REPLICAS")
    ap.add_argument("--expect-canary", action="append", metavar="APP=STABLE:CANDIDATE:WEIGHT:HEADER=VALUE")
    ap.add_argument("--expect-bluegreen", action="append", metavar="APP=LIVE:HEADER=VALUE")
    ap.add_argument("--expect-scaled-down", action="append", metavar="APP=VERSION",
                    help="that version's Deployment is scaled to zero (a canary candidate after a failed analysis)")
    ap.add_argument("--release", help="the release name: every principal must name one of its ServiceAccounts")
    ap.add_argument("--external-principal", action="append", default=[],
                    help=f"a principal from outside the release that policies may name (default {INGRESS_PRINCIPAL})")
    ap.add_argument("--allow-served-by", action="store_true",
                    help="the render exposes x-served-by at the edge on purpose (a demo overlay)")
    ap.add_argument("--allow-reflection", action="store_true",
                    help="gRPC reflection is on on purpose (the load-test overlay)")
    ap.add_argument("--secrets", help="file listing `secret key` pairs that scripts/deploy creates")
    ap.add_argument("--self-test", nargs=4, metavar=("BASE", "ROLLING", "CANARY", "BLUEGREEN"),
                    help="break good renders in many ways; fail unless every break is caught")
    ap.add_argument("--self-test-monitoring", metavar="MONITORING",
                    help="with --self-test: a render with PodMonitors and the PrometheusRule on")
    ap.add_argument("--expect-store-exporters", action="store_true",
                    help="the bundled Postgres and Redis each have an exporter a PodMonitor scrapes")
    ap.add_argument("--expect-ha", action="store_true",
                    help="values-ha.yaml: a CloudNativePG Cluster of 2+ instances behind every DATABASE_URL, Redis via Sentinels")
    ap.add_argument("--prefix", default="exchange", help="object name prefix (release fullname) for --self-test")
    ap.add_argument("--allow-open-egress", action="store_true",
                    help="Sidecar scoping and REGISTRY_ONLY are off on purpose (istio.sidecarScoping, "
                         "istio.egress.registryOnly): pods without a Sidecar and open egress are accepted")
    ap.add_argument("--allow-health", action="store_true",
                    help="the ingress forwards the probe paths on purpose (the load-test overlay)")
    ap.add_argument("--monitor-label", action="append", default=[], metavar="KEY=VALUE",
                    help="labels every PodMonitor/ServiceMonitor/PrometheusRule needs (default release=kube-prometheus-stack)")
    ap.add_argument("--transition", nargs=2, metavar=("FROM", "TO"),
                    help="check the upgrade from one render to another (no dropped traffic, no selector change)")
    ap.add_argument("--expect-fail", metavar="FRAGMENT",
                    help="with --transition: the upgrade must be rejected with this fragment")
    ap.add_argument("--transition-self-test", action="store_true",
                    help="with --transition (a good one): break TO in several ways; each must be caught")
    ap.add_argument("--plan-switch", metavar="TO",
                    help="print the --set overrides of a first upgrade that routes no default traffic to "
                         "Deployments the cluster does not run yet (--existing)")
    ap.add_argument("--existing", default="", help="with --plan-switch: comma-separated Deployment names running now")
    a = ap.parse_args(argv)
    if a.plan_switch:
        for line in plan_switch(load_docs([a.plan_switch]), a.namespace, set(filter(None, a.existing.split(",")))):
            print(line)
        return 0
    mesh_docs = load_docs(a.mesh) if a.mesh else []
    monitor_labels = dict(x.split("=", 1) for x in a.monitor_label) if a.monitor_label else None

    if a.transition:
        frm, to = (load_docs([f]) for f in a.transition)
        errs = transition_errors(frm, to, a.namespace)
        if a.transition_self_test:
            if errs:
                print(f"transition self-test: the unbroken upgrade already fails: {errs[:2]}")
                return 1
            missed = 0
            for desc, fragment, mutate in transition_mutations():
                t = copy.deepcopy(to)
                mutate(t)
                hit = [e for e in transition_errors(frm, t, a.namespace) if fragment in e]
                print(f"  {'caught' if hit else 'MISSED'}: {desc}: {hit[0] if hit else fragment}")
                missed += 0 if hit else 1
            n = len(transition_mutations())
            print(f"transition self-test: {n - missed}/{n} deliberate breaks caught")
            return 1 if missed else 0
        for e in errs:
            print(f"VIOLATION {e}")
        if a.expect_fail:
            ok = any(a.expect_fail in e for e in errs)
            print(f"upgrade {'rejected as expected' if ok else 'NOT rejected'} ({a.expect_fail})")
            return 0 if ok else 1
        print(f"upgrade: {len(errs)} violations")
        return 1 if errs else 0

    if a.self_test:
        renders = dict(zip(("base", "rolling", "canary", "bluegreen"), (load_docs([f]) for f in a.self_test)))
        if a.self_test_monitoring:
            renders["monitoring"] = load_docs([a.self_test_monitoring])
        exp = {"rolling": [("rolling", ("order", "v2", 3))],
               "canary": [("canary", ("inventory", "v1", "v2", 10, "x-canary", "true"))],
               "bluegreen": [("bluegreen", ("user", "blue", "x-preview", "true"))],
               "monitoring": [("store_exporters", ())]}
        # The unbroken renders must pass first, or the test proves nothing.
        for which, docs in renders.items():
            # The strategy overlays let x-served-by out on purpose.
            r = run_checks(docs, a.namespace, mesh_docs, exp.get(which, []), allow_served_by=which not in ("base", "monitoring"))
            if r.errors:
                print(f"self-test: the unbroken {which} render already fails: {r.errors[:3]}")
                return 1
        failed = self_test(renders, a.namespace, mesh_docs, exp, a.prefix)
        total = len(mutations(a.prefix))
        print(f"self-test: {total - failed}/{total} deliberate breaks caught")
        return 1 if failed else 0

    if not a.render:
        ap.error("a render file is required")
    docs = load_docs([a.render])
    provided = None
    if a.secrets:
        with open(a.secrets, encoding="utf-8") as f:
            provided = {tuple(line.split()[:2]) for line in f if len(line.split()) >= 2}
    r = run_checks(docs, a.namespace, mesh_docs, parse_expectations(a), provided, a.release,
                   a.external_principal or [INGRESS_PRINCIPAL], a.allow_served_by, a.allow_reflection,
                   a.allow_health, monitor_labels, a.allow_open_egress)
    for e in r.errors:
        print(f"VIOLATION {e}")
    print(f"{len(docs)} objects checked, {len(r.errors)} violations")
    return 1 if r.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
