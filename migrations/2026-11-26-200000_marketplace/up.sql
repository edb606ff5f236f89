-- The marketplace: users and their credentials, uploaded files, jobs, provider nodes, asks and
-- the assignments (shards of a job run by one node). Money stays in the ledger tables; these
-- rows point at ledger accounts and escrow orders. Writers: the API inserts users, keys,
-- sessions, files, jobs, nodes and asks; the settlement worker inserts job_assignments and moves
-- jobs and assignments through their states.

CREATE SEQUENCE engine_account_ids AS bigint MINVALUE 1 START WITH 1;

CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    -- argon2id PHC string.
    password_hash text NOT NULL,
    role text NOT NULL CHECK (role IN ('studio', 'provider', 'trader', 'admin')),
    -- The user's ledger account (credits they hold; escrow holds move out of it).
    account_id uuid NOT NULL UNIQUE REFERENCES ledger_accounts (id),
    -- The account id the matching engine knows (self-trade prevention, anti-whale owner).
    engine_account bigint NOT NULL UNIQUE DEFAULT nextval('engine_account_ids'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Browser sessions. Only the sha256 of the cookie's token is stored.
CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- API keys: `gbk_<prefix>_<secret>`; the prefix is visible, only the sha256 of the secret is
-- stored (the secret is 256 random bits, so a fast hash is enough).
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix text NOT NULL UNIQUE,
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- Idempotency keys of POSTs that create something: the first response is replayed for the same
-- key and the same request; a different request under the same key is refused.
CREATE TABLE idempotency_keys (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    route text NOT NULL,
    request_hash bytea NOT NULL,
    status smallint NOT NULL,
    response jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

-- Uploaded JSONL input files and produced output/error files. Content lives in the NATS object
-- store bucket `gridbook_files` under the object name `sha256` (hex).
CREATE TABLE files (
    id uuid PRIMARY KEY,
    owner uuid NOT NULL REFERENCES users (id),
    purpose text NOT NULL CHECK (purpose IN ('batch', 'batch_output', 'batch_error')),
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    bytes bigint NOT NULL CHECK (bytes >= 0),
    lines integer NOT NULL CHECK (lines >= 0),
    filename text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_owner ON files (owner);

CREATE TABLE jobs (
    id uuid PRIMARY KEY,
    owner uuid NOT NULL REFERENCES users (id),
    market text NOT NULL,
    input_file uuid NOT NULL REFERENCES files (id),
    status text NOT NULL CHECK (status IN ('validating', 'queued', 'running', 'verifying',
        'completed', 'failed', 'expired', 'cancelled')),
    -- Input lines, and how many lines one unit of the market covers.
    items integer NOT NULL CHECK (items > 0),
    items_per_unit integer NOT NULL CHECK (items_per_unit > 0),
    units bigint NOT NULL CHECK (units > 0),
    -- Minor units per unit of work.
    limit_price bigint NOT NULL CHECK (limit_price > 0),
    fee_bps integer NOT NULL CHECK (fee_bps >= 0),
    deadline timestamptz NOT NULL,
    -- The escrow order (escrow_orders.order_id) and the engine order of the job's bid.
    order_id uuid NOT NULL UNIQUE,
    engine_order_id bigint NOT NULL UNIQUE,
    items_completed integer NOT NULL DEFAULT 0 CHECK (items_completed >= 0),
    items_failed integer NOT NULL DEFAULT 0 CHECK (items_failed >= 0),
    output_file uuid REFERENCES files (id),
    error_file uuid REFERENCES files (id),
    cancel_requested_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CHECK (items_completed + items_failed <= items)
);
CREATE INDEX jobs_owner ON jobs (owner, created_at DESC);

CREATE TABLE nodes (
    id uuid PRIMARY KEY,
    owner uuid NOT NULL REFERENCES users (id),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    gpu_model text NOT NULL CHECK (length(gpu_model) BETWEEN 1 AND 100),
    vram_mb integer NOT NULL CHECK (vram_mb >= 0),
    region text NOT NULL CHECK (length(region) BETWEEN 1 AND 64),
    -- probation: new identity, small caps; active; suspended.
    status text NOT NULL CHECK (status IN ('probation', 'active', 'suspended')),
    -- Basis points, 0..10000; starts at 5000 and moves with verification results.
    reputation integer NOT NULL DEFAULT 5000 CHECK (reputation BETWEEN 0 AND 10000),
    challenge_nonce text NOT NULL,
    challenge_status text NOT NULL CHECK (challenge_status IN ('pending', 'passed', 'failed')),
    challenge_ms integer,
    challenge_detail text,
    last_heartbeat_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX nodes_owner ON nodes (owner);

-- Provider asks. `id` = market_orders.order_id of the ask.
CREATE TABLE asks (
    id uuid PRIMARY KEY,
    owner uuid NOT NULL REFERENCES users (id),
    node_id uuid NOT NULL REFERENCES nodes (id),
    market text NOT NULL,
    engine_order_id bigint NOT NULL UNIQUE,
    price bigint NOT NULL CHECK (price > 0),
    qty bigint NOT NULL CHECK (qty > 0),
    status text NOT NULL CHECK (status IN ('open', 'cancel_requested', 'closed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX asks_owner ON asks (owner);
CREATE INDEX asks_node ON asks (node_id);

-- One fill of a job's bid: units [unit_start, unit_start + units) of the job, i.e. input lines
-- [item_start, item_start + item_count), run by one node. id = the escrow assignment id.
CREATE TABLE job_assignments (
    id uuid PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES jobs (id),
    node_id uuid NOT NULL REFERENCES nodes (id),
    market text NOT NULL,
    unit_start bigint NOT NULL CHECK (unit_start >= 0),
    units bigint NOT NULL CHECK (units > 0),
    item_start integer NOT NULL CHECK (item_start >= 0),
    item_count integer NOT NULL CHECK (item_count > 0),
    price bigint NOT NULL CHECK (price > 0),
    status text NOT NULL CHECK (status IN ('assigned', 'verifying', 'completed', 'failed')),
    -- Object name (sha256) of the node's output in `gridbook_files`, its Merkle root and manifest.
    output_sha256 text,
    merkle_root text,
    manifest jsonb,
    detail text,
    deadline timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, unit_start)
);
CREATE INDEX job_assignments_node ON job_assignments (node_id, created_at DESC);
