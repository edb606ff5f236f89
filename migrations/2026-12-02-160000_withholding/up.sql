-- The stake-free deterrent (issue 12): a provider's pay for a verified assignment is withheld
-- for the next W verified assignments of the same node (`withhold_assignments`), then released;
-- a proven cheat forfeits what is still withheld. The money sits in the node's `withheld`
-- ledger account (one per ledger and node); this table says which assignment's pay it is and
-- when it is released. Every movement is a ledger transfer (settlement/src/withhold.rs).
CREATE TABLE node_withholdings (
    assignment_id uuid PRIMARY KEY REFERENCES job_assignments (id),
    node_id uuid NOT NULL REFERENCES nodes (id),
    ledger text NOT NULL,
    provider_account_id uuid NOT NULL REFERENCES ledger_accounts (id),
    withheld_account_id uuid NOT NULL REFERENCES ledger_accounts (id),
    amount bigint NOT NULL CHECK (amount > 0),
    -- The node's count of verified assignments when this one settled (1 = its first) ...
    seq bigint NOT NULL CHECK (seq >= 1),
    -- ... and the count at which this pay is released (seq + W).
    release_at bigint NOT NULL CHECK (release_at > seq),
    state text NOT NULL DEFAULT 'withheld' CHECK (state IN ('withheld', 'released', 'forfeited')),
    -- The assignment whose settlement released it, or whose proven cheat forfeited it.
    resolved_by uuid REFERENCES job_assignments (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    CHECK ((state = 'withheld') = (resolved_at IS NULL AND resolved_by IS NULL)),
    UNIQUE (node_id, seq)
);
CREATE INDEX node_withholdings_open ON node_withholdings (node_id, release_at) WHERE state = 'withheld';

-- Verified (paid) assignments per node: the clock of the window. Bumped in the transaction
-- that settles the assignment; its row lock orders a node's settlements.
CREATE TABLE node_settled_counts (
    node_id uuid PRIMARY KEY REFERENCES nodes (id),
    settled bigint NOT NULL CHECK (settled >= 0)
);
