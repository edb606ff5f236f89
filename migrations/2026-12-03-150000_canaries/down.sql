ALTER TABLE assignment_verifications DROP CONSTRAINT assignment_verifications_failed_check_check;
ALTER TABLE assignment_verifications ADD CONSTRAINT assignment_verifications_failed_check_check
    CHECK (failed_check IN ('node_failed', 'wrong_output', 'output_format', 'item_hash',
        'missing_items', 'merkle_root', 'sample_mismatch', 'overdue'));
ALTER TABLE assignment_verifications DROP COLUMN canary_figures;
ALTER TABLE job_assignments DROP COLUMN canaries;
DROP TABLE canary_items;
