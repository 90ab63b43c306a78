#!/bin/sh
# docker-compose.yml's TimescaleDB entrypoint, as root before the image's own
# (docker-entrypoint.sh, which drops to the postgres user): the server's certificate and key
# and the database roles' passwords, mounted from the local stack's .stack/ (0700 folders the
# postgres user cannot read), copied where that user alone reads them (0600). Then the image's
# entrypoint with the arguments given (the `command` of the compose file).
set -eu
dir=/var/lib/postgresql/pipeline
install -d -o postgres -g postgres -m 0700 "$dir"
install -o postgres -g postgres -m 0600 /run/stack/certs/postgres.crt "$dir/server.crt"
install -o postgres -g postgres -m 0600 /run/stack/certs/postgres.key "$dir/server.key"
for file in /run/stack/secrets/postgres-*.password; do
  install -o postgres -g postgres -m 0600 "$file" "$dir/$(basename "$file")"
done
exec docker-entrypoint.sh "$@"
