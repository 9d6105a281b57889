-- The inbox: one row per event a consumer has processed. The row is inserted in the
-- consumer's own transaction, together with the handler's effects, so "recorded" and
-- "applied" commit or roll back as one. The primary key is what makes a second delivery of
-- the same event a duplicate. Times are milliseconds since the Unix epoch.
CREATE TABLE herald_inbox (
    -- The consumer (its consumer group name): each consumer has its own record of events.
    consumer TEXT NOT NULL,
    -- The event id (the broker message id).
    event_id TEXT NOT NULL,
    -- When it was processed; rows older than the retention window are deleted in batches
    -- (by rowid, so this stays a rowid table).
    processed_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    PRIMARY KEY (consumer, event_id)
);

-- Retention: a consumer's oldest rows first.
CREATE INDEX herald_inbox_processed_at ON herald_inbox (consumer, processed_at);
