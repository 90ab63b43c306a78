#!/bin/sh
# docker-compose.yml's db-credentials, once before setup, as root: the local stack's CA and
# one DSN file per database role (tools.credentials, its password from .stack/secrets,
# sslmode=verify-full against that CA) into the volume the pipeline's containers mount, owned
# by their user (10001) and 0400. DATABASE_URL gives the host, port and database only.
set -eu
out=/run/pipeline
install -d -m 0755 "$out"
install -m 0444 /run/stack/certs/ca.crt "$out/ca.crt"
install -d -o 10001 -g 10001 -m 0500 "$out/database"
for role in migrator store enrich reader; do
  python -m tools.credentials database --role "$role" --secrets-dir /run/stack/secrets \
    >"$out/database/$role.url.tmp"
  chown 10001:10001 "$out/database/$role.url.tmp"
  chmod 0400 "$out/database/$role.url.tmp"
  mv "$out/database/$role.url.tmp" "$out/database/$role.url"
done
