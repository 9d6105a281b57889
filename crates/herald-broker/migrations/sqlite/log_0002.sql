-- Every record of a partition before `counted_until` may have been handed out once already.
-- An owner raises it ahead of what it hands out, in steps, instead of storing each record's
-- first receive count before handing it out: one write per step rather than one per receive,
-- which matters most when a long-held transaction keeps every version of this row alive. A
-- new owner counts such a record as received once (when no count is stored for it).
ALTER TABLE herald_log_partitions ADD COLUMN counted_until BIGINT NOT NULL DEFAULT 0;
