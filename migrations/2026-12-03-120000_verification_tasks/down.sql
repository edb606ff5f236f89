ALTER TABLE assignment_verifications
    DROP COLUMN rerun_note,
    DROP COLUMN verification_task_id,
    DROP COLUMN verifier_node_id,
    DROP COLUMN rerun_by;
DROP TABLE verification_tasks;
