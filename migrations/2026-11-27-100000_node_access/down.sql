ALTER TABLE job_assignments DROP COLUMN upload_sha256;
UPDATE nodes SET status = 'suspended' WHERE status = 'deleted';
ALTER TABLE nodes DROP CONSTRAINT nodes_status_check;
ALTER TABLE nodes ADD CONSTRAINT nodes_status_check
    CHECK (status IN ('probation', 'active', 'suspended'));
DROP TABLE node_credentials;
