-- The sampled re-run on another provider's node (issue 12, "Re-run on another node").
--
-- When a node's result passes the commitment checks and its sample is drawn, the sampled items
-- go to a DIFFERENT provider node (another owner, another identity cluster, active, with an
-- open ask in the market) as a verification task; the assignment waits in `verifying`. The
-- task's node sees only the sampled input lines, never the first node's output. Its answer is
-- compared with the first node's: agreement settles the assignment; a disagreement, a failed or
-- missing answer is decided by the market's own runtime (the fallback, recorded as such).
CREATE TABLE verification_tasks (
    id uuid PRIMARY KEY,
    -- The assignment under check, and its job and market.
    assignment_id uuid NOT NULL UNIQUE REFERENCES job_assignments (id),
    job_id uuid NOT NULL REFERENCES jobs (id),
    market text NOT NULL,
    -- The verifying node.
    node_id uuid NOT NULL REFERENCES nodes (id),
    -- The sampled items: their 0-based item numbers in the job's input, ascending.
    items bigint[] NOT NULL CHECK (cardinality(items) > 0),
    -- The first node's commitment under check, and the sample seed drawn from it.
    output_sha256 text NOT NULL,
    merkle_root text NOT NULL,
    node_manifest jsonb,
    reported_failed integer NOT NULL CHECK (reported_failed >= 0),
    sample_seed text NOT NULL,
    -- The market price per unit of the assignment, and the task's pay (minor units):
    -- ceil(price × sampled items / items per unit), from the protocol fee account.
    price bigint NOT NULL CHECK (price >= 0),
    pay bigint NOT NULL CHECK (pay >= 0),
    status text NOT NULL CHECK (status IN ('assigned', 'completed', 'failed', 'expired')),
    deadline timestamptz NOT NULL,
    -- What the verifying node uploaded and reported.
    upload_sha256 text,
    result_sha256 text,
    result_manifest jsonb,
    -- `agreed`: both nodes agree; `disagreed`: they differ (the market decided); `failed`: the
    -- verifying node failed or answered garbage; `expired`: no answer in time.
    outcome text CHECK (outcome IN ('agreed', 'disagreed', 'failed', 'expired')),
    -- Whether the market's own runtime re-ran the sample too, and whom it sided with.
    market_rerun boolean NOT NULL DEFAULT false,
    -- The verifying node's answer was right (agreed with the first node, or with the market's
    -- re-run): it is paid `paid` by transfer `pay_transfer_id` (0 when the funds were short).
    verifier_correct boolean,
    paid bigint NOT NULL DEFAULT 0 CHECK (paid >= 0),
    pay_transfer_id uuid,
    detail text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX verification_tasks_open ON verification_tasks (deadline) WHERE status = 'assigned';
CREATE INDEX verification_tasks_node ON verification_tasks (node_id);

-- Who re-ran an assignment's sample: another provider's node (`node`, with the task), the
-- market's own runtime (`market`: no eligible node, a private model, or the fallback), or
-- nobody (`none`: a check before the sample failed).
ALTER TABLE assignment_verifications
    ADD COLUMN rerun_by text NOT NULL DEFAULT 'market' CHECK (rerun_by IN ('node', 'market', 'none')),
    ADD COLUMN verifier_node_id uuid REFERENCES nodes (id),
    ADD COLUMN verification_task_id uuid REFERENCES verification_tasks (id),
    -- Why the market re-ran it itself (no eligible node, a private model, the fallback after a
    -- disagreement, a failed or late verifier).
    ADD COLUMN rerun_note text;
