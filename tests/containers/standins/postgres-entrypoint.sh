#!/bin/sh
# The part of the official postgres image's docker-entrypoint.sh that docker-compose.tenant.yml relies on:
# on an empty $PGDATA, initdb with POSTGRES_USER (default postgres) and POSTGRES_PASSWORD (required), password
# (scram-sha-256) authentication over TCP from anywhere, trust on the local socket, and POSTGRES_DB (default: the
# user's name) created; the server runs as the postgres user and listens on every interface.
set -eu

if [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    user=${POSTGRES_USER:-postgres}
    database=${POSTGRES_DB:-$user}
    init=$(mktemp -d)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$init/pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options, as in the official image
    initdb --username="$user" --pwfile="$init/pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 ${POSTGRES_INITDB_ARGS:-} >/dev/null
    rm -f "$init/pwfile"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo 'host all all all scram-sha-256' >> "$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
        # A private socket and no TCP: nothing (a healthcheck, a client) sees this temporary server.
        pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=$init" -w start >/dev/null
        echo 'CREATE DATABASE :"db"' | psql -v ON_ERROR_STOP=1 -h "$init" -U "$user" -d postgres -v db="$database" >/dev/null
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    rmdir "$init"
    echo "standin postgres: initialised $PGDATA (user $user, database $database)"
fi

exec "$@"
