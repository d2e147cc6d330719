#!/usr/bin/env bash
# Redis and PostgreSQL on loopback for the scale-out mode and its tests (Debian packages).
#
#   eval "$(bash scripts/services.sh)"      # installs if needed, starts, exports the test URLs
#
# Idempotent: what is installed is not installed again, what runs is not started again, the
# test role and database are created once. What it does goes to stderr; stdout is only the
# `export` lines (RESULT_DB_URL_TEST, BROKER_URL_TEST), so `eval` picks them up.
# Needs root (or sudo) for apt-get and for starting the servers. Settings (environment):
#   PG_USER, PG_PASSWORD, PG_DB (llm_gateway, llm_gateway, llm_gateway_test), PG_PORT (5432),
#   REDIS_PORT (6379), REDIS_DB (15: the tests flush it).
set -euo pipefail

PG_USER=${PG_USER:-llm_gateway}
PG_PASSWORD=${PG_PASSWORD:-llm_gateway}
PG_DB=${PG_DB:-llm_gateway_test}
PG_PORT=${PG_PORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_DB=${REDIS_DB:-15}
STATE_DIR=${SERVICES_STATE_DIR:-/tmp/llm-gateway-services}

say() { echo "services: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

# --- install -------------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/postgres" ] || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
else
    say "redis-server and postgresql are installed"
fi

# --- Redis ---------------------------------------------------------------------------------
mkdir -p "$STATE_DIR"
if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
    say "redis already answers on 127.0.0.1:$REDIS_PORT"
else
    say "starting redis on 127.0.0.1:$REDIS_PORT (no persistence; log $STATE_DIR/redis.log)"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save "" --appendonly no \
        --dir "$STATE_DIR" --logfile "$STATE_DIR/redis.log" --pidfile "$STATE_DIR/redis.pid" >&2
    for _ in $(seq 50); do
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null
fi

# --- PostgreSQL ----------------------------------------------------------------------------
BIN=$(pg_bin)
VERSION=$(basename "$(dirname "$BIN")")
if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    say "postgresql already answers on 127.0.0.1:$PG_PORT"
else
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$VERSION main$"; then
        say "creating the postgresql $VERSION cluster 'main' (port $PG_PORT)"
        as_root pg_createcluster "$VERSION" main -p "$PG_PORT" >&2
    fi
    say "starting postgresql $VERSION on 127.0.0.1:$PG_PORT"
    as_root pg_ctlcluster "$VERSION" main start >&2 || true
    for _ in $(seq 100); do
        "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
        sleep 0.2
    done
    "$BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" >&2
fi

psql_admin() { as_root runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" = 1 ]; then
    say "role $PG_USER exists"
else
    say "creating role $PG_USER"
    psql_admin -c "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" = 1 ]; then
    say "database $PG_DB exists"
else
    say "creating database $PG_DB owned by $PG_USER"
    psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >&2
fi

PG_URL="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$REDIS_DB"
say "PostgreSQL: $PG_URL"
say "Redis:      $REDIS_URL"
echo "export RESULT_DB_URL_TEST=$PG_URL"
echo "export BROKER_URL_TEST=$REDIS_URL"
