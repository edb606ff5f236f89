-- Orders beyond a plain limit (issue 15): a job's time in force, and why a job's bid was refused.
--   gtc: the bid rests until the job's deadline (a GTD order at the deadline; today's behaviour).
--   ioc: whatever the book fills at once runs; the engine cancels the rest, which is released.
--   fok: every unit fills at once, or the engine rejects the bid (fok_unfillable) and the whole
--        reservation is released; the job then ends `rejected`.
ALTER TABLE jobs
    ADD COLUMN time_in_force text NOT NULL DEFAULT 'gtc' CHECK (time_in_force IN ('gtc', 'ioc', 'fok')),
    -- The engine's reason (snake_case RejectReason) when it rejected the job's own bid.
    ADD COLUMN reject_reason text CHECK (reject_reason IS NULL OR length(reject_reason) BETWEEN 1 AND 64);

ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('validating', 'queued', 'running', 'verifying',
        'completed', 'failed', 'expired', 'cancelled', 'rejected'));

-- A provider's ask: post-only (never takes: the engine rejects one that would cross), its own
-- self-trade-prevention mode (NULL: the market's), and why it closed, as the provider reads it
-- (`filled`, `cancelled`, `expired`, `self_trade`, or the engine's rejection such as
-- `post_only_would_cross`).
ALTER TABLE asks
    ADD COLUMN post_only boolean NOT NULL DEFAULT false,
    ADD COLUMN stp text CHECK (stp IN ('cancel_newest', 'cancel_oldest', 'cancel_both')),
    ADD COLUMN close_reason text CHECK (close_reason IS NULL OR length(close_reason) BETWEEN 1 AND 64);
