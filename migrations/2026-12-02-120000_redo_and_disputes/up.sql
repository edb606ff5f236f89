-- Failed work is redone, and every verification leaves a record (issue 12).
--
-- A job's bid may now be several engine orders on ONE escrow order: the original bid, and one
-- re-bid per failed assignment whose units went back to the book (same reservation, same
-- limit, same deadline). Each engine order of a bid covers units
-- [unit_start, unit_start + units) of the job and takes them in order (`units_taken`).
ALTER TABLE market_orders DROP CONSTRAINT market_orders_order_id_key;
ALTER TABLE market_orders
    -- Bids: the job's first unit this engine order covers (0 for the original bid).
    ADD COLUMN unit_start bigint NOT NULL DEFAULT 0 CHECK (unit_start >= 0),
    -- Bids: how many of its units fills (or refused fills) have taken so far.
    ADD COLUMN units_taken bigint NOT NULL DEFAULT 0 CHECK (units_taken >= 0),
    -- Re-bids: how many times these units had been offered again (1 for the first re-bid) and
    -- the failed assignment they come from.
    ADD COLUMN reoffer integer NOT NULL DEFAULT 0 CHECK (reoffer >= 0),
    ADD COLUMN reoffer_of uuid UNIQUE REFERENCES job_assignments (id),
    ADD CONSTRAINT market_orders_reoffer_is_a_bid CHECK ((reoffer = 0) = (reoffer_of IS NULL) AND (reoffer_of IS NULL OR side = 'bid'));
-- Only the first engine order of an escrow order (the API's) is unique per escrow order.
CREATE UNIQUE INDEX market_orders_first_of_order ON market_orders (order_id) WHERE reoffer_of IS NULL;
CREATE INDEX market_orders_job ON market_orders (job_id) WHERE job_id IS NOT NULL;
-- Bids placed before this migration: what their fills took so far.
UPDATE market_orders m SET units_taken = e.quantity - e.quantity_open
FROM escrow_orders e WHERE m.side = 'bid' AND e.order_id = m.order_id;

-- The same units may be assigned again after a failure: unique among assignments that did not
-- fail. `bid_engine_order_id`: the engine order (bid or re-bid) the fill came from.
ALTER TABLE job_assignments DROP CONSTRAINT job_assignments_job_id_unit_start_key;
CREATE UNIQUE INDEX job_assignments_live_units ON job_assignments (job_id, unit_start) WHERE status <> 'failed';
ALTER TABLE job_assignments ADD COLUMN bid_engine_order_id bigint;

-- One row per resolved assignment, written in the transaction that resolves it: the outcome
-- and its evidence. A failed row is the dispute record.
CREATE TABLE assignment_verifications (
    assignment_id uuid PRIMARY KEY REFERENCES job_assignments (id),
    job_id uuid NOT NULL REFERENCES jobs (id),
    node_id uuid NOT NULL REFERENCES nodes (id),
    market text NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('passed', 'failed')),
    -- Failed: which check failed.
    failed_check text CHECK (failed_check IN ('node_failed', 'wrong_output', 'output_format',
        'item_hash', 'missing_items', 'merkle_root', 'sample_mismatch', 'overdue')),
    detail text NOT NULL,
    -- The sample seed (hex; HMAC of the commitment under the market secret) and the custom_ids
    -- re-run, in the order drawn.
    sample_seed text,
    sampled_items jsonb NOT NULL DEFAULT '[]',
    -- Per sampled item: custom_id, the node's item hash, the reference's, cosine (embeddings)
    -- or mean |Δ| (images), ok.
    item_figures jsonb NOT NULL DEFAULT '[]',
    -- The node's commitment and manifest, and the reference run's manifest.
    output_sha256 text,
    merkle_root text,
    node_manifest jsonb,
    reference_manifest jsonb,
    verified_items integer NOT NULL DEFAULT 0 CHECK (verified_items >= 0),
    -- What became of the assignment's units: paid (the verified ones), re-offered on the book
    -- (`reoffer_engine_order_id`), or refunded to the studio.
    remedy text NOT NULL CHECK (remedy IN ('paid', 'reoffered', 'refunded')),
    reoffer_engine_order_id bigint REFERENCES market_orders (engine_order_id),
    -- What was done to the node: nothing, its open asks cancelled, or suspended.
    node_action text NOT NULL CHECK (node_action IN ('none', 'asks_cancelled', 'suspended')),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((outcome = 'failed') = (failed_check IS NOT NULL)),
    CHECK ((remedy = 'reoffered') = (reoffer_engine_order_id IS NOT NULL))
);
CREATE INDEX assignment_verifications_job ON assignment_verifications (job_id);
CREATE INDEX assignment_verifications_node ON assignment_verifications (node_id, created_at DESC);
