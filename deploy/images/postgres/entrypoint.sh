#!/bin/sh
# First start: a cluster in $PGDATA (a subfolder of the volume, which initdb may chmod), the
# superuser POSTGRES_USER with POSTGRES_PASSWORD and the database POSTGRES_DB. Every start: the
# server in the foreground, listening on every address, its socket in /tmp.
set -eu
: "${POSTGRES_USER:=throttle}"
: "${POSTGRES_DB:=throttle}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres: set POSTGRES_PASSWORD (the password of $POSTGRES_USER)" >&2
    exit 1
  fi
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
    --no-locale --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "postgres: created the cluster, user $POSTGRES_USER and database $POSTGRES_DB" >&2
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
