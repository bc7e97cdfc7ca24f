# shellcheck shell=bash
# Shared helpers for scripts/up and scripts/test: logging, making sure Postgres
# and Redis are reachable (starting or installing them when possible), port checks
# and health polling without curl.

PG_ADMIN_URL=""
export PG_ADMIN_URL
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export ROOT

say() { printf '%s\n' "$*" >&2; }
step() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

have() { command -v "$1" >/dev/null 2>&1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif have sudo; then sudo "$@"
  else return 1
  fi
}

# tcp_open HOST PORT: true when something accepts connections there.
tcp_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# http_status HOST PORT PATH: prints the HTTP status code (or 000).
http_status() {
  local host=$1 port=$2 path=$3 line
  {
    exec 3<>"/dev/tcp/$host/$port" || { echo 000; return; }
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&3
    IFS= read -r -t 3 line <&3 || line=""
    exec 3<&- 3>&-
  } 2>/dev/null
  line=${line#HTTP/1.? }
  echo "${line:0:3}" | grep -E '^[0-9]{3}$' || echo 000
}

# http_body HOST PORT PATH: prints the response body.
http_body() {
  local host=$1 port=$2 path=$3
  {
    exec 3<>"/dev/tcp/$host/$port" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&3
    sed '1,/^\r\{0,1\}$/d' <&3
    exec 3<&- 3>&-
  } 2>/dev/null
}

# http_headers HOST PORT PATH: prints the response's status line and headers.
http_headers() {
  local host=$1 port=$2 path=$3
  {
    exec 3<>"/dev/tcp/$host/$port" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&3
    sed '/^\r\{0,1\}$/q' <&3 | tr -d '\r'
    exec 3<&- 3>&-
  } 2>/dev/null
}

redis_ping() {
  local host=$1 port=$2 line
  {
    exec 3<>"/dev/tcp/$host/$port" || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 line <&3 || line=""
    exec 3<&- 3>&-
  } 2>/dev/null
  [[ $line == +PONG* ]]
}

apt_install() {
  have apt-get || return 1
  step "installing $* (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 && return 0
  as_root apt-get update -qq >/dev/null 2>&1 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Postgres -------------------------------------------------------------

pg_try() { have psql && psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }

start_local_postgres() {
  if have pg_ctlcluster && ls /etc/postgresql/*/main >/dev/null 2>&1; then
    local version
    version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
    step "starting Postgres $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    return 0
  fi
  return 1
}

# Sets PG_ADMIN_URL to a URL (database `postgres`) of a role that can create
# databases and roles, starting or installing Postgres if needed. Honours
# DATABASE_URL (or DATABASE_ADMIN_URL) when given.
ensure_postgres() {
  local given=${DATABASE_ADMIN_URL:-${DATABASE_URL:-}}
  if [[ -n $given ]]; then
    have psql || apt_install postgresql-client || die "psql is needed to check DATABASE_URL"
    pg_try "$given" || die "cannot connect to the given DATABASE_URL/DATABASE_ADMIN_URL"
    PG_ADMIN_URL=$given
    return
  fi
  local candidates=(
    "postgres://postgres@127.0.0.1:5432/postgres"
    "postgres:///postgres?host=/var/run/postgresql"
    "postgres://postgres@/postgres?host=/var/run/postgresql"
  )
  local attempt url
  for attempt in 1 2 3; do
    for url in "${candidates[@]}"; do
      if pg_try "$url"; then PG_ADMIN_URL=$url; return; fi
    done
    case $attempt in
      1) start_local_postgres || {
           apt_install postgresql postgresql-contrib || true
           start_local_postgres || true
         } ;;
      2) # Fresh installs authenticate the OS user by peer: give it a superuser role.
         if have runuser || have su; then
           local me; me=$(id -un)
           step "creating Postgres role $me"
           if [[ $(id -u) -eq 0 ]]; then
             runuser -u postgres -- psql -qc "CREATE ROLE \"$me\" SUPERUSER LOGIN" >/dev/null 2>&1 || true
           else
             sudo -u postgres psql -qc "CREATE ROLE \"$me\" SUPERUSER LOGIN" >/dev/null 2>&1 || true
           fi
         fi ;;
    esac
    for _ in $(seq 1 50); do tcp_open 127.0.0.1 5432 && break; sleep 0.2; done
  done
  die "Postgres is not reachable on 127.0.0.1:5432 and could not be started; install it or set DATABASE_URL"
}

# url_with_db URL DB: the same server and role, another database.
url_with_db() {
  local url=$1 db=$2 base query=""
  [[ $url == *\?* ]] && { query="?${url#*\?}"; url=${url%%\?*}; }
  base=${url%/*}
  # postgres:///db has an empty authority; keep the triple slash.
  printf '%s/%s%s' "$base" "$db" "$query"
}

# role_url ADMIN_URL ROLE DB: a URL for ROLE (password = ROLE) over TCP on the
# admin URL's host (127.0.0.1 for socket URLs).
role_url() {
  local admin=$1 role=$2 db=$3 rest hostport
  rest=${admin#*://}
  rest=${rest%%\?*}
  hostport=${rest%%/*}
  hostport=${hostport##*@}
  [[ -z $hostport ]] && hostport="127.0.0.1:5432"
  printf 'postgres://%s:%s@%s/%s' "$role" "$role" "$hostport" "$db"
}

ensure_database() {
  local admin=$1 db=$2
  if ! psql "$admin" -Atqc "select 1 from pg_database where datname = '$db'" | grep -q 1; then
    step "creating database $db"
    psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
  fi
}

# --- Redis ----------------------------------------------------------------

# Sets REDIS_HOST/REDIS_PORT/REDIS_URL, starting or installing Redis if needed.
ensure_redis() {
  REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
  local hostport=${REDIS_URL#redis://}
  hostport=${hostport##*@}
  hostport=${hostport%%/*}
  REDIS_HOST=${hostport%%:*}
  REDIS_PORT=${hostport##*:}
  [[ $REDIS_PORT == "$REDIS_HOST" ]] && REDIS_PORT=6379
  redis_ping "$REDIS_HOST" "$REDIS_PORT" && return
  [[ $REDIS_HOST == 127.0.0.1 || $REDIS_HOST == localhost ]] \
    || die "Redis at $REDIS_URL does not answer PING"
  if ! have redis-server; then
    apt_install redis-server || die "Redis is not running and redis-server is not installed (apt-get install redis-server)"
  fi
  step "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/exchange-redis.log" >/dev/null
  for _ in $(seq 1 50); do redis_ping "$REDIS_HOST" "$REDIS_PORT" && return; sleep 0.1; done
  die "Redis did not start on 127.0.0.1:$REDIS_PORT (see ${TMPDIR:-/tmp}/exchange-redis.log)"
}

# unlink_keys PATTERN: removes the Redis keys matching PATTERN (needs redis-cli;
# does nothing without it). UNLINK frees large values off Redis's main thread.
unlink_keys() {
  have redis-cli || return 0
  local url=${REDIS_URL:-redis://127.0.0.1:6379}
  redis-cli -u "$url" --scan --pattern "$1" 2>/dev/null \
    | xargs -r -n 500 redis-cli -u "$url" unlink >/dev/null 2>&1 || true
}

ensure_cargo() {
  if ! have cargo && [[ -x $HOME/.cargo/bin/cargo ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  have cargo || die "cargo not found: install Rust from https://rustup.rs"
}

# ensure_upbit_clients: exports UPBIT_CLIENTS_PYTHON, a Python with the public
# Upbit client libraries the tests trade with (tools/upbit-clients), made once
# in a virtualenv under the tools cache. In CI a failure is fatal; elsewhere
# the test that needs it is skipped.
ensure_upbit_clients() {
  local tools=${EXCHANGE_TOOLS:-$HOME/.cache/exchange/tools}
  local venv=$tools/py req=$ROOT/tools/upbit-clients/requirements.txt
  if [[ ! -x $venv/bin/python ]] || ! cmp -s "$req" "$venv/requirements.txt"; then
    step "installing the Upbit client libraries for the tests (ccxt, pyupbit; once)"
    rm -rf "$venv"
    if ! { have python3 || apt_install python3; } ||
       ! { python3 -m venv "$venv" >/dev/null 2>&1 || { apt_install python3-venv && python3 -m venv "$venv"; }; } ||
       ! "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"; then
      rm -rf "$venv"
      [[ ${CI:-} == true ]] && die "cannot install the Upbit client libraries (pip install -r $req)"
      say "  could not install them: the client-library test will be skipped"
      return 0
    fi
    cp "$req" "$venv/requirements.txt"
  fi
  export UPBIT_CLIENTS_PYTHON=$venv/bin/python
}

# Chromium and Firefox ESR (Debian's) and puppeteer-core for the browser test
# (tools/browser): installed once, puppeteer-core under
# ~/.cache/exchange/tools/browser from its lock file. Exports BROWSER_NODE_MODULES,
# CHROMIUM and FIREFOX; without them (no apt or npm here) the browser test is
# skipped, except in CI where it must run.
ensure_browser() {
  local tools=${EXCHANGE_TOOLS:-$HOME/.cache/exchange/tools}
  local dir=$tools/browser src=$ROOT/tools/browser
  local chromium firefox
  chromium=$(command -v chromium || command -v chromium-browser || true)
  if [[ -z $chromium ]] && apt_install chromium; then
    chromium=$(command -v chromium || true)
  fi
  firefox=$(command -v firefox-esr || command -v firefox || true)
  if [[ -z $firefox ]] && apt_install firefox-esr; then
    firefox=$(command -v firefox-esr || true)
  fi
  if [[ ! -d $dir/node_modules/puppeteer-core ]] || ! cmp -s "$src/package-lock.json" "$dir/package-lock.json"; then
    step "installing puppeteer-core for the browser test (once)"
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$src/package.json" "$src/package-lock.json" "$dir/"
    if ! have npm || ! (cd "$dir" && npm ci --silent --no-audit --no-fund >/dev/null 2>&1); then
      rm -rf "$dir/node_modules"
    fi
  fi
  if [[ -z $chromium || -z $firefox || ! -d $dir/node_modules/puppeteer-core ]]; then
    [[ ${CI:-} == true ]] && die "cannot install Chromium, Firefox or puppeteer-core for the browser test"
    say "  no Chromium, Firefox or puppeteer-core: the browser test will be skipped"
    return 0
  fi
  export BROWSER_NODE_MODULES=$dir/node_modules CHROMIUM=$chromium FIREFOX=$firefox
}

target_dir() {
  printf '%s' "${CARGO_TARGET_DIR:-$ROOT/target}"
}

# free_port: a port nothing listens on, below the kernel's ephemeral range
# (32768+) so outgoing connections cannot take it meanwhile.
free_port() {
  local p
  while :; do
    p=$((15000 + RANDOM % 17000))
    tcp_open 127.0.0.1 "$p" || { echo "$p"; return; }
  done
}

# wait_http PORT PATH PID NAME LOG: waits (120 s at most) for a 200 on
# 127.0.0.1:PORT/PATH while PID lives; on failure shows LOG and exits.
wait_http() {
  local port=$1 path=$2 pid=$3 name=$4 log=$5 deadline=$((SECONDS + 120))
  until [[ $(http_status 127.0.0.1 "$port" "$path") == 200 ]]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "$name exited during start; last log lines:"
      tail -n 20 "$log" >&2
      exit 1
    fi
    ((SECONDS < deadline)) || die "$name not ready after 120s (see $log)"
    sleep 0.2
  done
}
