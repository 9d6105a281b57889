-- The state Herald keeps for consumer groups on a real broker (the `log` component): which
-- consumer owns each partition, where the group has got to, and what it gave up on.
CREATE TABLE herald_log_partitions (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    part INTEGER NOT NULL,
    -- The first position of the partition not yet done by the group: reading resumes here.
    next_position BIGINT NOT NULL,
    -- Receive counts of records handed out and not yet committed, as a JSON object from
    -- position to count, so a new owner goes on counting; 0 marks a record already done
    -- (acked or dead-lettered behind one still pending), which a new owner skips.
    counts TEXT NOT NULL DEFAULT '{}',
    owner TEXT,
    -- Raised by every claim; writes by an owner are fenced by it.
    token BIGINT NOT NULL DEFAULT 0,
    lease_until BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, grp, part)
);

CREATE TABLE herald_log_members (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    alive_until BIGINT NOT NULL,
    PRIMARY KEY (topic, grp, member)
);

CREATE TABLE herald_log_dead_letters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    message_id TEXT NOT NULL,
    partition_key TEXT,
    headers TEXT NOT NULL,
    payload BYTEA NOT NULL,
    receive_count INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    died_at BIGINT NOT NULL
);
CREATE INDEX herald_log_dead_letters_group ON herald_log_dead_letters (topic, grp, id);
