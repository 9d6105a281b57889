-- The embedded queue (see herald-broker's `embedded` module for the design).
--
-- Times are epoch milliseconds from the application's clock: SQLite serves one machine.
-- AUTOINCREMENT keeps sequence numbers and dead-letter ids from ever being reused.

-- The consumer groups of each topic. A publish copies each message once per group.
CREATE TABLE herald_queue_groups (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;

-- One row per message and group, until it is acked or dead-lettered. Only `ready` rows may be
-- claimed: every key-less row, and the oldest row (lowest seq) of each (topic, grp, key).
CREATE TABLE herald_queue_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    partition_key TEXT,
    message_id TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    published_at INTEGER NOT NULL,
    ready INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    lease INTEGER,
    last_error TEXT
);
-- The claim: the first visible ready rows of a group, without looking at blocked ones.
CREATE INDEX herald_queue_messages_claim
    ON herald_queue_messages (topic, grp, visible_at, seq) WHERE ready = 1;
-- The next message of a key.
CREATE INDEX herald_queue_messages_key
    ON herald_queue_messages (topic, grp, partition_key, seq) WHERE partition_key IS NOT NULL;
-- A key's head: at most one per key and group (the database enforces the invariant). A key has
-- rows in a group exactly when it has a head, so this small index answers "does the key have a
-- message?" in one probe, however long the key's backlog.
CREATE UNIQUE INDEX herald_queue_messages_head
    ON herald_queue_messages (topic, grp, partition_key) WHERE ready = 1 AND partition_key IS NOT NULL;

-- Messages published to a topic that has no group yet; the first group adopts them.
CREATE TABLE herald_queue_parked (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    partition_key TEXT,
    message_id TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    published_at INTEGER NOT NULL
);
CREATE INDEX herald_queue_parked_topic ON herald_queue_parked (topic, seq);

-- Messages given up on, kept for inspection and replay.
CREATE TABLE herald_queue_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    partition_key TEXT,
    message_id TEXT NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    published_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    dead_at INTEGER NOT NULL
);
CREATE INDEX herald_queue_dead_letters_group ON herald_queue_dead_letters (topic, grp, id);
