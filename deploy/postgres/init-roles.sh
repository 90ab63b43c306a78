#!/bin/sh
# docker-compose.yml's TimescaleDB, first start only (/docker-entrypoint-initdb.d, as the
# postgres user, over the socket): the group roles of migration 0003/0004 and their login
# users, as deploy/local/stack.sh creates them for the local stack, each user's password the
# one `make up` generated (copied by compose-entrypoint.sh). Then what the migrator needs to
# create the schemas and tables (tools.setup runs as it).
set -eu
dir=/var/lib/postgresql/pipeline
for name in migrator store enrich reader admin_api audit_writer; do
  password=$(cat "$dir/postgres-$name.password")
  psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
SET log_min_error_statement = panic;
CREATE ROLE "pipeline_$name" NOLOGIN;
CREATE ROLE "$name" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD '$password';
GRANT "pipeline_$name" TO "$name";
SQL
done
psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
GRANT CREATE ON DATABASE "$POSTGRES_DB" TO pipeline_migrator;
GRANT USAGE, CREATE ON SCHEMA public TO pipeline_migrator;
SQL
