-- The transactional outbox. Producers insert rows in their own transaction; the relay claims
-- committed pending rows in id order, publishes them and deletes them once the broker has
-- confirmed. Published rows are deleted, never kept, so the table holds only what is on its
-- way (and the few rows set aside as failed). Times are milliseconds since the Unix epoch.
CREATE TABLE herald_outbox (
    -- Insertion order. AUTOINCREMENT: an id is never reused, so deleting by id can never
    -- remove a newer row.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    payload BLOB NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    -- pending: on its way; failed: set aside after max_attempts, with its last error.
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'failed')),
    -- Failed publish attempts charged to this row.
    attempts INTEGER NOT NULL DEFAULT 0,
    -- The row is not claimed before this time (retry backoff, a blocked key, or the lease of
    -- a relay that is publishing it).
    next_attempt_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    last_error TEXT
);

-- The claim: pending rows in id order.
CREATE INDEX herald_outbox_pending ON herald_outbox (id) WHERE status = 'pending';
-- The per-key order check: does this key have a row that is waiting (not yet due)? Normally
-- none, so the probe is one index lookup, however long the key's backlog.
CREATE INDEX herald_outbox_pending_key ON herald_outbox (partition_key, next_attempt_at)
    WHERE status = 'pending' AND partition_key IS NOT NULL;
-- Rows set aside, for operators and the failed-rows gauge.
CREATE INDEX herald_outbox_failed ON herald_outbox (id) WHERE status = 'failed';
