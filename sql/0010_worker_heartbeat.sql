-- Workers alive, for /ready. Counting the workers' connections in pg_stat_activity by their
-- application_name does not survive a transaction pooler: PgBouncer hands a worker's server
-- connection to an API process between transactions (and renames it), and a worker that only
-- polls holds none while idle. So each worker process says it is alive, every few seconds, in
-- a row of its own; it removes the row when it stops, and a killed worker's row goes stale.
CREATE TABLE worker_heartbeat (
    worker   text        PRIMARY KEY CHECK (length(worker) BETWEEN 1 AND 200),
    seen_at  timestamptz NOT NULL DEFAULT now()
);
