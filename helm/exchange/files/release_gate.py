#!/usr/bin/env python3
"""Release gate: canary and blue/green analysis, run inside the cluster as a Job.

The chart mounts this file from a ConfigMap (templates/release-gate.yaml) and
scripts/canary / scripts/bluegreen-switch start it as a Job per analysis run, so a
closed laptop cannot leave the traffic half way. Python 3 standard library only.

  canary     for each step weight: patch the VirtualService split (stable/canary
             subsets) to the step, then check the candidate once per interval until
             `samples` checks passed; every failed check counts, and after
             `threshold` failed checks the weight goes back to 0 (all to the
             primary), the routes pinned to the candidate go, the candidate
             Deployment is scaled to zero (as Flagger does) and the gate exits 1.
             After the last step the candidate keeps that step's weight (promotion
             is scripts/canary's: two helm upgrades). A candidate already scaled to
             zero is not analysed: the gate says so and changes nothing.
  bluegreen  checks the idle color through the preview route (`pre` checks must
             pass), switches the live route to it, then checks it as the live color
             for a bake time (`bake` checks); `threshold` failed checks before the
             switch: no switch; after it: switched back to the previous color.

A check asks Prometheus for Istio's standard metrics of the analysed workload (as
reported by its own sidecars: reporter="destination"), over `window`: the number
of requests (fewer than `min-requests` fails the check: too little traffic is not a
pass), the success rate (HTTP 5xx / no response, and gRPC UNKNOWN, DEADLINE_EXCEEDED,
INTERNAL, UNAVAILABLE, DATA_LOSS count as failures) and the p99 latency. A query
that fails (Prometheus unreachable, an error, a timeout) fails the check: the gate
never promotes blind. While it analyses, the gate sends its own load (`load-rps`
requests per second) to the gateway Service inside the mesh, carrying the canary
header (pinned to the candidate) or the preview header, so a step always has
traffic.

It changes nothing but the VirtualServices named by --virtualservice, with JSON
patches guarded by their resourceVersion (re-read and retried on a conflict), and,
in a canary rollback, the replica count of the candidate (--workload, through its
scale subresource). Every HTTP call has a timeout; the whole run has a deadline
(--deadline, below the Job's activeDeadlineSeconds) after which it rolls back;
SIGTERM (the Job deleted) rolls back too. Exit status: 0 passed, 1 failed and
rolled back, 3 the rollback itself failed (the message says what to run), 4 not
started (nothing was changed: the message says why).

Every option also reads GATE_<OPTION> from the environment (the Job sets those).
"""

import argparse
import json
import math
import os
import random
import signal
import ssl
import string
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# gRPC status codes that count as failures (as in the chart's dashboards and alerts).
GRPC_FAILURES = "2|4|13|14|15"
EXIT_PASSED, EXIT_ROLLED_BACK, EXIT_ROLLBACK_FAILED, EXIT_NOT_STARTED = 0, 1, 3, 4


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


class GateError(Exception):
    """A failure of the gate's own machinery (API, Prometheus, configuration)."""


class Stop(Exception):
    """The run must end now: its deadline passed or the pod is being stopped."""


# ---- HTTP ------------------------------------------------------------------------
def http(method, url, body=None, headers=None, timeout=5.0, context=None):
    """(status, bytes) of one request; raises GateError when there is no answer."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise GateError(f"{method} {url}: {getattr(e, 'reason', e)}") from None


# ---- Kubernetes API (in-cluster config) --------------------------------------------
class Kube:
    def __init__(self, url, token_file, ca_file, namespace, timeout):
        self.url = url.rstrip("/")
        self.token_file = token_file
        self.namespace = namespace
        self.timeout = timeout
        self.context = None
        if self.url.startswith("https://"):
            self.context = ssl.create_default_context(cafile=ca_file or None)

    def _headers(self, content_type=None):
        h = {"Accept": "application/json"}
        if self.token_file:
            # Read every time: projected tokens are rotated while the pod runs.
            with open(self.token_file, encoding="utf-8") as f:
                h["Authorization"] = "Bearer " + f.read().strip()
        if content_type:
            h["Content-Type"] = content_type
        return h

    def _vs_url(self, name):
        return f"{self.url}/apis/networking.istio.io/v1/namespaces/{self.namespace}/virtualservices/{name}"

    def _scale_url(self, deployment):
        return f"{self.url}/apis/apps/v1/namespaces/{self.namespace}/deployments/{deployment}/scale"

    def get_replicas(self, deployment):
        """The replica count Deployment `deployment` asks for (its scale subresource)."""
        status, data = http("GET", self._scale_url(deployment), headers=self._headers(),
                            timeout=self.timeout, context=self.context)
        if status != 200:
            raise GateError(f"GET Deployment {deployment} scale: HTTP {status}: {data[:200]!r}")
        try:
            return int((json.loads(data).get("spec") or {}).get("replicas", 0))
        except (ValueError, TypeError, AttributeError):
            raise GateError(f"Deployment {deployment} scale: unreadable answer") from None

    def scale(self, deployment, replicas):
        body = json.dumps({"spec": {"replicas": replicas}}).encode()
        status, data = http("PATCH", self._scale_url(deployment) + "?fieldManager=release-gate", body=body,
                            headers=self._headers("application/merge-patch+json"),
                            timeout=self.timeout, context=self.context)
        if status != 200:
            raise GateError(f"PATCH Deployment {deployment} scale: HTTP {status}: {data[:200]!r}")

    def get_vs(self, name):
        status, data = http("GET", self._vs_url(name), headers=self._headers(),
                            timeout=self.timeout, context=self.context)
        if status != 200:
            raise GateError(f"GET VirtualService {name}: HTTP {status}: {data[:200]!r}")
        return json.loads(data)

    def patch_vs(self, name, ops):
        """A JSON patch; returns False on a conflict (its resourceVersion test failed)."""
        url = self._vs_url(name) + "?fieldManager=release-gate"
        status, data = http("PATCH", url, body=json.dumps(ops).encode(),
                            headers=self._headers("application/json-patch+json"),
                            timeout=self.timeout, context=self.context)
        # A failed resourceVersion test: 409 Conflict, or 422 naming the test op.
        if status == 409 or (status == 422 and b"test" in data.lower()):
            return False
        if status != 200:
            raise GateError(f"PATCH VirtualService {name}: HTTP {status}: {data[:200]!r}")
        return True


def route_subsets(route):
    return [(d.get("destination") or {}).get("subset") for d in route.get("route") or []]


def canary_ops(vs, stable, candidate, weight):
    """JSON patch ops setting every stable/candidate split of vs to 100-weight/weight."""
    ops = []
    for i, r in enumerate((vs.get("spec") or {}).get("http") or []):
        subsets = route_subsets(r)
        if stable in subsets and candidate in subsets:
            for j, s in enumerate(subsets):
                want = weight if s == candidate else 100 - weight
                ops.append({"op": "replace", "path": f"/spec/http/{i}/route/{j}/weight", "value": want})
    return ops


def rollback_ops(vs, stable, candidate):
    """canary_ops at weight 0, and the removal of every route that sends only to the
    candidate (the pinned ones): its pods are about to go, and a pinned call to an
    empty subset gets a 503. Without them pinned calls take the weighted route, as
    the chart renders a candidate scaled to zero."""
    ops = canary_ops(vs, stable, candidate, 0)
    routes = (vs.get("spec") or {}).get("http") or []
    pinned = [i for i, r in enumerate(routes) if set(route_subsets(r)) == {candidate}]
    # Highest index first: each removal leaves the indexes before it as they were.
    ops += [{"op": "remove", "path": f"/spec/http/{i}"} for i in reversed(pinned)]
    return ops


def bluegreen_ops(vs, live, idle, header):
    """JSON patch ops making `live` the color of every default route and `idle` the
    preview route's, renaming the routes as the chart names them."""
    ops = []
    for i, r in enumerate((vs.get("spec") or {}).get("http") or []):
        subsets = route_subsets(r)
        if len(subsets) != 1 or subsets[0] not in ("blue", "green"):
            continue
        preview = any(header in (m.get("headers") or {}) for m in r.get("match") or [])
        color = idle if preview else live
        name = r.get("name") or ""
        kind = "preview" if preview else "live"
        prefix = name.rsplit(f"{kind}-", 1)[0] if f"{kind}-" in name else ""
        ops.append({"op": "replace", "path": f"/spec/http/{i}/route/0/destination/subset", "value": color})
        ops.append({"op": "replace", "path": f"/spec/http/{i}/name", "value": f"{prefix}{kind}-{color}"})
    return ops


def live_color(vs, header):
    for r in (vs.get("spec") or {}).get("http") or []:
        subsets = route_subsets(r)
        preview = any(header in (m.get("headers") or {}) for m in r.get("match") or [])
        if not preview and len(subsets) == 1 and subsets[0] in ("blue", "green"):
            return subsets[0]
    return None


def weights(vs, candidate):
    """The candidate's weight on each split route of vs (for the log)."""
    out = []
    for r in (vs.get("spec") or {}).get("http") or []:
        for d in r.get("route") or []:
            if (d.get("destination") or {}).get("subset") == candidate and "weight" in d:
                out.append(d["weight"])
    return out


# ---- Prometheus ----------------------------------------------------------------------
class Prom:
    def __init__(self, url, timeout):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def value(self, query):
        """The first sample's value (None when the result is empty or NaN)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        status, data = http("GET", url, timeout=self.timeout)
        if status != 200:
            raise GateError(f"Prometheus answered HTTP {status}")
        try:
            body = json.loads(data)
            if body.get("status") != "success":
                raise GateError(f"Prometheus: {body.get('error', 'query failed')}")
            result = body["data"]["result"]
            v = float(result[0]["value"][1]) if result else None
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise GateError(f"Prometheus: unreadable answer ({e})") from None
        return None if v is None or math.isnan(v) else v


def queries(sel, window):
    """The check's PromQL: (requests, failed requests, p99 ms) over window."""
    total = f"sum(increase(istio_requests_total{{{sel}}}[{window}]))"
    failed = (f"sum(increase(istio_requests_total{{{sel},response_code=~\"5..|0\"}}[{window}])"
              f" or increase(istio_requests_total{{{sel},response_code!~\"5..|0\","
              f"grpc_response_status=~\"{GRPC_FAILURES}\"}}[{window}]))")
    p99 = (f"histogram_quantile(0.99, sum by (le) "
           f"(rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{window}])))")
    return total, failed, p99


def selector(namespace, app, workload, version):
    return (f'reporter="destination",destination_workload_namespace="{namespace}",'
            f'destination_app="{app}",destination_workload="{workload}",destination_version="{version}"')


def check(prom, sel, a):
    """(passed, one-line summary) of one check."""
    q_total, q_failed, q_p99 = queries(sel, a.window)
    try:
        total = prom.value(q_total) or 0.0
        failed = prom.value(q_failed) or 0.0
        p99 = prom.value(q_p99)
    except GateError as e:
        return False, f"no metrics ({e}): a check without data fails"
    if total < a.min_requests:
        return False, f"too little traffic: {total:.0f} requests < {a.min_requests} in {a.window}"
    success = 100.0 * (1.0 - min(failed, total) / total)
    p99_text = "none" if p99 is None else f"{p99:.0f} ms"
    summary = f"{total:.0f} requests, success {success:.2f} %, p99 {p99_text}"
    if success < a.min_success:
        return False, f"{summary}: success rate below {a.min_success:g} %"
    if p99 is None:
        return False, f"{summary}: no latency histogram"
    if p99 > a.max_p99_ms:
        return False, f"{summary}: p99 above {a.max_p99_ms:g} ms"
    return True, summary


# ---- load --------------------------------------------------------------------------
class Load(threading.Thread):
    """Sends `rps` requests per second to base_url, cycling through `requests`
    ({method, path, body, session}); a session is a throwaway user registered and
    logged in once (again when its token expires)."""

    def __init__(self, base_url, rps, requests, timeout, run_id):
        super().__init__(daemon=True)
        self.base_url = base_url.rstrip("/")
        self.rps = rps
        self.requests = requests
        self.timeout = timeout
        self.headers = {}
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max(4, int(rps * timeout) + 1))
        self.counts = {}
        self.token = None
        self.registered = False
        self.login_lock = threading.Lock()
        self.login_after = 0.0
        self.email = f"release-gate-{run_id}-{random.randrange(16**6):06x}@example.com"
        self.password = "Gate-" + "".join(random.choice(string.ascii_letters + string.digits) for _ in range(20))

    def set_headers(self, headers):
        with self.lock:
            self.headers = dict(headers)

    def take_counts(self):
        with self.lock:
            out, self.counts = self.counts, {}
        return out

    def _count(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def _send(self, method, path, body=None, token=None):
        with self.lock:
            headers = dict(self.headers)
        headers["user-agent"] = "release-gate"
        if body is not None:
            headers["content-type"] = "application/json"
        if token:
            headers["authorization"] = "Bearer " + token
        data = body.encode() if isinstance(body, str) else body
        return http(method, self.base_url + path, body=data, headers=headers, timeout=self.timeout)

    def _login(self, stale):
        """The session's token: one login at a time (sign-ups are limited per address)."""
        with self.login_lock:
            if self.token is not None and self.token != stale:
                return self.token
            if time.monotonic() < self.login_after:
                raise GateError("load: waiting before logging in again")
            self.login_after = time.monotonic() + 10
            creds = json.dumps({"email": self.email, "password": self.password})
            if not self.registered:
                status, _ = self._send("POST", "/api/v1/auth/register", creds)
                self.registered = 200 <= status < 300
            status, data = self._send("POST", "/api/v1/auth/login", creds)
            if status != 200:
                raise GateError(f"load: login answered {status}")
            self.token = json.loads(data)["access_token"]
            return self.token

    def _one(self, req):
        try:
            token = self.token
            if req.get("session") and token is None:
                token = self._login(None)
            status, _ = self._send(req.get("method", "GET"), req["path"], req.get("body"),
                                   token if req.get("session") else None)
            if status == 401 and req.get("session"):
                self._login(token)  # expired: a new session for the next requests
            self._count(str(status))
        except (GateError, ValueError, KeyError):
            self._count("error")
        finally:
            self.slots.release()

    def run(self):
        if self.rps <= 0 or not self.requests:
            return
        period = 1.0 / self.rps
        n = 0
        nxt = time.monotonic()
        while not self.stop_event.is_set():
            if self.slots.acquire(blocking=False):
                req = self.requests[n % len(self.requests)]
                n += 1
                threading.Thread(target=self._one, args=(req,), daemon=True).start()
            else:
                self._count("skipped")
            nxt += period
            self.stop_event.wait(max(0.0, nxt - time.monotonic()))

    def stop(self):
        self.stop_event.set()


# ---- the run -------------------------------------------------------------------------
class Gate:
    def __init__(self, a, kube, prom, load):
        self.a = a
        self.kube = kube
        self.prom = prom
        self.load = load
        self.deadline = time.monotonic() + a.deadline
        self.stopping = threading.Event()
        self.failed = 0

    def sleep(self, seconds):
        end = time.monotonic() + seconds
        while True:
            if self.stopping.is_set():
                raise Stop("the pod is being stopped (SIGTERM)")
            left = min(end, self.deadline) - time.monotonic()
            if time.monotonic() >= self.deadline:
                raise Stop(f"the run's deadline ({self.a.deadline:g} s) passed")
            if left <= 0:
                return
            self.stopping.wait(min(left, 1.0))

    def patch(self, build, what):
        """Applies build(vs) to every VirtualService, re-reading on a conflict."""
        for name in self.a.virtualservice:
            for attempt in range(1, self.a.api_attempts + 1):
                try:
                    vs = self.kube.get_vs(name)
                    ops = build(vs)
                    if not ops:
                        raise GateError(f"VirtualService {name} has no route to change for {what}")
                    rv = (vs.get("metadata") or {}).get("resourceVersion")
                    guard = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}] if rv else []
                    if self.kube.patch_vs(name, guard + ops):
                        break
                    log(f"  VirtualService {name} changed meanwhile; reading it again")
                except GateError as e:
                    if attempt == self.a.api_attempts:
                        raise
                    log(f"  {e}; retrying")
                    time.sleep(min(2 ** attempt * 0.25, 5))
            else:
                raise GateError(f"VirtualService {name}: {self.a.api_attempts} conflicting updates in a row")
        log(f"  VirtualService {', '.join(self.a.virtualservice)}: {what}")

    def checks(self, sel, needed, label):
        """Runs checks until `needed` passed (True) or the failures reach threshold (False)."""
        passed = 0
        while passed < needed:
            self.sleep(self.a.interval)
            ok, summary = check(self.prom, sel, self.a)
            sent = self.load.take_counts() if self.load else {}
            load = f" [load: {', '.join(f'{k}x{v}' for k, v in sorted(sent.items()))}]" if sent else ""
            if ok:
                passed += 1
                log(f"  check {label}: pass {passed}/{needed}: {summary}{load}")
            else:
                self.failed += 1
                log(f"  check {label}: FAIL {self.failed}/{self.a.threshold}: {summary}{load}")
                if self.failed >= self.a.threshold:
                    return False
        return True

    def run(self):
        if self.load:
            # canary: pinned to the candidate; blue/green: the preview route first.
            a = self.a
            pin = a.pin_header if a.mode == "canary" else a.preview_header
            self.load.set_headers(dict([pin]) if pin else {})
            self.load.start()
        try:
            return self.canary() if self.a.mode == "canary" else self.bluegreen()
        finally:
            if self.load:
                self.load.stop()

    # canary ----------------------------------------------------------------------
    def canary(self):
        a = self.a
        sel = selector(a.workload_namespace or self.kube.namespace, a.app, a.workload, a.version)
        if self.kube.get_replicas(a.workload) == 0:
            raise GateError(f"the candidate Deployment {a.workload} is scaled to zero (an earlier analysis failed "
                            f"and scaled it down): there is nothing to analyse. Start it again without traffic "
                            f"first: scripts/deploy canary, or helm upgrade <release> helm/exchange --reuse-values "
                            f"--set services.{a.app}.canary.weight=0 --set services.{a.app}.canary.candidate.replicas=1")
        current = {n: weights(self.kube.get_vs(n), a.candidate_subset) for n in a.virtualservice}
        for n, w in current.items():
            if not w:
                raise GateError(f"VirtualService {n} splits no traffic to subset {a.candidate_subset}: "
                                "is the candidate enabled (services.<name>.canary.candidate.enabled)?")
        log(f"canary of {a.app} {a.version} ({a.workload}): steps {a.steps}, {a.samples} passing checks "
            f"each, one per {a.interval:g} s; rollback after {a.threshold} failed checks; now {current}")
        log(f"  a check passes with >= {a.min_requests} requests, success >= {a.min_success:g} %, "
            f"p99 <= {a.max_p99_ms:g} ms over {a.window} (Prometheus {self.prom.url})")
        step = None
        try:
            for step in a.steps:
                log(f"step: {step} % to {a.candidate_subset}")
                self.patch(lambda vs, w=step: canary_ops(vs, a.stable_subset, a.candidate_subset, w),
                           f"{a.stable_subset} {100 - step} %, {a.candidate_subset} {step} %")
                if not self.checks(sel, a.samples, f"{step} %"):
                    return self.rollback(f"{self.failed} failed checks at {step} %")
        except Stop as e:
            return self.rollback(str(e))
        except GateError as e:
            return self.rollback(f"the gate could not go on: {e}")
        log(f"PASSED: {a.app} {a.version} passed every step; it keeps {step} % until scripts/canary promotes it")
        return EXIT_PASSED

    def rollback(self, why):
        """All traffic to the primary, then the candidate scaled to zero (traffic
        first: its pods must not go while they still get requests)."""
        a = self.a
        record = (f"helm upgrade <release> helm/exchange --reuse-values --set services.{a.app}.canary.weight=0 "
                  f"--set services.{a.app}.canary.candidate.replicas=0")
        log(f"FAILED: {why}; rolling back: all traffic to {a.stable_subset}, {a.workload} scaled to zero")
        try:
            self.patch(lambda vs: rollback_ops(vs, a.stable_subset, a.candidate_subset),
                       f"{a.stable_subset} 100 %, {a.candidate_subset} 0 %, no route pinned to {a.candidate_subset}")
        except GateError as e:
            log(f"ROLLBACK FAILED: {e}. Run: {record}")
            return EXIT_ROLLBACK_FAILED
        log(f"ROLLED BACK: {a.app} {a.version} gets no traffic (weight 0)")
        for attempt in range(1, self.a.api_attempts + 1):
            try:
                self.kube.scale(a.workload, 0)
                break
            except GateError as e:
                if attempt == self.a.api_attempts:
                    log(f"SCALE-DOWN FAILED: {e}. {a.app} {a.version} gets no traffic, but its pods still run. "
                        f"Run: {record}")
                    return EXIT_ROLLBACK_FAILED
                log(f"  {e}; retrying")
                time.sleep(min(2 ** attempt * 0.25, 5))
        log(f"SCALED DOWN: Deployment {a.workload} to 0 replicas; scripts/canary records both in the release "
            f"(without it: {record})")
        return EXIT_ROLLED_BACK

    # blue/green ------------------------------------------------------------------
    def bluegreen(self):
        a = self.a
        name, value = a.preview_header
        live = {live_color(self.kube.get_vs(n), name) for n in a.virtualservice}
        if live != {a.from_color}:
            raise GateError(f"the live color is {sorted(c or '?' for c in live)}, not {a.from_color}: nothing to switch")
        sel = selector(a.workload_namespace or self.kube.namespace, a.app, a.workload, a.version)
        log(f"blue/green of {a.app}: {a.from_color} -> {a.to_color} ({a.workload}, {a.version}); "
            f"{a.pre_samples} passing checks before the switch (through '{name}: {value}'), {a.bake_samples} after it, "
            f"one per {a.interval:g} s; {a.threshold} failed checks abort")
        log(f"  a check passes with >= {a.min_requests} requests, success >= {a.min_success:g} %, "
            f"p99 <= {a.max_p99_ms:g} ms over {a.window} (Prometheus {self.prom.url})")
        try:
            log(f"pre-switch analysis of {a.to_color} (idle, preview route)")
            if not self.checks(sel, a.pre_samples, "pre-switch"):
                log(f"FAILED: {self.failed} failed checks before the switch; {a.from_color} stays live")
                return EXIT_ROLLED_BACK
        except (Stop, GateError) as e:
            log(f"FAILED: {e}; no switch: {a.from_color} stays live")
            return EXIT_ROLLED_BACK
        try:
            log(f"switch: {a.to_color} live")
            self.patch(lambda vs: bluegreen_ops(vs, a.to_color, a.from_color, name), f"live {a.to_color}")
            self.failed = 0
            if self.load:
                self.load.set_headers({})
            log(f"post-switch analysis of {a.to_color} (live)")
            if not self.checks(sel, a.bake_samples, "post-switch"):
                return self.switch_back(f"{self.failed} failed checks after the switch")
        except (Stop, GateError) as e:
            return self.switch_back(str(e))
        log(f"PASSED: {a.app} is live on {a.to_color}")
        return EXIT_PASSED

    def switch_back(self, why):
        a = self.a
        name = a.preview_header[0]
        log(f"FAILED: {why}; switching back to {a.from_color}")
        try:
            self.patch(lambda vs: bluegreen_ops(vs, a.from_color, a.to_color, name), f"live {a.from_color}")
        except GateError as e:
            log(f"SWITCH-BACK FAILED: {e}. Run: scripts/bluegreen-switch --service {a.app} --to {a.from_color}")
            return EXIT_ROLLBACK_FAILED
        log(f"SWITCHED BACK: {a.app} is live on {a.from_color} again")
        return EXIT_ROLLED_BACK


# ---- the sidecar ---------------------------------------------------------------------
def wait_sidecar(seconds):
    """Waits for the Istio sidecar's readiness (15021), so the first calls do not race it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if http("GET", "http://127.0.0.1:15021/healthz/ready", timeout=2)[0] == 200:
                return
        except GateError:
            pass
        time.sleep(1)
    log("the sidecar did not report ready; going on")


def quit_sidecar():
    """Asks the sidecar to exit, so the Job's pod completes (a native sidecar exits anyway)."""
    try:
        http("POST", "http://127.0.0.1:15020/quitquitquit", body=b"", timeout=2)
    except GateError:
        pass


# ---- options -------------------------------------------------------------------------
def header_arg(text):
    if not text:
        return None
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name.strip().lower(), value


def steps_arg(text):
    try:
        steps = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of percentages") from None
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(steps):
        raise argparse.ArgumentTypeError(f"{text!r}: steps are rising percentages in 1-100")
    return steps


def requests_arg(text):
    try:
        reqs = json.loads(text) if text else []
        assert isinstance(reqs, list) and all(isinstance(r, dict) and str(r.get("path", "")).startswith("/") for r in reqs)
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError("load requests: a JSON list of {method, path, body, session}") from None
    return reqs


def parse(argv):
    env = os.environ.get

    def opt(flag, **kw):
        key = "GATE_" + flag.lstrip("-").upper().replace("-", "_")
        if key in os.environ:
            kw["default"] = kw.get("type", str)(env(key)) if kw.get("action") != "append" else env(key).split(",")
            kw.pop("required", None)
        ap.add_argument(flag, **kw)

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    opt("--mode", choices=["canary", "bluegreen"], required=True)
    opt("--app", required=True, help="the service (destination_app)")
    opt("--workload", required=True, help="the analysed Deployment (destination_workload)")
    opt("--version", required=True, help="its version label (destination_version)")
    opt("--workload-namespace", default="", help="default: the pod's namespace")
    opt("--virtualservice", action="append", required=True, help="VirtualService(s) to patch (repeat, or comma-separated)")
    opt("--steps", type=steps_arg, default=[10, 25, 50, 100])
    opt("--stable-subset", default="stable")
    opt("--candidate-subset", default="canary")
    opt("--pin-header", type=header_arg, default=None, help="NAME=VALUE the load carries (canary: the pin)")
    opt("--from-color", choices=["blue", "green"])
    opt("--to-color", choices=["blue", "green"])
    opt("--preview-header", type=header_arg, default=("x-preview", "true"))
    opt("--samples", type=int, default=2, help="passing checks per canary step")
    opt("--pre-samples", type=int, default=2)
    opt("--bake-samples", type=int, default=2)
    opt("--threshold", type=int, default=2, help="failed checks before rollback")
    opt("--interval", type=float, default=30.0, help="seconds between checks")
    opt("--window", default="1m", help="PromQL range of a check")
    opt("--min-requests", type=int, default=20)
    opt("--min-success", type=float, default=99.0)
    opt("--max-p99-ms", type=float, default=500.0)
    opt("--prometheus-url", default="http://kube-prometheus-stack-prometheus.monitoring.svc.cluster.local:9090")
    opt("--load-url", default="")
    opt("--load-rps", type=float, default=5.0)
    opt("--load-requests", type=requests_arg, default=[{"method": "GET", "path": "/v1/ticker?markets=KRW-BTC"}])
    opt("--http-timeout", type=float, default=5.0, help="seconds, every HTTP call")
    opt("--api-attempts", type=int, default=5)
    opt("--deadline", type=float, default=1800.0, help="seconds; then roll back")
    opt("--api-url", default="")
    opt("--token-file", default=f"{SA_DIR}/token")
    opt("--ca-file", default=f"{SA_DIR}/ca.crt")
    opt("--namespace", default="")
    opt("--run-id", default="local")
    opt("--sidecar", type=int, default=0, help="1: wait for the Istio sidecar, and stop it at the end")
    a = ap.parse_args(argv)
    a.virtualservice = [n for v in a.virtualservice for n in str(v).split(",") if n]
    if a.mode == "bluegreen" and not (a.from_color and a.to_color and a.from_color != a.to_color):
        ap.error("bluegreen needs --from-color and --to-color (different)")
    for k in ("samples", "pre_samples", "bake_samples", "threshold", "api_attempts"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be at least 1")
    if not a.api_url:
        host, port = env("KUBERNETES_SERVICE_HOST"), env("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            ap.error("--api-url, or run in a pod (KUBERNETES_SERVICE_HOST)")
        a.api_url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
    if not a.namespace:
        try:
            with open(f"{SA_DIR}/namespace", encoding="utf-8") as f:
                a.namespace = f.read().strip()
        except OSError:
            ap.error("--namespace, or run in a pod")
    return a


def main(argv):
    a = parse(argv)
    if a.sidecar:
        wait_sidecar(60)
    kube = Kube(a.api_url, a.token_file, a.ca_file, a.namespace, a.http_timeout)
    prom = Prom(a.prometheus_url, a.http_timeout)
    load = Load(a.load_url, a.load_rps, a.load_requests, a.http_timeout, a.run_id) if a.load_url and a.load_rps > 0 else None
    gate = Gate(a, kube, prom, load)
    signal.signal(signal.SIGTERM, lambda *_: gate.stopping.set())
    try:
        status = gate.run()
    except GateError as e:
        log(f"NOT STARTED: {e}; nothing was changed")
        status = EXIT_NOT_STARTED
    if a.sidecar:
        quit_sidecar()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
