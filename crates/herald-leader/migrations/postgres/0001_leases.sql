-- Leases: at most one holder per name at a time. A row is never deleted, so a name's token
-- only ever goes up: every new holder gets a larger token than any holder before it, and
-- writes guarded by the token (the fence) can tell a current holder from a former one.
-- Times are milliseconds since the Unix epoch by the database's clock, so instances with
-- skewed clocks still agree on when a lease ends.
CREATE TABLE herald_leases (
    -- What the lease is for, e.g. `relay:herald.events`.
    name TEXT PRIMARY KEY,
    -- Who holds it (or last held it): an instance id.
    holder TEXT NOT NULL,
    -- The fencing token of the current (or last) holding: 1 for the first holder, then up
    -- by one each time the lease changes hands or is taken again after it ran out.
    token BIGINT NOT NULL,
    -- When it runs out unless renewed; in the past once released.
    expires_at BIGINT NOT NULL,
    -- When the current holding began.
    acquired_at BIGINT NOT NULL
);
