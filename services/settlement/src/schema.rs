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
