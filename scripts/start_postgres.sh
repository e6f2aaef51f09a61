#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the MLflow backend store (tests, a laptop trying the team setup).
#
#   scripts/start_postgres.sh start DIR PORT   # initdb into DIR (once), start, create role+db "mlflow";
#                                              # prints postgresql://mlflow:mlflow@127.0.0.1:PORT/mlflow
#   scripts/start_postgres.sh stop DIR
#
# Uses Debian's postgresql server binaries (apt-get install postgresql; PG_BIN=/path/to/bin overrides). PostgreSQL
# refuses to run as root, so as root the server runs as the `postgres` user and DIR is given to it. Only 127.0.0.1
# and a Unix socket inside DIR are listened on; password authentication over TCP (scram-sha-256).
set -euo pipefail

usage() { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1 dir=$2 port=${3:-}

find_bin() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  echo "start_postgres: PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql" >&2
  exit 3
}
BIN=$(find_bin)

# Run a command as the server's user: `postgres` when we are root, ourselves otherwise.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  else
    "$@"
  fi
}

case "$action" in
  start)
    [ -n "$port" ] || usage
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; chmod 700 "$dir"; fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      pwfile="$dir/.pw"
      echo "postgres" > "$pwfile"
      [ "$(id -u)" -eq 0 ] && chown postgres: "$pwfile"
      as_owner "$BIN/initdb" -D "$dir/data" -U postgres --pwfile="$pwfile" -E UTF8 --no-locale \
        --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
      rm -f "$pwfile"
    fi
    as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    psql=("$BIN/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)
    if [ "$(as_owner "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='mlflow'")" != "1" ]; then
      as_owner "${psql[@]}" -c "CREATE ROLE mlflow LOGIN PASSWORD 'mlflow'" -c "CREATE DATABASE mlflow OWNER mlflow"
    fi
    echo "postgresql://mlflow:mlflow@127.0.0.1:$port/mlflow"
    ;;
  stop)
    dir=$(cd "$dir" && pwd)
    as_owner "$BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *) usage ;;
esac
