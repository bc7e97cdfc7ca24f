#!/usr/bin/env python3
"""Offline checks of the Argo CD app of apps in argocd/ (no cluster, no Argo CD).

argocd/root.yaml renders the chart argocd/apps into the child Applications; this
renders it the way Argo CD would (the root's helm parameters, with the build
environment variables replaced by the root's own source) and checks:

  parse       every YAML file under argocd/ parses, and so does the rendered chart
              (helm lint --strict, helm template)
  shape       every Application has what the Application CRD requires: apiVersion
              argoproj.io/v1alpha1, kind, metadata.name, metadata.namespace argocd,
              spec.project, spec.destination.server or .name and .namespace, one of
              spec.source / spec.sources, each source with repoURL, targetRevision and
              path or chart (or only `ref`, in a multi-source Application); fields the
              CRD does not have are refused at every level checked (spec, source,
              helm, directory, destination, syncPolicy, automated, retry,
              ignoreDifferences; SPEC_FIELDS and its neighbours below list the real
              ones); sync options are real ones; sync waves are integers; every
              project exists and admits the Application's sources and destination
  cluster-up  every add-on scripts/cluster-up installs has an Application with the
              same chart repository, chart name, release name, namespace and values
              files (in order), the chart version cluster-up installs (its pinned
              *_VERSION default, or the variable when set in the environment; "*"
              where cluster-up installs the latest); every
              `kubectl apply -f` (directory, file, raw.githubusercontent.com URL) has
              a directory Application on the same path, file or git revision; what is
              left to cluster-up (istioctl, the kind registry ConfigMap) is listed in
              LEFT_TO_CLUSTER_UP with the reason; no child installs anything else
  values      every values file an Application names exists in this repository
              ($values/... through the source whose ref is `values`, which must be
              this repository; the exchange's relative to helm/exchange)
  strategies  every release strategy (scripts/deploy's list, and every
              helm/exchange/values-*.yaml that sets a service's strategy) has an
              exchange Application; each is named like its Helm release and
              namespace, creates that namespace with istio/mesh/00-namespace.yaml's
              labels, syncs automatically with self-heal and prune, takes no helm
              parameters from git; no two share an ingress host or render the
              Grafana dashboards
  waves       the AppProject first, then the add-ons in the order scripts/cluster-up
              installs them, all before every exchange Application; Argo CD's
              Application health check (argocd/bootstrap/argocd-cm.yaml) is there,
              without which the root would not wait between waves
  root        the root names this repository once (its helm parameters pass
              $ARGOCD_APP_SOURCE_REPO_URL / _TARGET_REVISION down), points at the
              chart, includes every child (every template renders something, no
              Application manifest lies outside the chart), and ignores and keeps
              (RespectIgnoreDifferences) its children's helm parameters: the knob of a
              release in progress, which its self-heal must not undo
  self-heal   add-on fields their charts set at run time (webhook caBundles, random
              Secrets: ADDON_RUNTIME_FIELDS) are ignored and kept; a rendered
              Deployment with an HPA and a replica count has that count ignored and
              kept (the HPA owns it); charts' `lookup`s are reported (Argo CD's render
              finds nothing)
  render      each exchange Application's chart rendered with exactly its helm
              parameters (release, namespace, value files, valuesObject), as committed
              and as Argo CD renders it in a cluster that has the Prometheus
              operator's API, and once per release step scripts/canary and
              scripts/bluegreen-switch take (every canary weight, the abort with
              what scripts/canary records after a failure, the promotion, the
              blue/green flip) applied as `argocd app set -p`: each
              render validated by validate-manifests (at the kind node's Kubernetes
              version) and by check_rendered.py's mesh checks in that namespace and
              release (with the Secrets the README's command creates), and each step
              against the one before it (check_rendered.transition_errors, when it
              has it: no selector change, no traffic to pods not running); the
              committed render is deterministic and renders no Namespace; objects
              outside the destination namespace are admitted by the project; the
              directory Applications' files (istio/mesh, istio/monitoring,
              alert-logger) validated too

--self-test breaks the good state in memory in many ways and fails unless each break
is caught, with the message expected.

Usage: check_argocd.py [--repo DIR] [--helm PATH] [--validate PATH] [--self-test]
Exit status 1 on any violation (each on a VIOLATION line).
"""
import argparse
import copy
import fnmatch
import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile

import yaml

API_VERSION = "argoproj.io/v1alpha1"
ARGOCD_NAMESPACE = "argocd"
ROOT_FILE = "argocd/root.yaml"
APPS_DIR = "argocd/apps"
CM_PATCH = "argocd/bootstrap/argocd-cm.yaml"
CHART = "helm/exchange"
NAMESPACE_FILE = "istio/mesh/00-namespace.yaml"
CLUSTER_UP = "scripts/cluster-up"
K8S_SH = "scripts/lib/k8s.sh"
DEPLOY = "scripts/deploy"
CANARY = "scripts/canary"
BLUEGREEN = "scripts/bluegreen-switch"

# The Application CRD (pkg/apis/application/v1alpha1/types.go, Argo CD 2.x-3.x):
# the fields each level may have.
SPEC_FIELDS = {"source", "sources", "destination", "project", "syncPolicy", "ignoreDifferences",
               "info", "revisionHistoryLimit", "sourceHydrator"}
SOURCE_FIELDS = {"repoURL", "path", "targetRevision", "helm", "kustomize", "directory", "plugin",
                 "chart", "ref", "name"}
HELM_FIELDS = {"valueFiles", "parameters", "releaseName", "values", "fileParameters", "version",
               "passCredentials", "ignoreMissingValueFiles", "skipCrds", "valuesObject", "namespace",
               "kubeVersion", "apiVersions", "skipTests", "skipSchemaValidation"}
HELM_PARAMETER_FIELDS = {"name", "value", "forceString"}
DIRECTORY_FIELDS = {"recurse", "jsonnet", "exclude", "include"}
KUSTOMIZE_FIELDS = {"namePrefix", "nameSuffix", "images", "commonLabels", "version", "commonAnnotations",
                    "forceCommonLabels", "forceCommonAnnotations", "namespace", "commonAnnotationsEnvsubst",
                    "replicas", "patches", "components", "ignoreMissingComponents", "labelWithoutSelector",
                    "kubeVersion", "apiVersions", "labelIncludeTemplates"}
PLUGIN_FIELDS = {"name", "env", "parameters"}
DESTINATION_FIELDS = {"server", "namespace", "name"}
SYNC_POLICY_FIELDS = {"automated", "syncOptions", "retry", "managedNamespaceMetadata"}
AUTOMATED_FIELDS = {"prune", "selfHeal", "allowEmpty", "enabled"}
RETRY_FIELDS = {"limit", "backoff", "refresh"}
BACKOFF_FIELDS = {"duration", "factor", "maxDuration"}
MANAGED_NAMESPACE_FIELDS = {"labels", "annotations"}
IGNORE_FIELDS = {"group", "kind", "name", "namespace", "jsonPointers", "jqPathExpressions",
                 "managedFieldsManagers"}
INFO_FIELDS = {"name", "value"}
APPPROJECT_SPEC_FIELDS = {"description", "sourceRepos", "destinations", "clusterResourceWhitelist",
                          "clusterResourceBlacklist", "namespaceResourceWhitelist",
                          "namespaceResourceBlacklist", "roles", "syncWindows", "orphanedResources",
                          "signatureKeys", "sourceNamespaces", "permitOnlyProjectScopedClusters",
                          "destinationServiceAccounts"}
# Sync options (docs/user-guide/sync-options.md) and the values they take.
BOOL = {"true", "false"}
SYNC_OPTIONS = {"Validate": BOOL, "CreateNamespace": BOOL, "PruneLast": BOOL, "ApplyOutOfSyncOnly": BOOL,
                "Replace": BOOL, "Force": BOOL, "ServerSideApply": BOOL, "FailOnSharedResource": BOOL,
                "RespectIgnoreDifferences": BOOL, "SkipDryRunOnMissingResource": BOOL,
                "ClientSideApplyMigration": BOOL, "Prune": {"false", "confirm"}, "Delete": {"false", "confirm"},
                "PrunePropagationPolicy": {"foreground", "background", "orphan"}}
SYNC_WAVE = "argocd.argoproj.io/sync-wave"
BUILD_ENV = ("ARGOCD_APP_SOURCE_REPO_URL", "ARGOCD_APP_SOURCE_TARGET_REVISION")
RELEASE_KNOB = "/spec/source/helm/parameters"

# What scripts/cluster-up installs that Argo CD does not, and why.
LEFT_TO_CLUSTER_UP = {
    "istioctl install -f istio/install/istio-operator.yaml":
        "istioctl reads the IstioOperator file on your machine (Istio removed the in-cluster operator); "
        "it is not an object Argo CD can apply",
    "scripts/lib/k8s/local-registry-hosting.yaml":
        "kind wiring: it describes the registry cluster-up connects to the kind nodes",
}
# Files of a directory cluster-up applies whole that an Application may leave out, and why.
JUSTIFIED_EXCLUDES = {
    NAMESPACE_FILE: "each exchange Application creates its namespace with these labels "
                    "(managedNamespaceMetadata), as scripts/deploy does",
}
# Fields the add-ons' charts (or their jobs) set after Argo CD applied them, or render
# differently each time: the Application must ignore them and keep the live value
# (RespectIgnoreDifferences), or self-heal undoes them. Keyed by chart name:
# (group, kind, name, JSON pointer or jq path).
ADDON_RUNTIME_FIELDS = {
    "kube-prometheus-stack": [
        # the admission-patch Job writes the CA into the webhooks (and sets failurePolicy)
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration", "kube-prometheus-stack-admission",
         ".webhooks[]?.clientConfig.caBundle"),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration", "kube-prometheus-stack-admission",
         ".webhooks[]?.clientConfig.caBundle"),
        # grafana subchart "grafana.password": lookup, else randAlphaNum (no lookup in Argo CD)
        ("", "Secret", "kube-prometheus-stack-grafana", "/data/admin-password"),
        ("apps", "Deployment", "kube-prometheus-stack-grafana", "/spec/template/metadata/annotations/checksum~1secret"),
    ],
    # kiali-server "kiali-server.login_token.signing_key": randAlphaNum when unset
    "kiali-server": [("", "Secret", "kiali-signing-key", "/data/key")],
}
ADDON_SYNC_OPTIONS = {
    # its CRDs exceed client-side apply's last-applied-configuration annotation
    "kube-prometheus-stack": ["ServerSideApply=true"],
}


# ---- helpers ------------------------------------------------------------------------
def norm_url(u):
    u = (u or "").strip().rstrip("/")
    return u[:-4] if u.endswith(".git") else u


def deep_merge(base, over):
    """Helm's values merge: maps merge, everything else replaces, null deletes."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dig(obj, *path, default=None):
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return default
        obj = obj[p]
    return obj


def set_path(values, dotted, value):
    keys = re.split(r"(?<!\\)\.", dotted)
    cur = values
    for k in keys[:-1]:
        cur = cur.setdefault(k.replace("\\.", "."), {})
    cur[keys[-1].replace("\\.", ".")] = value


def yaml_scalar(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def sync_options(app):
    out = {}
    for o in dig(app, "spec", "syncPolicy", "syncOptions", default=[]) or []:
        k, _, v = str(o).partition("=")
        out[k] = v
    return out


def app_sources(app):
    spec = app.get("spec") or {}
    if spec.get("sources"):
        return list(spec["sources"])
    return [spec["source"]] if spec.get("source") else []


def wave(obj):
    try:
        return int(str(dig(obj, "metadata", "annotations", SYNC_WAVE, default="0")))
    except ValueError:
        return None


def ignores(app, group, kind, name, path):
    for e in dig(app, "spec", "ignoreDifferences", default=[]) or []:
        if e.get("kind") != kind or (e.get("group") or "") != group:
            continue
        if e.get("name") not in (None, name):
            continue
        if path in (e.get("jsonPointers") or []) or path in (e.get("jqPathExpressions") or []):
            return True
    return False


# ---- the state under check ----------------------------------------------------------
class Model:
    """Everything the checks read; --self-test breaks copies of it."""

    def __init__(self, repo, helm, validate):
        self.repo = os.path.abspath(repo)
        self.helm = helm
        self.validate = validate
        self.overlay = {}     # path -> text (None: deleted), over the files on disk
        self.env = {k: v for k, v in os.environ.items() if k.endswith("_VERSION")}
        self.load_errors = []
        self.root = None
        self.children = []    # rendered objects of the apps chart, each with "_template"
        self.templates = []   # argocd/apps/templates/*.yaml (not partials)
        self.extra_steps = {}  # app name -> extra release steps (self-test)
        self.doc_mutation = None  # (app, variant, docs) -> None (self-test)

    # files
    def path(self, rel):
        return os.path.join(self.repo, rel)

    def exists(self, rel):
        rel = os.path.normpath(rel)
        if rel in self.overlay:
            return self.overlay[rel] is not None
        return os.path.exists(self.path(rel))

    def read(self, rel):
        rel = os.path.normpath(rel)
        if rel in self.overlay:
            if self.overlay[rel] is None:
                raise FileNotFoundError(rel)
            return self.overlay[rel]
        with open(self.path(rel), encoding="utf-8") as f:
            return f.read()

    def files_under(self, rel, recurse=True):
        out = set()
        base = self.path(rel)
        if os.path.isdir(base):
            for dirpath, dirnames, filenames in os.walk(base):
                for fn in filenames:
                    out.add(os.path.relpath(os.path.join(dirpath, fn), self.repo))
                if not recurse:
                    dirnames[:] = []
        for p, text in self.overlay.items():
            inside = p.startswith(rel.rstrip("/") + "/")
            if inside and (recurse or os.path.dirname(p) == rel.rstrip("/")):
                if text is None:
                    out.discard(p)
                else:
                    out.add(p)
        return sorted(out)

    def run(self, args, **kw):
        return subprocess.run(args, cwd=self.repo, capture_output=True, text=True, **kw)


def load(model):
    """Reads the root and renders the apps chart as Argo CD would."""
    try:
        model.root = yaml.safe_load(model.read(ROOT_FILE))
    except (OSError, yaml.YAMLError) as e:
        model.load_errors.append(f"{ROOT_FILE} does not parse: {e}")
        return
    src = dig(model.root, "spec", "source") or {}
    chart_dir = src.get("path") or APPS_DIR
    model.chart_dir = chart_dir
    model.templates = [p for p in model.files_under(f"{chart_dir}/templates")
                       if p.endswith((".yaml", ".yml")) and not os.path.basename(p).startswith("_")]
    env = {"ARGOCD_APP_SOURCE_REPO_URL": src.get("repoURL", ""),
           "ARGOCD_APP_SOURCE_TARGET_REVISION": src.get("targetRevision", ""),
           "ARGOCD_APP_NAME": dig(model.root, "metadata", "name", default=""),
           "ARGOCD_APP_NAMESPACE": dig(model.root, "spec", "destination", "namespace", default=""),
           "ARGOCD_APP_SOURCE_PATH": chart_dir}
    helm_spec = src.get("helm") or {}
    args = ["template", helm_spec.get("releaseName") or dig(model.root, "metadata", "name", default="root"),
            chart_dir, "-n", ARGOCD_NAMESPACE]
    tmp = []
    try:
        for f in helm_spec.get("valueFiles") or []:
            args += ["-f", os.path.join(chart_dir, f)]
        if helm_spec.get("valuesObject"):
            t = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            yaml.safe_dump(helm_spec["valuesObject"], t)
            t.close()
            tmp.append(t.name)
            args += ["-f", t.name]
        for p in helm_spec.get("parameters") or []:
            value = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), str(p.get("value", "")))
            args += ["--set-string" if p.get("forceString") else "--set", f"{p.get('name')}={value}"]
        lint = model.run([model.helm, "lint", "--strict", *args[2:3], *args[5:]])
        if lint.returncode != 0:
            model.load_errors.append(f"helm lint --strict {chart_dir} failed: {(lint.stdout + lint.stderr).strip()[-600:]}")
        out = model.run([model.helm, *args])
    finally:
        for t in tmp:
            os.unlink(t)
    if out.returncode != 0:
        model.load_errors.append(f"the root's chart {chart_dir} does not render: {out.stderr.strip()[-600:]}")
        return
    current = None
    for chunk in re.split(r"^---\s*$", out.stdout, flags=re.M):
        m = re.search(r"^# Source: [^/]+/(.+)$", chunk, flags=re.M)
        if m:
            current = os.path.join(chart_dir, m.group(1))
        try:
            doc = yaml.safe_load(chunk)
        except yaml.YAMLError as e:
            model.load_errors.append(f"{current}: rendered YAML does not parse: {e}")
            continue
        if isinstance(doc, dict) and doc:
            doc["_template"] = current
            model.children.append(doc)


# ---- scripts/cluster-up and the other scripts ------------------------------------
def shell_lines(text):
    lines, buf = [], ""
    for raw in text.splitlines():
        s = raw.rstrip()
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    return lines


def shell_settings(model, *scripts):
    """NAME=${NAME:-default} and NAME=value settings of the scripts (the environment
    overrides the first kind, as in the scripts)."""
    out = {}
    for script in scripts:
        for line in model.read(script).splitlines():
            m = re.match(r"\s*([A-Za-z_]\w*)=\$\{\1:-([^}]*)\}\s*$", line)
            if m:
                out[m.group(1)] = model.env.get(m.group(1)) or m.group(2)
                continue
            m = re.match(r"\s*([A-Za-z_]\w*)=([^\s$()`'\"]+)\s*$", line)
            if m and m.group(1) not in out:
                out[m.group(1)] = m.group(2)
    return out


def expand(text, settings):
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: settings.get(m.group(1), m.group(0)), text)


def parse_cluster_up(model):
    settings = shell_settings(model, K8S_SH, CLUSTER_UP)
    repos, installs, applies, istioctl, steps = {}, [], [], [], []
    var = None
    for line in shell_lines(model.read(CLUSTER_UP)):
        s = line.strip()
        m = re.match(r"(istio_minor)=(\S+)$", s)  # older cluster-up: the Istio branch's minor
        if m and m.group(1) not in settings:
            settings[m.group(1)] = m.group(2)
        m = re.match(r"mapfile -t v < <\(version_flag (\w+)\)", s)
        if m:
            var = m.group(1)
        if not s.startswith("run "):
            continue
        try:
            args = shlex.split(s[4:])
        except ValueError:
            continue
        args = [a if a == "${v[@]}" else expand(a, settings) for a in args]
        if args[:3] == ["helm", "repo", "add"]:
            repos[args[3]] = args[4]
        elif args[:3] == ["helm", "upgrade", "--install"]:
            inst = {"release": args[3], "chart": args[4], "namespace": None, "values": [],
                    "create_namespace": "--create-namespace" in args,
                    "version_var": var if "${v[@]}" in args else None}
            inst["version"] = settings.get(inst["version_var"]) if inst["version_var"] else None
            for i, a in enumerate(args):
                if a in ("-n", "--namespace"):
                    inst["namespace"] = args[i + 1]
                if a in ("-f", "--values"):
                    inst["values"].append(args[i + 1])
                if a == "--version":
                    inst["version"] = args[i + 1]
            alias, _, name = inst["chart"].partition("/")
            inst["repo"], inst["chart_name"] = repos.get(alias), name
            installs.append(inst)
            steps.append(("install", inst))
            var = None
        elif args[:2] == ["kubectl", "apply"] and "-f" in args:
            applies.append(args[args.index("-f") + 1])
            steps.append(("apply", args[args.index("-f") + 1]))
        elif args[:2] == ["istioctl", "install"] and "-f" in args:
            istioctl.append(f"istioctl install -f {args[args.index('-f') + 1]}")
    return {"installs": installs, "applies": applies, "istioctl": istioctl, "steps": steps, "settings": settings}


def deploy_strategies(model):
    for line in model.read(DEPLOY).splitlines():
        m = re.match(r"\s*([a-z|]+)\)\s*\[\[ -z \$strategy", line)
        if m:
            return m.group(1).split("|")
    return []


def strategy_files(model):
    """helm/exchange/values-*.yaml that set some service's strategy: stem -> file name."""
    out = {}
    for p in model.files_under(CHART, recurse=False):
        name = os.path.basename(p)
        if not re.match(r"values-.+\.ya?ml$", name):
            continue
        try:
            values = yaml.safe_load(model.read(p)) or {}
        except yaml.YAMLError:
            continue
        if any(isinstance(s, dict) and "strategy" in s for s in (values.get("services") or {}).values()):
            out[re.sub(r"^values-|\.ya?ml$", "", name)] = name
    return out


def script_sets(model, script):
    """The `--set` arguments of every `helm upgrade` in a script, one list per command,
    and the script's `NAME=$(release_value "$key.PATH" DEFAULT)` variables."""
    out, variables = [], {}
    for line in shell_lines(model.read(script)):
        m = re.match(r'\s*(\w+)=\$\(release_value "\$key\.([\w.]+)" "?([^")]*)"?', line)
        if m:
            variables[m.group(1)] = (m.group(2), m.group(3))
        if "helm upgrade" not in line:
            continue
        try:
            args = shlex.split(line.strip().removeprefix("run "))
        except ValueError:
            continue
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set" and i + 1 < len(args)]
        if sets:
            out.append(sets)
    return out, variables


def canary_steps(model):
    """scripts/canary's weights: its own default, or (the release gate walks them) the
    chart's releaseGate.canary.steps."""
    m = re.search(r"^steps=([0-9,]+)$", model.read(CANARY), flags=re.M)
    if m:
        return [int(x) for x in m.group(1).split(",")]
    try:
        values = yaml.safe_load(model.read("helm/exchange/values.yaml")) or {}
    except yaml.YAMLError:
        return []
    steps = ((values.get("releaseGate") or {}).get("canary") or {}).get("steps") or []
    return [int(x) for x in steps if isinstance(x, int)]


def chart_secrets(model, release, namespace):
    """What the README's Secret command creates for a release: {(secret, key)}."""
    r = subprocess.run(["bash", "-c", 'source scripts/lib/k8s.sh && chart_secrets'], cwd=model.repo,
                       capture_output=True, text=True,
                       env={**os.environ, "RELEASE": release, "NAMESPACE": namespace})
    out = set()
    for line in r.stdout.splitlines():
        parts = line.split()
        for k in parts[1:]:
            out.add((parts[0], k))
    return out


# ---- static checks ------------------------------------------------------------------
class Checker:
    def __init__(self, model):
        self.m = model
        self.errors = list(model.load_errors)
        self.notes = []

    def err(self, msg):
        self.errors.append(" ".join(str(msg).split()))

    def unknown(self, where, obj, allowed):
        if isinstance(obj, dict):
            for k in sorted(set(obj) - allowed):
                self.err(f"{where}: unknown field {k!r} (the Application CRD has {', '.join(sorted(allowed))})")

    # every file under argocd/ parses; Application manifests outside the chart
    def check_files(self):
        chart_dir = getattr(self.m, "chart_dir", APPS_DIR)
        for p in self.m.files_under("argocd"):
            if not p.endswith((".yaml", ".yml")):
                continue
            if p.startswith(f"{chart_dir}/templates/"):
                continue  # Helm templates: checked as rendered
            try:
                docs = list(yaml.safe_load_all(self.m.read(p)))
            except yaml.YAMLError as e:
                self.err(f"{p} does not parse: {str(e).splitlines()[0]}")
                continue
            if p == ROOT_FILE:
                continue
            for d in docs:
                if isinstance(d, dict) and d.get("kind") in ("Application", "ApplicationSet", "AppProject"):
                    self.err(f"{p}: {d['kind']}/{dig(d, 'metadata', 'name')} is not included by the root "
                             f"(only {chart_dir}/templates is): move it there")

    def check_application(self, app, where):
        if app.get("apiVersion") != API_VERSION:
            self.err(f"{where}: apiVersion is {app.get('apiVersion')!r}, not {API_VERSION}")
        if app.get("kind") != "Application":
            self.err(f"{where}: kind is {app.get('kind')!r}, not Application")
        md = app.get("metadata") or {}
        if not md.get("name"):
            self.err(f"{where}: metadata.name is missing")
        elif not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", md["name"]):
            self.err(f"{where}: metadata.name {md['name']!r} is not a DNS label of at most 63 characters")
        if md.get("namespace") != ARGOCD_NAMESPACE:
            self.err(f"{where}: metadata.namespace is {md.get('namespace')!r}, not {ARGOCD_NAMESPACE} "
                     f"(Argo CD only reads Applications there by default)")
        if wave(app) is None:
            self.err(f"{where}: {SYNC_WAVE} {dig(md, 'annotations', SYNC_WAVE)!r} is not an integer")
        spec = app.get("spec")
        if not isinstance(spec, dict):
            self.err(f"{where}: spec is missing")
            return
        self.unknown(f"{where} spec", spec, SPEC_FIELDS)
        if not spec.get("project"):
            self.err(f"{where}: spec.project is missing")
        dest = spec.get("destination")
        if not isinstance(dest, dict):
            self.err(f"{where}: spec.destination is missing")
        else:
            self.unknown(f"{where} spec.destination", dest, DESTINATION_FIELDS)
            if bool(dest.get("server")) == bool(dest.get("name")):
                self.err(f"{where}: spec.destination needs exactly one of server and name")
            if not dest.get("namespace"):
                self.err(f"{where}: spec.destination.namespace is missing")
        if bool(spec.get("source")) == bool(spec.get("sources")):
            self.err(f"{where}: needs exactly one of spec.source and spec.sources")
        multi = bool(spec.get("sources"))
        refs = {s.get("ref") for s in app_sources(app) if isinstance(s, dict) and s.get("ref")}
        for i, s in enumerate(app_sources(app)):
            sw = f"{where} spec.sources[{i}]" if multi else f"{where} spec.source"
            if not isinstance(s, dict):
                self.err(f"{sw}: not a mapping")
                continue
            self.unknown(sw, s, SOURCE_FIELDS)
            self.unknown(f"{sw}.helm", s.get("helm"), HELM_FIELDS)
            self.unknown(f"{sw}.directory", s.get("directory"), DIRECTORY_FIELDS)
            self.unknown(f"{sw}.kustomize", s.get("kustomize"), KUSTOMIZE_FIELDS)
            self.unknown(f"{sw}.plugin", s.get("plugin"), PLUGIN_FIELDS)
            for p in dig(s, "helm", "parameters", default=[]) or []:
                self.unknown(f"{sw}.helm.parameters", p, HELM_PARAMETER_FIELDS)
            if not s.get("repoURL"):
                self.err(f"{sw}: repoURL is missing")
            if not s.get("targetRevision"):
                self.err(f"{sw}: targetRevision is missing")
            ref_only = multi and s.get("ref") and not (s.get("path") or s.get("chart"))
            if not ref_only and not (s.get("path") or s.get("chart")):
                self.err(f"{sw}: needs path (a Git source) or chart (a Helm repository)")
            if s.get("path") and s.get("chart"):
                self.err(f"{sw}: has both path and chart")
            if s.get("ref") and not multi:
                self.err(f"{sw}: ref only means something in spec.sources")
            for f in dig(s, "helm", "valueFiles", default=[]) or []:
                m = re.match(r"\$([\w-]+)/(.+)", f)
                if m and m.group(1) not in refs:
                    self.err(f"{sw}: values file {f} names ${m.group(1)}, but no source has ref {m.group(1)}")
        sp = spec.get("syncPolicy") or {}
        self.unknown(f"{where} spec.syncPolicy", sp, SYNC_POLICY_FIELDS)
        self.unknown(f"{where} spec.syncPolicy.automated", sp.get("automated"), AUTOMATED_FIELDS)
        self.unknown(f"{where} spec.syncPolicy.retry", sp.get("retry"), RETRY_FIELDS)
        self.unknown(f"{where} spec.syncPolicy.retry.backoff", dig(sp, "retry", "backoff"), BACKOFF_FIELDS)
        self.unknown(f"{where} spec.syncPolicy.managedNamespaceMetadata", sp.get("managedNamespaceMetadata"),
                     MANAGED_NAMESPACE_FIELDS)
        for o in sp.get("syncOptions") or []:
            k, eq, v = str(o).partition("=")
            if k not in SYNC_OPTIONS or not eq or v not in SYNC_OPTIONS[k]:
                self.err(f"{where}: sync option {o!r} is not one Argo CD has "
                         f"({', '.join(f'{k}={sorted(v)[0]}' for k, v in sorted(SYNC_OPTIONS.items()))}…)")
        if sp.get("managedNamespaceMetadata") and sync_options(app).get("CreateNamespace") != "true":
            self.err(f"{where}: managedNamespaceMetadata does nothing without CreateNamespace=true")
        for e in spec.get("ignoreDifferences") or []:
            self.unknown(f"{where} spec.ignoreDifferences", e, IGNORE_FIELDS)
            if not e.get("kind"):
                self.err(f"{where}: an ignoreDifferences entry has no kind")
            if not (e.get("jsonPointers") or e.get("jqPathExpressions") or e.get("managedFieldsManagers")):
                self.err(f"{where}: an ignoreDifferences entry for {e.get('kind')} ignores nothing")
        for e in spec.get("info") or []:
            self.unknown(f"{where} spec.info", e, INFO_FIELDS)

    def check_shapes(self):
        self.check_application(self.m.root, ROOT_FILE)
        names = {}
        for c in self.m.children:
            where = f"{c.get('kind')}/{dig(c, 'metadata', 'name')} ({c.get('_template')})"
            if c.get("kind") == "AppProject":
                if c.get("apiVersion") != API_VERSION or dig(c, "metadata", "namespace") != ARGOCD_NAMESPACE:
                    self.err(f"{where}: must be {API_VERSION} in namespace {ARGOCD_NAMESPACE}")
                self.unknown(f"{where} spec", c.get("spec"), APPPROJECT_SPEC_FIELDS)
                continue
            self.check_application(c, where)
            n = dig(c, "metadata", "name")
            if n in names:
                self.err(f"{where}: a second Application named {n} (also {names[n]})")
            names[n] = where

    @property
    def apps(self):
        return [c for c in self.m.children if c.get("kind") == "Application"]

    def app(self, name):
        return next((a for a in self.apps if dig(a, "metadata", "name") == name), None)

    def this_repo(self):
        return norm_url(dig(self.m.root, "spec", "source", "repoURL"))

    def is_this_repo(self, source):
        return norm_url(source.get("repoURL")) == self.this_repo()

    # the root
    def check_root(self):
        r = self.m.root
        src = dig(r, "spec", "source") or {}
        if src.get("path") != APPS_DIR:
            self.err(f"{ROOT_FILE}: spec.source.path is {src.get('path')!r}: the children are the chart "
                     f"{APPS_DIR}, so the root does not include them")
        params = {p.get("name"): str(p.get("value")) for p in dig(src, "helm", "parameters", default=[]) or []}
        for name, var in (("repoURL", BUILD_ENV[0]), ("targetRevision", BUILD_ENV[1])):
            if params.get(name) not in (f"${var}", f"${{{var}}}"):
                self.err(f"{ROOT_FILE}: helm parameter {name} must be ${var}, so the repository is named in one "
                         f"place (the root's own source), not {params.get(name)!r}")
        if "CHANGE-ME" in (src.get("repoURL") or ""):
            self.notes.append(f"{ROOT_FILE}: repoURL is still the placeholder {src.get('repoURL')} "
                              f"(point it at your fork before applying it)")
        if sync_options(r).get("RespectIgnoreDifferences") != "true" or \
                not ignores(r, "argoproj.io", "Application", None, RELEASE_KNOB):
            self.err(f"{ROOT_FILE}: must ignore and keep (ignoreDifferences {RELEASE_KNOB} on argoproj.io "
                     f"Application, RespectIgnoreDifferences=true) its children's helm parameters, or its "
                     f"self-heal undoes a release in progress (argocd app set -p)")
        if not dig(r, "spec", "syncPolicy", "automated"):
            self.notes.append(f"{ROOT_FILE}: the root does not sync automatically")
        rendered = {c.get("_template") for c in self.m.children}
        for t in self.m.templates:
            if t not in rendered:
                self.err(f"{t} renders nothing: the root does not include it")
        try:
            cm = yaml.safe_load(self.m.read(CM_PATCH)) or {}
        except (OSError, yaml.YAMLError) as e:
            cm = {}
            self.err(f"{CM_PATCH} does not parse: {e}")
        lua = dig(cm, "data", "resource.customizations.health.argoproj.io_Application", default="")
        if "obj.status.health" not in str(lua):
            self.err(f"{CM_PATCH}: no health check for argoproj.io/Application "
                     f"(resource.customizations.health.argoproj.io_Application): sync waves between "
                     f"Applications need it, or the root does not wait for one wave to be healthy")

    # projects
    def check_projects(self):
        projects = {dig(c, "metadata", "name"): c for c in self.m.children if c.get("kind") == "AppProject"}
        for a in self.apps:
            n = dig(a, "metadata", "name")
            pname = dig(a, "spec", "project")
            if pname == "default":
                continue
            p = projects.get(pname)
            if p is None:
                self.err(f"Application/{n}: project {pname!r} has no AppProject (rendered: {sorted(projects)})")
                continue
            if wave(p) is not None and wave(a) is not None and wave(p) >= wave(a):
                self.err(f"Application/{n}: sync wave {wave(a)} is not after its AppProject's ({wave(p)})")
            repos = [norm_url(x) for x in dig(p, "spec", "sourceRepos", default=[]) or []]
            for s in app_sources(a):
                if "*" not in repos and norm_url(s.get("repoURL")) not in repos:
                    self.err(f"Application/{n}: project {pname} does not admit source {s.get('repoURL')}")
            dest = dig(a, "spec", "destination") or {}
            if not any(fnmatch.fnmatch(dest.get("namespace") or "", d.get("namespace") or "")
                       and (fnmatch.fnmatch(dest.get("server") or "", d.get("server") or "")
                            or fnmatch.fnmatch(dest.get("name") or "", d.get("name") or ""))
                       for d in dig(p, "spec", "destinations", default=[]) or []):
                self.err(f"Application/{n}: project {pname} does not admit destination "
                         f"{dest.get('server') or dest.get('name')} namespace {dest.get('namespace')}")

    def project_admits_namespace(self, app, namespace):
        p = next((c for c in self.m.children if c.get("kind") == "AppProject"
                  and dig(c, "metadata", "name") == dig(app, "spec", "project")), None)
        if p is None:
            return True
        return any(fnmatch.fnmatch(namespace, d.get("namespace") or "") for d in dig(p, "spec", "destinations", default=[]) or [])

    # values files
    def values_file_exists(self, app, source, f):
        m = re.match(r"\$([\w-]+)/(.+)", f)
        if m:
            ref = next((s for s in app_sources(app) if s.get("ref") == m.group(1)), None)
            if ref is None:
                return  # reported by check_application
            if not self.is_this_repo(ref):
                self.err(f"Application/{dig(app, 'metadata', 'name')}: ${m.group(1)} is {ref.get('repoURL')}, "
                         f"not this repository ({self.this_repo()}): its values files cannot be checked or kept here")
                return
            path = m.group(2)
        elif self.is_this_repo(source) and source.get("path"):
            path = os.path.join(source["path"], f)
        else:
            return
        if not self.m.exists(path):
            self.err(f"Application/{dig(app, 'metadata', 'name')}: values file {f} ({path}) does not exist")

    def check_values_files(self):
        for a in self.apps:
            for s in app_sources(a):
                for f in dig(s, "helm", "valueFiles", default=[]) or []:
                    self.values_file_exists(a, s, f)
                if self.is_this_repo(s) and s.get("path") and not self.m.exists(s["path"]):
                    self.err(f"Application/{dig(a, 'metadata', 'name')}: path {s['path']} does not exist")

    # scripts/cluster-up
    def check_cluster_up(self):
        try:
            cu = parse_cluster_up(self.m)
        except (OSError, AttributeError) as e:
            self.err(f"cannot read {CLUSTER_UP}: {e}")
            return
        self.cluster_up = cu
        matched = set()
        order = []
        for kind, step in cu["steps"]:
            if kind == "install":
                a = self.match_install(step)
            elif step in LEFT_TO_CLUSTER_UP:
                continue
            else:
                a = self.match_apply(step, cu)
            if a is not None:
                matched.add(dig(a, "metadata", "name"))
                order.append(a)
        for cmd in cu["istioctl"]:
            if cmd not in LEFT_TO_CLUSTER_UP:
                self.err(f"{CLUSTER_UP} runs `{cmd}`: no Application installs it and LEFT_TO_CLUSTER_UP "
                         f"gives no reason")
        self.addons = order
        for a in self.apps:
            n = dig(a, "metadata", "name")
            if n not in matched and a not in self.exchange_apps():
                self.err(f"Application/{n}: installs something scripts/cluster-up does not, and is no exchange "
                         f"strategy")
        # sync waves: cluster-up's order, then the exchange
        prev = None
        for a in order:
            if prev is not None and None not in (wave(prev), wave(a)) and wave(a) < wave(prev):
                self.err(f"Application/{dig(a, 'metadata', 'name')}: sync wave {wave(a)} comes before "
                         f"{dig(prev, 'metadata', 'name')}'s {wave(prev)}, which scripts/cluster-up installs first")
            prev = a
        last_addon = max((wave(a) for a in order if wave(a) is not None), default=None)
        for e in self.exchange_apps():
            if last_addon is not None and wave(e) is not None and wave(e) <= last_addon:
                self.err(f"Application/{dig(e, 'metadata', 'name')}: sync wave {wave(e)} is not after every "
                         f"add-on's (the last is {last_addon})")

    def match_install(self, inst):
        cands = [a for a in self.apps for s in app_sources(a) if s.get("chart") == inst["chart_name"]]
        if not cands:
            self.err(f"{CLUSTER_UP} installs {inst['chart']} (release {inst['release']}) but no Application does")
            return None
        a = cands[0]
        n = dig(a, "metadata", "name")
        s = next(s for s in app_sources(a) if s.get("chart") == inst["chart_name"])
        if norm_url(s.get("repoURL")) != norm_url(inst["repo"]):
            self.err(f"Application/{n}: chart repository {s.get('repoURL')} is not cluster-up's {inst['repo']}")
        rel = dig(s, "helm", "releaseName") or n
        if rel != inst["release"] or n != inst["release"]:
            self.err(f"Application/{n}: release {rel} (Application {n}) is not cluster-up's {inst['release']}: "
                     f"the add-ons find each other by these names")
        if dig(a, "spec", "destination", "namespace") != inst["namespace"]:
            self.err(f"Application/{n}: namespace {dig(a, 'spec', 'destination', 'namespace')} is not "
                     f"cluster-up's {inst['namespace']}")
        want = [f"$values/{f}" for f in inst["values"]]
        got = dig(s, "helm", "valueFiles", default=[]) or []
        if got != want:
            self.err(f"Application/{n}: values files {got} are not cluster-up's {want}")
        if dig(s, "helm", "values") or dig(s, "helm", "valuesObject") or dig(s, "helm", "parameters"):
            self.err(f"Application/{n}: sets values cluster-up does not (values/valuesObject/parameters)")
        rev = str(s.get("targetRevision"))
        var = inst["version_var"] or "its --version"
        pinned = inst.get("version")
        if pinned and rev != pinned:
            self.err(f"Application/{n}: chart version {rev} is not {var}={pinned}, which cluster-up installs "
                     f"(argocd/apps/values.yaml charts)")
        elif not pinned and rev != "*" and not re.fullmatch(r"v?\d+\.\d+\.\d+(-[\w.]+)?", rev):
            self.err(f"Application/{n}: chart version {rev!r} is neither \"*\" (cluster-up's latest) nor "
                     f"an exact version (give it to cluster-up as {var})")
        elif not pinned and rev != "*":
            self.notes.append(f"Application/{n} pins {inst['chart_name']} {rev}: run scripts/cluster-up "
                              f"with {var}={rev} for the same install")
        if inst["create_namespace"] and sync_options(a).get("CreateNamespace") != "true":
            self.err(f"Application/{n}: cluster-up creates namespace {inst['namespace']} "
                     f"(--create-namespace); the Application needs CreateNamespace=true")
        for group, kind, name, path in ADDON_RUNTIME_FIELDS.get(inst["chart_name"], []):
            if not ignores(a, group, kind, name, path) or sync_options(a).get("RespectIgnoreDifferences") != "true":
                self.err(f"Application/{n}: must ignore and keep {kind}/{name} {path} "
                         f"(ignoreDifferences + RespectIgnoreDifferences=true): the chart sets it at run "
                         f"time, and self-heal would undo it")
        for opt in ADDON_SYNC_OPTIONS.get(inst["chart_name"], []):
            if opt not in (dig(a, "spec", "syncPolicy", "syncOptions", default=[]) or []):
                self.err(f"Application/{n}: needs sync option {opt}")
        return a

    def match_apply(self, target, cu):
        url = re.match(r"https://raw\.githubusercontent\.com/([^/]+)/([^/]+)/([^/]+)/(.+)$", target)
        if url:
            owner, repo, rev, path = url.groups()
            want_repo, want_path = f"https://github.com/{owner}/{repo}", os.path.dirname(path)
            include, local = os.path.basename(path), False
        else:
            local = True
            want_repo = self.this_repo()
            if target.endswith("/") or os.path.isdir(self.m.path(target)):
                want_path, include, rev = target.rstrip("/"), None, None
            else:
                want_path, include, rev = os.path.dirname(target), os.path.basename(target), None
        cands = [a for a in self.apps for s in app_sources(a)
                 if norm_url(s.get("repoURL")) == norm_url(want_repo) and s.get("path") == want_path
                 and (include is None or fnmatch.fnmatch(include, dig(s, "directory", "include") or "*"))]
        if not cands:
            self.err(f"{CLUSTER_UP} applies {target} but no Application does (a directory source on "
                     f"{want_repo} path {want_path}{' include ' + include if include else ''})")
            return None
        a = cands[0]
        n = dig(a, "metadata", "name")
        s = next(s for s in app_sources(a) if s.get("path") == want_path)
        if rev is not None and s.get("targetRevision") != rev:
            self.err(f"Application/{n}: revision {s.get('targetRevision')} is not cluster-up's {rev} "
                     f"(the Istio release cluster-up installs)")
        selected = self.directory_files(s) if local else None
        if local and include:
            if selected != [target]:
                self.err(f"Application/{n}: selects {selected}, cluster-up applies only {target}")
        elif local:
            every = [p for p in self.m.files_under(want_path, recurse=False) if p.endswith((".yaml", ".yml", ".json"))]
            for p in sorted(set(every) - set(selected)):
                if p not in JUSTIFIED_EXCLUDES:
                    self.err(f"Application/{n}: leaves out {p}, which cluster-up applies")
            if not selected:
                self.err(f"Application/{n}: selects no file of {want_path}")
        if local and include is None and dig(s, "directory", "recurse"):
            self.err(f"Application/{n}: recurse: cluster-up applies only the top of {want_path}")
        return a

    def directory_files(self, s):
        d = s.get("directory") or {}
        files = [p for p in self.m.files_under(s["path"], recurse=bool(d.get("recurse")))
                 if p.endswith((".yaml", ".yml", ".json"))]

        def match(pattern, p):
            pats = re.findall(r"[^{},]+", pattern) if pattern.startswith("{") else [pattern]
            rel = os.path.relpath(p, s["path"])
            return any(fnmatch.fnmatch(rel, x) or fnmatch.fnmatch(os.path.basename(p), x) for x in pats)

        if d.get("include"):
            files = [p for p in files if match(d["include"], p)]
        if d.get("exclude"):
            files = [p for p in files if not match(d["exclude"], p)]
        return files

    # the exchange Applications
    def exchange_apps(self):
        return [a for a in self.apps if any(s.get("path") == CHART and self.is_this_repo(s) for s in app_sources(a))]

    def merged_values(self, app, params=None):
        values = yaml.safe_load(self.m.read(f"{CHART}/values.yaml")) or {}
        h = dig(app, "spec", "source", "helm") or {}
        for f in h.get("valueFiles") or []:
            if self.m.exists(os.path.join(CHART, f)):
                values = deep_merge(values, yaml.safe_load(self.m.read(os.path.join(CHART, f))) or {})
        if h.get("valuesObject"):
            values = deep_merge(values, h["valuesObject"])
        elif h.get("values"):
            values = deep_merge(values, yaml.safe_load(h["values"]) or {})
        for p in (h.get("parameters") or []) + [{"name": k, "value": v} for k, v in (params or [])]:
            over = {}
            set_path(over, p["name"], p["value"] if p.get("forceString") else yaml_scalar(str(p["value"])))
            values = deep_merge(values, over)
        return values

    def check_exchange(self):
        try:
            ns_labels = dig(yaml.safe_load(self.m.read(NAMESPACE_FILE)), "metadata", "labels") or {}
        except (OSError, yaml.YAMLError) as e:
            self.err(f"{NAMESPACE_FILE}: {e}")
            ns_labels = {}
        files = strategy_files(self.m)
        strategies = {"base"} | set(files) | set(deploy_strategies(self.m))
        by_strategy = {}
        hosts, dashboards, namespaces = {}, [], {}
        for a in self.exchange_apps():
            n = dig(a, "metadata", "name")
            src = dig(a, "spec", "source") or {}
            if dig(a, "spec", "sources"):
                self.err(f"Application/{n}: use spec.source (one source): the root keeps its helm parameters at "
                         f"{RELEASE_KNOB}")
                continue
            h = src.get("helm") or {}
            vfs = [os.path.basename(f) for f in h.get("valueFiles") or []]
            used = [s for s, f in files.items() if f in vfs]
            if len(used) > 1:
                self.err(f"Application/{n}: combines strategy files {used}; one strategy per Application")
            strategy = used[0] if used else "base"
            by_strategy.setdefault(strategy, []).append(n)
            ns = dig(a, "spec", "destination", "namespace")
            if not (h.get("releaseName") == n == ns):
                self.err(f"Application/{n}: release {h.get('releaseName')!r}, Application {n} and namespace {ns} "
                         f"must be one name: the chart names its objects, Secrets and policies after the "
                         f"release, and Argo CD's instance label after the Application")
            if ns in namespaces:
                self.err(f"Application/{n}: namespace {ns} is also {namespaces[ns]}'s")
            namespaces[ns] = n
            if src.get("targetRevision") != dig(self.m.root, "spec", "source", "targetRevision"):
                self.err(f"Application/{n}: revision {src.get('targetRevision')} is not the root's")
            if h.get("parameters") or h.get("fileParameters"):
                self.err(f"Application/{n}: helm parameters in git: they are the runtime knob of a release in "
                         f"progress, which the root ignores and keeps, so a change here would never reach the "
                         f"cluster; put values in valueFiles or valuesObject")
            auto = dig(a, "spec", "syncPolicy", "automated") or {}
            if not (auto.get("selfHeal") and auto.get("prune")) or auto.get("enabled") is False:
                self.err(f"Application/{n}: must sync automatically with selfHeal and prune")
            if sync_options(a).get("CreateNamespace") != "true":
                self.err(f"Application/{n}: needs CreateNamespace=true (it owns namespace {ns})")
            got = dig(a, "spec", "syncPolicy", "managedNamespaceMetadata", "labels", default={}) or {}
            if got != ns_labels:
                self.err(f"Application/{n}: namespace labels {got} are not {NAMESPACE_FILE}'s {ns_labels} "
                         f"(sidecar injection, Pod Security restricted)")
            try:
                values = self.merged_values(a)
            except (OSError, yaml.YAMLError) as e:
                self.err(f"Application/{n}: values: {e}")
                continue
            if dig(values, "istio", "enabled", default=True):
                for host in dig(values, "istio", "ingress", "hosts", default=[]) or []:
                    if host in hosts:
                        self.err(f"Application/{n}: ingress host {host!r} is also {hosts[host]}'s: the ingress "
                                 f"would route it to one of them at random")
                    hosts[host] = n
            if dig(values, "monitoring", "grafanaDashboard", "enabled"):
                dashboards.append(n)
        for s in sorted(strategies):
            if s not in by_strategy:
                where = f"helm/exchange/{files[s]}" if s in files else f"scripts/deploy {s}"
                self.err(f"strategy {s} ({where}) has no exchange Application")
        if len(dashboards) > 1:
            self.err(f"Applications {dashboards} all render the Grafana dashboards (fixed uids): only one may")

    def check_lookups(self):
        for p in self.m.files_under(f"{CHART}/templates"):
            if re.search(r"\blookup\s+\"", self.m.read(p)):
                self.notes.append(f"{p} uses lookup, which finds nothing when Argo CD renders the chart "
                                  f"(no cluster access): it renders as on a first install")

    def run(self):
        if self.m.root is None:
            return self
        self.check_files()
        self.check_shapes()
        self.check_root()
        self.check_projects()
        self.check_values_files()
        self.check_exchange()
        self.check_cluster_up()
        self.check_lookups()
        return self


# ---- renders ------------------------------------------------------------------------
def release_steps(checker, app, values):
    """The `argocd app set -p` equivalents of scripts/canary's and bluegreen-switch's
    steps, in order: (label, parameters so far, label of the step it follows)."""
    steps = []
    weights = canary_steps(checker.m)
    for svc, conf in sorted((values.get("services") or {}).items()):
        if not isinstance(conf, dict):
            continue
        for strategy, script in (("canary", CANARY), ("bluegreen", BLUEGREEN)):
            if conf.get("strategy") != strategy:
                continue
            if strategy == "canary" and not dig(conf, "canary", "candidate", "enabled", default=True):
                continue
            commands, variables = script_sets(checker.m, script)
            key = f"services.{svc}.{strategy}"
            live = dig(conf, "bluegreen", "live", default="blue")
            known = {name: str(dig(conf, strategy, *path.split("."), default=default) or "")
                     for name, (path, default) in variables.items()}
            known["to"] = "green" if live == "blue" else "blue"
            known["key"] = key

            def params_of(sets, weight=None):
                out = []
                for item in sets:
                    k, _, v = item.partition("=")
                    v = v.replace("$1", str(weight))
                    k, v = expand(k, known), expand(v, known)
                    if "$" in k + v:
                        checker.err(f"{script}: cannot simulate `--set {item}` (unknown variable)")
                    out.append((k, v))
                return out

            if not commands or (strategy == "canary" and not weights):
                checker.err(f"{script}: cannot find its steps and `--set` arguments to simulate")
                continue
            if strategy == "canary":
                known["last"] = str(weights[-1])  # the weight the release gate leaves
                if not any("$1" in x for c in commands for x in c):
                    # The release gate's Job walks the weights (VirtualService patches):
                    # on Argo CD the same steps are parameters.
                    commands = [["$key.weight=$1"]] + commands
            prev, params = "as committed", []
            stepping = [c for c in commands if any("$1" in x for x in c)]
            # What the script records after a failed analysis (weight 0, and what else
            # it sets then, such as the candidate scaled to zero): the abort branch,
            # not a step on the way to promotion.
            recorded = [c for c in commands if c not in stepping and (f"{key}.weight", "0") in params_of(c)
                        and not any(k.endswith((".enabled", ".version")) for k, _ in params_of(c))]
            for c in stepping:
                for w in weights:
                    params = [p for p in params if p[0] not in dict(params_of(c, w))] + params_of(c, w)
                    label = f"{strategy} {svc} " + " ".join(f"{k.removeprefix(key + '.')}={v}" for k, v in params_of(c, w))
                    steps.append((label, list(params), prev))
                    prev = label
                abort = params_of(c, 0)
                for r in recorded:
                    abort = [p for p in abort if p[0] not in dict(params_of(r))] + params_of(r)
                steps.append((f"{strategy} {svc} abort " + " ".join(f"{k.removeprefix(key + '.')}={v}" for k, v in abort),
                              [p for p in params if p[0] not in dict(abort)] + abort, prev))
            for c in commands:
                if c in stepping or c in recorded:
                    continue
                new = params_of(c)
                params = [p for p in params if p[0] not in dict(new)] + new
                label = f"{strategy} {svc} " + " ".join(f"{k.removeprefix(key + '.')}={v}" for k, v in new)
                steps.append((label, list(params), prev))
                prev = label
    return steps + checker.m.extra_steps.get(dig(app, "metadata", "name"), [])


def helm_args(checker, app, params, tmpdir):
    src = dig(app, "spec", "source") or {}
    h = src.get("helm") or {}
    name = dig(app, "metadata", "name")
    args = ["template", h.get("releaseName") or name, CHART, "-n", h.get("namespace") or dig(app, "spec", "destination", "namespace"),
            "--kube-version", checker.kube_version]
    for f in h.get("valueFiles") or []:
        args += ["-f", os.path.join(CHART, f)]
    vo = h.get("valuesObject") or (yaml.safe_load(h["values"]) if h.get("values") else None)
    if vo:
        path = os.path.join(tmpdir, f"{name}-values.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(vo, f)
        args += ["-f", path]
    for p in h.get("parameters") or []:
        args += ["--set-string" if p.get("forceString") else "--set", f"{p['name']}={p['value']}"]
    for k, v in params:
        args += ["--set", f"{k}={v}"]
    return args


def render_checks(checker, only=None, wanted=None, validate=True):
    """Renders every exchange Application (and directory Application of this repo) and
    validates the result. The self-test limits it to one Application (`only`), the
    variants `wanted` (a predicate on their labels) and may skip validate-manifests."""
    m = checker.m
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import check_rendered  # noqa: E402  (the chart's own static mesh checks)

    node = shell_settings(m, K8S_SH).get("KIND_NODE_IMAGE", "")
    version = re.search(r"kindest/node:v(\d+\.\d+)", node)
    # What Argo CD passes helm: the cluster's version (the kind node image's).
    checker.kube_version = f"{version.group(1)}.0" if version else "1.31.0"
    mesh_app = next((a for a in checker.apps for s in app_sources(a) if s.get("path") == "istio/mesh"), None)
    mesh_docs = []
    if mesh_app:
        for p in checker.directory_files(app_sources(mesh_app)[0]):
            mesh_docs += [d for d in yaml.safe_load_all(m.read(p)) if isinstance(d, dict) and d.get("kind")]
    renders, seen = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        batch = []   # (file, label) for validate-manifests

        def add_batch(label, docs):
            fresh = []
            for d in docs:
                h = hashlib.sha256(yaml.safe_dump(d, sort_keys=True).encode()).hexdigest()
                if h not in seen:
                    seen.add(h)
                    fresh.append(d)
            if fresh:
                path = os.path.join(tmp, f"r{len(batch)}.yaml")
                with open(path, "w", encoding="utf-8") as f:
                    yaml.safe_dump_all(fresh, f)
                batch.append((path, label))

        for a in checker.apps:
            n = dig(a, "metadata", "name")
            if only and n != only:
                continue
            for s in app_sources(a):
                if s.get("directory") is not None or (checker.is_this_repo(s) and s.get("path") != CHART
                                                      and s.get("path") and not s.get("chart")):
                    if not checker.is_this_repo(s):
                        continue
                    docs = []
                    for p in checker.directory_files(s):
                        try:
                            docs += [d for d in yaml.safe_load_all(m.read(p)) if isinstance(d, dict)]
                        except yaml.YAMLError as e:
                            checker.err(f"Application/{n}: {p} does not parse: {e}")
                    add_batch(f"Application/{n} ({s['path']})", docs)
        for a in checker.exchange_apps():
            n = dig(a, "metadata", "name")
            if only and n != only:
                continue
            if dig(a, "spec", "sources"):
                continue
            try:
                values = checker.merged_values(a)
            except (OSError, yaml.YAMLError):
                continue
            cap = []
            if dig(values, "monitoring", "podMonitor", "enabled") == "auto":
                cap.append(("monitoring.podMonitor.enabled", "true"))
            if dig(values, "monitoring", "prometheusRule", "enabled") == "auto":
                cap.append(("monitoring.prometheusRule.enabled", "true"))
            variants = [("as committed", [], None)]
            if cap:
                variants.append(("with the Prometheus operator's API (as in the cluster)", cap, None))
            variants += [(f"release step {label}", cap + params, f"release step {frm}" if frm != "as committed" else
                          ("with the Prometheus operator's API (as in the cluster)" if cap else "as committed"))
                         for label, params, frm in release_steps(checker, a, values)]
            ns = dig(a, "spec", "destination", "namespace")
            secrets = chart_secrets(m, dig(a, "spec", "source", "helm", "releaseName") or n, ns)
            tag = dig(values, "global", "image", "tag")
            if tag == "CHANGE-ME":
                checker.notes.append(f"Application/{n}: image tag is the placeholder {tag} "
                                     f"(argocd/apps/values.yaml imageTag: the tag scripts/build-images pushed)")
            by_label = {}
            for label, params, frm in variants:
                if wanted and not wanted(label):
                    continue
                args = helm_args(checker, a, params, tmp)
                out = m.run([m.helm, *args])
                where = f"Application/{n} {label}"
                if out.returncode != 0:
                    checker.err(f"{where}: helm template failed: {out.stderr.strip()[-500:]}")
                    continue
                if label == "as committed":
                    again = m.run([m.helm, *args])
                    if again.stdout != out.stdout:
                        checker.err(f"{where}: two renders differ: self-heal would never settle")
                docs = [d for d in yaml.safe_load_all(out.stdout) if isinstance(d, dict) and d.get("kind")]
                if m.doc_mutation:
                    m.doc_mutation(n, label, docs)
                renders.append(where)
                by_label[label] = docs
                add_batch(where, docs)
                docs_checks(checker, a, where, docs, checker.merged_values(a, params) if params else values,
                            mesh_docs, secrets, check_rendered)
                transition = getattr(check_rendered, "transition_errors", None)
                if frm in by_label and transition is not None:
                    for e in transition(by_label[frm], docs, ns):
                        checker.err(f"{where} (after {frm}): check_rendered transition: {e}")
        if batch and validate:
            out = m.run([m.validate, "-q", "--kube-version", checker.kube_version, *[p for p, _ in batch]])
            labels = dict(batch)
            for line in out.stdout.splitlines():
                if line.startswith("INVALID "):
                    path, _, rest = line[len("INVALID "):].partition(": ")
                    checker.err(f"{labels.get(path, path)}: validate-manifests: {rest}")
            if out.returncode != 0 and not any(l.startswith("INVALID ") for l in out.stdout.splitlines()):
                checker.err(f"validate-manifests failed: {(out.stdout + out.stderr).strip()[-500:]}")
            checker.validated = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "?"
    checker.renders = renders
    return checker


def hpa_manager_ignored(app, kind):
    """ignoreDifferences by the HPA's field manager (kube-controller-manager)."""
    return any(e.get("kind") in (kind, "*") and (e.get("group") or "") in ("apps", "*")
               and "kube-controller-manager" in (e.get("managedFieldsManagers") or [])
               for e in dig(app, "spec", "ignoreDifferences", default=[]) or [])


def docs_checks(checker, app, where, docs, values, mesh_docs, secrets, check_rendered):
    ns = dig(app, "spec", "destination", "namespace")
    hpas = {(dig(h, "spec", "scaleTargetRef", "kind"), dig(h, "spec", "scaleTargetRef", "name"))
            for h in docs if h["kind"] == "HorizontalPodAutoscaler"}
    for d in docs:
        name = dig(d, "metadata", "name")
        if d["kind"] == "Namespace":
            checker.err(f"{where}: renders Namespace {name}, which the Application creates (CreateNamespace): "
                        f"two owners")
        if (d["kind"], name) in hpas and dig(d, "spec", "replicas") is not None and not (
                (ignores(app, "apps", d["kind"], name, "/spec/replicas") or hpa_manager_ignored(app, d["kind"]))
                and sync_options(app).get("RespectIgnoreDifferences") == "true"):
            checker.err(f"{where}: {d['kind']}/{name} sets replicas and has an HPA: self-heal (and any sync) would "
                        f"set the count back and fight the autoscaler; ignore and keep /spec/replicas "
                        f"(ignoreDifferences + RespectIgnoreDifferences=true)")
        other = dig(d, "metadata", "namespace")
        if other and other != ns and not checker.project_admits_namespace(app, other):
            checker.err(f"{where}: {d['kind']}/{name} goes to namespace {other}, which the project does not admit")
    rel = dig(app, "spec", "source", "helm", "releaseName") or dig(app, "metadata", "name")
    r = check_rendered.run_checks(docs, ns, mesh_docs, [], secrets, rel,
                                  allow_served_by=bool(dig(values, "istio", "ingress", "exposeServedBy")),
                                  allow_reflection=False)
    for e in r.errors:
        checker.err(f"{where}: check_rendered: {e}")


# ---- self-test ----------------------------------------------------------------------
def child(m, name):
    return next(c for c in m.children if dig(c, "metadata", "name") == name)


def src0(app):
    return app_sources(app)[0]


def mutations():
    """(description, expected message fragment, mutate(model) -> optional render spec)."""
    def app_set(name, fn):
        return lambda m: fn(child(m, name))

    def drop(name):
        def f(m):
            m.children = [c for c in m.children if dig(c, "metadata", "name") != name]
        return f

    def set_in(obj, path, value):
        cur = obj
        for k in path[:-1]:
            cur = cur.setdefault(k, {})
        if value is KeyError:
            cur.pop(path[-1], None)
        else:
            cur[path[-1]] = value

    def overlay(path, text):
        return lambda m: m.overlay.__setitem__(path, text)

    def hpa_replicas(m):
        def mutate(app, label, docs):
            if app == "exchange" and label == "as committed":
                for d in docs:
                    if d["kind"] == "Deployment" and d["metadata"]["name"] == "exchange-order":
                        d["spec"]["replicas"] = 2
        m.doc_mutation = mutate
        child(m, "exchange")["spec"].pop("ignoreDifferences", None)
        return "exchange", lambda label: label == "as committed"

    def selector_change(m):
        def mutate(app, label, docs):
            if app == "exchange-canary" and label.startswith("release step canary inventory weight=25"):
                for d in docs:
                    if d["kind"] == "Deployment" and "inventory" in d["metadata"]["name"]:
                        d["spec"]["selector"]["matchLabels"]["exchange.dev/extra"] = "x"
                        d["spec"]["template"]["metadata"]["labels"]["exchange.dev/extra"] = "x"
        m.doc_mutation = mutate
        return "exchange-canary", lambda label: "weight=50" not in label and "weight=100" not in label \
            and "abort" not in label and "stable" not in label and "candidate" not in label

    def no_respect(m):
        opts = child(m, "exchange-rolling")["spec"]["syncPolicy"]["syncOptions"]
        opts.remove("RespectIgnoreDifferences=true")
        return "exchange-rolling", lambda label: label == "as committed"

    def render_values(name, values):
        def f(m):
            child(m, name)["spec"]["source"]["helm"]["valuesObject"] = deep_merge(
                child(m, name)["spec"]["source"]["helm"].get("valuesObject") or {}, values)
            return name, lambda label: label == "as committed"
        return f

    def extra_step(name, label, params):
        def f(m):
            m.extra_steps[name] = [(label, params, "as committed")]
            return name, lambda variant: variant in ("as committed", f"release step {label}")
        return f

    return [
        ("a file that does not parse", "does not parse", overlay(CM_PATCH, "data: [unclosed\n")),
        ("wrong apiVersion", "apiVersion is", app_set("loki", lambda a: a.__setitem__("apiVersion", "argoproj.io/v1"))),
        ("wrong kind", "kind is", app_set("loki", lambda a: a.__setitem__("kind", "Applicaton"))),
        ("no metadata.name", "metadata.name is missing", app_set("alloy", lambda a: a["metadata"].pop("name"))),
        ("child outside namespace argocd", "metadata.namespace is", app_set("alloy", lambda a: a["metadata"].__setitem__("namespace", "monitoring"))),
        ("no project", "spec.project is missing", app_set("jaeger", lambda a: a["spec"].pop("project"))),
        ("destination without server or name", "exactly one of server and name", app_set("jaeger", lambda a: a["spec"]["destination"].pop("server"))),
        ("destination without namespace", "destination.namespace is missing", app_set("kiali-server", lambda a: a["spec"]["destination"].pop("namespace"))),
        ("both source and sources", "exactly one of spec.source and spec.sources", app_set("istio-mesh", lambda a: a["spec"].__setitem__("sources", [a["spec"]["source"]]))),
        ("source without repoURL", "repoURL is missing", app_set("istio-monitoring", lambda a: a["spec"]["source"].pop("repoURL"))),
        ("source without targetRevision", "targetRevision is missing", app_set("istio-monitoring", lambda a: a["spec"]["source"].pop("targetRevision"))),
        ("source without path or chart", "needs path", app_set("alert-logger", lambda a: a["spec"]["source"].pop("path"))),
        ("unknown top-level spec field", "unknown field 'syncPolicies'", app_set("loki", lambda a: a["spec"].__setitem__("syncPolicies", {}))),
        ("unknown helm field", "unknown field 'valueFile'", app_set("loki", lambda a: src0(a)["helm"].__setitem__("valueFile", ["x"]))),
        ("unknown syncPolicy field", "unknown field 'selfHeal'", app_set("loki", lambda a: a["spec"]["syncPolicy"].__setitem__("selfHeal", True))),
        ("unknown sync option", "is not one Argo CD has", app_set("loki", lambda a: a["spec"]["syncPolicy"].setdefault("syncOptions", []).append("CreateNamespaces=true"))),
        ("sync wave not an integer", "is not an integer", app_set("loki", lambda a: a["metadata"]["annotations"].__setitem__(SYNC_WAVE, "early"))),
        ("$values without a ref source", "no source has ref", app_set("alloy", lambda a: a["spec"]["sources"][1].pop("ref"))),
        ("values from another repository", "not this repository", app_set("alloy", lambda a: a["spec"]["sources"][1].__setitem__("repoURL", "https://github.com/someone/else.git"))),
        ("chart name not cluster-up's", "installs grafana/loki", app_set("loki", lambda a: src0(a).__setitem__("chart", "loki-stack"))),
        ("chart repository not cluster-up's", "is not cluster-up's https://grafana.github.io/helm-charts", app_set("loki", lambda a: src0(a).__setitem__("repoURL", "https://grafana.github.io/charts"))),
        ("chart version not cluster-up's", "Application/alloy: chart version", app_set("alloy", lambda a: src0(a).__setitem__("targetRevision", "latest"))),
        ("chart version not the pin cluster-up is given", "is not KPS_VERSION=", lambda m: m.env.__setitem__("KPS_VERSION", "99.9.9")),
        ("values file not cluster-up's", "are not cluster-up's", app_set("alloy", lambda a: src0(a)["helm"].__setitem__("valueFiles", ["$values/scripts/lib/k8s/loki-values.yaml"]))),
        ("values file that does not exist", "does not exist", overlay("scripts/lib/k8s/alloy-values.yaml", None)),
        ("exchange values file that does not exist", "values-canry.yaml", app_set("exchange-canary", lambda a: a["spec"]["source"]["helm"].__setitem__("valueFiles", ["values-canry.yaml"]))),
        ("release name not cluster-up's", "is not cluster-up's otel-collector", app_set("otel-collector", lambda a: src0(a)["helm"].__setitem__("releaseName", "opentelemetry-collector"))),
        ("namespace not cluster-up's", "is not cluster-up's monitoring", app_set("loki", lambda a: a["spec"]["destination"].__setitem__("namespace", "logging"))),
        ("cluster-up install without an Application", "installs kiali/kiali-server", drop("kiali-server")),
        ("cluster-up kubectl apply without an Application", "applies istio/monitoring/", drop("istio-monitoring")),
        ("a file of istio/mesh left out", "leaves out istio/mesh/10-peer-authentication.yaml", app_set("istio-mesh", lambda a: a["spec"]["source"]["directory"].__setitem__("exclude", "{00-namespace.yaml,10-peer-authentication.yaml}"))),
        ("Jaeger from another Istio release", "revision 0.0.1 is not cluster-up's", app_set("jaeger", lambda a: a["spec"]["source"].__setitem__("targetRevision", "0.0.1"))),
        ("a new cluster-up install", "installs jetstack/cert-manager", lambda m: m.overlay.__setitem__(CLUSTER_UP, m.read(CLUSTER_UP) + "\nrun helm repo add jetstack https://charts.jetstack.io\nrun helm upgrade --install cert-manager jetstack/cert-manager -n cert-manager\n")),
        ("an Application cluster-up has no counterpart for", "installs something scripts/cluster-up does not", lambda m: m.children.append(
            dict(copy.deepcopy(child(m, "loki")), metadata={**child(m, "loki")["metadata"], "name": "tempo"}, spec={**copy.deepcopy(child(m, "loki")["spec"]), "sources": [dict(src0(child(m, "loki")), chart="tempo"), child(m, "loki")["spec"]["sources"][1]]}))),
        ("strategy without an Application", "strategy bluegreen", drop("exchange-bluegreen")),
        ("new strategy file without an Application", "strategy shadow (helm/exchange/values-shadow.yaml)", overlay(f"{CHART}/values-shadow.yaml", "services:\n  order:\n    strategy: canary\n")),
        ("exchange before an add-on", "is not after every add-on's", app_set("exchange-canary", lambda a: a["metadata"]["annotations"].__setitem__(SYNC_WAVE, "-5"))),
        ("add-ons out of cluster-up's order", "which scripts/cluster-up installs first", app_set("kiali-server", lambda a: a["metadata"]["annotations"].__setitem__(SYNC_WAVE, "-9"))),
        ("Application before its AppProject", "is not after its AppProject's", app_set("metrics-server", lambda a: a["metadata"]["annotations"].__setitem__(SYNC_WAVE, "-30"))),
        ("no Application health check", "no health check for argoproj.io/Application", overlay(CM_PATCH, "data:\n  application.resourceTrackingMethod: annotation\n")),
        ("an Application outside the root's chart", "is not included by the root", overlay("argocd/extra.yaml", "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: extra, namespace: argocd}\n")),
        ("a template that renders nothing", "renders nothing", lambda m: setattr(m, "templates", m.templates + [f"{APPS_DIR}/templates/forgotten.yaml"])),
        ("root pointing elsewhere", "the root does not include them", lambda m: m.root["spec"]["source"].__setitem__("path", "argocd")),
        ("repository named twice", "named in one place", lambda m: m.root["spec"]["source"]["helm"]["parameters"][0].__setitem__("value", "https://github.com/CHANGE-ME/exchange.git")),
        ("root undoing a release in progress", "undoes a release in progress", lambda m: m.root["spec"]["syncPolicy"].__setitem__("syncOptions", [])),
        ("root not ignoring helm parameters", "undoes a release in progress", lambda m: m.root["spec"].pop("ignoreDifferences")),
        ("helm parameters in git", "helm parameters in git", app_set("exchange-canary", lambda a: a["spec"]["source"]["helm"].__setitem__("parameters", [{"name": "services.inventory.canary.weight", "value": "50"}]))),
        ("exchange without self-heal", "with selfHeal and prune", app_set("exchange-rolling", lambda a: a["spec"]["syncPolicy"]["automated"].__setitem__("selfHeal", False))),
        ("exchange namespace without injection", "namespace labels", app_set("exchange", lambda a: a["spec"]["syncPolicy"]["managedNamespaceMetadata"]["labels"].pop("istio-injection"))),
        ("exchange release not its namespace", "must be one name", app_set("exchange-canary", lambda a: a["spec"]["source"]["helm"].__setitem__("releaseName", "exchange"))),
        ("two exchange copies on one ingress host", "ingress host 'canary.localhost'", app_set("exchange-bluegreen", lambda a: a["spec"]["source"]["helm"]["valuesObject"]["istio"]["ingress"].__setitem__("hosts", ["canary.localhost"]))),
        ("two exchange copies rendering dashboards", "render the Grafana dashboards", app_set("exchange-rolling", lambda a: a["spec"]["source"]["helm"]["valuesObject"]["monitoring"]["grafanaDashboard"].__setitem__("enabled", True))),
        ("exchange revision not the root's", "is not the root's", app_set("exchange-rolling", lambda a: a["spec"]["source"].__setitem__("targetRevision", "v0.1"))),
        ("project without a source repository", "does not admit source", lambda m: child(m, "exchange")["spec"]["project"] and next(c for c in m.children if c["kind"] == "AppProject")["spec"]["sourceRepos"].remove("https://grafana.github.io/helm-charts")),
        ("project without a destination", "does not admit destination", lambda m: next(c for c in m.children if c["kind"] == "AppProject")["spec"].__setitem__("destinations", [d for d in next(c for c in m.children if c["kind"] == "AppProject")["spec"]["destinations"] if d["namespace"] != "exchange-canary"])),
        ("unknown project", "has no AppProject", app_set("loki", lambda a: a["spec"].__setitem__("project", "platform"))),
        ("kube-prometheus-stack webhook caBundle fought by self-heal", "clientConfig.caBundle", app_set("kube-prometheus-stack", lambda a: a["spec"]["ignoreDifferences"].pop(0))),
        ("Grafana's random password fought by self-heal", "/data/admin-password", app_set("kube-prometheus-stack", lambda a: a["spec"]["ignoreDifferences"].pop(2))),
        ("Kiali's random signing key fought by self-heal", "kiali-signing-key", app_set("kiali-server", lambda a: a["spec"]["syncPolicy"].__setitem__("syncOptions", []))),
        ("kube-prometheus-stack without server-side apply", "ServerSideApply=true", app_set("kube-prometheus-stack", lambda a: a["spec"]["syncPolicy"]["syncOptions"].remove("ServerSideApply=true"))),
        # renders
        ("an exchange Application that does not render", "helm template failed", render_values("exchange-rolling", {"services": {"order": {"strategy": "sideways"}}})),
        ("an exchange Application whose render is invalid", "validate-manifests", render_values("exchange-bluegreen", {"services": {"user": {"extraEnv": [{"nme": "TYPO"}]}}})),
        ("an exchange Application whose render fails the mesh checks", "check_rendered", render_values("exchange", {"services": {"market-data": {"grpcReflection": True}}})),
        ("a release step that does not render", "release step canary inventory weight=150", extra_step("exchange-canary", "canary inventory weight=150", [("services.inventory.canary.weight", "150")])),
        ("HPA and replicas both set, the count not ignored", "fight the autoscaler", hpa_replicas),
        ("a release step that changes a Deployment's selector", "changes its selector", selector_change),
        ("HPA counts ignored but not kept", "fight the autoscaler", no_respect),
    ]


def self_test(repo, helm, validate):
    base = Model(repo, helm, validate)
    load(base)
    good = Checker(copy.deepcopy(base)).run()
    if good.errors:
        print("self-test: the unbroken state already fails:")
        for e in good.errors[:10]:
            print(f"  {e}")
        return 1
    failed = 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import check_rendered  # noqa: E402
    muts = [x for x in mutations()
            if hasattr(check_rendered, "transition_errors") or "changes its selector" not in x[1]]
    for desc, fragment, mutate in muts:
        m = copy.deepcopy(base)
        m.doc_mutation = None
        try:
            target = mutate(m)
        except Exception as e:  # a mutation that cannot apply is a failure of the test itself
            failed += 1
            print(f"  MISSED: {desc} (the mutation failed: {e!r})")
            continue
        c = Checker(m)
        try:
            c.run()
            if isinstance(target, tuple):
                render_checks(c, only=target[0], wanted=target[1], validate=fragment == "validate-manifests")
        except Exception as e:
            c.errors.append(f"checker crashed: {e!r}")
        c.errors = [" ".join(e.split()) for e in c.errors]
        hit = [e for e in c.errors if fragment in e]
        if hit:
            print(f"  caught: {desc}: {hit[0][:200]}")
        else:
            failed += 1
            print(f"  MISSED: {desc} (expected an error containing {fragment!r}; got {c.errors[:3]})")
    print(f"self-test: {len(muts) - failed}/{len(muts)} deliberate breaks caught")
    return 1 if failed else 0


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    repo_default = os.path.abspath(os.path.join(here, "..", "..", ".."))
    tools = os.path.join(repo_default, "..", "shared", "tools", "bin")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=repo_default, help="repository root (default: this script's)")
    ap.add_argument("--helm", default=os.path.join(tools, "helm"))
    ap.add_argument("--validate", default=os.path.join(tools, "validate-manifests"))
    ap.add_argument("--self-test", action="store_true", help="break the good state; fail unless every break is caught")
    a = ap.parse_args(argv)
    helm, validate = os.path.abspath(a.helm), os.path.abspath(a.validate)
    if a.self_test:
        return self_test(a.repo, helm, validate)
    m = Model(a.repo, helm, validate)
    load(m)
    c = Checker(m).run()
    if m.root is not None and not m.load_errors:
        render_checks(c)
    for n in c.notes:
        print(f"note: {n}")
    for e in c.errors:
        print(f"VIOLATION {e}")
    apps = len(c.apps) + (1 if m.root else 0)
    print(f"{apps} Applications ({len(c.exchange_apps())} of the exchange), {len(getattr(c, 'renders', []))} "
          f"renders of helm/exchange ({getattr(c, 'validated', 'not validated')}), {len(c.errors)} violations")
    return 1 if c.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
