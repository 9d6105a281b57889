-- The outbox becomes a list-partitioned table with one partition per *generation*, so the relay
-- can empty whole partitions with TRUNCATE instead of leaving every published row to VACUUM.
-- A transaction held open elsewhere (a report, a backup) stops VACUUM from removing any row
-- deleted after it began; with one plain table the relay's claim then wades through every row
-- published since, and gets slower by the minute. With generations, the claim reads only the
-- partitions that can still hold rows, and a drained one is truncated. See the relay's docs
-- ("Generations") for the protocol.

-- The current generation. A sequence, because a sequence is read and moved outside
-- transactions: a writer whose snapshot is old still sees the current generation.
CREATE SEQUENCE herald_outbox_generation_seq AS BIGINT MINVALUE 0 START WITH 0;

-- Where new rows go: read once per inserted row, as the `generation` column's default.
CREATE FUNCTION herald_outbox_generation() RETURNS BIGINT
    LANGUAGE sql VOLATILE
    AS $$ SELECT last_value FROM herald_outbox_generation_seq $$;

ALTER TABLE herald_outbox RENAME TO herald_outbox_v1;
ALTER INDEX herald_outbox_pkey RENAME TO herald_outbox_v1_pkey;
ALTER INDEX herald_outbox_pending RENAME TO herald_outbox_v1_pending;
ALTER INDEX herald_outbox_pending_key RENAME TO herald_outbox_v1_pending_key;
ALTER INDEX herald_outbox_failed RENAME TO herald_outbox_v1_failed;

-- The columns of 0001, in the same order, plus `generation`.
CREATE TABLE herald_outbox (
    -- Insertion order, across generations (one sequence); unique because only that sequence
    -- hands ids out (a moved row keeps its id).
    id BIGINT NOT NULL DEFAULT nextval('herald_outbox_id_seq'),
    event_id TEXT NOT NULL,
    partition_key TEXT,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    correlation_id TEXT,
    traceparent TEXT,
    payload BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error TEXT,
    -- The partition the row lives in.
    generation BIGINT NOT NULL DEFAULT herald_outbox_generation(),
    PRIMARY KEY (id, generation)
) PARTITION BY LIST (generation);
ALTER SEQUENCE herald_outbox_id_seq OWNED BY herald_outbox.id;

CREATE INDEX herald_outbox_pending ON herald_outbox (id) WHERE status = 'pending';
CREATE INDEX herald_outbox_pending_key ON herald_outbox (partition_key, next_attempt_at)
    WHERE status = 'pending' AND partition_key IS NOT NULL;
CREATE INDEX herald_outbox_failed ON herald_outbox (id) WHERE status = 'failed';

-- Generation 0. The relay creates the next ones (`herald_outbox_g<n>`) as it goes.
CREATE TABLE herald_outbox_g0 PARTITION OF herald_outbox FOR VALUES IN (0) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000
);

INSERT INTO herald_outbox (
    id, event_id, partition_key, event_type, source, correlation_id, traceparent, payload,
    created_at, status, attempts, next_attempt_at, last_error, generation)
SELECT id, event_id, partition_key, event_type, source, correlation_id, traceparent, payload,
       created_at, status, attempts, next_attempt_at, last_error, 0
FROM herald_outbox_v1;

DROP TABLE herald_outbox_v1;
