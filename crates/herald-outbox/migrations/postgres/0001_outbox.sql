-- The transactional outbox. Producers insert rows in their own transaction; the relay claims
-- committed pending rows in id order, publishes them and deletes them in the claim's
-- transaction once the broker has confirmed. Published rows are deleted, never kept, so the
-- table holds only what is on its way (and the few rows set aside as failed).
CREATE TABLE herald_outbox (
    -- Insertion order; the claim reads in this order (never "after the last id seen").
    id BIGSERIAL PRIMARY KEY,
    -- The event's id: the broker message id.
    event_id TEXT NOT NULL,
    -- The message group; NULL means no order is kept for this event.
    partition_key TEXT,
    -- Broker message headers, copied from the envelope at write time.
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    correlation_id TEXT,
    traceparent TEXT,
    -- The encoded event (CloudEvents structured JSON), serialised once, by the writer.
    payload BYTEA NOT NULL,
    -- The start of the producer's transaction.
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- pending: on its way; failed: set aside after max_attempts, with its last error.
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'failed')),
    -- Failed publish attempts charged to this row.
    attempts INTEGER NOT NULL DEFAULT 0,
    -- The row is not claimed before this time (retry backoff, or a blocked key).
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error TEXT
) WITH (
    -- A queue table: vacuum after a fixed number of deleted rows, not a fraction of the table.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000
);

-- The claim: pending rows in id order.
CREATE INDEX herald_outbox_pending ON herald_outbox (id) WHERE status = 'pending';
-- The per-key order check: does this key have a row that is waiting (not yet due)? Normally
-- none, so the probe is one index lookup, however long the key's backlog.
CREATE INDEX herald_outbox_pending_key ON herald_outbox (partition_key, next_attempt_at)
    WHERE status = 'pending' AND partition_key IS NOT NULL;
-- Rows set aside, for operators and the failed-rows gauge.
CREATE INDEX herald_outbox_failed ON herald_outbox (id) WHERE status = 'failed';
