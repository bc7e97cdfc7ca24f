#!/usr/bin/env bash
# Offline checks of the Kubernetes delivery (no Docker, no cluster): the Helm chart,
# the Istio mesh files, the delivery scripts and the k6 scripts.
#
#   1. tools      ../shared/tools/install (helm v4 engine, validate-manifests, k6), shellcheck
#   2. chart      helm lint --strict + helm template for values.yaml, each strategy file
#                 and variants (monitoring on, Istio off, external stores, live Upbit, HA
#                 stores: values-ha.yaml, whose CloudNativePG Cluster is checked
#                 structurally by check_rendered.py instead, scheduled jobs off, the
#                 egress allow-list off, an extra ServiceEntry);
#                 every render validated strictly (Kubernetes 1.31, Istio, Prometheus
#                 operator CRDs); rendering twice gives the same bytes
#   3. mesh       static checks of every render with istio/mesh (check_rendered.py):
#                 subsets, weights, canary/blue-green/rolling shapes, labels, probes,
#                 limits, restricted security, NetworkPolicy and AuthorizationPolicy
#                 coverage of every wired call, one Sidecar per workload whose egress
#                 covers its calls (REGISTRY_ONLY; a ServiceEntry for every host outside
#                 the cluster), Secrets scripts/deploy creates; a
#                 release under another name in another namespace (payments in
#                 trading) whose every policy must name its own ServiceAccounts
#   4. negatives  deliberately broken values (scripts/lib/k8s/negative/) and broken
#                 renders (--self-test) must be rejected
#   4b. upgrades  every strategy switch the scripts make, upgrade by upgrade
#                 (check_rendered.py --transition): no Deployment changes its selector
#                 and no share of traffic goes to pods that do not run yet; the direct
#                 base -> canary upgrade is rejected (scripts/deploy splits it)
#   4c. release gate  the in-cluster canary/blue-green analysis (helm/exchange/files/
#                 release_gate.py) run for real against stand-ins of the Kubernetes API
#                 (serving and patching the rendered VirtualServices) and Prometheus
#                 (check_release_gate.py): promotion, rollback after `threshold` failed
#                 checks (weight 0, the candidate scaled to zero, what the release then
#                 records), too little traffic, Prometheus down, a candidate already
#                 scaled to zero left alone, blue/green pre/post
#   4d. secrets   a changed Secret rolls exactly the pods that read it, an unchanged one
#                 nothing (check_secret_rolls.py: the chart's lookup of Secrets replaced
#                 by a stand-in reading the Secrets scripts/deploy creates from a file)
#   5. observability  dashboards, alert rules and METRICS.txt (every metric name real:
#                 the exchange's own registered in the Rust sources, the others known
#                 exporter/Istio/kube names), the OpenTelemetry Collector values and
#                 who points at it, Alertmanager's routing and its webhook receiver
#                 (run for real on loopback) - check_observability.py, and its
#                 --self-test of deliberate breaks
#   6. scripts    shellcheck; each script's --dry-run prints the expected commands in
#                 order; a missing tool fails with a clear message; load-test refuses
#                 remote targets; images are built and deployed by commit tag, never
#                 v1/v2; cluster-up pins every version (kind node image by digest from
#                 a kind release with the probe fix, Istio, every add-on chart)
#   7. k6         k6 inspect of every load-test script
#   8. argocd     the app of apps in argocd/ (check_argocd.py): every Application renders,
#                 pins versions and agrees with cluster-up and the chart; and its --self-test
#
# Usage: scripts/lib/check-k8s.sh   (from anywhere; ../shared must sit beside the repo)
# Exit status 1 on any failure; a summary at the end.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

started=$SECONDS
SHARED=${SHARED:-../shared}
[[ -x $SHARED/tools/install ]] || die "$SHARED/tools/install not found: check out the shared tools beside the repository"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
failures=()
ok() { passed=$((passed + 1)); printf '  ok    %s\n' "$*"; }
bad() { failed=$((failed + 1)); failures+=("$*"); printf '  FAIL  %s\n' "$*"; }
# show FILE: the tail of a log, indented.
show() { tail -n "${2:-15}" "$1" | sed 's/^/        | /'; }

step "tools"
"$SHARED/tools/install"
TOOLS_BIN=$(cd "$SHARED/tools/bin" && pwd)
HELM=$TOOLS_BIN/helm
VALIDATE=$TOOLS_BIN/validate-manifests
K6=$TOOLS_BIN/k6
PY=${TOOLS_HOME:-$HOME/.cache/platform-tools}/venv/bin/python
"$PY" -c 'import yaml' 2>/dev/null || die "the tools virtualenv ($PY) has no PyYAML"
# A real PromQL parser for the dashboards' and rules' expressions (PyPI promql-parser).
"$PY" -c 'import promql_parser' 2>/dev/null || "$PY" -m pip install -q promql-parser >/dev/null \
  || die "cannot install promql-parser (PyPI) into the tools virtualenv ($PY)"
have shellcheck || apt_install shellcheck || die "cannot install shellcheck (apt-get install shellcheck)"
CHECK=("$PY" scripts/lib/k8s/check_rendered.py -n exchange)
CHART=helm/exchange
ok "helm $("$HELM" version --short 2>/dev/null || echo '?'), k6, validate-manifests, shellcheck $(shellcheck --version | sed -n 's/^version: //p'), promql-parser"

# ---------------------------------------------------------------------------------
step "scripts: shellcheck, dry runs"
scripts=(scripts/cluster-up scripts/build-images scripts/deploy scripts/canary scripts/bluegreen-switch
         scripts/rollback scripts/load-test scripts/cluster-down scripts/lib/k8s.sh scripts/lib/check-k8s.sh)
if shellcheck -x "${scripts[@]}" >"$work/shellcheck.log" 2>&1; then
  ok "shellcheck: ${#scripts[@]} files clean"
else
  bad "shellcheck"; show "$work/shellcheck.log" 30
fi
for s in "${scripts[@]}"; do
  [[ $s == *.sh ]] && [[ $s != */check-k8s.sh ]] && continue
  [[ -x $s ]] || bad "$s is not executable"
done

# in_order FILE PATTERN...: every pattern occurs, in this order (fixed strings; several
# may match one line, left to right).
in_order() {
  local file=$1
  shift
  awk -v pats="$(printf '%s\037' "$@")" '
    BEGIN { n = split(pats, p, "\037") - 1; i = 1 }
    {
      rest = $0
      while (i <= n && (k = index(rest, p[i])) > 0) { rest = substr(rest, k + length(p[i])); i++ }
    }
    END { if (i <= n) { print "missing (in order): " p[i]; exit 1 } }' "$file"
}

# dry NAME EXPECTED_STATUS COMMAND... -- PATTERN...: runs COMMAND, checks status and order.
dry() {
  local name=$1 want=$2
  shift 2
  local cmd=()
  while [[ $1 != -- ]]; do cmd+=("$1"); shift; done
  shift
  local log="$work/dry-${name//[^A-Za-z0-9]/_}.log" status=0
  "${cmd[@]}" >"$log" 2>&1 </dev/null || status=$?
  if [[ $status != "$want" ]]; then
    bad "$name: exit status $status, expected $want"; show "$log"
  elif ! in_order "$log" "$@" >"$log.why"; then
    bad "$name: $(cat "$log.why")"; show "$log"
  else
    ok "$name"
  fi
}

dry "cluster-up --dry-run" 0 scripts/cluster-up --dry-run -- \
  "docker run -d --restart=always -p 127.0.0.1:5002:5000" "--name kind-registry registry:2." \
  "kind create cluster --name exchange" "--image kindest/node:v1." "@sha256:" "--config scripts/lib/k8s/kind-config.yaml" \
  "/etc/containerd/certs.d/localhost:5002/hosts.toml" '[host."http://kind-registry:5000"]' \
  "docker network connect kind kind-registry" "local-registry-hosting.yaml" \
  "helm repo add open-telemetry https://open-telemetry.github.io/opentelemetry-helm-charts" \
  "metrics-server" "kube-prometheus-stack" "kubectl apply -f scripts/lib/k8s/alert-logger.yaml" \
  "grafana/loki" "grafana/alloy" \
  "istioctl install -y -f istio/install/istio-operator.yaml" "openssl req -x509" \
  "kubectl -n istio-system create secret tls exchange-ingress-tls" \
  "raw.githubusercontent.com/istio/istio/1." "samples/addons/jaeger.yaml" \
  "helm upgrade --install otel-collector open-telemetry/opentelemetry-collector -n monitoring" \
  "-f scripts/lib/k8s/otel-collector-values.yaml" "kiali-server kiali/kiali-server" \
  "kubectl apply -f istio/mesh/" "kubectl apply -f istio/monitoring/"
# Images are tagged by commit (immutable), never v1/v2 (re-pushed: pods would keep the old build).
TAG=abc123def456
# Every version cluster-up installs is pinned: each add-on chart with --version, Jaeger's
# addon from an Istio release tag (not a branch), the node image by digest.
# unpinned_installs LOG: the helm installs of LOG without --version, and add-ons from a branch.
unpinned_installs() {
  grep -E '^\+ helm upgrade --install' "$1" | grep -v -- '--version ' | cut -c1-100
  grep -E '^\+ kubectl apply -f https://' "$1" | grep -E '/(release-[0-9.]+|master|main)/' | cut -c1-100
  return 0
}
cu_log="$work/dry-cluster_up___dry_run.log"
awk '!done && /^\+ helm upgrade --install/ { sub(/ --version [^ ]+/, ""); done = 1 } { print }' "$cu_log" >"$work/cluster-up-floating.log"
if [[ ! -s $cu_log ]] || [[ $(grep -c '^+ helm upgrade --install' "$cu_log") -lt 6 ]]; then
  bad "cluster-up --dry-run: expected six add-on chart installs"
elif [[ -n $(unpinned_installs "$cu_log") ]]; then
  bad "cluster-up installs floating versions: $(unpinned_installs "$cu_log" | head -n1)"
elif [[ -z $(unpinned_installs "$work/cluster-up-floating.log") ]]; then
  bad "cluster-up pin check: an install without --version went unnoticed"
else
  ok "cluster-up pins every add-on chart (--version), Jaeger's addon by Istio tag, the node image by digest (an unpinned install is caught)"
fi
dry "cluster-up refuses a node image without a digest" 1 env KIND_NODE_IMAGE=kindest/node:v1.31.4 scripts/cluster-up --dry-run -- \
  "KIND_NODE_IMAGE=kindest/node:v1.31.4 is not pinned by digest"
dry "cluster-up refuses a node image from kind < v0.28 (kindnetd drops probes under default deny)" 1 \
  env KIND_VERSION=v0.26.0 KIND_NODE_IMAGE=kindest/node:v1.31.4@sha256:0000000000000000000000000000000000000000000000000000000000000000 \
  scripts/cluster-up --dry-run -- "node images of kind releases before v0.28.0 drop kubelet probes"

dry "build-images --dry-run" 0 env IMAGE_TAG=$TAG scripts/build-images --dry-run -- \
  "docker buildx create --name exchange-builder --driver docker-container --driver-opt network=host" \
  "--target gateway -t localhost:5002/exchange/gateway:$TAG --push ." \
  "--target market-data" "--target order" "--target inventory" "--target user" "--target ingestor" "--target upbit-sim"
if grep -Eq -- '-t [^ ]*:(v[0-9]+|latest)( |$)' "$work/dry-build_images___dry_run.log"; then
  bad "build-images pushes a mutable tag (v1/v2/latest): $(grep -Eo -- '-t [^ ]*:(v[0-9]+|latest)' "$work/dry-build_images___dry_run.log" | head -n1)"
else
  ok "build-images pushes no mutable tag (only the commit tag)"
fi
commit_tag=$(git rev-parse --short=12 HEAD 2>/dev/null || echo none)
dry "build-images --dry-run tags the git commit" 0 env -u IMAGE_TAG scripts/build-images --dry-run order -- \
  "--target order -t localhost:5002/exchange/order:$commit_tag"
dry "build-images refuses a version tag" 1 scripts/build-images --dry-run --tags v2 order -- \
  "--tags: v2 is a tag that gets re-pushed"
dry "build-images --dry-run --platforms (multi-arch)" 0 env IMAGE_TAG=$TAG scripts/build-images --dry-run --platforms linux/amd64,linux/arm64 order -- \
  "--target order --platform linux/amd64,linux/arm64 -t localhost:5002/exchange/order:$TAG"
for strategy in base rolling canary bluegreen; do
  file_pattern="helm upgrade --install exchange helm/exchange -n exchange"
  [[ $strategy != base ]] && file_pattern+=" -f helm/exchange/values-$strategy.yaml"
  dry "deploy $strategy --dry-run" 0 env IMAGE_TAG=$TAG scripts/deploy "$strategy" --dry-run -- \
    "kubectl apply -f -" "kind: Namespace" "name: exchange" "istio-injection: enabled" \
    "create secret generic exchange-postgresql" "create secret generic exchange-redis" \
    "create secret generic exchange-user-secrets" "kubectl apply -f istio/mesh/10-peer-authentication.yaml" "$file_pattern" \
    "--set global.image.tag=$TAG" "--wait" "rollout status"
done
dry "deploy deploys the git commit tag" 0 env -u IMAGE_TAG scripts/deploy base --dry-run -- \
  "--set global.image.tag=$commit_tag"
dry "deploy refuses a version tag" 1 env IMAGE_TAG=v1 scripts/deploy base --dry-run -- \
  "IMAGE_TAG=v1 is a tag that gets re-pushed"
# Switching a running base release to canary: the candidate starts at weight 0 first.
dry "deploy canary over a running base: candidate started without traffic first" 0 \
  env PATH="$TOOLS_BIN:$PATH" IMAGE_TAG=$TAG DEPLOY_TEST_EXISTING=exchange-inventory,exchange-user,exchange-order \
  scripts/deploy canary --dry-run -- \
  "services.inventory.canary.weight=0" "step 1 of 2" "-f helm/exchange/values-canary.yaml" \
  "--set services.inventory.canary.weight=0 --wait" "step 2 of 2" "--set global.image.tag=$TAG --wait"
dry "deploy bluegreen over a running base: blue is the running Deployment, one upgrade" 0 \
  env PATH="$TOOLS_BIN:$PATH" IMAGE_TAG=$TAG DEPLOY_TEST_EXISTING=exchange-inventory,exchange-user,exchange-order \
  scripts/deploy bluegreen --dry-run -- "nothing to start first" "helm upgrade --install exchange helm/exchange -n exchange -f helm/exchange/values-bluegreen.yaml"
# Another namespace and release name: the namespace, Secrets and release follow them
# (the chart names its objects <release>-exchange-* unless the release contains "exchange").
dry "deploy into another namespace and release --dry-run" 0 env IMAGE_TAG=$TAG NAMESPACE=trading RELEASE=payments scripts/deploy base --dry-run -- \
  "kind: Namespace" "name: trading" "kubectl -n trading create secret generic payments-exchange-postgresql" \
  "kubectl -n trading create secret generic payments-exchange-user-secrets" \
  "helm upgrade --install payments helm/exchange -n trading"
if grep -q "00-namespace.yaml\|name: exchange\$" "$work/dry-deploy_into_another_namespace_and_release___dry_run.log"; then
  bad "deploy into namespace trading also applies namespace exchange"
else
  ok "deploy into namespace trading leaves namespace exchange alone"
fi
# Promotion in two upgrades: the primary rolls to v2 while the candidate keeps its share,
# then the traffic returns to the primary and the candidate goes.
dry "canary --dry-run" 0 scripts/canary --dry-run -- \
  "helm get values exchange -n exchange --all -o yaml" \
  "helm template exchange helm/exchange -n exchange -f" "-s templates/release-gate-job.yaml" \
  "--set releaseGate.run.id=dryrun --set releaseGate.run.mode=canary --set releaseGate.run.service=inventory" \
  "kubectl -n exchange create -f" "kubectl -n exchange logs -f job/exchange-gate-inventory-dryrun -c release-gate" \
  "promote (1/2)" "--set services.inventory.canary.weight=100 --set services.inventory.canary.stable.version=v2 --set services.inventory.canary.stable.tag= --wait" \
  "promote (2/2)" "--set services.inventory.canary.candidate.enabled=false --set services.inventory.canary.weight=0"
# The gate's settings reach its Job; a failed analysis (the Job already rolled back
# and scaled the candidate to zero) is recorded in the release as weight 0 and
# candidate replicas 0, there is no promotion, and the message says how to try again.
dry "canary --dry-run: a failed analysis is recorded as weight 0, candidate scaled to zero" 1 env RELEASE_GATE_TEST_RESULT=failed \
  scripts/canary --dry-run --steps 5,50 --samples 3 --threshold 1 --interval 10 --max-p99-ms 300 -- \
  "--set releaseGate.canary.samples=3 --set releaseGate.analysis.threshold=1 --set releaseGate.analysis.intervalSeconds=10" \
  "--set releaseGate.analysis.maxP99Ms=300 --set releaseGate.canary.steps=" "5" "50" "kubectl -n exchange create -f" \
  "gate rolled inventory v2 back" \
  "--reuse-values --set services.inventory.canary.weight=0 --set services.inventory.canary.candidate.replicas=0 --wait" \
  "failed its analysis" "scripts/deploy canary" "--set services.inventory.canary.weight=0 --set services.inventory.canary.candidate.replicas=1"
if grep -q "promote" "$work/dry-canary___dry_run__a_failed_analysis_is_recorded_as_weight_0__candidate_scaled_to_zero.log" 2>/dev/null; then
  bad "canary: a failed analysis must not promote"
fi
# A gate that did not start (exit 4: it changed nothing) records nothing.
dry "canary --dry-run: a gate that did not start records nothing" 1 env RELEASE_GATE_TEST_RESULT=refused \
  scripts/canary --dry-run -- "kubectl -n exchange create -f" "did not start an analysis of inventory v2 and changed nothing"
if grep -q "helm upgrade" "$work/dry-canary___dry_run__a_gate_that_did_not_start_records_nothing.log" 2>/dev/null; then
  bad "canary: a gate that did not start must not change the release"
fi
# The ingress strips the preview header: the smoke test goes through a port-forward.
dry "bluegreen-switch back to blue --dry-run (blue is the primary Deployment)" 0 env DRY_RUN=1 scripts/bluegreen-switch --dry-run --to blue -- \
  "rollout status deployment/exchange-user --timeout" "--set services.user.bluegreen.live=blue"
dry "bluegreen-switch --dry-run" 0 scripts/bluegreen-switch --dry-run -- \
  "rollout status deployment/exchange-user-green" "port-forward svc/exchange-gateway 18080:8080" \
  "-H x-preview:" "http://127.0.0.1:18080/api/v1/auth/register" \
  "-s templates/release-gate-job.yaml" "--set releaseGate.run.mode=bluegreen --set releaseGate.run.service=user --set releaseGate.run.to=green" \
  "kubectl -n exchange create -f" "logs -f job/exchange-gate-user-dryrun" \
  "--reuse-values --set services.user.bluegreen.live=green" "http://127.0.0.1:18080/api/v1/auth/login"
dry "bluegreen-switch --dry-run: the gate keeps the old color, nothing recorded" 1 env RELEASE_GATE_TEST_RESULT=failed \
  scripts/bluegreen-switch --dry-run --pre-samples 3 --bake-samples 4 -- \
  "--set releaseGate.bluegreen.preSamples=3 --set releaseGate.bluegreen.bakeSamples=4" "logs -f job/exchange-gate-user-dryrun" \
  "did not keep green live"
if grep -q "bluegreen.live=green" "$work/dry-bluegreen_switch___dry_run__the_gate_keeps_the_old_color__nothing_recorded.log" 2>/dev/null; then
  bad "bluegreen-switch: a failed gate must not record the switch"
fi
dry "bluegreen-switch --service gateway --dry-run" 0 scripts/bluegreen-switch --dry-run --service gateway -- \
  "port-forward deployment/exchange-gateway-green 18080:8080" "-H x-preview:" \
  "--set services.gateway.bluegreen.live=green" "curl -sS -k" "https://127.0.0.1/api/v1/auth/login"
dry "rollback --dry-run" 0 scripts/rollback --dry-run --revision 3 -- \
  "helm history exchange -n exchange" "helm rollback exchange 3 -n exchange --wait" "get pods"
dry "load-test --dry-run" 0 scripts/load-test smoke --dry-run -- \
  "k6 run -e BASE_URL=http://127.0.0.1:8080" "load-test/smoke.js"
dry "load-test refuses a remote target" 1 scripts/load-test load --dry-run --base-url http://203.0.113.7 -- \
  "refusing to send load to 203.0.113.7"
dry "load-test through kind's HTTPS ingress" 0 scripts/load-test smoke --dry-run --base-url https://127.0.0.1 -- \
  "k6 run --insecure-skip-tls-verify -e BASE_URL=https://127.0.0.1" "load-test/smoke.js"
dry "load-test --cluster-ingress" 0 scripts/load-test circuit-breaker --dry-run --base-url http://10.1.2.3 --cluster-ingress -- \
  "a cluster ingress you own" "BASE_URL=http://10.1.2.3" "load-test/circuit-breaker.js"
dry "cluster-down --dry-run" 0 scripts/cluster-down --dry-run -- \
  "kind delete cluster --name exchange" "docker rm -f kind-registry"

# Without Istio, deploy refuses (before changing anything) unless told --no-mesh,
# and then says what that loses. Stubs stand in for kubectl and helm: the cluster
# has no AuthorizationPolicy CRD; every call is logged.
stubs="$work/stubs"
mkdir -p "$stubs"
for tool in kubectl helm; do
  cat >"$stubs/$tool" <<STUB
#!/usr/bin/env bash
echo "$tool \$*" >>"$work/stub-calls.log"
[[ "\$*" == *"get crd authorizationpolicies.security.istio.io"* ]] && exit 1
exit 0
STUB
  chmod +x "$stubs/$tool"
done
: >"$work/stub-calls.log"
status=0
PATH="$stubs:$PATH" scripts/deploy base >"$work/no-istio.log" 2>&1 </dev/null || status=$?
if [[ $status == 0 ]]; then
  bad "deploy without Istio should refuse"; show "$work/no-istio.log"
elif ! grep -q "Istio is not installed" "$work/no-istio.log" || ! grep -q -- "--no-mesh" "$work/no-istio.log" \
     || ! grep -q "no mTLS" "$work/no-istio.log"; then
  bad "deploy without Istio: the refusal should say what is lost and name --no-mesh"; show "$work/no-istio.log"
elif grep -Eq "kubectl (apply|create|label|delete)|helm (upgrade|install)" "$work/stub-calls.log"; then
  bad "deploy without Istio changed the cluster before refusing"; show "$work/stub-calls.log"
else
  ok "deploy without Istio refuses before changing anything: $(grep -m1 'Istio is not installed' "$work/no-istio.log" | cut -c1-60)..."
fi
# The real (not dry) paths of scripts/canary and scripts/deploy against a stand-in
# cluster: kubectl and helm log every call; `helm template` is the real one; `helm
# get values -o json` and `kubectl get deploy -o json` answer from files written here.
fake="$work/fake-cluster"
mkdir -p "$fake/bin"
cat >"$fake/bin/kubectl" <<STUB
#!/usr/bin/env bash
echo "kubectl \$*" >>"$fake/calls.log"
case "\$*" in
  "config current-context") echo kind-exchange ;;
  *"get deploy"*"-o json"*) cat "$fake/deployments.json" ;;
  *"get deploy"*"-o name"*) python3 -c 'import json, sys; [print("deployment.apps/" + d["metadata"]["name"]) for d in json.load(open(sys.argv[1]))["items"]]' "$fake/deployments.json" ;;
esac
exit 0
STUB
cat >"$fake/bin/helm" <<STUB
#!/usr/bin/env bash
echo "helm \$*" >>"$fake/calls.log"
case "\$1" in
  template|lint) exec "$HELM" "\$@" ;;
  get) [[ "\$*" != *"-o json"* ]] || cat "$fake/values.json" ;;
esac
exit 0
STUB
chmod +x "$fake/bin/kubectl" "$fake/bin/helm"
# fake_deployments NAME=REPLICAS...: the release's Deployments the stand-in lists.
fake_deployments() {
  python3 - "$@" >"$fake/deployments.json" <<'PY'
import json, sys
items = []
for arg in sys.argv[1:]:
    name, replicas = arg.split("=")
    track = "canary" if name.endswith("-canary") else "primary"
    items.append({"metadata": {"name": name, "labels": {"app": name.split("-")[1]}},
                  "spec": {"replicas": int(replicas), "selector": {"matchLabels": {"exchange.dev/track": track}}}})
print(json.dumps({"items": items}))
PY
}
# A release whose candidate a failed analysis scaled to zero: scripts/canary prepares
# no gate and changes nothing, and says how to start the candidate again.
printf '%s\n' '{"releaseGate": {"enabled": true}, "services": {"inventory": {"canary": {"stable": {"version": "v1"}, "candidate": {"enabled": true, "version": "v2", "replicas": 0}, "weight": 0}}}}' >"$fake/values.json"
: >"$fake/calls.log"
status=0
PATH="$fake/bin:$PATH" scripts/canary >"$work/canary-scaled-down.log" 2>&1 </dev/null || status=$?
if [[ $status == 0 ]] || ! grep -q "scaled to zero" "$work/canary-scaled-down.log" \
   || ! grep -q "scripts/deploy canary" "$work/canary-scaled-down.log" \
   || ! grep -q -- "--set services.inventory.canary.candidate.replicas=1" "$work/canary-scaled-down.log"; then
  bad "canary of a candidate scaled to zero: should refuse, saying how to start it again (status $status)"; show "$work/canary-scaled-down.log"
elif grep -Eq "helm (upgrade|template)|kubectl .*(create|get jobs)" "$fake/calls.log"; then
  bad "canary of a candidate scaled to zero went on to a gate (or changed the cluster)"; show "$fake/calls.log"
else
  ok "canary of a candidate scaled to zero: refused before any change ($(grep -m1 -o 'the candidate v2 of inventory is scaled to zero' "$work/canary-scaled-down.log"))"
fi
# scripts/deploy canary over that release: a Deployment at 0 replicas runs nothing,
# so the candidate is started without traffic first (as a new one), unlike one that runs.
deploy_fake() {
  : >"$fake/calls.log"
  PATH="$fake/bin:$PATH" IMAGE_TAG=$TAG REGISTRY=registry.example.com/exchange scripts/deploy canary >"$1" 2>&1 </dev/null
}
fake_deployments exchange-inventory=2 exchange-inventory-canary=0
if ! deploy_fake "$work/deploy-scaled-down.log"; then
  bad "deploy canary over a candidate scaled to zero failed"; show "$work/deploy-scaled-down.log"
elif ! in_order "$work/deploy-scaled-down.log" "services.inventory.canary.weight=0" "step 1 of 2" \
       "--set services.inventory.canary.weight=0 --wait" "step 2 of 2" >"$work/deploy-scaled-down.why"; then
  bad "deploy canary over a candidate scaled to zero: $(cat "$work/deploy-scaled-down.why")"; show "$work/deploy-scaled-down.log"
else
  fake_deployments exchange-inventory=2 exchange-inventory-canary=1
  deploy_fake "$work/deploy-running.log" || true
  if grep -q "nothing to start first" "$work/deploy-running.log"; then
    ok "deploy canary over a candidate scaled to zero starts it without traffic first (one that runs: one upgrade)"
  else
    bad "deploy canary over a running candidate should need one upgrade"; show "$work/deploy-running.log"
  fi
fi
dry "deploy --no-mesh --dry-run" 0 env IMAGE_TAG=$TAG scripts/deploy base --no-mesh --dry-run -- \
  "--no-mesh: deploying WITHOUT the mesh" "mutual TLS" "AuthorizationPolicy" \
  "create secret generic exchange-postgresql" "helm upgrade --install exchange helm/exchange -n exchange --set istio.enabled=false"
if ! [[ -s $work/dry-deploy___no_mesh___dry_run.log ]] \
   || grep -q "istio/mesh/10-peer-authentication.yaml" "$work/dry-deploy___no_mesh___dry_run.log"; then
  bad "deploy --no-mesh still applies istio/mesh (or its log is missing)"
fi

# A real run without its tools stops before doing anything, naming the tool.
nobin="$work/nobin"
mkdir -p "$nobin"
ln -s "$(command -v bash)" "$nobin/bash"
ln -s "$(command -v dirname)" "$nobin/dirname"
for s in cluster-up deploy; do
  arg=()
  [[ $s == deploy ]] && arg=(base)
  status=0
  PATH=$nobin "$nobin/bash" "scripts/$s" "${arg[@]}" >"$work/missing-$s.log" 2>&1 </dev/null || status=$?
  if [[ $status != 0 ]] && grep -q "is required but not installed" "$work/missing-$s.log"; then
    ok "$s without its tools: $(grep -m1 'is required' "$work/missing-$s.log" | cut -c1-70)..."
  else
    bad "$s without its tools should fail naming the tool (status $status)"; show "$work/missing-$s.log"
  fi
done

# The Secrets scripts/deploy creates (name and keys), for the render checks below.
deploy_secrets() {
  awk '/create secret generic/ { name = $8 } /# keys:/ { sub(/.*# keys: /, ""); sub(/ \(.*/, ""); n = split($0, k, " "); for (i = 1; i <= n; i++) print name, k[i] }' "$1"
}
deploy_secrets "$work/dry-deploy_base___dry_run.log" >"$work/secrets"
deploy_secrets "$work/dry-deploy_into_another_namespace_and_release___dry_run.log" >"$work/secrets-payments"
[[ -s $work/secrets && -s $work/secrets-payments ]] || bad "could not read the Secrets from scripts/deploy --dry-run"

# ---------------------------------------------------------------------------------
step "chart: lint, render, validate (Kubernetes 1.31 + Istio + Prometheus operator schemas)"
# The image tag scripts/deploy would set (a values file, so that a negative file can override it).
printf 'global:\n  image:\n    tag: "%s"\n' "$TAG" >"$work/tag.yaml"
# name | extra helm args | checker expectations | release:namespace (default exchange:exchange)
renders=(
  "base||"
  # (--allow-served-by: the demo overlays let x-served-by out on purpose)
  "rolling|-f $CHART/values-rolling.yaml|--expect-rolling order=v2:3 --allow-served-by"
  "canary|-f $CHART/values-canary.yaml|--expect-canary inventory=v1:v2:10:x-canary=true --allow-served-by"
  "bluegreen|-f $CHART/values-bluegreen.yaml|--expect-bluegreen user=blue:x-preview=true --allow-served-by"
  "bluegreen-switched|-f $CHART/values-bluegreen.yaml --set services.user.bluegreen.live=green|--expect-bluegreen user=green:x-preview=true --allow-served-by"
  "canary-promoted|-f $CHART/values-canary.yaml --set services.inventory.canary.stable.version=v2 --set services.inventory.canary.candidate.enabled=false|--allow-served-by"
  "loadtest+faults|-f $CHART/values-loadtest.yaml -f $CHART/values-faults.yaml|--allow-served-by --allow-reflection --allow-health"
  # The steps of a canary (scripts/deploy, scripts/canary) and of going back to base.
  "canary-0|-f $CHART/values-canary.yaml --set services.inventory.canary.weight=0|--allow-served-by"
  "canary-100|-f $CHART/values-canary.yaml --set services.inventory.canary.weight=100|--allow-served-by"
  "canary-promote-1|-f $CHART/values-canary.yaml --set services.inventory.canary.weight=100 --set services.inventory.canary.stable.version=v2|--allow-served-by"
  "canary-promote-2|-f $CHART/values-canary.yaml --set services.inventory.canary.weight=0 --set services.inventory.canary.stable.version=v2 --set services.inventory.canary.candidate.enabled=false|--allow-served-by"
  # What scripts/canary records after a failed analysis: weight 0, the candidate scaled to zero.
  "canary-rolled-back|-f $CHART/values-canary.yaml --set services.inventory.canary.weight=0 --set services.inventory.canary.candidate.replicas=0|--expect-scaled-down inventory=v2 --allow-served-by"
  "no-istio-base|--set istio.enabled=false|"
  # The gateway itself as canary and blue/green: its own header routes stay off the ingress.
  "gateway-canary|--set services.gateway.strategy=canary|--expect-canary gateway=v1:v2:10:x-canary=true"
  "gateway-bluegreen|--set services.gateway.strategy=bluegreen|--expect-bluegreen gateway=blue:x-preview=true"
  # PodMonitors and rules on: the stores' exporters must be there and scraped.
  "monitoring|--set monitoring.podMonitor.enabled=true --set monitoring.prometheusRule.enabled=true|--expect-store-exporters"
  "external-stores|--set postgresql.enabled=false --set externalDatabase.host=db.example.internal --set externalDatabase.existingSecret=exchange-db --set redis.enabled=false --set externalRedis.host=cache.example.internal --set externalRedis.existingSecret=exchange-cache|"
  "live-upbit|--set services.ingestor.upbit.source=live --set services.upbit-sim.enabled=false|"
  # The egress allow-list switched off (istio.sidecarScoping, istio.egress.registryOnly),
  # and an internet host of one's own allowed the documented way (a ServiceEntry from
  # istio.egress.serviceEntries, the host in the caller's istio.egressHosts).
  "open-egress|--set istio.sidecarScoping=false --set istio.egress.registryOnly=false|--allow-open-egress"
  "extra-egress|--set istio.egress.serviceEntries.prices.hosts[0]=prices.example.com,istio.egress.serviceEntries.prices.ports[0].number=443,istio.egress.serviceEntries.prices.ports[0].name=tls,istio.egress.serviceEntries.prices.ports[0].protocol=TLS --set services.order.config.PRICES_URL=https://prices.example.com/v1 --set services.order.istio.egressHosts[0]=./prices.example.com|"
  "own-gateway|--set istio.ingress.createGateway=true|"
  "no-istio|-f $CHART/values-bluegreen.yaml --set istio.enabled=false|"
  # Another namespace and release name: every policy must name them (--release).
  "other-release|-f $CHART/values-canary.yaml|--release payments --allow-served-by|payments:trading"
  # The release gate's Job of one run (scripts/canary, scripts/bluegreen-switch render it),
  # and the rollback demo's failing candidate.
  "canary-gate-job|-f $CHART/values-canary.yaml --set releaseGate.run.id=ci --set releaseGate.run.service=inventory|--expect-canary inventory=v1:v2:10:x-canary=true --allow-served-by"
  "bluegreen-gate-job|-f $CHART/values-bluegreen.yaml --set releaseGate.run.id=ci --set releaseGate.run.mode=bluegreen --set releaseGate.run.service=user --set releaseGate.run.to=green|--expect-bluegreen user=blue:x-preview=true --allow-served-by"
  "canary-failing|-f $CHART/values-canary.yaml -f $CHART/values-canary-failing.yaml|--allow-served-by"
  # Data stores (issue 18): Postgres as a CloudNativePG Cluster and Redis through
  # Sentinels (values-ha.yaml), in another release too; the scheduled jobs switched off.
  "ha|-f $CHART/values-ha.yaml|--expect-ha"
  "ha-other-release|-f $CHART/values-ha.yaml -f $CHART/values-canary.yaml|--expect-ha --release payments --allow-served-by|payments:trading"
  "no-jobs|--set jobDefaults.enabled=false|"
)
for entry in "${renders[@]}"; do
  IFS='|' read -r name args expect relns <<<"$entry"
  relns=${relns:-exchange:exchange}
  read -r -a helm_args <<<"$args"
  helm_args=(-f "$work/tag.yaml" "${helm_args[@]}")
  out="$work/render-$name.yaml"
  if ! "$HELM" lint --strict --quiet "$CHART" "${helm_args[@]}" >"$work/lint-$name.log" 2>&1; then
    bad "helm lint ($name)"; show "$work/lint-$name.log"; continue
  fi
  if ! "$HELM" template "${relns%%:*}" "$CHART" -n "${relns#*:}" "${helm_args[@]}" >"$out" 2>"$work/template-$name.log"; then
    bad "helm template ($name)"; show "$work/template-$name.log"; continue
  fi
  # validate-manifests has no schema for CloudNativePG's Cluster (it reports unknown
  # kinds as invalid): everything else is validated strictly, the Cluster by
  # check_rendered.py's structural check (its fields and types) below.
  validate_in=$out cnpg=""
  if grep -q '^apiVersion: postgresql.cnpg.io/' "$out"; then
    validate_in="$out.no-cnpg"
    "$PY" - "$out" "$validate_in" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("apiVersion") != "postgresql.cnpg.io/v1"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"), sort_keys=False)
PY
    cnpg=" (+ the CloudNativePG Cluster: structural check below)"
  fi
  if "$VALIDATE" -q "$validate_in" >"$work/validate-$name.log" 2>&1; then
    ok "$name: lint, template, $(tail -n1 "$work/validate-$name.log")$cnpg"
  else
    bad "validate-manifests ($name)"; grep INVALID "$work/validate-$name.log" | head -n 10 | sed 's/^/        | /'
  fi
done
"$HELM" template exchange "$CHART" -n exchange -f "$work/tag.yaml" >"$work/render-again.yaml" 2>/dev/null || true
if cmp -s "$work/render-base.yaml" "$work/render-again.yaml"; then
  ok "helm template is deterministic (two renders, same bytes)"
else
  bad "helm template output differs between two runs"
fi

step "mesh: static checks of every render (with istio/mesh)"
for entry in "${renders[@]}"; do
  IFS='|' read -r name args expect relns <<<"$entry"
  relns=${relns:-exchange:exchange}
  out="$work/render-$name.yaml"
  [[ -s $out ]] || continue
  read -r -a expect_args <<<"$expect"
  mesh=(--mesh istio/mesh)
  [[ $name == no-istio* ]] && mesh=()
  secrets=(--secrets "$work/secrets")
  [[ ${relns%%:*} == payments ]] && secrets=(--secrets "$work/secrets-payments")
  [[ $name == external-stores ]] && secrets=()  # the external database's Secret is yours
  [[ $name == ha* ]] && secrets=()  # the roles' basic-auth Secrets and Redis' are yours (docs/DEPLOYMENT.md)
  if "$PY" scripts/lib/k8s/check_rendered.py -n "${relns#*:}" "$out" "${mesh[@]}" "${expect_args[@]}" "${secrets[@]}" >"$work/check-$name.log" 2>&1; then
    ok "$name: $(tail -n1 "$work/check-$name.log")${expect:+ ($expect)}"
  else
    bad "mesh checks ($name)"; grep VIOLATION "$work/check-$name.log" | head -n 10 | sed 's/^/        | /'
  fi
done
if "$VALIDATE" -q istio/mesh istio/monitoring scripts/lib/k8s/local-registry-hosting.yaml scripts/lib/k8s/alert-logger.yaml >"$work/validate-istio.log" 2>&1; then
  ok "istio/mesh, istio/monitoring, alert-logger: $(tail -n1 "$work/validate-istio.log")"
else
  bad "validate-manifests istio/"; grep INVALID "$work/validate-istio.log" | head | sed 's/^/        | /'
fi
if "$PY" - istio/install/*.yaml istio/addons/*.yaml scripts/lib/k8s/*.yaml "$CHART"/values*.yaml >"$work/yaml.log" 2>&1 <<'PY'
import sys, yaml
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        list(yaml.safe_load_all(f))
PY
then
  ok "install profile, addon values, kind config: valid YAML"
else
  bad "YAML syntax"; show "$work/yaml.log"
fi
# kind publishes the ingress's HTTPS: host port 443 -> the NodePort istioctl gives port 443.
if "$PY" - >"$work/ports.log" 2>&1 <<'PY'
import yaml
kind = yaml.safe_load(open("scripts/lib/k8s/kind-config.yaml"))
maps = {m["hostPort"]: m["containerPort"] for n in kind["nodes"] for m in n.get("extraPortMappings") or []}
op = yaml.safe_load(open("istio/install/istio-operator.yaml"))
ports = {p["port"]: p.get("nodePort") for g in op["spec"]["components"]["ingressGateways"] for p in g["k8s"]["service"]["ports"]}
for host in (80, 443):
    assert host in maps, f"kind does not publish host port {host}"
    assert ports.get(host) == maps[host], f"host port {host} -> {maps[host]}, but the ingress's port {host} is NodePort {ports.get(host)}"
PY
then
  ok "kind publishes ports 80 and 443 to the ingress gateway's NodePorts"
else
  bad "kind port mappings"; show "$work/ports.log"
fi

# ---------------------------------------------------------------------------------
step "negatives: broken values and broken renders must be rejected"
for f in scripts/lib/k8s/negative/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$f")
  stage=${expect%%: *}
  fragment=${expect#*: }
  with=$(sed -n 's/^# with: //p' "$f")
  extra=()
  [[ -n $with ]] && extra=(-f "$CHART/$with")
  out="$work/neg-$(basename "$f")"
  status=0
  "$HELM" template exchange "$CHART" -n exchange -f "$work/tag.yaml" "${extra[@]}" -f "$f" >"$out" 2>"$out.err" || status=$?
  if [[ $stage == helm ]]; then
    if [[ $status != 0 ]] && grep -qF -- "$fragment" "$out.err"; then
      ok "$(basename "$f"): rejected by helm ($(grep -m1 -F -- "$fragment" "$out.err" | sed 's/^[- ]*//' | cut -c1-80))"
    else
      bad "$(basename "$f"): helm should reject it with '$fragment' (status $status)"; show "$out.err"
    fi
    continue
  fi
  if [[ $status != 0 ]]; then
    bad "$(basename "$f"): helm failed, the checker should have been the one to object"; show "$out.err"; continue
  fi
  if "${CHECK[@]}" "$out" --mesh istio/mesh >"$out.check" 2>&1; then
    bad "$(basename "$f"): the checker accepted a broken render"
  elif grep -qF -- "$fragment" "$out.check"; then
    ok "$(basename "$f"): rejected ($(grep -m1 -F -- "$fragment" "$out.check" | sed 's/^VIOLATION //' | cut -c1-90))"
  else
    bad "$(basename "$f"): rejected, but not for '$fragment'"; show "$out.check"
  fi
done
if "${CHECK[@]}" --mesh istio/mesh --self-test "$work/render-base.yaml" "$work/render-rolling.yaml" \
    "$work/render-canary.yaml" "$work/render-bluegreen.yaml" --self-test-monitoring "$work/render-monitoring.yaml" \
    >"$work/self-test.log" 2>&1; then
  ok "$(tail -n1 "$work/self-test.log")"
else
  bad "checker self-test"; grep -v '^  caught' "$work/self-test.log" | sed 's/^/        | /'
fi

# ---------------------------------------------------------------------------------
step "upgrades: every strategy switch drops no traffic and changes no selector"
# FROM>TO, as scripts/deploy, scripts/canary and scripts/bluegreen-switch upgrade.
transitions=(
  "base>rolling" "rolling>base"
  "base>canary-0" "canary-0>canary" "canary>canary-100" "canary-100>canary-promote-1"
  "canary-promote-1>canary-promote-2" "canary-promote-2>base" "canary>base"
  "canary>canary-rolled-back" "canary-rolled-back>canary-0" "canary-rolled-back>base"
  "base>bluegreen" "bluegreen>bluegreen-switched" "bluegreen-switched>bluegreen" "bluegreen-switched>base"
  "no-istio-base>no-istio"
)
for t in "${transitions[@]}"; do
  from=$work/render-${t%%>*}.yaml to=$work/render-${t#*>}.yaml
  if [[ ! -s $from || ! -s $to ]]; then
    bad "upgrade $t: a render is missing"
  elif "$PY" scripts/lib/k8s/check_rendered.py -n exchange --transition "$from" "$to" >"$work/transition.log" 2>&1; then
    ok "upgrade ${t/>/ -> }: $(tail -n1 "$work/transition.log")"
  else
    bad "upgrade ${t/>/ -> }"; grep VIOLATION "$work/transition.log" | head -n 5 | sed 's/^/        | /'
  fi
done
# The upgrades scripts/deploy splits in two must be rejected when done at once: a
# candidate that does not exist, or that a failed analysis scaled to zero, at 10 %.
for from in base canary-rolled-back; do
  if "$PY" scripts/lib/k8s/check_rendered.py -n exchange --transition "$work/render-$from.yaml" "$work/render-canary.yaml" \
      --expect-fail "exchange-inventory-canary, whose pods FROM does not run" >"$work/transition.log" 2>&1; then
    ok "upgrade $from -> canary at 10 % in one step: rejected ($(grep -m1 VIOLATION "$work/transition.log" | cut -c11-100)...)"
  else
    bad "upgrade $from -> canary at 10 % in one step should be rejected"; show "$work/transition.log"
  fi
done
if "$PY" scripts/lib/k8s/check_rendered.py -n exchange --transition "$work/render-base.yaml" "$work/render-bluegreen.yaml" \
    --transition-self-test >"$work/transition-self-test.log" 2>&1; then
  ok "$(tail -n1 "$work/transition-self-test.log")"
else
  bad "transition self-test"; grep -v '^  caught' "$work/transition-self-test.log" | sed 's/^/        | /'
fi

# ---------------------------------------------------------------------------------
step "release gate: the in-cluster analysis, run offline against stand-ins"
gate_renders=(canary-gate-job canary-rolled-back canary-100 bluegreen-gate-job bluegreen-switched canary canary-failing)
missing_render=""
for r in "${gate_renders[@]}"; do [[ -s $work/render-$r.yaml ]] || missing_render+=" $r"; done
if [[ -n $missing_render ]]; then
  bad "release gate: renders missing:$missing_render"
else
  # The Job is rendered only for a run, never as part of the release.
  if grep -q '^kind: Job$' "$work/render-canary.yaml"; then
    bad "release gate: the release itself renders a Job (only releaseGate.run.id should)"
  else
    ok "release gate: the release holds its ServiceAccount, Role and NetworkPolicy, no Job (one per run)"
  fi
  # Only the demo's candidate fails: the stable Deployment has no fault.
  if "$PY" - "$work/render-canary-failing.yaml" >"$work/gate-demo.log" 2>&1 <<'PY'
import sys, yaml
faulty = sorted(d["metadata"]["name"] for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"
                for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env") or []
                if e["name"] == "FAULT_UNAVAILABLE_AFTER_COMMIT")
assert faulty == ["exchange-inventory-canary"], faulty
PY
  then
    ok "release gate demo: values-canary-failing.yaml makes only exchange-inventory-canary fail"
  else
    bad "release gate demo: the fault should be on the candidate only"; show "$work/gate-demo.log"
  fi
  if "$PY" scripts/lib/k8s/check_release_gate.py --canary "$work/render-canary-gate-job.yaml" \
      --canary-rolled-back "$work/render-canary-rolled-back.yaml" --canary-100 "$work/render-canary-100.yaml" \
      --bluegreen "$work/render-bluegreen-gate-job.yaml" --bluegreen-switched "$work/render-bluegreen-switched.yaml" \
      --validate "$VALIDATE" --python python3 >"$work/release-gate.log" 2>&1; then
    ok "$(tail -n1 "$work/release-gate.log")"
    grep '^  ok' "$work/release-gate.log" | sed 's/^  ok  /        | /'
  else
    bad "release gate dry run"; tail -n 30 "$work/release-gate.log" | sed 's/^/        | /'
  fi
fi

# ---------------------------------------------------------------------------------
step "secrets: a changed Secret rolls the pods that read it, an unchanged one nothing"
if [[ ! -s $work/secrets ]]; then
  bad "secret rolls: no list of the Secrets scripts/deploy creates"
elif "$PY" scripts/lib/k8s/check_secret_rolls.py --helm "$HELM" --validate "$VALIDATE" --secrets "$work/secrets" \
    -- -f "$work/tag.yaml" -f "$CHART/values-canary.yaml" >"$work/secret-rolls.log" 2>&1; then
  ok "$(tail -n1 "$work/secret-rolls.log")"
  grep '^  ok' "$work/secret-rolls.log" | sed 's/^  ok  /        | /'
else
  bad "secret rolls"; tail -n 15 "$work/secret-rolls.log" | sed 's/^/        | /'
fi

# ---------------------------------------------------------------------------------
step "observability: dashboards, alert rules, METRICS.txt, Collector, Alertmanager"
# Where scripts/cluster-up installs the OpenTelemetry Collector (release and
# namespace): the chart, Istio and the NetworkPolicies must all name that Service.
read -r otel_release otel_ns < <(sed -n 's/.*helm upgrade --install \([^ ]*\) open-telemetry\/opentelemetry-collector -n \([^ ]*\).*/\1 \2/p' \
  "$work/dry-cluster_up___dry_run.log" | head -n1) || true
# And the kube-prometheus-stack release, whose stock selectors want release=<it>.
kps_release=$(sed -n 's/.*helm upgrade --install \([^ ]*\) prometheus-community\/kube-prometheus-stack .*/\1/p' \
  "$work/dry-cluster_up___dry_run.log" | head -n1)
OBS=("$PY" scripts/lib/k8s/check_observability.py --render "$work/render-monitoring.yaml"
     --collector-release "${otel_release:-?}" --collector-namespace "${otel_ns:-?}"
     --kps-release "${kps_release:-?}" --require-parser)
if [[ ! -s $work/render-monitoring.yaml ]]; then
  bad "observability: no monitoring render to check"
elif "${OBS[@]}" >"$work/observability.log" 2>&1; then
  ok "observability: $(tail -n1 "$work/observability.log") (Collector: release ${otel_release:-?} in ${otel_ns:-?})"
else
  bad "observability"; grep -E 'VIOLATION|Error|Traceback' "$work/observability.log" | head -n 15 | sed 's/^/        | /'
fi
if [[ -s $work/render-monitoring.yaml ]] && "${OBS[@]}" --self-test >"$work/observability-self-test.log" 2>&1; then
  ok "$(tail -n1 "$work/observability-self-test.log")"
else
  bad "observability self-test"; grep -v '^  caught' "$work/observability-self-test.log" | head -n 15 | sed 's/^/        | /'
fi
# METRICS.txt against the Rust sources once more, with nothing but grep: each name (a
# histogram series by its family name) is a string literal in services/*/src or libs/*/src.
# unregistered_metrics FILE: prints the names of FILE that no Rust source registers.
unregistered_metrics() {
  local name family suffix
  while read -r name; do
    [[ -z $name || $name == \#* ]] && continue
    family=$name
    for suffix in _bucket _sum _count; do family=${family%"$suffix"}; done
    grep -rqsF --include='*.rs' "\"$name\"" services/*/src libs/*/src \
      || grep -rqsF --include='*.rs' "\"$family\"" services/*/src libs/*/src || echo "$name"
  done <"$1"
}
count=$(grep -cv '^#\|^$' helm/exchange/dashboards/METRICS.txt || true)
missing=$(unregistered_metrics helm/exchange/dashboards/METRICS.txt)
{ cat helm/exchange/dashboards/METRICS.txt; echo order_orders_placed_total; } >"$work/METRICS-broken.txt"
if ((count == 0)); then
  bad "METRICS.txt lists no metric"
elif [[ -n $missing ]]; then
  bad "METRICS.txt names not in the Rust sources: $(echo "$missing" | tr '\n' ' ')"
elif [[ $(unregistered_metrics "$work/METRICS-broken.txt") != order_orders_placed_total ]]; then
  bad "METRICS.txt grep: a name no service registers (order_orders_placed_total) went unnoticed"
else
  ok "METRICS.txt: all $count names are registered in services/*/src or libs/*/src (grep; an unregistered name is caught)"
fi

# ---------------------------------------------------------------------------------
step "argocd: the app of apps (argocd/) against scripts/cluster-up and helm/exchange"
ARGO=("$PY" scripts/lib/k8s/check_argocd.py --helm "$HELM" --validate "$VALIDATE")
if "${ARGO[@]}" >"$work/argocd.log" 2>&1; then
  ok "argocd: $(tail -n1 "$work/argocd.log")"
else
  bad "argocd"; grep -E 'VIOLATION|Error|Traceback' "$work/argocd.log" | head -n 15 | sed 's/^/        | /'
fi
if "${ARGO[@]}" --self-test >"$work/argocd-self-test.log" 2>&1; then
  ok "$(tail -n1 "$work/argocd-self-test.log")"
else
  bad "argocd self-test"; grep -v '^  caught' "$work/argocd-self-test.log" | head -n 15 | sed 's/^/        | /'
fi

# ---------------------------------------------------------------------------------
step "Dockerfile: one target per service"
for svc in $("$PY" -c 'import yaml; print(" ".join(yaml.safe_load(open("helm/exchange/values.yaml"))["services"]))'); do
  if grep -q "^FROM runtime AS $svc\$" Dockerfile && grep -q "/out/$svc /usr/local/bin/$svc" Dockerfile \
     && grep -q "\"services/$svc\"" Cargo.toml; then
    :
  else
    bad "Dockerfile has no runtime target (or binary) for $svc"
  fi
done
if grep -q 'cargo chef cook' Dockerfile && grep -q '^USER 65532:65532' Dockerfile; then
  ok "Dockerfile: cargo-chef dependency layer, non-root runtime, a target per service"
else
  bad "Dockerfile: expected cargo chef cook and USER 65532:65532"
fi

# ---------------------------------------------------------------------------------
step "k6: inspect every load-test script"
for js in load-test/*.js; do
  if "$K6" inspect "$js" >"$work/k6.log" 2>&1; then ok "k6 inspect $js"; else bad "k6 inspect $js"; show "$work/k6.log"; fi
done

# ---------------------------------------------------------------------------------
step "summary"
printf '%d passed, %d failed in %ds\n' "$passed" "$failed" $((SECONDS - started))
if ((failed)); then
  printf '  failed: %s\n' "${failures[@]}"
  exit 1
fi
