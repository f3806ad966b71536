#!/usr/bin/env bash
# The project's PostgreSQL cluster, for the Dagster instance of deploy/dagster/dagster.yaml:
# Debian's PostgreSQL server, its data in .postgres/ of the project, listening on 127.0.0.1 only
# (and a socket inside its data folder, for the cluster's owner alone).
#
#   deploy/postgres.sh start   install the server when missing (root: apt-get), create the
#                              cluster, its role and database on first use, and start it;
#                              a running cluster is left as it is
#   deploy/postgres.sh stop    stop it; its data stays for the next start
#
# The Makefile sets the DAGSTER_PG_* variables dagster.yaml reads (`make postgres`,
# `make postgres-stop`); FEATUREPLANE_PG_DATA moves the data folder. The server runs as the
# caller, or as the `postgres` user when the caller is root (PostgreSQL refuses root).
set -euo pipefail
cd "$(dirname "$0")/.."

port=${DAGSTER_PG_PORT:?DAGSTER_PG_PORT is unset: run make postgres}
user=${DAGSTER_PG_USER:?DAGSTER_PG_USER is unset: run make postgres}
password=${DAGSTER_PG_PASSWORD:?DAGSTER_PG_PASSWORD is unset: run make postgres}
database=${DAGSTER_PG_DB:?DAGSTER_PG_DB is unset: run make postgres}
data=${FEATUREPLANE_PG_DATA:-$PWD/.postgres}

fail() {
    echo "postgres: $*" >&2
    exit 1
}

# The newest installed server's programs (Debian keeps them out of PATH).
bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

# A command as the cluster's owner.
owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

install_server() {
    [ -n "$(bin)" ] && return
    [ "$(id -u)" -eq 0 ] || fail "PostgreSQL's server is not installed: apt-get install postgresql (as root)"
    echo "postgres: installing Debian's postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

create_cluster() {
    [ -s "$data/PG_VERSION" ] && return
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
    owner test -w "$data" ||
        fail "the postgres user cannot write $data (a parent folder shuts it out): set FEATUREPLANE_PG_DATA"
    owner "$(bin)/initdb" --pgdata="$data" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >"$data.initdb.log" ||
        fail "initdb failed: $(tail -n 5 "$data.initdb.log")"
    rm "$data.initdb.log"
}

# The role and database of the instance, created when missing; the password set every start.
create_database() {
    owner "$(bin)/psql" --host="$data" --port="$port" --dbname=postgres --quiet \
        --no-psqlrc -v ON_ERROR_STOP=1 -v user="$user" -v password="$password" \
        -v database="$database" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'user', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \gexec
SQL
}

start() {
    install_server
    create_cluster
    if owner "$(bin)/pg_ctl" status --pgdata="$data" >/dev/null; then
        echo "postgres: running on 127.0.0.1:$port ($data)"
    else
        owner "$(bin)/pg_ctl" start --pgdata="$data" --log="$data/server.log" --wait \
            --timeout=60 --silent \
            -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$data'" ||
            fail "the server did not start: $(tail -n 5 "$data/server.log")"
        echo "postgres: started on 127.0.0.1:$port ($data)"
    fi
    create_database
}

stop() {
    if [ -n "$(bin)" ] && [ -s "$data/PG_VERSION" ] &&
        owner "$(bin)/pg_ctl" status --pgdata="$data" >/dev/null; then
        owner "$(bin)/pg_ctl" stop --pgdata="$data" --mode=fast --wait --silent
        echo "postgres: stopped"
    else
        echo "postgres: not running"
    fi
}

case "${1:-}" in
start | stop) "$1" ;;
*) fail "usage: deploy/postgres.sh start|stop" ;;
esac
