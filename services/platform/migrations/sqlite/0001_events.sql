-- Every event accepted by the platform API, kept so it can be looked up by id and so a
-- producer's retry (same source and id) is recognised and not written twice.
CREATE TABLE herald_events (
    id BLOB PRIMARY KEY,
    source TEXT NOT NULL,
    source_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    partition_key TEXT,
    body BLOB NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (source, source_id)
) WITHOUT ROWID;
