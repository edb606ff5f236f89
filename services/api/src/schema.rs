// The marketplace tables (migration `*_marketplace`). Ledger and market_orders tables are
// reached through gridbook-ledger and gridbook-settlement.

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        account_id -> Uuid,
        engine_account -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        prefix -> Text,
        secret_hash -> Bytea,
        scopes -> Array<Text>,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    idempotency_keys (user_id, key) {
        user_id -> Uuid,
        key -> Text,
        route -> Text,
        request_hash -> Bytea,
        status -> Int2,
        response -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    files (id) {
        id -> Uuid,
        owner -> Uuid,
        purpose -> Text,
        sha256 -> Text,
        bytes -> Int8,
        lines -> Int4,
        filename -> Nullable<Text>,
        created_at -> Timestamptz,
        market -> Nullable<Text>,
    }
}

diesel::table! {
    jobs (id) {
        id -> Uuid,
        owner -> Uuid,
        market -> Text,
        input_file -> Uuid,
        status -> Text,
        items -> Int4,
        items_per_unit -> Int4,
        units -> Int8,
        limit_price -> Int8,
        fee_bps -> Int4,
        deadline -> Timestamptz,
        order_id -> Uuid,
        engine_order_id -> Int8,
        items_completed -> Int4,
        items_failed -> Int4,
        output_file -> Nullable<Uuid>,
        error_file -> Nullable<Uuid>,
        cancel_requested_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        metadata -> Nullable<Jsonb>,
    }
}

diesel::table! {
    nodes (id) {
        id -> Uuid,
        owner -> Uuid,
        name -> Text,
        gpu_model -> Text,
        vram_mb -> Int4,
        region -> Text,
        status -> Text,
        reputation -> Int4,
        challenge_nonce -> Text,
        challenge_status -> Text,
        challenge_ms -> Nullable<Int4>,
        challenge_detail -> Nullable<Text>,
        last_heartbeat_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    asks (id) {
        id -> Uuid,
        owner -> Uuid,
        node_id -> Uuid,
        market -> Text,
        engine_order_id -> Int8,
        price -> Int8,
        qty -> Int8,
        status -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    job_assignments (id) {
        id -> Uuid,
        job_id -> Uuid,
        node_id -> Uuid,
        market -> Text,
        unit_start -> Int8,
        units -> Int8,
        item_start -> Int4,
        item_count -> Int4,
        price -> Int8,
        status -> Text,
        output_sha256 -> Nullable<Text>,
        merkle_root -> Nullable<Text>,
        manifest -> Nullable<Jsonb>,
        detail -> Nullable<Text>,
        deadline -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(jobs -> files (input_file));
diesel::joinable!(asks -> nodes (node_id));
diesel::joinable!(job_assignments -> jobs (job_id));
diesel::joinable!(job_assignments -> nodes (node_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    sessions,
    api_keys,
    idempotency_keys,
    files,
    jobs,
    nodes,
    asks,
    job_assignments,
);
