-- Webhook delivery: pools, subscriptions, the events the dispatcher received, and one dispatch
-- job per event and subscription, with every attempt. Times are epoch milliseconds from the
-- application's clock (the same on both engines, so one scheduler serves both).

-- Delivery pools: how many requests at once and how many per second.
CREATE TABLE herald_pools (
    code TEXT PRIMARY KEY,
    concurrency INTEGER NOT NULL,
    rate_per_second DOUBLE PRECISION,
    rate_burst INTEGER,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO herald_pools (code, concurrency, created_at, updated_at) VALUES ('default', 16, 0, 0);

-- Who wants which events, where. `event_types` and `headers` are JSON.
CREATE TABLE herald_subscriptions (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    event_types TEXT NOT NULL,
    url TEXT NOT NULL,
    pool TEXT NOT NULL REFERENCES herald_pools (code),
    fifo BOOLEAN NOT NULL,
    max_attempts INTEGER NOT NULL,
    headers TEXT NOT NULL,
    secret TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    disabled_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX herald_subscriptions_pool ON herald_subscriptions (pool);

-- Every event the dispatcher received, as delivered (CloudEvents structured JSON): the body of
-- its jobs, and what a replay reads.
CREATE TABLE herald_dispatch_events (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    partition_key TEXT,
    body TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX herald_dispatch_events_received ON herald_dispatch_events (received_at);

-- One delivery of one event to one subscription. `seq` is creation order, which is commit
-- order per partition key (the dispatcher consumes each key in order). A job with a
-- `group_key` (FIFO subscriptions) waits until every earlier job of its group is finished.
-- `status`: pending, delivering (leased until `locked_until`), delivered, dead.
CREATE TABLE herald_dispatch_jobs (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    subscription_id UUID NOT NULL REFERENCES herald_subscriptions (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL REFERENCES herald_dispatch_events (event_id),
    group_key TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    budget_from INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease UUID,
    locked_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX herald_dispatch_jobs_due ON herald_dispatch_jobs (subscription_id, next_attempt_at)
    WHERE status IN ('pending', 'delivering');
CREATE INDEX herald_dispatch_jobs_group ON herald_dispatch_jobs (subscription_id, group_key, seq)
    WHERE status IN ('pending', 'delivering') AND group_key IS NOT NULL;
CREATE INDEX herald_dispatch_jobs_subscription ON herald_dispatch_jobs (subscription_id, seq);
CREATE INDEX herald_dispatch_jobs_event ON herald_dispatch_jobs (event_id);
CREATE INDEX herald_dispatch_jobs_status ON herald_dispatch_jobs (status, seq);

-- Every attempt of a job: when, what the endpoint answered, how long it took.
CREATE TABLE herald_dispatch_attempts (
    job_id UUID NOT NULL REFERENCES herald_dispatch_jobs (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    started_at BIGINT NOT NULL,
    status_code INTEGER,
    latency_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (job_id, number)
);
