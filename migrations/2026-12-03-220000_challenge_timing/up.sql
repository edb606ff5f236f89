-- A hardware challenge that measures hardware (issue 16): commit, then sample, timed by the
-- market. The node's declared hardware picks its class (executor::challenge::CLASSES), which
-- fixes the challenge's items and the time bound; the market's clock runs from issuing the nonce
-- (the registration) to receiving the commitment (one leaf hash per item); only then does it draw
-- the sample the node reveals. A node whose answer is right but whose commitment came too late
-- passes with `challenge_timing = 'too_slow'`: it may post asks within the probation caps but
-- never leaves probation (the settlement worker's `jobs::set_reliability`).
ALTER TABLE nodes
    -- The class of the challenge as issued, its items and its bound (kept with the node, so a
    -- later change of the class table does not change an issued challenge).
    ADD COLUMN challenge_class text NOT NULL DEFAULT 'cpu' CHECK (challenge_class IN ('cpu', 'gpu')),
    ADD COLUMN challenge_items integer NOT NULL DEFAULT 32 CHECK (challenge_items BETWEEN 1 AND 4096),
    ADD COLUMN challenge_sample_size integer NOT NULL DEFAULT 16
        CHECK (challenge_sample_size BETWEEN 1 AND 64 AND challenge_sample_size <= challenge_items),
    ADD COLUMN challenge_bound_ms integer NOT NULL DEFAULT 0 CHECK (challenge_bound_ms >= 0),
    -- When the nonce was issued (the registration's transaction) and when the commitment arrived.
    ADD COLUMN challenge_issued_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN challenge_committed_at timestamptz,
    -- The drawn sample with the committed leaves: [{"index": <0-based item>, "leaf": "<64 hex>"}]
    -- in the order the node reveals them. NULL until the commitment.
    ADD COLUMN challenge_sample jsonb,
    -- The timing verdict of a passed challenge; NULL while pending, after a failure, and for
    -- nodes challenged before this migration (their timing was never measured).
    ADD COLUMN challenge_timing text CHECK (challenge_timing IN ('fits', 'too_slow')),
    ADD CONSTRAINT nodes_challenge_committed_with_sample
        CHECK ((challenge_committed_at IS NULL) = (challenge_sample IS NULL));

-- Challenges still pending were issued under the one-round protocol, which no longer exists: they
-- cannot be answered, so they fail with the reason (the agent registers a new node).
UPDATE nodes SET challenge_status = 'failed',
    challenge_detail = 'the challenge was issued under the previous protocol; register the node again'
WHERE challenge_status = 'pending';
