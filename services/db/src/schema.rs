// @generated automatically by Diesel CLI.

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        prefix -> Text,
        secret_hash -> Bytea,
        scopes -> Array<Nullable<Text>>,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
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
        post_only -> Bool,
        stp -> Nullable<Text>,
        close_reason -> Nullable<Text>,
    }
}

diesel::table! {
    assignment_verifications (assignment_id) {
        assignment_id -> Uuid,
        job_id -> Uuid,
        node_id -> Uuid,
        market -> Text,
        outcome -> Text,
        failed_check -> Nullable<Text>,
        detail -> Text,
        sample_seed -> Nullable<Text>,
        sampled_items -> Jsonb,
        item_figures -> Jsonb,
        output_sha256 -> Nullable<Text>,
        merkle_root -> Nullable<Text>,
        node_manifest -> Nullable<Jsonb>,
        reference_manifest -> Nullable<Jsonb>,
        verified_items -> Int4,
        remedy -> Text,
        reoffer_engine_order_id -> Nullable<Int8>,
        node_action -> Text,
        created_at -> Timestamptz,
        rerun_by -> Text,
        verifier_node_id -> Nullable<Uuid>,
        verification_task_id -> Nullable<Uuid>,
        rerun_note -> Nullable<Text>,
        canary_figures -> Jsonb,
    }
}

diesel::table! {
    canary_items (id) {
        id -> Uuid,
        market -> Text,
        input -> Jsonb,
        answer -> Nullable<Jsonb>,
        answer_sha256 -> Nullable<Text>,
        answer_manifest -> Nullable<Jsonb>,
        uses -> Int4,
        retired -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    dead_letters (id) {
        id -> Uuid,
        consumer -> Text,
        event_id -> Text,
        stream -> Text,
        subject -> Text,
        stream_seq -> Nullable<Int8>,
        event_seq -> Nullable<Int8>,
        market -> Nullable<Text>,
        reason -> Text,
        detail -> Text,
        payload -> Bytea,
        escrow_action -> Text,
        order_id -> Nullable<Uuid>,
        job_id -> Nullable<Uuid>,
        unit_start -> Nullable<Int8>,
        units -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    epoch_burns (epoch) {
        epoch -> Int8,
        transfer_id -> Uuid,
        amount -> Int8,
    }
}

diesel::table! {
    epoch_fees (transfer_id) {
        transfer_id -> Uuid,
        epoch -> Int8,
        amount -> Int8,
    }
}

diesel::table! {
    epoch_reports (epoch) {
        epoch -> Int8,
        report -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    epoch_rewards (epoch, node_id, ledger) {
        epoch -> Int8,
        node_id -> Uuid,
        ledger -> Text,
        cluster -> Int8,
        work -> Int8,
        quality_bps -> Int4,
        uptime_bps -> Int4,
        amount -> Int8,
        transfer_id -> Nullable<Uuid>,
    }
}

diesel::table! {
    epoch_work (assignment_id) {
        assignment_id -> Uuid,
        epoch -> Int8,
        node_id -> Uuid,
        value -> Int8,
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
    identity_marks (id) {
        id -> Int8,
        user_id -> Uuid,
        node_id -> Nullable<Uuid>,
        kind -> Text,
        value -> Text,
        first_seen_at -> Timestamptz,
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
        upload_sha256 -> Nullable<Text>,
        bid_engine_order_id -> Nullable<Int8>,
        canaries -> Jsonb,
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
        model_id -> Nullable<Uuid>,
        model_sha256 -> Nullable<Text>,
        time_in_force -> Text,
        reject_reason -> Nullable<Text>,
    }
}

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
        unit_start -> Int8,
        units_taken -> Int8,
        reoffer -> Int4,
        reoffer_of -> Nullable<Uuid>,
    }
}

diesel::table! {
    model_key_releases (id) {
        id -> Int8,
        model_id -> Uuid,
        assignment_id -> Uuid,
        node_id -> Uuid,
        released_at -> Timestamptz,
    }
}

diesel::table! {
    models (id) {
        id -> Uuid,
        owner -> Uuid,
        market -> Text,
        name -> Text,
        sha256 -> Text,
        bytes -> Int8,
        object -> Text,
        nonce -> Bytea,
        wrapped_key -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    node_credentials (id) {
        id -> Uuid,
        node_id -> Uuid,
        token_sha256 -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    node_settled_counts (node_id) {
        node_id -> Uuid,
        settled -> Int8,
    }
}

diesel::table! {
    node_uptime (node_id, minute) {
        node_id -> Uuid,
        minute -> Timestamptz,
    }
}

diesel::table! {
    node_withholdings (assignment_id) {
        assignment_id -> Uuid,
        node_id -> Uuid,
        ledger -> Text,
        provider_account_id -> Uuid,
        withheld_account_id -> Uuid,
        amount -> Int8,
        seq -> Int8,
        release_at -> Int8,
        state -> Text,
        resolved_by -> Nullable<Uuid>,
        created_at -> Timestamptz,
        resolved_at -> Nullable<Timestamptz>,
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
        challenge_class -> Text,
        challenge_items -> Int4,
        challenge_sample_size -> Int4,
        challenge_bound_ms -> Int4,
        challenge_issued_at -> Timestamptz,
        challenge_committed_at -> Nullable<Timestamptz>,
        challenge_sample -> Nullable<Jsonb>,
        challenge_timing -> Nullable<Text>,
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
    processed_events (consumer, event_id) {
        consumer -> Text,
        event_id -> Text,
        processed_at -> Timestamptz,
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
    token_escrow_orders (order_id) {
        order_id -> Uuid,
        seller_account_id -> Uuid,
        escrow_account_id -> Uuid,
        ledger -> Text,
        units_per_lot -> Int8,
        quantity -> Int8,
        quantity_open -> Int8,
        hold_id -> Nullable<Uuid>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    token_fills (fill_id) {
        fill_id -> Uuid,
        market -> Text,
        event_seq -> Int8,
        buy_order -> Uuid,
        sell_order -> Uuid,
        qty -> Int8,
        price -> Int8,
        fee -> Int8,
        traded_at -> Timestamptz,
        settled_at -> Timestamptz,
    }
}

diesel::table! {
    token_orders (id) {
        id -> Uuid,
        engine_order_id -> Int8,
        market -> Text,
        owner -> Nullable<Uuid>,
        epoch -> Nullable<Int8>,
        side -> Text,
        price -> Int8,
        quantity -> Int8,
        filled -> Int8,
        time_in_force -> Text,
        client_order_id -> Nullable<Text>,
        credit_account_id -> Uuid,
        token_account_id -> Uuid,
        engine_account -> Int8,
        status -> Text,
        accepted_seq -> Nullable<Int8>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

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
    verification_tasks (id) {
        id -> Uuid,
        assignment_id -> Uuid,
        job_id -> Uuid,
        market -> Text,
        node_id -> Uuid,
        items -> Array<Nullable<Int8>>,
        output_sha256 -> Text,
        merkle_root -> Text,
        node_manifest -> Nullable<Jsonb>,
        reported_failed -> Int4,
        sample_seed -> Text,
        price -> Int8,
        pay -> Int8,
        status -> Text,
        deadline -> Timestamptz,
        upload_sha256 -> Nullable<Text>,
        result_sha256 -> Nullable<Text>,
        result_manifest -> Nullable<Jsonb>,
        outcome -> Nullable<Text>,
        market_rerun -> Bool,
        verifier_correct -> Nullable<Bool>,
        paid -> Int8,
        pay_transfer_id -> Nullable<Uuid>,
        detail -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(asks -> nodes (node_id));
diesel::joinable!(asks -> users (owner));
diesel::joinable!(assignment_verifications -> job_assignments (assignment_id));
diesel::joinable!(assignment_verifications -> jobs (job_id));
diesel::joinable!(assignment_verifications -> market_orders (reoffer_engine_order_id));
diesel::joinable!(assignment_verifications -> verification_tasks (verification_task_id));
diesel::joinable!(epoch_burns -> ledger_transfers (transfer_id));
diesel::joinable!(epoch_fees -> ledger_transfers (transfer_id));
diesel::joinable!(epoch_rewards -> ledger_transfers (transfer_id));
diesel::joinable!(epoch_rewards -> nodes (node_id));
diesel::joinable!(epoch_work -> escrow_assignments (assignment_id));
diesel::joinable!(epoch_work -> nodes (node_id));
diesel::joinable!(escrow_assignments -> escrow_orders (order_id));
diesel::joinable!(escrow_assignments -> ledger_accounts (provider_account_id));
diesel::joinable!(files -> users (owner));
diesel::joinable!(idempotency_keys -> users (user_id));
diesel::joinable!(identity_marks -> nodes (node_id));
diesel::joinable!(identity_marks -> users (user_id));
diesel::joinable!(job_assignments -> jobs (job_id));
diesel::joinable!(job_assignments -> nodes (node_id));
diesel::joinable!(jobs -> models (model_id));
diesel::joinable!(jobs -> users (owner));
diesel::joinable!(market_orders -> job_assignments (reoffer_of));
diesel::joinable!(market_orders -> ledger_accounts (account_id));
diesel::joinable!(model_key_releases -> job_assignments (assignment_id));
diesel::joinable!(model_key_releases -> models (model_id));
diesel::joinable!(model_key_releases -> nodes (node_id));
diesel::joinable!(models -> users (owner));
diesel::joinable!(node_credentials -> nodes (node_id));
diesel::joinable!(node_settled_counts -> nodes (node_id));
diesel::joinable!(node_uptime -> nodes (node_id));
diesel::joinable!(node_withholdings -> nodes (node_id));
diesel::joinable!(nodes -> users (owner));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(token_escrow_orders -> ledger_transfers (hold_id));
diesel::joinable!(token_orders -> users (owner));
diesel::joinable!(users -> ledger_accounts (account_id));
diesel::joinable!(verification_tasks -> job_assignments (assignment_id));
diesel::joinable!(verification_tasks -> jobs (job_id));
diesel::joinable!(verification_tasks -> nodes (node_id));

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    asks,
    assignment_verifications,
    canary_items,
    dead_letters,
    epoch_burns,
    epoch_fees,
    epoch_reports,
    epoch_rewards,
    epoch_work,
    escrow_assignments,
    escrow_orders,
    files,
    idempotency_keys,
    identity_marks,
    job_assignments,
    jobs,
    ledger_accounts,
    ledger_transfers,
    market_orders,
    model_key_releases,
    models,
    node_credentials,
    node_settled_counts,
    node_uptime,
    node_withholdings,
    nodes,
    outbox,
    processed_events,
    sessions,
    token_escrow_orders,
    token_fills,
    token_orders,
    users,
    verification_tasks,
);
