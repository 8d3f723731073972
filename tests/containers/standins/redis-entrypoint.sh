#!/bin/sh
# The part of the official redis image's docker-entrypoint.sh that docker-compose.tenant.yml relies on: the server
# runs as the redis user in /data (owned by it), and protected mode is off by default (the official image builds
# Redis that way: other containers reach it over the compose network without a password).
set -eu

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$1" = redis-server ]; then
    shift
    # A configuration file, if any, comes first; a later --protected-mode yes still wins.
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
        config=$1
        shift
        set -- redis-server "$config" --protected-mode no "$@"
    else
        set -- redis-server --protected-mode no "$@"
    fi
fi

exec "$@"
