# shellcheck shell=bash
# shellcheck disable=SC2034  # settings and hints are used by the scripts that source this
# Shared helpers for the Kubernetes scripts (cluster-up, build-images, deploy, canary,
# bluegreen-switch, rollback, load-test, cluster-down): settings, printing and running
# commands (or only printing them with --dry-run), tool checks, usage text.
#
# Every command that changes something goes through `run` (or `run_stdin`), which
# prints it as `+ command` on stdout first; with DRY_RUN=1 nothing is executed and
# state queries answer "absent", so a dry run prints the whole sequence.

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Settings (environment overrides).
CLUSTER_NAME=${CLUSTER_NAME:-exchange}
# Pinned platform versions (scripts/cluster-up; each overridable). A kind node image
# is supported with the kind release that built it (its release notes list it with
# its digest): KIND_VERSION is that release. kind >= KIND_MIN_VERSION (v0.28.0)
# ships kindnetd with the fix for kubelet probes under default-deny NetworkPolicies
# (kubernetes-sigs/kube-network-policies#160); older node images drop them.
KIND_VERSION=${KIND_VERSION:-v0.33.0}
KIND_MIN_VERSION=v0.28.0
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.35.8@sha256:07b2536e30b803ed61d1677a79df6115f798ce64c80f9e22f6ed45afd09323c0}
# istioctl must be this release (scripts/cluster-up checks); Jaeger's addon manifest
# is taken from the same tag.
ISTIO_VERSION=${ISTIO_VERSION:-1.30.4}
REGISTRY_IMAGE=${REGISTRY_IMAGE:-registry:2.8.3}
REGISTRY_NAME=${REGISTRY_NAME:-kind-registry}
REGISTRY_PORT=${REGISTRY_PORT:-5002}
REGISTRY=${REGISTRY:-localhost:${REGISTRY_PORT}/exchange}
NAMESPACE=${NAMESPACE:-exchange}
RELEASE=${RELEASE:-exchange}
CHART=helm/exchange
# The chart's object name prefix (exchange.fullname): the release name when it
# contains "exchange", else <release>-exchange.
if [[ $RELEASE == *exchange* ]]; then FULLNAME=$RELEASE; else FULLNAME=$RELEASE-exchange; fi
K8S_LIB=scripts/lib/k8s
# version_at_least HAVE WANT: true when version HAVE (v1.2.3 or 1.2.3) >= WANT.
version_at_least() {
  local have=${1#v} want=${2#v}
  [[ $(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1) == "$want" ]]
}

# image_tag: the immutable tag of this tree's images: IMAGE_TAG when set, else the
# git commit (12 hex digits), plus -dirty-<hash of the changes> when the work tree
# differs from it (the same changes give the same tag; any other change, another
# one). scripts/build-images pushes it; scripts/deploy deploys it. Never a version
# label: a re-pushed tag is not pulled again (IfNotPresent) and changes no pod spec.
image_tag() {
  if [[ -n ${IMAGE_TAG:-} ]]; then printf '%s' "$IMAGE_TAG"; return 0; fi
  have git || die "git is required to name the images by commit (or set IMAGE_TAG)"
  local sha changes
  sha=$(git rev-parse --short=12 HEAD 2>/dev/null) || die "not a git work tree: set IMAGE_TAG to an immutable tag"
  changes=$( { git diff HEAD --binary; git ls-files -z --others --exclude-standard | xargs -0 -r sha256sum; } 2>/dev/null | sha256sum | cut -c1-8)
  if [[ -n $(git status --porcelain 2>/dev/null) ]]; then
    printf '%s-dirty-%s' "$sha" "$changes"
  else
    printf '%s' "$sha"
  fi
}

# mutable_tag TAG: true for tags that get re-pushed (version labels, latest).
mutable_tag() { [[ $1 =~ ^(latest|v[0-9]+)$ ]]; }

# Every image the Dockerfile builds (one target each).
SERVICES=(gateway market-data order inventory user ingestor upbit-sim)
DRY_RUN=${DRY_RUN:-0}

# Paths are printed relative to the repository root.
cd "$ROOT" || exit 1

# print_cmd ARGS...: the command as one shell-quoted line.
print_cmd() {
  local out="" a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=" $a"; else out+=" $(printf '%q' "$a")"; fi
  done
  printf '+%s\n' "$out"
}

# run ARGS...: print, then execute unless dry-running.
run() {
  print_cmd "$@"
  [[ $DRY_RUN == 1 ]] && return 0
  "$@"
}

# run_stdin TEXT ARGS...: like run, with TEXT on standard input (shown indented).
run_stdin() {
  local text=$1
  shift
  print_cmd "$@"
  printf '%s\n' "$text" | sed 's/^/    | /'
  [[ $DRY_RUN == 1 ]] && return 0
  printf '%s\n' "$text" | "$@"
}

# query ARGS...: a read-only command whose success answers a question ("does X
# exist?"). Never run in a dry run (answers no), so the dry run shows every step.
query() {
  [[ $DRY_RUN == 1 ]] && return 1
  "$@" >/dev/null 2>&1
}

# skip MESSAGE: say that an idempotent step has nothing to do.
skip() { say "  (already done: $*)"; }

# need TOOL HINT: the tool must be installed (a dry run only notes its absence).
need() {
  local tool=$1 hint=$2
  have "$tool" && return 0
  if [[ $DRY_RUN == 1 ]]; then
    say "note: $tool is not installed; a real run needs it ($hint)"
    return 0
  fi
  die "$tool is required but not installed: $hint"
}

hint_docker="https://docs.docker.com/engine/install/"
hint_kind="go install sigs.k8s.io/kind@$KIND_VERSION, or https://kind.sigs.k8s.io/docs/user/quick-start/#installation (release $KIND_VERSION)"
hint_kubectl="https://kubernetes.io/docs/tasks/tools/ (Debian: apt-get install kubernetes-client)"
hint_helm="https://helm.sh/docs/intro/install/ (helm 3.14+ or 4)"
hint_istioctl="curl -L https://istio.io/downloadIstio | ISTIO_VERSION=$ISTIO_VERSION sh - (then add istio-$ISTIO_VERSION/bin to PATH)"
hint_k6="../shared/tools/install puts k6 in ../shared/tools/bin, or https://grafana.com/docs/k6/latest/set-up/install-k6/"
hint_curl="apt-get install curl"
hint_python="apt-get install python3"
hint_openssl="apt-get install openssl"

# usage FILE: prints the script's header comment (from line 2 to `set -e`).
usage() {
  sed -n '2,/^set -e/p' "$1" | sed 's/^# \{0,1\}//; /^set -e/d'
}

# banner WHAT: the first line every script prints.
banner() {
  step "$*"
  [[ $DRY_RUN == 1 ]] && say "(dry run: commands are printed, not run)"
  return 0
}

# current_context: the kubectl context commands will use (printed for safety).
show_context() {
  if [[ $DRY_RUN == 1 ]]; then
    say "kubectl context: (current context; kind-$CLUSTER_NAME after scripts/cluster-up)"
  else
    say "kubectl context: $(kubectl config current-context 2>/dev/null || echo none)"
  fi
}

# random_secret: 48 hex characters (URL-safe: passwords end up in DATABASE_URL).
random_secret() {
  if have openssl; then openssl rand -hex 24
  else od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
  fi
}

# ensure_secret NAME KEY...: creates Secret NAME in $NAMESPACE with a random value per
# key, unless it exists (existing values are never replaced: they are live passwords).
ensure_secret() {
  local name=$1
  shift
  if query kubectl -n "$NAMESPACE" get secret "$name"; then
    skip "Secret $name exists"
    return 0
  fi
  local env_file="" key
  if [[ $DRY_RUN != 1 ]]; then
    env_file=$(mktemp)
    chmod 600 "$env_file"
    for key in "$@"; do printf '%s=%s\n' "$key" "$(random_secret)" >>"$env_file"; done
  fi
  printf '+ kubectl -n %s create secret generic %s --from-env-file=<temp file>\n' "$NAMESPACE" "$name"
  say "    # keys: $* (random values in a 0600 temp file, deleted afterwards)"
  if [[ $DRY_RUN != 1 ]]; then
    kubectl -n "$NAMESPACE" create secret generic "$name" --from-env-file="$env_file" >/dev/null
    rm -f "$env_file"
  fi
}

# The Secrets the chart reads (helm/exchange: postgresql.auth, redis.auth, services.user.secrets):
# name and keys, one per line. scripts/lib/check-k8s.sh checks this list against the
# secretKeyRefs of every render.
chart_secrets() {
  printf '%s %s\n' \
    "$FULLNAME-postgresql" "postgres-password market-data-password order-password inventory-password user-password" \
    "$FULLNAME-redis" "default-password gateway-password market-data-password" \
    "$FULLNAME-user-secrets" "jwt-secret api-key-secret"
}

# namespace_manifest: istio/mesh/00-namespace.yaml for $NAMESPACE (sidecar injection,
# Pod Security "restricted").
namespace_manifest() {
  sed "s/^  name: exchange\$/  name: $NAMESPACE/" istio/mesh/00-namespace.yaml
}

# mesh_files: -f FILE for each mesh-wide file in istio/mesh (all but the namespace).
mesh_files() {
  local f
  for f in istio/mesh/*.yaml; do
    [[ $f == */00-namespace.yaml ]] || printf -- '-f\n%s\n' "$f"
  done
}

# release_value PATH DEFAULT: a value of the deployed release (helm get values --all),
# e.g. services.user.bluegreen.live; DEFAULT in a dry run or when unset.
release_value() {
  local path=$1 default=$2 json
  if [[ $DRY_RUN == 1 ]] || ! json=$(helm get values "$RELEASE" -n "$NAMESPACE" --all -o json 2>/dev/null); then
    printf '%s' "$default"
    return 0
  fi
  python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$path" <<<"$json" | grep . || printf '%s' "$default"
}

# release_gate MODE SERVICE HELM_ARGS...: one analysis run of the in-cluster release
# gate (helm/exchange/files/release_gate.py): renders its Job from the chart with the
# release's own values plus HELM_ARGS (templates/release-gate-job.yaml), creates it,
# follows its log, and sets GATE_RESULT: passed, failed (it rolled back, or tried
# to: exit 1 or 3) or refused (it did not start and changed nothing: exit 4, e.g. a
# candidate scaled to zero). The Job does not depend on this shell: closing the
# laptop leaves it analysing, and it rolls back by itself.
# In a dry run GATE_RESULT is RELEASE_GATE_TEST_RESULT (default passed).
GATE_RESULT=""
release_gate() {
  local mode=$1 service=$2
  shift 2
  local id job dir deadline status code
  id=$(date +%s)
  [[ $DRY_RUN == 1 ]] && id=dryrun
  job=$(printf '%s-gate-%s-%s' "$FULLNAME" "$service" "$id" | cut -c1-63 | sed 's/-*$//')
  dir=${TMPDIR:-/tmp}/release-gate.XXXXXX
  if [[ $DRY_RUN != 1 ]]; then
    dir=$(mktemp -d)
    local others
    others=$(kubectl -n "$NAMESPACE" get jobs -l "app.kubernetes.io/instance=$RELEASE,exchange.dev/gate-of=$service" \
      -o jsonpath='{range .items[?(@.status.active)]}{.metadata.name}{" "}{end}' 2>/dev/null || true)
    [[ -z $others ]] || die "a release gate is already analysing $service: $others(kubectl -n $NAMESPACE logs -f job/${others%% *})"
  fi
  step "release gate ($mode of $service): Job $job, in the cluster"
  print_cmd helm get values "$RELEASE" -n "$NAMESPACE" --all -o yaml
  say "    > $dir/values.yaml"
  if [[ $DRY_RUN != 1 ]]; then
    helm get values "$RELEASE" -n "$NAMESPACE" --all -o yaml >"$dir/values.yaml" || die "cannot read the release's values"
  fi
  local tmpl=(helm template "$RELEASE" "$CHART" -n "$NAMESPACE" -f "$dir/values.yaml" -s templates/release-gate-job.yaml
              --set "releaseGate.run.id=$id" --set "releaseGate.run.mode=$mode" --set "releaseGate.run.service=$service" "$@")
  print_cmd "${tmpl[@]}"
  say "    > $dir/job.yaml"
  print_cmd kubectl -n "$NAMESPACE" create -f "$dir/job.yaml"
  if [[ $DRY_RUN == 1 ]]; then
    GATE_RESULT=${RELEASE_GATE_TEST_RESULT:-passed}
    print_cmd kubectl -n "$NAMESPACE" logs -f "job/$job" -c release-gate --pod-running-timeout=5m
    say "  (dry run: the gate's result is taken as $GATE_RESULT)"
    return 0
  fi
  "${tmpl[@]}" >"$dir/job.yaml" || die "cannot render the gate's Job (is releaseGate.enabled in the release? scripts/deploy $mode sets it)"
  kubectl -n "$NAMESPACE" create -f "$dir/job.yaml" >/dev/null || die "cannot create Job $job"
  deadline=$(sed -n 's/^ *activeDeadlineSeconds: *//p' "$dir/job.yaml" | head -n1)
  deadline=$((SECONDS + ${deadline:-3600} + 120))
  say "  leaving this shell does not stop it; to watch again: kubectl -n $NAMESPACE logs -f job/$job"
  say "  to stop it (it rolls back first): kubectl -n $NAMESPACE delete job $job"
  print_cmd kubectl -n "$NAMESPACE" logs -f "job/$job" -c release-gate --pod-running-timeout=5m
  kubectl -n "$NAMESPACE" logs -f "job/$job" -c release-gate --pod-running-timeout=5m || say "  (log stream ended; waiting for the Job's result)"
  while :; do
    status=$(kubectl -n "$NAMESPACE" get job "$job" -o jsonpath='{.status.succeeded}/{.status.failed}' 2>/dev/null || true)
    case $status in
      1/*) GATE_RESULT=passed ;;
      */1)
        GATE_RESULT=failed
        # Exit 4: the gate refused to start; anything else that failed may have rolled back.
        code=$(kubectl -n "$NAMESPACE" get pods -l "job-name=$job" \
          -o jsonpath='{.items[*].status.containerStatuses[?(@.name=="release-gate")].state.terminated.exitCode}' 2>/dev/null || true)
        [[ $code == 4 ]] && GATE_RESULT=refused
        ;;
    esac
    if [[ -n $GATE_RESULT ]]; then rm -rf "$dir"; return 0; fi
    ((SECONDS < deadline)) || die "Job $job has no result after its deadline; see kubectl -n $NAMESPACE describe job $job"
    sleep 5
  done
}
