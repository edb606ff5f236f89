ALTER TABLE asks DROP COLUMN close_reason, DROP COLUMN stp, DROP COLUMN post_only;
UPDATE jobs SET status = 'failed' WHERE status = 'rejected';
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('validating', 'queued', 'running', 'verifying',
        'completed', 'failed', 'expired', 'cancelled'));
ALTER TABLE jobs DROP COLUMN reject_reason, DROP COLUMN time_in_force;
