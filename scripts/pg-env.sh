#!/usr/bin/env bash
# Sourced by scripts/test.sh: makes sure DATABASE_URL names a PostgreSQL server the tests may
# create and drop databases on (they name theirs fltest_*).
#   1. DATABASE_URL already set: used as is.
#   2. A server answers at 127.0.0.1:5432 (pg_isready): used, as user postgres (trust auth).
#   3. initdb/pg_ctl exist (PATH or /usr/lib/postgresql/*/bin): a throwaway cluster on a free
#      port in a temp dir, stopped and deleted when the calling script exits.
#   4. None: the Postgres tests skip, saying so loudly; under CI (CI=true) that is an error.
# FLASHLEDGER_PG_THROWAWAY=1 skips step 2 (to exercise step 3).

pg_bin() {
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1
}

pg_env_throwaway() {
  local initdb pg_ctl port dir runas=()
  initdb="$(pg_bin initdb)"
  pg_ctl="$(pg_bin pg_ctl)"
  [ -n "$initdb" ] && [ -n "$pg_ctl" ] || return 1
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  dir="$(mktemp -d /tmp/flashledger-pg.XXXXXX)"
  # initdb refuses to run as root: run the server as the postgres system user then.
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || return 1
    chown postgres "$dir"
    runas=(runuser -u postgres --)
  fi
  "${runas[@]}" "$initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1 || return 1
  "${runas[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null || return 1
  PG_ENV_STOP=("${runas[@]}" "$pg_ctl" -D "$dir/data" -m fast -w stop)
  PG_ENV_DIR="$dir"
  trap 'pg_env_stop' EXIT
  export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
  echo "pg-env: started a throwaway PostgreSQL at 127.0.0.1:$port ($dir)"
}

pg_env_stop() {
  if [ -n "${PG_ENV_DIR:-}" ]; then
    "${PG_ENV_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PG_ENV_DIR"
    PG_ENV_DIR=""
  fi
}

if [ -n "${DATABASE_URL:-}" ]; then
  echo "pg-env: using DATABASE_URL from the environment"
elif [ "${FLASHLEDGER_PG_THROWAWAY:-0}" != 1 ] && "$(pg_bin pg_isready || echo false)" -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  export DATABASE_URL="postgresql://postgres@127.0.0.1:5432/postgres"
  echo "pg-env: using the PostgreSQL server at 127.0.0.1:5432"
elif pg_env_throwaway; then
  :
elif [ "${CI:-}" = true ]; then
  echo "pg-env: ERROR: no PostgreSQL (no DATABASE_URL, nothing at 127.0.0.1:5432, no initdb); CI must not skip the Postgres tests" >&2
  exit 1
else
  echo "pg-env: WARNING: no PostgreSQL found (no DATABASE_URL, nothing at 127.0.0.1:5432, no initdb): the Postgres tests will SKIP" >&2
fi
