-- Fences of leases kept outside the database (in Redis; see herald-leader's `redis` module).
-- One row per lease: the largest fencing token a holder has checked its writes with. A
-- holder's check, in the transaction whose writes it guards, raises the row to its own token,
-- and fails when the row is already larger: a newer holder has written, so this one is a
-- former holder. A row is never deleted and its token never falls.
CREATE TABLE herald_fences (
    -- The lease, as in `herald_leases`.
    name TEXT PRIMARY KEY,
    -- The largest token checked so far.
    token BIGINT NOT NULL
);
