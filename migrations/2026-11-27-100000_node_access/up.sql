-- Providers are strangers (issue 11): a node's NATS credential, issued by the API, checked by the
-- API's auth callout on every NATS connection; a node can be deleted by its owner.

-- A node's credential: the API hands the token out once (POST /v1/nodes/{id}/credentials) and
-- keeps only its sha256 (the token is 256 random bits, so a fast hash is enough).
CREATE TABLE node_credentials (
    id uuid PRIMARY KEY,
    node_id uuid NOT NULL REFERENCES nodes (id),
    token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- Set when the node is deleted or suspended, or the credential is superseded.
    revoked_at timestamptz,
    CHECK (expires_at > created_at)
);
CREATE INDEX node_credentials_node ON node_credentials (node_id, created_at DESC);

-- deleted: its owner retired it; it can never connect, post asks or get work again.
ALTER TABLE nodes DROP CONSTRAINT nodes_status_check;
ALTER TABLE nodes ADD CONSTRAINT nodes_status_check
    CHECK (status IN ('probation', 'active', 'suspended', 'deleted'));

-- The sha256 of the output the assigned node uploaded through its grant
-- (PUT /v1/assignments/{id}/output); the verifier accepts a result only for this object.
ALTER TABLE job_assignments ADD COLUMN upload_sha256 text
    CHECK (upload_sha256 ~ '^[0-9a-f]{64}$');
