// The settlement crate's own table (migration `2026-11-26-120000_market_orders`).
diesel::table! {
    market_orders (engine_order_id) {
        engine_order_id -> Int8,
        market -> Text,
        side -> Text,
        order_id -> Uuid,
        account_id -> Uuid,
        node_id -> Nullable<Uuid>,
        job_id -> Nullable<Uuid>,
        accepted_seq -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

// Marketplace tables (migration `*_marketplace`) the worker reads and moves through their
// states: only the columns it uses.
diesel::table! {
    files (id) {
        id -> Uuid,
        owner -> Uuid,
        purpose -> Text,
        sha256 -> Text,
        bytes -> Int8,
        lines -> Int4,
        filename -> Nullable<Text>,
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
        deadline -> Timestamptz,
        order_id -> Uuid,
        items_completed -> Int4,
        items_failed -> Int4,
        output_file -> Nullable<Uuid>,
        error_file -> Nullable<Uuid>,
        cancel_requested_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    nodes (id) {
        id -> Uuid,
        status -> Text,
        reputation -> Int4,
        last_heartbeat_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    asks (id) {
        id -> Uuid,
        qty -> Int8,
        status -> Text,
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
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(jobs -> files (input_file));
diesel::joinable!(job_assignments -> jobs (job_id));
diesel::allow_tables_to_appear_in_same_query!(files, jobs, job_assignments, nodes, asks);
