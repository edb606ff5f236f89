-- Identity clusters (issue 16): what the API saw of a provider's nodes that links accounts to
-- one operator. Accounts that share a mark (the same network prefix, the same hardware
-- fingerprint) are one cluster; the engine's anti-whale owner and the probation cap are the
-- cluster's.
CREATE TABLE identity_marks (
    id bigserial PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    node_id uuid REFERENCES nodes (id),
    -- network: the /24 (IPv4) or /48 (IPv6) a request of the provider came from; fingerprint:
    -- the sha256 a node's agent reports of its hardware.
    kind text NOT NULL CHECK (kind IN ('network', 'fingerprint')),
    value text NOT NULL CHECK (length(value) BETWEEN 1 AND 100),
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, kind, value)
);
CREATE INDEX identity_marks_value ON identity_marks (kind, value);
