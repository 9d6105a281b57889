-- The inbox: one row per event a consumer has processed. The row is inserted in the
-- consumer's own transaction, together with the handler's effects, so "recorded" and
-- "applied" commit or roll back as one. The primary key is what makes a second delivery of
-- the same event (or a racing consumer) a duplicate: its insert waits for the first
-- transaction and then does nothing.
CREATE TABLE herald_inbox (
    -- The consumer (its consumer group name): each consumer has its own record of events.
    consumer TEXT NOT NULL,
    -- The event id (the broker message id).
    event_id TEXT NOT NULL,
    -- The start of the transaction that processed it; rows older than the retention window
    -- are deleted in batches.
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Retention: a consumer's oldest rows first.
CREATE INDEX herald_inbox_processed_at ON herald_inbox (consumer, processed_at);
