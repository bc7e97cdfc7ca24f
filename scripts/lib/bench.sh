# shellcheck shell=bash
# What the benchmarks that run the whole stack share (source after common.sh):
# starting it from release builds on free ports, finding its processes, and
# the one-line summaries scripts/bench gathers into its table.

# bench_build: every release binary and example of the workspace, in one
# cargo invocation: the same set every time, so one benchmark does not rebuild
# crates another built with other features (cargo unifies features per
# invocation). A no-op once built.
bench_build() {
  step "building release binaries and benchmark programs"
  cargo build --release --manifest-path "$ROOT/Cargo.toml" --workspace --bins --examples -q
}

# bench_stack_up NAME: the whole stack (scripts/up --release --no-build) on free
# ports with a quiet market (MAX_BOOK_AGE an hour) and every rate limit off, in database
# bench_NAME_PID; waits until it is ready and stops it (and drops the database)
# when the calling script exits. Exports GATEWAY_PORT, SIM_PORT, … and
# METRICS_PORT_BASE (gateway admin +0, market-data +1, …, upbit-sim +6), sets
# BIN (the release binaries) and run_dir (a scratch directory, removed at exit).
# Extra environment for the services may be exported before the call.
bench_stack_up() {
  BIN="$(target_dir)/release"
  run_dir=$(mktemp -d)
  export RUN_DIR=$run_dir STATUS_EVERY=3600 EXCHANGE_DB="bench_${1}_$$"
  # A quiet market: the simulator's book stays as it starts, so the order
  # service's staleness guard is widened to keep it orderable.
  export SIM_RATE=0 MAX_BOOK_AGE=${MAX_BOOK_AGE:-1h} RATE_LIMIT_ORDER=0 RATE_LIMIT_DEFAULT=0 \
    RATE_LIMIT_QUOTATION=0 RATE_LIMIT_IP=0 RATE_LIMIT_AUTH=0 RATE_LIMIT_SIGNUP=0 RUST_LOG=warn
  export METRICS_PORT_BASE
  METRICS_PORT_BASE=$(free_port)
  local var
  for var in GATEWAY_PORT SIM_PORT MARKET_DATA_PORT ORDER_PORT INVENTORY_PORT USER_PORT INGESTOR_PORT; do
    printf -v "$var" '%s' "$(free_port)"
    export "${var?}"
  done
  setsid env --default-signal=INT "$ROOT/scripts/up" --release --no-build >"$run_dir/up.out" 2>&1 &
  bench_up_pid=$!
  trap bench_stack_down EXIT
  local deadline=$((SECONDS + 180))
  until [[ -f $run_dir/state ]]; do
    kill -0 "$bench_up_pid" 2>/dev/null || { tail -n 30 "$run_dir/up.out" >&2; die "the stack did not start"; }
    ((SECONDS < deadline)) || die "the stack was not ready after 180s"
    sleep 0.5
  done
}

# bench_ceiling URL CMD...: starts CMD, a ceiling server, in the background
# (stopped with the stack) and waits until URL answers. Sets ceiling_pid.
bench_ceiling() {
  local url=$1 deadline=$((SECONDS + 30))
  shift
  "$@" &
  ceiling_pid=$!
  until curl -fsS "$url" -o /dev/null 2>/dev/null; do
    kill -0 "$ceiling_pid" 2>/dev/null || die "the ceiling server ($1) exited"
    ((SECONDS < deadline)) || die "the ceiling server ($1) did not answer after 30s"
    sleep 0.1
  done
}

# bench_ticker FILE: waits until the gateway serves KRW-BTC's ticker (the
# market is live: subscriptions and reads are accepted); writes it to FILE.
bench_ticker() {
  local deadline=$((SECONDS + 60))
  until curl -fsS "http://127.0.0.1:$GATEWAY_PORT/v1/ticker?markets=KRW-BTC" -o "$1" 2>/dev/null \
    && grep -q trade_price "$1"; do
    ((SECONDS < deadline)) || die "no KRW-BTC ticker from the gateway after 60s"
    sleep 0.5
  done
}

bench_stack_down() {
  if [[ -n ${ceiling_pid:-} ]]; then kill "$ceiling_pid" 2>/dev/null || true; fi
  kill -TERM -- "-$bench_up_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$bench_up_pid" 2>/dev/null || break; sleep 0.1; done
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $EXCHANGE_DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$run_dir"
}

# pid_of NAME: the pid of the stack's release binary NAME, or "".
pid_of() { pgrep -f "^$BIN/$1\$" | head -n1 || true; }

# cpu_ticks PID: utime+stime of PID in clock ticks (0 when gone).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# rss_mb PID: resident memory of PID in MB (0 when gone).
rss_mb() { awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }

# bench_summary PART FIGURE CEILING RATIO TARGET: one row of scripts/bench's
# table, appended to $BENCH_SUMMARY when scripts/bench runs this part.
bench_summary() {
  if [[ -n ${BENCH_SUMMARY:-} ]]; then
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" >>"$BENCH_SUMMARY"
  fi
}
