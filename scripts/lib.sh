# Shared by scripts/up and scripts/test: find or bring up PostgreSQL and NATS (JetStream).
#
# Order of preference, for each of the two:
#   1. what DATABASE_URL / NATS_URL point at, when it answers;
#   2. a Docker engine, when one runs (compose's `postgres`; a loopback nats-server container);
#   3. Debian's `postgresql` and `nats-server` packages, installed and started, when root.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/data"

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# host and port of a URL such as postgres://u:p@host:5432/db or nats://host:4222
url_host() { sed -E 's#^[a-z]+://([^@/]*@)?([^:/?]+).*#\2#' <<<"$1"; }
url_port() {
  local p
  p=$(sed -nE 's#^[a-z]+://([^@/]*@)?[^:/?]+:([0-9]+).*#\2#p' <<<"$1")
  echo "${p:-$2}"
}
answers() { timeout 2 bash -c "</dev/tcp/$1/$2" 2>/dev/null; }
wait_for() { # host port what
  for _ in $(seq 1 60); do answers "$1" "$2" && return 0; sleep 1; done
  die "$3 did not come up on $1:$2"
}
docker_runs() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

# Sets DATABASE_URL (the platform database) and PG_SERVER_URL (its server's `postgres`
# database, used to create databases), starting PostgreSQL if needed.
ensure_postgres() {
  local url="${DATABASE_URL:-${NEON_PG_CONN:-}}"
  if [ -n "$url" ] && answers "$(url_host "$url")" "$(url_port "$url" 5432)"; then
    say "PostgreSQL: using DATABASE_URL"
  elif [ -z "$url" ] && answers 127.0.0.1 5432; then
    url="postgres://$(id -un)@127.0.0.1:5432/platform"
    say "PostgreSQL: using the server on 127.0.0.1:5432"
  elif docker_runs; then
    say "PostgreSQL: starting it with docker compose"
    (cd "$ROOT" && docker compose up -d postgres)
    url="postgres://platform:platform@127.0.0.1:5432/platform"
    wait_for 127.0.0.1 5432 PostgreSQL
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "PostgreSQL: installing and starting Debian's postgresql"
    command -v pg_ctlcluster >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
    local version; version=$(ls /etc/postgresql | sort -V | tail -n1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
    wait_for 127.0.0.1 5432 PostgreSQL
    su postgres -c "psql -qc \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'platform') THEN CREATE ROLE platform SUPERUSER LOGIN PASSWORD 'platform'; END IF; END \\\$\\\$\"" >/dev/null
    url="postgres://platform:platform@127.0.0.1:5432/platform"
  else
    die "no PostgreSQL at DATABASE_URL or 127.0.0.1:5432, no Docker engine, and not root to install one"
  fi
  export DATABASE_URL="$url"
  export PG_SERVER_URL="${url%/*}/postgres"
}

# Creates the database of DATABASE_URL if it does not exist (needs psql or docker).
ensure_database() {
  local db="${DATABASE_URL##*/}"; db="${db%%\?*}"
  if command -v psql >/dev/null; then
    psql "$PG_SERVER_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
      || psql "$PG_SERVER_URL" -qc "CREATE DATABASE \"$db\"" >/dev/null
  elif docker_runs; then
    (cd "$ROOT" && docker compose exec -T postgres psql -U platform -d postgres -Atqc \
      "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1) \
      || (cd "$ROOT" && docker compose exec -T postgres psql -U platform -d postgres -qc "CREATE DATABASE \"$db\"")
  else
    say "psql not found: assuming database $db exists"
  fi
}

# Sets NATS_URL, starting a JetStream-enabled nats-server if needed.
ensure_nats() {
  local url="${NATS_URL:-nats://127.0.0.1:4222}"
  if answers "$(url_host "$url")" "$(url_port "$url" 4222)"; then
    say "NATS: using $url"
  elif docker_runs; then
    # An open development bus on loopback (compose's `nats` is authenticated and unpublished).
    say "NATS: starting a development nats-server container on 127.0.0.1:4222"
    docker run -d --rm --name platform-dev-nats -p 127.0.0.1:4222:4222 nats:2.9 -js >/dev/null
    url="nats://127.0.0.1:4222"
    wait_for 127.0.0.1 4222 NATS
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "NATS: installing and starting Debian's nats-server (JetStream on)"
    command -v nats-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; }
    local port; port=$(url_port "$url" 4222)
    mkdir -p "$DATA/nats"
    (cd "$ROOT" && nohup nats-server -c nats/nats-server.conf -p "$port" -m 0 >"$DATA/nats/server.log" 2>&1 &)
    url="nats://127.0.0.1:$port"
    wait_for 127.0.0.1 "$port" NATS
  else
    die "no NATS at $url, no Docker engine, and not root to install one"
  fi
  export NATS_URL="$url"
}

# Installs the realtime tools of scripts/realtime (Soketi, the Pusher server library and
# pusher-js) into its node_modules, from the lock file, when missing or out of date.
ensure_realtime_tools() {
  local dir="$ROOT/scripts/realtime"
  if [ ! -x "$dir/node_modules/.bin/soketi" ] \
     || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    command -v npm >/dev/null || die "npm (Node 20) is needed for Soketi and the realtime tests"
    say "installing Soketi and the Pusher libraries (npm ci in scripts/realtime)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# Installs the Python packages of scripts/python/requirements.txt (the providers' own
# libraries the signature tests check against) into scripts/python/.venv, when missing or
# out of date.
ensure_python_tools() {
  local dir="$ROOT/scripts/python"
  if [ ! -x "$dir/.venv/bin/python" ] || [ "$dir/requirements.txt" -nt "$dir/.venv/.installed" ]; then
    command -v python3 >/dev/null || die "python3 is needed for the signature tests"
    say "installing the providers' Python libraries (scripts/python/requirements.txt)"
    python3 -m venv "$dir/.venv"
    "$dir/.venv/bin/pip" install -q --disable-pip-version-check -r "$dir/requirements.txt"
    touch "$dir/.venv/.installed"
  fi
}

# Starts (once; later runs find it) a private nats-server with authentication
# (nats/nats-server-auth.conf: one user per service, each with its subject permissions) on
# 127.0.0.1:$UP_NATS_PORT (default 4322), and exports one URL per service:
# NATS_URL_COMMAND_API, NATS_URL_PROJECTOR, NATS_URL_QUERY_API. The passwords are random,
# made on the first run and kept in data/nats-up/passwords.env (readable by its owner only).
ensure_secured_nats() {
  local port="${UP_NATS_PORT:-4322}" dir="$DATA/nats-up"
  mkdir -p "$dir"
  if [ ! -s "$dir/passwords.env" ]; then
    (umask 077
     for user in COMMAND_API PROJECTOR QUERY_API WHATSAPP_BRIDGE; do
       # A letter first: nats-server parses the value as a bare string only then.
       echo "export NATS_${user}_PASSWORD=n$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
     done >"$dir/passwords.env")
  fi
  # shellcheck disable=SC1091
  source "$dir/passwords.env"
  if ! answers 127.0.0.1 "$port" && ! command -v nats-server >/dev/null && docker_runs; then
    say "NATS: starting an authenticated nats-server container on 127.0.0.1:$port"
    docker run -d --rm --name platform-up-nats -p "127.0.0.1:$port:4222" \
      -v "$ROOT/nats/nats-server-auth.conf:/etc/nats/auth.conf:ro" \
      -e NATS_COMMAND_API_PASSWORD -e NATS_PROJECTOR_PASSWORD -e NATS_QUERY_API_PASSWORD \
      -e NATS_WHATSAPP_BRIDGE_PASSWORD nats:2.9 -c /etc/nats/auth.conf -js -sd /data >/dev/null
    wait_for 127.0.0.1 "$port" NATS
  fi
  if ! answers 127.0.0.1 "$port"; then
    if ! command -v nats-server >/dev/null; then
      [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        || die "nats-server is needed (Debian package nats-server), or set NATS_URL to a NATS of yours"
      say "NATS: installing Debian's nats-server"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
    fi
    say "NATS: starting an authenticated nats-server on 127.0.0.1:$port (one user per service)"
    (cd "$ROOT" && nohup nats-server -c nats/nats-server-auth.conf -a 127.0.0.1 -p "$port" -m 0 \
       -sd "$dir/store" >"$dir/server.log" 2>&1 &)
    wait_for 127.0.0.1 "$port" NATS
  fi
  export NATS_URL_COMMAND_API="nats://command-api:$NATS_COMMAND_API_PASSWORD@127.0.0.1:$port"
  export NATS_URL_PROJECTOR="nats://projector:$NATS_PROJECTOR_PASSWORD@127.0.0.1:$port"
  export NATS_URL_QUERY_API="nats://query-api:$NATS_QUERY_API_PASSWORD@127.0.0.1:$port"
  export NATS_URL="nats://127.0.0.1:$port"
}
