-- The audit log (docs/security.md, "Audit log"): who did what to which target, when, with what
-- outcome, from where. Append-only, enforced here and not only by the code that writes it:
--   * no service role is granted UPDATE, DELETE or TRUNCATE on it;
--   * triggers refuse UPDATE, DELETE and TRUNCATE from anyone, the table's owner included
--     (only a migration, which could drop a trigger, may change that; it is DDL and shows).
-- Writers: pipeline_audit_writer (ingest, the audit collector; its login user is audit_writer)
-- may INSERT only, not even SELECT; pipeline_admin_api may INSERT too. Reading it is the admin API's, for tokens with the admin
-- role; pipeline_reader (Grafana, analysts) cannot read it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pipeline_audit_writer') THEN
        BEGIN
            CREATE ROLE pipeline_audit_writer NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO pipeline_audit_writer', current_schema());
END
$$;

CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    -- Who: a token's subject, a device id, a Kafka or database principal; 'anonymous' when the
    -- client gave none.
    actor          text NOT NULL CHECK (length(actor) BETWEEN 1 AND 256),
    actor_kind     text NOT NULL
                   CHECK (actor_kind IN ('user', 'client', 'device', 'service', 'anonymous')),
    -- What, as component.verb: 'devices.register', 'readings.post', 'mqtt.connect',
    -- 'mqtt.publish', 'kafka.write', 'db.update', 'dlq.replay', 'audit.read'...
    action         text NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    -- On what: a device id, a topic, a table; NULL when the action has no single target.
    target         text CHECK (length(target) <= 512),
    outcome        text NOT NULL CHECK (outcome IN ('allowed', 'refused', 'failed')),
    -- Why, for a refusal or a failure, in words an operator can act on.
    reason         text CHECK (length(reason) <= 2048),
    -- The client's address as the recording component saw it (host, or host:port).
    source_address text CHECK (length(source_address) <= 256),
    request_id     text CHECK (length(request_id) <= 128),
    -- The component that recorded the row: 'admin-api', 'ingest', 'mosquitto', 'kafka',
    -- 'postgres'.
    recorded_by    text NOT NULL CHECK (length(recorded_by) BETWEEN 1 AND 64)
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
CREATE INDEX audit_log_actor_at ON audit_log (actor, at DESC);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

ALTER TABLE audit_log OWNER TO pipeline_migrator;
ALTER FUNCTION audit_log_is_append_only() OWNER TO pipeline_migrator;
REVOKE ALL ON audit_log FROM PUBLIC;
GRANT INSERT ON audit_log TO pipeline_audit_writer, pipeline_admin_api;
GRANT SELECT ON audit_log TO pipeline_admin_api;
