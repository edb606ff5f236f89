-- Private models (issue 11): a studio's own ONNX model, stored encrypted (gridbook-sealed), pinned
-- by sha256 in the jobs that use it; its key goes only to a node with an open assignment of such
-- a job, and every release is recorded.

CREATE TABLE models (
    id uuid PRIMARY KEY,
    owner uuid NOT NULL REFERENCES users (id),
    -- The market whose workload runs it (its model contract).
    market text NOT NULL,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- sha256 of the plaintext .onnx file: what a node and the verifier must load.
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    bytes bigint NOT NULL CHECK (bytes > 0),
    -- The ciphertext's object in the files store (never the plaintext).
    object text NOT NULL UNIQUE,
    -- XChaCha20-Poly1305 nonce of the ciphertext, and the data key wrapped by the market's KEK.
    nonce bytea NOT NULL CHECK (length(nonce) = 24),
    wrapped_key bytea NOT NULL CHECK (length(wrapped_key) = 72),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX models_owner ON models (owner, created_at DESC);

-- A job that runs a private model names it and pins its sha256 at submission.
ALTER TABLE jobs ADD COLUMN model_id uuid REFERENCES models (id);
ALTER TABLE jobs ADD COLUMN model_sha256 text CHECK (model_sha256 ~ '^[0-9a-f]{64}$');
ALTER TABLE jobs ADD CONSTRAINT jobs_model_pinned CHECK ((model_id IS NULL) = (model_sha256 IS NULL));
CREATE INDEX jobs_model ON jobs (model_id) WHERE model_id IS NOT NULL;

-- Every release of a model's key to a node (GET /v1/assignments/{id}/model-key): the studio can
-- see which nodes ran its model.
CREATE TABLE model_key_releases (
    id bigserial PRIMARY KEY,
    model_id uuid NOT NULL REFERENCES models (id),
    assignment_id uuid NOT NULL REFERENCES job_assignments (id),
    node_id uuid NOT NULL REFERENCES nodes (id),
    released_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_key_releases_model ON model_key_releases (model_id, released_at DESC);
