-- Canaries (issue 12): items with known answers mixed into assignments, indistinguishable from
-- real items to the node. The market keeps a pool per market; each item's answer is computed
-- once by the market's own runtime (the first time it is checked) and compared with what nodes
-- return. A canary is used for at most `canary_max_uses` assignments, then retired and replaced,
-- so a node cannot cheaply learn the pool.
CREATE TABLE canary_items (
    id uuid PRIMARY KEY,
    market text NOT NULL,
    -- The input fields in the served (canonical) form, without custom_id.
    input jsonb NOT NULL,
    -- The market's answer (an output record without custom_id) and its item hash; NULL until the
    -- first check computes it.
    answer jsonb,
    answer_sha256 text,
    answer_manifest jsonb,
    -- Assignments it was placed in; retired (never placed again) once it reaches the limit or
    -- once it caught a node (the node then knows it).
    uses integer NOT NULL DEFAULT 0 CHECK (uses >= 0),
    retired boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX canary_items_live ON canary_items (market) WHERE NOT retired;

-- Where an assignment's canaries sit among the lines the node is served:
-- [{"at": <0-based position>, "id": <canary_items.id>}, ...] ascending by position. The node
-- gets item_count + cardinality lines, every custom_id replaced by its position (`i<p>`).
ALTER TABLE job_assignments ADD COLUMN canaries jsonb NOT NULL DEFAULT '[]';

-- The canaries a verification checked, with their figures (the dispute record; never served to
-- providers: it would tell them the pool).
ALTER TABLE assignment_verifications ADD COLUMN canary_figures jsonb NOT NULL DEFAULT '[]';

-- A wrong (or missing) canary is its own failed check.
ALTER TABLE assignment_verifications DROP CONSTRAINT assignment_verifications_failed_check_check;
ALTER TABLE assignment_verifications ADD CONSTRAINT assignment_verifications_failed_check_check
    CHECK (failed_check IN ('node_failed', 'wrong_output', 'output_format', 'item_hash',
        'missing_items', 'merkle_root', 'sample_mismatch', 'overdue', 'canary'));
