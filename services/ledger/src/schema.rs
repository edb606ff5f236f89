// Hand-written to match migrations/*_ledger/up.sql (diesel print-schema output shape).

diesel::table! {
    ledger_accounts (id) {
        id -> Uuid,
        ledger -> Text,
        code -> Text,
        debits_must_not_exceed_credits -> Bool,
        credits_must_not_exceed_debits -> Bool,
        debits_pending -> Int8,
        debits_posted -> Int8,
        credits_pending -> Int8,
        credits_posted -> Int8,
        reference -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    ledger_transfers (id) {
        id -> Uuid,
        seq -> Int8,
        kind -> Text,
        debit_account_id -> Uuid,
        credit_account_id -> Uuid,
        ledger -> Text,
        amount -> Int8,
        pending_id -> Nullable<Uuid>,
        expires_at -> Nullable<Timestamptz>,
        code -> Text,
        reference -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    escrow_orders (order_id) {
        order_id -> Uuid,
        studio_account_id -> Uuid,
        escrow_account_id -> Uuid,
        fee_account_id -> Uuid,
        ledger -> Text,
        quantity -> Int8,
        quantity_open -> Int8,
        limit_price -> Int8,
        fee_bps -> Int4,
        unit_reserve -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    escrow_assignments (id) {
        id -> Uuid,
        order_id -> Uuid,
        provider_account_id -> Uuid,
        quantity -> Int8,
        trade_price -> Int8,
        provider_hold_id -> Uuid,
        fee_hold_id -> Nullable<Uuid>,
        state -> Text,
        verified_units -> Nullable<Int8>,
        created_at -> Timestamptz,
        resolved_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    processed_events (consumer, event_id) {
        consumer -> Text,
        event_id -> Text,
        processed_at -> Timestamptz,
    }
}

diesel::table! {
    outbox (id) {
        id -> Uuid,
        subject -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    epoch_reports (epoch) {
        epoch -> Int8,
        report -> Jsonb,
        created_at -> Timestamptz,
    }
}
