#!/usr/bin/env python3
"""The release gate's dry run (helm/exchange/files/release_gate.py), offline.

Runs the real gate program (python3 -I -S: the standard library only, as in its
pinned image) with the environment of the Job the chart renders, against stand-ins
on 127.0.0.1:

  Kubernetes API  serves the RENDERED VirtualServices (from helm template) and applies
                  the gate's JSON patches (RFC 6902: test, add, remove, replace) and
                  merge patches (RFC 7386) to them for real, with resourceVersions,
                  and the scale subresource of the rendered Deployments; it wants
                  the ServiceAccount token as a Bearer token and allows only what the
                  RENDERED Role bound to the gate's ServiceAccount allows (verb,
                  resource, name), 403 otherwise
  Prometheus      answers the gate's /api/v1/query from a scenario: it parses the
                  PromQL (which metric: requests, failures or the p99 histogram; the
                  label matchers), so a query for another workload or version, another
                  reporter or namespace gets no data, and a failure query that leaves
                  out the gRPC statuses does not see gRPC failures
  gateway         takes the gate's load and records its headers (pinned to the
                  candidate, preview before the switch, none after)

Scenarios: a healthy canary walks every step; a candidate failing from step 2 is
rolled back after exactly `threshold` failed checks, then scaled to zero (after the
traffic left it); too little traffic and an unreachable Prometheus roll back (never
promote blind); metrics of another version only roll back; the run's deadline rolls
back; a candidate already scaled to zero is not analysed (exit 4, nothing changed);
a Role without the scale rule leaves the rollback incomplete (exit 3, traffic back
on the primary); blue/green: a failing idle color is never switched to, a failing
new live color is switched back, a healthy one stays.
After each: the VirtualService is asserted route by route (and must equal what
`helm template` renders for the values scripts/canary records: weight 0 and, after
a failure, candidate replicas 0, so the upgrade that records it changes no route),
the candidate's replica count equals that render's, and everything still validates
with validate-manifests.

Usage: check_release_gate.py --canary RENDER --canary-rolled-back RENDER --canary-100 RENDER
                             --bluegreen RENDER --bluegreen-switched RENDER
                             [--validate validate-manifests] [--python python3]
  (--canary and --bluegreen: full renders including the gate's Job, i.e. with
   releaseGate.run.id set.) Last line: "release gate: N scenarios passed".
"""

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

GATE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "helm", "exchange", "files", "release_gate.py")
TOKEN = "test-service-account-token"
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


class Fail(Exception):
    pass


def docs_of(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def find(docs, kind, name=None, pred=None):
    for d in docs:
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name) and (pred is None or pred(d)):
            return d
    raise Fail(f"no {kind} {name or ''} in the render")


# ---- patches ---------------------------------------------------------------------------
def pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    return parent, parts[-1]


def json_patch(doc, ops):
    """RFC 6902 on a copy of doc; raises ValueError (with 'test') when an op fails."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = pointer(doc, op["path"])
        if isinstance(parent, list):
            idx = len(parent) if key == "-" else int(key)
            if op["op"] == "test":
                if parent[idx] != op["value"]:
                    raise ValueError(f"test failed at {op['path']}")
            elif op["op"] == "replace":
                parent[idx] = op["value"]
            elif op["op"] == "add":
                parent.insert(idx, op["value"])
            elif op["op"] == "remove":
                del parent[idx]
            else:
                raise ValueError(f"unsupported op {op['op']}")
        else:
            if op["op"] == "test":
                if parent.get(key) != op["value"]:
                    raise ValueError(f"test failed at {op['path']}: {parent.get(key)!r} != {op['value']!r}")
            elif op["op"] == "replace":
                if key not in parent:
                    raise ValueError(f"replace of missing {op['path']}")
                parent[key] = op["value"]
            elif op["op"] == "add":
                parent[key] = op["value"]
            elif op["op"] == "remove":
                del parent[key]
            else:
                raise ValueError(f"unsupported op {op['op']}")
    return doc


def merge_patch(doc, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# ---- stand-ins -------------------------------------------------------------------------
class Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def allowed(rules, group, resource, verb, name):
    """RBAC: does one of the Role's rules allow verb on resource `name`?"""
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", [])
               and verb in r.get("verbs", []) and (not r.get("resourceNames") or name in r["resourceNames"])
               for r in rules)


class KubeAPI:
    """The VirtualServices and Deployments (their scale) of a render behind the API
    paths the gate uses, allowing what `rules` (the rendered Role) allows."""

    def __init__(self, namespace, objects, rules, deployments=()):
        self.ns = namespace
        self.rules = rules
        self.lock = threading.Lock()
        self.objects = {}
        self.version = 100
        for o in objects:
            o = copy.deepcopy(o)
            o["metadata"]["namespace"] = namespace
            self.version += 1
            o["metadata"]["resourceVersion"] = str(self.version)
            self.objects[o["metadata"]["name"]] = o
        # Deployment name -> replicas, as rendered (the scale subresource's spec.replicas).
        self.replicas = {d["metadata"]["name"]: d["spec"].get("replicas", 1) for d in deployments}
        self.history = []          # (name, object after the patch), VirtualServices
        self.scales = []           # (name, replicas, VirtualService patches before it)
        self.forbidden = []        # (verb, resource, name) the Role does not allow
        self.gets = 0
        self.conflict_on_get = 0    # the nth GET is followed by someone else's update
        self.patches_rejected = 0
        self.unauthorized = 0
        api = self

        class H(Quiet):
            def authorized(self, group, resource, name):
                if self.headers.get("authorization") != f"Bearer {TOKEN}":
                    api.unauthorized += 1
                    self.reply(401, {"kind": "Status", "code": 401})
                    return False
                verb = self.command.lower()
                if not allowed(api.rules, group, resource, verb, name):
                    api.forbidden.append((verb, resource, name))
                    self.reply(403, {"kind": "Status", "code": 403, "reason": "Forbidden"})
                    return False
                return True

            def scale_target(self):
                """The Deployment of a .../deployments/NAME/scale path, else None."""
                u = urllib.parse.urlparse(self.path)
                m = re.fullmatch(r"/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale", u.path)
                return (m.group(1), m.group(2)) if m else None

            def scale(self, ns, name):
                if not self.authorized("apps", "deployments/scale", name):
                    return
                if ns != api.ns or name not in api.replicas:
                    self.reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    return
                with api.lock:
                    if self.command == "PATCH":
                        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                        if self.headers.get("content-type", "") != "application/merge-patch+json":
                            self.reply(415, {"kind": "Status", "code": 415})
                            return
                        spec = merge_patch({"spec": {"replicas": api.replicas[name]}}, body)["spec"]
                        api.replicas[name] = int(spec["replicas"])
                        api.scales.append((name, api.replicas[name], len(api.history)))
                    n = api.replicas[name]
                self.reply(200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                                 "metadata": {"name": name, "namespace": ns},
                                 "spec": {"replicas": n}, "status": {"replicas": n}})

            def route(self):
                u = urllib.parse.urlparse(self.path)
                m = re.fullmatch(r"/apis/networking\.istio\.io/v1/namespaces/([^/]+)/virtualservices/([^/]+)", u.path)
                if not self.authorized("networking.istio.io", "virtualservices", m.group(2) if m else ""):
                    return None
                if not m or m.group(1) != api.ns or m.group(2) not in api.objects:
                    self.reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    return None
                return m.group(2)

            def do_GET(self):
                if self.scale_target():
                    self.scale(*self.scale_target())
                    return
                name = self.route()
                if name:
                    with api.lock:
                        obj = copy.deepcopy(api.objects[name])
                        api.gets += 1
                        if api.gets == api.conflict_on_get:
                            # someone else updates it right after this read
                            api.version += 1
                            api.objects[name]["metadata"]["resourceVersion"] = str(api.version)
                    self.reply(200, obj)

            def do_PATCH(self):
                if self.scale_target():
                    self.scale(*self.scale_target())
                    return
                name = self.route()
                if not name:
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                ctype = self.headers.get("content-type", "")
                with api.lock:
                    try:
                        if ctype == "application/json-patch+json":
                            new = json_patch(api.objects[name], body)
                        elif ctype == "application/merge-patch+json":
                            new = merge_patch(api.objects[name], body)
                        else:
                            self.reply(415, {"kind": "Status", "code": 415})
                            return
                    except (ValueError, KeyError, IndexError) as e:
                        api.patches_rejected += 1
                        self.reply(422, {"kind": "Status", "code": 422, "message": f"the server rejected our request: {e}"})
                        return
                    api.version += 1
                    new["metadata"]["resourceVersion"] = str(api.version)
                    api.objects[name] = new
                    api.history.append((name, copy.deepcopy(new)))
                self.reply(200, new)

        self.server = Server(H)


class FakeProm:
    """Answers the gate's three queries from scenario(state) -> {(workload, version):
    {"total", "http5xx", "grpc", "p99"}}; state is the current VirtualService."""

    def __init__(self, namespace, scenario, state):
        self.queries = []
        prom = self

        class H(Quiet):
            def do_GET(self):
                u = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(u.query).get("query", [""])[0]
                if u.path != "/api/v1/query" or not q:
                    self.reply(400, {"status": "error", "error": "bad request"})
                    return
                prom.queries.append(q)
                value = prom.answer(q, scenario(state()))
                result = [] if value is None else [{"metric": {}, "value": [0, repr(float(value))]}]
                self.reply(200, {"status": "success", "data": {"resultType": "vector", "result": result}})

        self.ns = namespace
        self.server = Server(H)

    def series(self, sel, data):
        """The scenario's numbers for one selector, or None (no such series)."""
        labels = {k: v for k, op, v in MATCHER.findall(sel) if op == "="}
        if labels.get("reporter") != "destination" or labels.get("destination_workload_namespace") != self.ns:
            return None
        return data.get((labels.get("destination_workload"), labels.get("destination_version")))

    def answer(self, q, data):
        sels = re.findall(r"\{([^{}]*)\}", q)
        if not sels:
            return None
        if q.startswith("histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{"):
            s = self.series(sels[0], data)
            return None if s is None or not s["total"] else s["p99"]
        if "istio_requests_total" not in q or "increase(" not in q:
            return None
        s = self.series(sels[0], data)
        if s is None:
            return None
        matchers = [dict(((k, op), v) for k, op, v in MATCHER.findall(sel)) for sel in sels]
        if len(sels) == 1 and not any(k[0] in ("response_code", "grpc_response_status") for k in matchers[0]):
            return s["total"] or None
        failed = 0
        for m in matchers:
            if m.get(("response_code", "=~")) == "5..|0":
                failed += s["http5xx"]
            elif m.get(("response_code", "!~")) == "5..|0" and m.get(("grpc_response_status", "=~")) == "2|4|13|14|15":
                failed += s["grpc"]
        return failed or None


class FakeGateway:
    def __init__(self):
        self.requests = []
        gw = self

        class H(Quiet):
            def handle_any(self):
                n = int(self.headers.get("content-length", 0) or 0)
                if n:
                    self.rfile.read(n)
                gw.requests.append({"method": self.command, "path": self.path,
                                    "x-canary": self.headers.get("x-canary"), "x-preview": self.headers.get("x-preview"),
                                    "authorization": self.headers.get("authorization")})
                if self.path == "/api/v1/auth/login":
                    self.reply(200, {"access_token": "load-token", "token_type": "Bearer"})
                elif self.path.startswith("/api/v1/") and not self.path.startswith("/api/v1/auth/") \
                        and self.headers.get("authorization") != "Bearer load-token":
                    self.reply(401, {"error": {"name": "unauthorized"}})
                else:
                    self.reply(200 if self.path != "/api/v1/auth/register" else 201, {})

            do_GET = do_POST = handle_any

        self.server = Server(H)


# ---- the runs ----------------------------------------------------------------------------
def gate_rules(docs):
    """The rules of the Role(s) bound to the gate Job's ServiceAccount, as rendered."""
    sa = find(docs, "Job")["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    return [rule for b in docs if b["kind"] == "RoleBinding"
            and any(x.get("kind") == "ServiceAccount" and x.get("name") == sa for x in b.get("subjects") or [])
            for rule in roles[b["roleRef"]["name"]].get("rules") or []]


def job_env(docs):
    job = find(docs, "Job")
    c = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def run_gate(python, env, extra, timeout=60):
    e = {k: v for k, v in os.environ.items() if not k.startswith("GATE_") and k not in ("PYTHONPATH", "KUBERNETES_SERVICE_HOST")}
    e.update(env)
    cmd = [python, "-I", "-S", GATE] + extra
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def healthy(total=400, p99=40):
    return {"total": total, "http5xx": 0, "grpc": 0, "p99": p99}


def weighted_routes(vs, stable, candidate):
    out = []
    for r in vs["spec"]["http"]:
        ws = {(d["destination"].get("subset")): d.get("weight") for d in r.get("route") or []}
        if stable in ws and candidate in ws:
            out.append((r["name"], ws[stable], ws[candidate]))
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for a in ("--canary", "--canary-rolled-back", "--canary-100", "--bluegreen", "--bluegreen-switched"):
        ap.add_argument(a, required=True)
    ap.add_argument("--namespace", default="exchange")
    ap.add_argument("--validate", default="validate-manifests")
    ap.add_argument("--python", default="python3")
    a = ap.parse_args(argv)
    ns = a.namespace
    tmp = tempfile.mkdtemp(prefix="release-gate-")
    token = os.path.join(tmp, "token")
    with open(token, "w", encoding="utf-8") as f:
        f.write(TOKEN + "\n")

    canary_docs = docs_of(a.canary)
    cenv = job_env(canary_docs)
    app, cand_workload, cand_version = cenv["GATE_APP"], cenv["GATE_WORKLOAD"], cenv["GATE_VERSION"]
    vs_names = cenv["GATE_VIRTUALSERVICE"].split(",")
    threshold = int(cenv["GATE_THRESHOLD"])
    steps = [int(s) for s in cenv["GATE_STEPS"].split(",")]
    samples = int(cenv["GATE_SAMPLES"])
    pin_name, pin_value = cenv["GATE_PIN_HEADER"].split("=", 1)
    canary_vs = [find(canary_docs, "VirtualService", n) for n in vs_names]
    canary_rules = gate_rules(canary_docs)
    cand_deploy = find(canary_docs, "Deployment", cand_workload)
    # What scripts/canary records after a failure: weight 0, the candidate scaled to zero.
    rolled_back = docs_of(a.canary_rolled_back)
    want0 = {n: find(rolled_back, "VirtualService", n)["spec"] for n in vs_names}
    want0_replicas = find(rolled_back, "Deployment", cand_workload)["spec"].get("replicas", 1)
    if want0_replicas != 0:
        raise Fail(f"the rolled-back render states {want0_replicas} replicas for {cand_workload}, not 0")
    want100 = {n: find(docs_of(a.canary_100), "VirtualService", n)["spec"] for n in vs_names}
    stable_workload = next(d["metadata"]["name"] for d in canary_docs if d["kind"] == "Deployment"
                           and d["spec"]["template"]["metadata"]["labels"].get("app") == app
                           and d["spec"]["template"]["metadata"]["labels"].get("exchange.dev/track") == "primary")
    stable_version = find(canary_docs, "Deployment", stable_workload)["spec"]["template"]["metadata"]["labels"]["version"]

    bg_docs = docs_of(a.bluegreen)
    benv = job_env(bg_docs)
    bg_vs_names = benv["GATE_VIRTUALSERVICE"].split(",")
    bg_vs = [find(bg_docs, "VirtualService", n) for n in bg_vs_names]
    bg_rules = gate_rules(bg_docs)
    bg_switched = {n: find(docs_of(a.bluegreen_switched), "VirtualService", n)["spec"] for n in bg_vs_names}
    bg_from, bg_to = benv["GATE_FROM_COLOR"], benv["GATE_TO_COLOR"]
    bg_key = (benv["GATE_WORKLOAD"], benv["GATE_VERSION"])
    prev_name, prev_value = benv["GATE_PREVIEW_HEADER"].split("=", 1)

    common = ["--token-file", token, "--ca-file", "", "--namespace", ns, "--interval", "0.05",
              "--deadline", "30", "--http-timeout", "2", "--sidecar", "0", "--api-attempts", "3"]
    passed = []

    patched = []  # every scenario's resulting VirtualServices, validated at the end (one call)

    def validate(objs, label):
        patched.extend((label, copy.deepcopy(o)) for o in objs)

    def canary_run(label, scenario, want_status, prom_down=False, conflicts=0, extra=(), replicas=None, rules=None):
        deploy = copy.deepcopy(cand_deploy)
        if replicas is not None:
            deploy["spec"]["replicas"] = replicas
        kube = KubeAPI(ns, canary_vs, canary_rules if rules is None else rules, [deploy])
        kube.conflict_on_get = conflicts
        gw = FakeGateway()

        def weight():
            ws = weighted_routes(kube.objects[vs_names[0]], "stable", "canary")
            return ws[0][2] if ws else None
        prom = FakeProm(ns, scenario, weight)
        prom_url = prom.server.url
        if prom_down:
            prom.server.close()
        try:
            status, out = run_gate(a.python, cenv, ["--api-url", kube.server.url, "--prometheus-url", prom_url,
                                                    "--load-url", gw.server.url, "--load-rps", "40"] + common + list(extra))
        finally:
            kube.server.close()
            gw.server.close()
            if not prom_down:
                prom.server.close()
        if status != want_status:
            raise Fail(f"{label}: exit status {status}, expected {want_status}\n{out}")
        if kube.unauthorized:
            raise Fail(f"{label}: the gate called the API without its ServiceAccount token")
        if kube.forbidden and rules is None:
            raise Fail(f"{label}: the rendered Role does not allow the gate's {kube.forbidden[0]}\n{out}")
        walk = [weighted_routes(o, "stable", "canary")[0][2] for n, o in kube.history if n == vs_names[0]]
        return kube, gw, prom, walk, out

    def expect_final(kube, want, label):
        """The routes (and the candidate's replicas) are helm's render of what scripts/canary records."""
        rendered = cand_deploy["spec"].get("replicas", 1)
        if want is want0:
            if kube.replicas[cand_workload] != want0_replicas:
                raise Fail(f"{label}: {cand_workload} runs {kube.replicas[cand_workload]} replicas after the rollback, "
                           f"not {want0_replicas} (the rolled-back render)")
            if [x[2] for x in kube.scales] != [len(kube.history)]:
                raise Fail(f"{label}: the candidate should be scaled down once, after the routes left it "
                           f"(scale patches {kube.scales}, route patches {len(kube.history)})")
        elif kube.scales or kube.replicas[cand_workload] != rendered:
            raise Fail(f"{label}: the candidate was scaled ({kube.scales}) though it passed")
        for n in vs_names:
            got = kube.objects[n]
            for name, s, c in weighted_routes(got, "stable", "canary"):
                if (s, c) != ((100, 0) if want is want0 else (0, 100)):
                    raise Fail(f"{label}: route {name} of {n} is stable {s} / canary {c}")
            if got["spec"] != want[n]:
                raise Fail(f"{label}: {n} differs from helm's render of the value scripts/canary records\n"
                           f"got  {json.dumps(got['spec'])[:600]}\nwant {json.dumps(want[n])[:600]}")
        validate([kube.objects[n] for n in vs_names], label)

    fails = lambda out: len(re.findall(r"check [^:]*: FAIL", out))

    # 1. healthy: every step, `samples` checks each, ends at the last step; an update
    #    of the VirtualService by someone else between the gate's read and its patch
    #    (after its second read) fails the guarded patch, which is read again, not forced.
    def s_healthy(w):
        return {(cand_workload, cand_version): healthy(), (stable_workload, stable_version): healthy()}
    kube, gw, prom, walk, out = canary_run("healthy canary", s_healthy, 0, conflicts=2)
    if walk != steps:
        raise Fail(f"healthy canary: weights walked {walk}, expected {steps}")
    if len(re.findall(r"check [^:]*: pass", out)) != len(steps) * samples or fails(out):
        raise Fail(f"healthy canary: expected {len(steps) * samples} passing checks and no failure\n{out}")
    if kube.patches_rejected != 1:
        raise Fail(f"healthy canary: the concurrent update should have failed one guarded patch ({kube.patches_rejected})")
    expect_final(kube, want100, "healthy canary")
    pinned = [r for r in gw.requests if r["path"] not in ("/api/v1/auth/register", "/api/v1/auth/login")]
    if not pinned or any(r["x-canary" if pin_name == "x-canary" else pin_name] != pin_value for r in pinned):
        raise Fail(f"healthy canary: the load should carry {pin_name}: {pin_value} ({len(pinned)} requests)")
    if not any((r["authorization"] or "") == "Bearer load-token" for r in pinned):
        raise Fail("healthy canary: the load's session requests carry no token")
    if not any(cand_workload in q and "histogram_quantile" in q for q in prom.queries):
        raise Fail("healthy canary: no p99 query for the candidate workload")
    passed.append(f"healthy canary: {'->'.join(map(str, walk))} %, {len(steps) * samples} checks passed, "
                  f"{len(pinned)} load requests pinned with {pin_name}")

    # 2. failing from the second step (5 % gRPC UNAVAILABLE): back to 0 after exactly `threshold` failures.
    def s_failing(w):
        bad = w is not None and w >= steps[1]
        s = {"total": 400, "http5xx": 0, "grpc": 20 if bad else 0, "p99": 40}
        return {(cand_workload, cand_version): s}
    kube, gw, prom, walk, out = canary_run("failing candidate", s_failing, 1)
    if walk != [steps[0], steps[1], 0]:
        raise Fail(f"failing candidate: weights walked {walk}, expected {[steps[0], steps[1], 0]}\n{out}")
    if fails(out) != threshold or "success rate below" not in out:
        raise Fail(f"failing candidate: expected exactly {threshold} failed checks (success rate)\n{out}")
    expect_final(kube, want0, "failing candidate")
    passed.append(f"failing candidate (95 % from {steps[1]} %): rolled back after {threshold} failed checks: "
                  f"{'->'.join(map(str, walk))} %")

    # 3. too little traffic: a failed check, not a pass.
    def s_quiet(w):
        return {(cand_workload, cand_version): healthy(total=int(cenv["GATE_MIN_REQUESTS"]) - 1)}
    kube, gw, prom, walk, out = canary_run("too little traffic", s_quiet, 1)
    if walk != [steps[0], 0] or fails(out) != threshold or "too little traffic" not in out:
        raise Fail(f"too little traffic: expected a rollback at {steps[0]} after {threshold} failed checks ({walk})\n{out}")
    expect_final(kube, want0, "too little traffic")
    passed.append(f"too little traffic: rolled back after {threshold} failed checks")

    # 4. Prometheus unreachable: never promote blind.
    kube, gw, prom, walk, out = canary_run("Prometheus unreachable", s_healthy, 1, prom_down=True)
    if walk != [steps[0], 0] or "no metrics" not in out:
        raise Fail(f"Prometheus unreachable: expected a rollback at {steps[0]} ({walk})\n{out}")
    expect_final(kube, want0, "Prometheus unreachable")
    passed.append("Prometheus unreachable: rolled back")

    # 5. only the stable version has metrics: the candidate's queries get no data.
    def s_stable_only(w):
        return {(stable_workload, stable_version): healthy()}
    kube, gw, prom, walk, out = canary_run("metrics of another version", s_stable_only, 1)
    if walk != [steps[0], 0]:
        raise Fail(f"metrics of another version: expected a rollback ({walk})\n{out}")
    passed.append(f"metrics of {stable_version} only: the {cand_version} queries get no data, rolled back")

    # 6. the run's deadline passes mid-analysis: rolled back.
    kube, gw, prom, walk, out = canary_run("deadline", s_healthy, 1, extra=["--interval", "0.2", "--deadline", "0.5"])
    if not walk or walk[-1] != 0 or "deadline" not in out:
        raise Fail(f"deadline: expected a rollback when the deadline passed ({walk})\n{out}")
    expect_final(kube, want0, "deadline")
    passed.append(f"deadline passed at {walk[-2] if len(walk) > 1 else '?'} %: rolled back")

    # 7. a candidate already scaled to zero (an earlier failure): not analysed, nothing changed.
    kube, gw, prom, walk, out = canary_run("candidate scaled to zero", s_healthy, 4, replicas=0)
    if kube.history or kube.scales or "scaled to zero" not in out or "scripts/deploy canary" not in out:
        raise Fail(f"candidate scaled to zero: expected no change and a message saying how to start it again\n{out}")
    passed.append("candidate already scaled to zero: not analysed (exit 4), nothing changed, told how to start it")

    # 8. a Role that may read the candidate's scale but not change it: the traffic still
    #    goes back; the gate says the rest failed. Without even `get` it does not start.
    no_scale = [r for r in canary_rules if "deployments/scale" not in r.get("resources", [])]
    kube, gw, prom, walk, out = canary_run("no scale rule", s_quiet, 4, rules=no_scale)
    if kube.history or "NOT STARTED" not in out:
        raise Fail(f"no scale rule: a gate that cannot read the candidate's scale must not start\n{out}")
    get_only = [dict(r, verbs=["get"]) if "deployments/scale" in r.get("resources", []) else r for r in canary_rules]
    kube, gw, prom, walk, out = canary_run("scale-down refused", s_quiet, 3, rules=get_only)
    if walk[-1:] != [0] or kube.replicas[cand_workload] == 0 or "SCALE-DOWN FAILED" not in out \
            or f"services.{app}.canary.candidate.replicas=0" not in out:
        raise Fail(f"scale-down refused: expected the traffic rolled back, exit 3 and the command to finish it\n{out}")
    passed.append("scale-down refused by RBAC: traffic rolled back, exit 3 naming the upgrade that finishes it "
                  "(no scale rule at all: not started)")

    # blue/green ------------------------------------------------------------------------
    def live_of(vs):
        for r in vs["spec"]["http"]:
            if not any(prev_name in (m.get("headers") or {}) for m in r.get("match") or []):
                return r["route"][0]["destination"]["subset"]
        return None

    def bg_run(label, pre_ok, post_ok, want_status):
        kube = KubeAPI(ns, bg_vs, bg_rules)
        gw = FakeGateway()

        def scenario(live):
            ok = pre_ok if live == bg_from else post_ok
            return {bg_key: healthy() if ok else {"total": 400, "http5xx": 40, "grpc": 0, "p99": 40}}
        prom = FakeProm(ns, scenario, lambda: live_of(kube.objects[bg_vs_names[0]]))
        try:
            # (checks every 0.1 s: the load has time to send its first requests)
            status, out = run_gate(a.python, benv, ["--api-url", kube.server.url, "--prometheus-url", prom.server.url,
                                                    "--load-url", gw.server.url, "--load-rps", "40"] + common
                                   + ["--interval", "0.1"])
        finally:
            for s in (kube, gw, prom):
                s.server.close()
        if status != want_status:
            raise Fail(f"{label}: exit status {status}, expected {want_status}\n{out}")
        lives = [live_of(o) for n, o in kube.history if n == bg_vs_names[0]]
        return kube, gw, lives, out

    def bg_final(kube, want, label):
        for n in bg_vs_names:
            if kube.objects[n]["spec"] != want[n]:
                raise Fail(f"{label}: {n} differs from helm's render\ngot  {json.dumps(kube.objects[n]['spec'])[:600]}"
                           f"\nwant {json.dumps(want[n])[:600]}")
        validate([kube.objects[n] for n in bg_vs_names], label)

    bg_orig = {n: find(bg_docs, "VirtualService", n)["spec"] for n in bg_vs_names}
    kube, gw, lives, out = bg_run("blue/green pre-switch failure", False, True, 1)
    if lives or kube.history or fails(out) != threshold:
        raise Fail(f"blue/green pre-switch failure: expected no switch after {threshold} failed checks ({lives})\n{out}")
    if not gw.requests or any(r["x-preview"] != prev_value for r in gw.requests):
        raise Fail(f"blue/green pre-switch: every load request should carry {prev_name}: {prev_value}")
    bg_final(kube, bg_orig, "blue/green pre-switch failure")
    passed.append(f"blue/green: {bg_to} failing before the switch (preview route): never switched")

    kube, gw, lives, out = bg_run("blue/green post-switch failure", True, False, 1)
    if lives != [bg_to, bg_from] or fails(out) != threshold:
        raise Fail(f"blue/green post-switch failure: expected {bg_to} then back to {bg_from} ({lives})\n{out}")
    if not any(r["x-preview"] is None for r in gw.requests) or not any(r["x-preview"] == prev_value for r in gw.requests):
        raise Fail("blue/green post-switch: the load should carry the preview header before the switch only")
    bg_final(kube, bg_orig, "blue/green post-switch failure")
    passed.append(f"blue/green: {bg_to} failing after the switch: switched back to {bg_from}")

    kube, gw, lives, out = bg_run("blue/green healthy", True, True, 0)
    if lives != [bg_to]:
        raise Fail(f"blue/green healthy: expected one switch to {bg_to} ({lives})\n{out}")
    bg_final(kube, bg_switched, "blue/green healthy")
    passed.append(f"blue/green: healthy {bg_to} switched and kept (= helm's render of live={bg_to})")

    path = os.path.join(tmp, "patched.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump_all([o for _, o in patched], f)
    p = subprocess.run([a.validate, "-q", path], capture_output=True, text=True)
    if p.returncode != 0:
        raise Fail(f"a patched VirtualService does not validate (Istio's CRD schema): {p.stdout.strip().splitlines()[-5:]}")
    for line in passed:
        print(f"  ok  {line}")
    print(f"  ok  every resulting VirtualService still validates: {p.stdout.strip().splitlines()[-1]}")
    print(f"release gate: {len(passed)} scenarios passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Fail as e:
        print(f"FAIL {e}")
        sys.exit(1)
