-- Roles of least privilege (docs/security.md, "PostgreSQL"). The group roles are NOLOGIN and
-- belong to the cluster, not to this schema: created by whichever schema migrates first (the
-- local stack's `up` creates them too, with its login users). The grants are this schema's.
--   pipeline_migrator   owns the tables: DDL, and what the migrations do
--   pipeline_store      INSERT, SELECT on sensor_readings; device_id of devices (the silent
--                       devices gauge of services/store/silence.py)
--   pipeline_enrich     SELECT on devices (the registry enrich joins)
--   pipeline_reader     SELECT on the tables of this migration's time (Grafana, analysts)
--   pipeline_admin_api  SELECT, INSERT, UPDATE on devices (the device registry of the admin API)
-- A later migration that adds a table grants on it itself: no default privileges, so that a
-- table only some roles may read (the audit log) is never readable by the rest by accident.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['pipeline_migrator', 'pipeline_store', 'pipeline_enrich',
                                     'pipeline_reader', 'pipeline_admin_api']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION
                -- Another session (a migration elsewhere, the stack's set-up) made it first.
                WHEN duplicate_object OR unique_violation THEN NULL;
            END;
        END IF;
    END LOOP;
    -- A migrator that is not the database's owner creates the schemas of a new deployment.
    IF NOT has_database_privilege('pipeline_migrator', current_database(), 'CREATE') THEN
        EXECUTE format('GRANT CREATE ON DATABASE %I TO pipeline_migrator', current_database());
    END IF;
    -- current_schema() is the schema being migrated: the first of migrate()'s search_path.
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO pipeline_migrator', current_schema());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO pipeline_store, pipeline_enrich, '
                   'pipeline_reader, pipeline_admin_api', current_schema());
END
$$;

-- The owner may ALTER and DROP the table; TimescaleDB passes a hypertable's owner and grants
-- on to its chunks, existing and new.
ALTER TABLE devices OWNER TO pipeline_migrator;
ALTER TABLE sensor_readings OWNER TO pipeline_migrator;
ALTER TABLE schema_migrations OWNER TO pipeline_migrator;

GRANT SELECT, INSERT ON sensor_readings TO pipeline_store;
GRANT SELECT (device_id) ON devices TO pipeline_store;
GRANT SELECT ON devices TO pipeline_enrich;
GRANT SELECT ON devices, sensor_readings, schema_migrations TO pipeline_reader;
GRANT SELECT, INSERT, UPDATE ON devices TO pipeline_admin_api;
