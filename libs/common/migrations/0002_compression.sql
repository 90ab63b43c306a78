-- Native compression of chunks older than a week, where the server's license allows it.
-- The Apache-licensed build has no compression: then this says so once and changes nothing.
DO $$
BEGIN
    IF current_setting('timescaledb.license', true) = 'timescale' THEN
        ALTER TABLE sensor_readings SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'device_id',
            timescaledb.compress_orderby = 'time DESC'
        );
        PERFORM add_compression_policy('sensor_readings', INTERVAL '7 days',
                                       if_not_exists => TRUE);
    ELSE
        RAISE NOTICE 'timescaledb.license is %, not timescale: compression left off',
            current_setting('timescaledb.license', true);
    END IF;
END
$$;
