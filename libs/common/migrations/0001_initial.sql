-- The device registry and the readings hypertable of docs/architecture.md.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE IF NOT EXISTS devices (
    device_id    text PRIMARY KEY,
    model        text,
    site         text,
    owner        text,
    installed_at timestamptz,
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS sensor_readings (
    time           timestamptz      NOT NULL,
    device_id      text             NOT NULL,
    temperature    double precision,
    humidity       double precision,
    pressure       double precision,
    latitude       double precision,
    longitude      double precision,
    heat_index     double precision,
    dew_point      double precision,
    device_known   boolean          NOT NULL DEFAULT false,
    model          text,
    site           text,
    owner          text,
    country_code   text,
    country        text,
    region         text,
    place          text,
    geohash        text,
    message_id     text,
    schema_version text,
    extra          jsonb,
    source         text             NOT NULL,
    received_at    timestamptz      NOT NULL,
    stored_at      timestamptz      NOT NULL DEFAULT now(),
    trace_id       text,
    -- Writing a reading twice is harmless: the second insert conflicts and is skipped. The
    -- index also serves "one device over a time range", the commonest Grafana query.
    CONSTRAINT sensor_readings_device_time_key UNIQUE (device_id, time)
);

-- Time chunks of a day, sub-partitioned by a hash of device_id. The default time index
-- (time DESC) that create_hypertable adds serves "all devices in a time range".
SELECT create_hypertable('sensor_readings', by_range('time', INTERVAL '1 day'),
                         if_not_exists => TRUE);
SELECT add_dimension('sensor_readings', by_hash('device_id', 4), if_not_exists => TRUE);
