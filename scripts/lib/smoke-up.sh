#!/usr/bin/env bash
# Smoke test of scripts/up: start the whole stack on free ports (with market-data
# as v1 and v2 side by side), check every health endpoint, gRPC reflection
# (grpcurl list) and that the gateway's answers come from both versions, stop it
# with SIGINT, and check that no process it started is left.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GRPCURL=${GRPCURL:-}
if [[ -z $GRPCURL ]]; then
  if have grpcurl; then GRPCURL=grpcurl
  elif [[ -x $ROOT/../shared/tools/bin/grpcurl ]]; then GRPCURL=$ROOT/../shared/tools/bin/grpcurl
  fi
fi

run_dir=$(mktemp -d)
base=$(free_port)
while tcp_open 127.0.0.1 $((base + 1)) || tcp_open 127.0.0.1 $((base + 5)) || tcp_open 127.0.0.1 $((base + 7)); do
  base=$(free_port)
done
export RUN_DIR=$run_dir STATUS_EVERY=2 METRICS_PORT_BASE=$base
for var in GATEWAY_PORT SIM_PORT MARKET_DATA_PORT ORDER_PORT INVENTORY_PORT USER_PORT INGESTOR_PORT MARKET_DATA_V2_PORT; do
  printf -v "$var" '%s' "$(free_port)"
  export "${var?}"
done
export EXCHANGE_DB="smoke_$$"
# Its own Redis keys too, so a stack already running on this Redis is left alone.
export REDIS_PREFIX="smoke$$:"

# Background jobs of a script start with SIGINT ignored; restore it so Ctrl-C
# (SIGINT to the group) reaches scripts/up as it would from a terminal.
setsid env --default-signal=INT "$ROOT/scripts/up" --no-build --two-versions >"$run_dir/up.out" 2>&1 &
up_pid=$!
cleanup() {
  kill -TERM -- "-$up_pid" 2>/dev/null || true
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $EXCHANGE_DB WITH (FORCE)" >/dev/null 2>&1 || true
  unlink_keys "$REDIS_PREFIX*"
}
trap cleanup EXIT
ensure_postgres

fail() { say "smoke: FAIL: $*"; say "--- scripts/up output:"; tail -n 40 "$run_dir/up.out" >&2; exit 1; }

deadline=$((SECONDS + 180))
until [[ -f $run_dir/state ]]; do
  kill -0 "$up_pid" 2>/dev/null || fail "scripts/up exited before the stack was ready"
  ((SECONDS < deadline)) || fail "stack not ready after 180s"
  sleep 0.5
done

for offset in 0 1 2 3 4 5 7; do
  port=$((base + offset))
  [[ $(http_status 127.0.0.1 "$port" /readyz) == 200 ]] || fail "metrics port $port not ready"
  http_body 127.0.0.1 "$port" /metrics | grep -q '^service_info' || fail "no service_info on :$port/metrics"
done
[[ $(http_status 127.0.0.1 "$GATEWAY_PORT" /readyz) == 200 ]] || fail "gateway /readyz"
[[ $(http_status 127.0.0.1 "$SIM_PORT" /healthz) == 200 ]] || fail "upbit-sim /healthz"

# Two versions side by side: the gateway's calls reach both. (An orderbook read
# asks market-data every time; tickers come from the gateway's memory, fed by one.)
served=""
for _ in $(seq 1 40); do
  served+=$(http_headers 127.0.0.1 "$GATEWAY_PORT" "/v1/orderbook?markets=KRW-BTC" | grep -i '^x-served-by:' || true)$'\n'
  sleep 0.12 # within the quotation limit (10/s per client)
done
for version in market-data/v1/ market-data/v2/; do
  grep -q "$version" <<<"$served" || fail "no answer served by $version in 40 requests: $(sort <<<"$served" | uniq -c)"
done
say "  answers came from market-data v1 and v2: $(grep -o 'market-data/v[12]' <<<"$served" | sort | uniq -c | xargs)"

if [[ -n $GRPCURL ]]; then
  check_list() {
    local port=$1 want=$2 out
    out=$("$GRPCURL" -plaintext "127.0.0.1:$port" list) || fail "grpcurl list on :$port"
    grep -qx "$want" <<<"$out" || fail "grpcurl list on :$port lacks $want: $out"
    grep -qx grpc.health.v1.Health <<<"$out" || fail "grpcurl list on :$port lacks health"
    out=$("$GRPCURL" -plaintext -d '{"service":""}' "127.0.0.1:$port" grpc.health.v1.Health/Check) \
      || fail "health check on :$port"
    grep -q SERVING <<<"$out" || fail "not SERVING on :$port: $out"
    say "  :$port $want SERVING"
  }
  check_list "$MARKET_DATA_PORT" exchange.marketdata.v1.MarketDataService
  check_list "$ORDER_PORT" exchange.order.v1.OrderService
  check_list "$INVENTORY_PORT" exchange.inventory.v1.InventoryService
  check_list "$USER_PORT" exchange.user.v1.UserService
  check_list "$INGESTOR_PORT" grpc.health.v1.Health
else
  say "smoke: grpcurl not found (set GRPCURL); skipping the grpcurl checks"
fi

# Stop with Ctrl-C, as a user would, and check nothing is left behind.
children=$(pgrep -g "$up_pid" | grep -vx "$up_pid" || true)
[[ -n $children ]] || fail "found no processes started by scripts/up"
kill -INT -- "-$up_pid"
for _ in $(seq 1 150); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$up_pid" 2>/dev/null && fail "scripts/up still running 15s after Ctrl-C"
left=""
for p in $children; do
  if kill -0 "$p" 2>/dev/null; then left+=" $p($(ps -o comm= -p "$p"))"; fi
done
[[ -z $left ]] || fail "processes left behind:$left"
for port in "$GATEWAY_PORT" "$SIM_PORT" "$MARKET_DATA_PORT" "$ORDER_PORT" "$INVENTORY_PORT" "$USER_PORT" "$INGESTOR_PORT" "$MARKET_DATA_V2_PORT"; do
  tcp_open 127.0.0.1 "$port" && fail "port $port still open after stop"
done
grep -q "stopping" "$run_dir/up.out" || fail "scripts/up did not stop its processes itself"
grep -q "exited; last log lines" "$run_dir/up.out" && fail "a service died instead of being stopped"
say "smoke: scripts/up started $(wc -w <<<"$children") processes, all healthy, all stopped"
rm -rf "$run_dir"
