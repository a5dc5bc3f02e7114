#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks, on 127.0.0.1 only.
#
#   scripts/postgres.sh [start]   install PostgreSQL if missing, start the cluster, print its URL
#   scripts/postgres.sh url       print the URL of the running cluster
#   scripts/postgres.sh stop [immediate]
#                                 stop the cluster (its files stay; `start` reuses them);
#                                 `immediate` skips the shutdown checkpoint, like a crash
#
# The cluster lives in $BASTION_PG_DIR (default /tmp/bastion-pg). The role `bastion` (with
# CREATEDB, so tests can make a database each) has a random password kept in
# $BASTION_PG_DIR/password (0600); the printed URL carries no password: give it to the proxy
# through BASTION_STORE_PASSWORD or `store_password_file`. A second `start` is quick and prints
# the same URL. PostgreSQL refuses to run as root, so as root the server runs as `postgres`.
set -euo pipefail

DIR="${BASTION_PG_DIR:-/tmp/bastion-pg}"
ROLE=bastion
DB=bastion
cmd="${1:-start}"

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -z "$found" ]] && command -v pg_ctl >/dev/null; then
        found="$(dirname "$(command -v pg_ctl)")"
    fi
    echo "$found"
}

install_postgres() {
    [[ -n "$(bindir)" ]] && return 0
    [[ $EUID -eq 0 ]] || die "PostgreSQL is not installed; run this once as root, or: apt-get install -y postgresql"
    echo "postgres.sh: installing PostgreSQL (apt-get install -y postgresql)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends postgresql >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends postgresql >&2; } \
        || die "apt-get could not install postgresql"
    [[ -n "$(bindir)" ]] || die "postgresql installed, but no pg_ctl under /usr/lib/postgresql"
}

# Run a PostgreSQL tool as the cluster's owner.
as_owner() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

url() {
    [[ -f "$DIR/port" ]] || die "no cluster in $DIR; run: scripts/postgres.sh start"
    echo "postgresql://$ROLE@127.0.0.1:$(cat "$DIR/port")/$DB"
}

running() {
    [[ -f "$DIR/data/PG_VERSION" ]] && as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    install_postgres
    BIN="$(bindir)"
    mkdir -p "$DIR"
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' OS user (the postgresql package makes it)"
        chown postgres: "$DIR"
    fi
    chmod 700 "$DIR"
    # Two test sessions starting at once must not both initdb.
    exec 9>"$DIR/.lock"
    flock 9
    if running; then
        url
        return
    fi
    if [[ ! -f "$DIR/data/PG_VERSION" ]]; then
        rm -rf "$DIR/data"
        umask 077
        head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$DIR/password"
        chmod 600 "$DIR/password"
        local pwfile="$DIR/.initdb-pw"
        cp "$DIR/password" "$pwfile"
        [[ $EUID -eq 0 ]] && chown postgres: "$pwfile"
        as_owner "$BIN/initdb" -D "$DIR/data" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
            || { rm -f "$pwfile"; die "initdb failed; see $DIR/initdb.log"; }
        rm -f "$pwfile"
        free_port >"$DIR/port"
        cat >>"$DIR/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $(cat "$DIR/port")
unix_socket_directories = '$DIR'
max_connections = 200
shared_buffers = 64MB
EOF
        local fresh=1
    fi
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 30 start >/dev/null 9>&- \
        || die "the server did not start; see $DIR/server.log"
    if [[ -n "${fresh:-}" ]]; then
        as_owner "$BIN/psql" -h "$DIR" -p "$(cat "$DIR/port")" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
            -v pw="$(cat "$DIR/password")" >/dev/null <<EOF
CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD :'pw';
CREATE DATABASE $DB OWNER $ROLE;
EOF
    fi
    url
}

stop() {
    local mode="${1:-fast}"
    [[ "$mode" == fast || "$mode" == immediate ]] || die "stop mode must be fast or immediate"
    BIN="$(bindir)"
    [[ -n "$BIN" && -f "$DIR/data/PG_VERSION" ]] || return 0
    if running; then
        as_owner "$BIN/pg_ctl" -D "$DIR/data" -w -t 30 -m "$mode" stop >/dev/null
    fi
}

case "$cmd" in
    start) start ;;
    stop) stop "${2:-fast}" ;;
    url) url ;;
    *) die "unknown command '$cmd'; use start, url or stop" ;;
esac
