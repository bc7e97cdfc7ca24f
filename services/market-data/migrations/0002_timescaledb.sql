-- With TimescaleDB installed in the database, trades and candles become
-- hypertables (same columns, keys and queries); without it this does nothing.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM public.create_hypertable('trades', 'ts',
            chunk_time_interval => interval '1 day', migrate_data => true, if_not_exists => true);
        PERFORM public.create_hypertable('candles_1m', 'bucket',
            chunk_time_interval => interval '7 days', migrate_data => true, if_not_exists => true);
    END IF;
END
$$;
