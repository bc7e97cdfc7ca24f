#!/usr/bin/env python3
"""A changed Secret rolls the pods that read it, and only those (offline).

The chart puts a checksum/secrets annotation on every pod template that reads a
Secret (exchange.secretsChecksum in templates/_helpers.tpl): a hash of the keys it
reads, which it gets from the cluster with Helm's `lookup` (templates/_lookup.tpl,
the chart's only read of a Secret). `helm template` has no cluster, so this renders
a copy of the chart whose _lookup.tpl reads the Secrets from a file instead (the
shape `kubectl get secret -o json` has: metadata.uid, base64 data), with the
Secrets scripts/deploy creates (--secrets: "name key" lines from its dry run), and
checks:

  seam       the real _lookup.tpl is that one definition, calling lookup "v1"
             "Secret" in the release's namespace, and no other template reads a
             Secret, so the stand-in replaces every read
  offline    the real chart (lookup finds nothing, as under helm template and Argo
             CD) renders no checksum/secrets at all: stable, nothing rolls
  coverage   with the Secrets there, every workload that reads a Secret key (a
             secretKeyRef of any container) has the annotation; jobs (CronJobs,
             Jobs) are exempt: each run's pod reads the Secret as it starts
  unchanged  the same Secrets twice render the same bytes (an upgrade without a
             change rolls nothing); a key no pod reads, added to a Secret, changes
             nothing
  rotation   each key changed on its own (as `kubectl patch secret` then
             `scripts/deploy` does) changes the annotation of exactly the workloads
             that read that key, every track of them, and no other
  off        global.rollOnSecretChange=false renders no annotation
  valid      the render with the annotations validates strictly (validate-manifests)
             and passes check_rendered.py

Usage: check_secret_rolls.py --helm HELM --validate VALIDATE --secrets FILE
                             [--namespace exchange] -- HELM_TEMPLATE_ARGS...
Last line: "secret rolls: N keys, M workloads checked".
"""

import argparse
import base64
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
CHART = os.path.join(ROOT, "helm", "exchange")
ANNOTATION = "checksum/secrets"
# Reads the Secrets from files/test-secrets.json instead of the cluster.
STAND_IN = """{{- define "exchange.lookupSecret" -}}
{{- $all := .root.Files.Get "files/test-secrets.json" | fromJson -}}
{{- with get $all .name -}}
{{- toYaml (dict "uid" (.metadata.uid | default "") "data" (.data | default dict)) -}}
{{- end -}}
{{- end -}}
"""
JOB_KINDS = ("CronJob", "Job")


class Fail(Exception):
    pass


def pod_template(w):
    if w["kind"] == "CronJob":
        return w["spec"]["jobTemplate"]["spec"]["template"]
    return w["spec"]["template"]


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet") + JOB_KINDS]


def refs_of(w):
    """The (secret, key) pairs the pod's containers read."""
    out = set()
    spec = pod_template(w)["spec"]
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                out.add((ref["name"], ref["key"]))
        for ef in c.get("envFrom") or []:
            if ef.get("secretRef"):
                raise Fail(f"{w['kind']}/{w['metadata']['name']}: envFrom secretRef (every key of a Secret) "
                           f"is not covered by checksum/secrets")
    return out


def checksums(docs):
    return {f"{w['kind']}/{w['metadata']['name']}": (pod_template(w)["metadata"].get("annotations") or {}).get(ANNOTATION)
            for w in workloads(docs)}


def secret_objects(keys, seed):
    """kubectl-shaped Secrets: {name: {metadata: {name, uid}, data: {key: base64}}}."""
    out = {}
    for name, key in sorted(keys):
        s = out.setdefault(name, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                  "metadata": {"name": name, "uid": hashlib.sha256(f"uid {name}".encode()).hexdigest()[:32]},
                                  "data": {}})
        value = hashlib.sha256(f"{seed} {name} {key}".encode()).hexdigest()[:48]
        s["data"][key] = base64.b64encode(value.encode()).decode()
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--helm", default="helm")
    ap.add_argument("--validate", default="validate-manifests")
    ap.add_argument("--secrets", required=True, help="`secret key` lines: the Secrets scripts/deploy creates")
    ap.add_argument("--namespace", default="exchange")
    ap.add_argument("helm_args", nargs="*", help="helm template arguments after --")
    a = ap.parse_args(argv)
    with open(a.secrets, encoding="utf-8") as f:
        created = {tuple(line.split()[:2]) for line in f if len(line.split()) >= 2}
    if not created:
        raise Fail(f"{a.secrets} lists no Secret")

    # seam: the stand-in must replace the chart's every read of a Secret.
    tdir = os.path.join(CHART, "templates")
    real = open(os.path.join(tdir, "_lookup.tpl"), encoding="utf-8").read()
    if re.findall(r'define "([^"]+)"', real) != ["exchange.lookupSecret"] \
            or 'lookup "v1" "Secret" .root.Release.Namespace .name' not in real:
        raise Fail("templates/_lookup.tpl must hold exactly exchange.lookupSecret, calling "
                   "lookup \"v1\" \"Secret\" .root.Release.Namespace .name (the stand-in replaces it)")
    for fname in sorted(os.listdir(tdir)):
        text = open(os.path.join(tdir, fname), encoding="utf-8").read()
        if fname != "_lookup.tpl" and re.search(r'lookup\s+"v1"\s+"Secret"', text):
            raise Fail(f"templates/{fname} reads a Secret with lookup outside _lookup.tpl: the check cannot see it")

    tmp = tempfile.mkdtemp(prefix="secret-rolls-")
    chart = os.path.join(tmp, "exchange")
    shutil.copytree(CHART, chart)
    with open(os.path.join(chart, "templates", "_lookup.tpl"), "w", encoding="utf-8") as f:
        f.write(STAND_IN)
    store = os.path.join(chart, "files", "test-secrets.json")

    def render(secrets, extra=(), chart_dir=chart):
        with open(store, "w", encoding="utf-8") as f:
            json.dump(secrets, f, sort_keys=True)
        p = subprocess.run([a.helm, "template", "exchange", chart_dir, "-n", a.namespace] + a.helm_args + list(extra),
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise Fail(f"helm template failed: {p.stderr.strip()[-600:]}")
        return p.stdout, [d for d in yaml.safe_load_all(p.stdout) if isinstance(d, dict) and d.get("kind")]

    # offline: the real chart, no cluster.
    _, offline = render({}, chart_dir=CHART)
    marked = sorted(k for k, v in checksums(offline).items() if v)
    if marked:
        raise Fail(f"without a cluster (lookup finds nothing) {', '.join(marked)} still carry {ANNOTATION}: "
                   f"an Argo CD or helm template render would differ from run to run or roll for nothing")

    base = secret_objects(created, "one")
    text1, docs = render(base)
    sums = checksums(docs)
    readers = {}  # (secret, key) -> workloads that read it
    for w in workloads(docs):
        wid = f"{w['kind']}/{w['metadata']['name']}"
        for ref in refs_of(w):
            if w["kind"] not in JOB_KINDS:
                readers.setdefault(ref, set()).add(wid)
        if w["kind"] in JOB_KINDS:
            if sums[wid]:
                raise Fail(f"{wid}: a job's pod carries {ANNOTATION} (its runs read the Secret as they start)")
        elif refs_of(w) and not sums[wid]:
            raise Fail(f"{wid} reads {sorted(refs_of(w))} but has no {ANNOTATION}: changing them would not roll it")
        elif not refs_of(w) and sums[wid]:
            raise Fail(f"{wid} reads no Secret but carries {ANNOTATION}")
    unknown = sorted(set(readers) - created)
    if unknown:
        raise Fail(f"workloads read Secret keys scripts/deploy does not create: {unknown}")

    # unchanged: the same data twice, and the same data in a fresh copy of the objects.
    text2, _ = render(copy.deepcopy(base))
    if text1 != text2:
        raise Fail("the same Secrets rendered twice differ: every upgrade would roll pods")

    # rotation: one key at a time.
    rotated = 0
    for ref in sorted(readers):
        changed = copy.deepcopy(base)
        changed[ref[0]]["data"][ref[1]] = base64.b64encode(b"rotated-" + ref[1].encode()).decode()
        _, docs2 = render(changed)
        sums2 = checksums(docs2)
        moved = {w for w in sums if sums[w] != sums2[w]}
        if moved != readers[ref]:
            missing, extra = sorted(readers[ref] - moved), sorted(moved - readers[ref])
            raise Fail(f"Secret {ref[0]} key {ref[1]} changed: "
                       + (f"{', '.join(missing)} read it but would not roll" if missing else "")
                       + ("; " if missing and extra else "")
                       + (f"{', '.join(extra)} do not read it but would roll" if extra else ""))
        rotated += 1
    # A key nobody reads changes nothing.
    spare = copy.deepcopy(base)
    next(iter(spare.values()))["data"]["unread-key"] = base64.b64encode(b"x").decode()
    _, docs3 = render(spare)
    if checksums(docs3) != sums:
        raise Fail("a key no pod reads, added to a Secret, rolled pods")

    # off: no lookup, no annotation.
    _, off = render(base, ["--set", "global.rollOnSecretChange=false"])
    if any(checksums(off).values()):
        raise Fail("global.rollOnSecretChange=false still renders checksum/secrets")

    # valid: strictly, and as check_rendered.py sees a render.
    path = os.path.join(tmp, "render.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text1)
    p = subprocess.run([a.validate, "-q", path], capture_output=True, text=True)
    if p.returncode != 0:
        raise Fail(f"the render with checksum/secrets does not validate: {p.stdout.strip().splitlines()[-5:]}")
    valid = p.stdout.strip().splitlines()[-1]
    q = subprocess.run([sys.executable, os.path.join(HERE, "check_rendered.py"), "-n", a.namespace, path,
                        "--mesh", os.path.join(ROOT, "istio", "mesh"), "--allow-served-by", "--secrets", a.secrets],
                       capture_output=True, text=True)
    if q.returncode != 0:
        raise Fail(f"check_rendered.py rejects the render with checksum/secrets: {q.stdout.strip().splitlines()[-5:]}")
    shutil.rmtree(tmp, ignore_errors=True)

    n = sum(1 for w in sums if sums[w])
    print(f"  ok  offline render (no cluster): no {ANNOTATION} on any of {len(sums)} workloads")
    print(f"  ok  {n} workloads read a Secret and carry {ANNOTATION}; jobs are exempt")
    print(f"  ok  unchanged Secrets: the same bytes twice; a key no pod reads changes nothing")
    print(f"  ok  each of {rotated} keys rotated alone rolls exactly its readers")
    print(f"  ok  global.rollOnSecretChange=false: no annotation; strict validation: {valid}; check_rendered.py: 0 violations")
    print(f"secret rolls: {rotated} keys, {n} workloads checked")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Fail as e:
        print(f"FAIL {e}")
        sys.exit(1)
