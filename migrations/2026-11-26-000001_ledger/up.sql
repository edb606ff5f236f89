-- Gridbook ledger: double-entry accounts and immutable two-phase transfers (TigerBeetle's model).
-- Amounts are integer minor units (bigint). Balances change ONLY through `ledger_apply_transfers`,
-- the statement-level trigger on INSERT INTO ledger_transfers, so Σ debits = Σ credits per ledger
-- holds by construction; CHECK constraints refuse overdrafts, self-transfers and non-positive amounts.

CREATE TABLE ledger_accounts (
    id uuid PRIMARY KEY,
    ledger text NOT NULL CHECK (ledger ~ '^[A-Z0-9_]{1,16}$'),
    code text NOT NULL CHECK (code ~ '^[a-z_]{1,32}$'),
    debits_must_not_exceed_credits boolean NOT NULL,
    credits_must_not_exceed_debits boolean NOT NULL,
    debits_pending bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    reference uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, ledger),
    CONSTRAINT ledger_accounts_flags_exclusive
        CHECK (NOT (debits_must_not_exceed_credits AND credits_must_not_exceed_debits)),
    CONSTRAINT ledger_accounts_debits_le_credits
        CHECK (NOT debits_must_not_exceed_credits OR debits_pending + debits_posted <= credits_posted),
    CONSTRAINT ledger_accounts_credits_le_debits
        CHECK (NOT credits_must_not_exceed_debits OR credits_pending + credits_posted <= debits_posted)
) WITH (fillfactor = 50); -- room for HOT updates: balances are not indexed, so hot rows skip index writes

CREATE TABLE ledger_transfers (
    id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    kind text NOT NULL CHECK (kind IN ('posted', 'pending', 'post', 'void', 'expire')),
    debit_account_id uuid NOT NULL,
    credit_account_id uuid NOT NULL,
    ledger text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    pending_id uuid REFERENCES ledger_transfers (id),
    expires_at timestamptz,
    code text NOT NULL CHECK (code ~ '^[a-z_]{1,32}$'),
    reference uuid,
    created_at timestamptz NOT NULL,
    CONSTRAINT ledger_transfers_distinct_accounts CHECK (debit_account_id <> credit_account_id),
    CONSTRAINT ledger_transfers_pending_ref CHECK ((kind IN ('posted', 'pending')) = (pending_id IS NULL)),
    CONSTRAINT ledger_transfers_expiry_only_pending CHECK (expires_at IS NULL OR kind = 'pending'),
    FOREIGN KEY (debit_account_id, ledger) REFERENCES ledger_accounts (id, ledger),
    FOREIGN KEY (credit_account_id, ledger) REFERENCES ledger_accounts (id, ledger)
);
-- A pending transfer resolves at most once (post, void or expire).
CREATE UNIQUE INDEX ledger_transfers_resolves_once ON ledger_transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX ledger_transfers_debit_history ON ledger_transfers (debit_account_id, seq);
CREATE INDEX ledger_transfers_credit_history ON ledger_transfers (credit_account_id, seq);
CREATE INDEX ledger_transfers_expiring ON ledger_transfers (expires_at) WHERE kind = 'pending' AND expires_at IS NOT NULL;

-- Transfers are immutable: corrections are new transfers.
CREATE FUNCTION ledger_transfers_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger transfers are immutable' USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_transfers_no_update BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_transfers_immutable();
CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_transfers_immutable();

-- Balances start at zero and move only from inside ledger_apply_transfers. The UPDATE guard's
-- WHEN clause runs without calling plpgsql: inside the apply trigger pg_trigger_depth() is 1, so
-- the hot path pays nothing; a direct UPDATE of a balance (depth 0) is refused.
CREATE FUNCTION ledger_accounts_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger accounts cannot be deleted' USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.debits_pending <> 0 OR NEW.debits_posted <> 0 OR NEW.credits_pending <> 0 OR NEW.credits_posted <> 0 THEN
            RAISE EXCEPTION 'ledger accounts start with zero balances' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger balances change only through transfers' USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_accounts_guard_insert_delete BEFORE INSERT OR DELETE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_accounts_guard();
CREATE TRIGGER ledger_accounts_guard_update BEFORE UPDATE ON ledger_accounts
    FOR EACH ROW WHEN (pg_trigger_depth() < 1 AND (
        NEW.debits_pending, NEW.debits_posted, NEW.credits_pending, NEW.credits_posted, NEW.ledger, NEW.id
    ) IS DISTINCT FROM (
        OLD.debits_pending, OLD.debits_posted, OLD.credits_pending, OLD.credits_posted, OLD.ledger, OLD.id))
    EXECUTE FUNCTION ledger_accounts_guard();

-- Apply every inserted transfer of one INSERT statement to the balances in one UPDATE.
-- `enable_seqscan = off`: the transition table has ~100 rows while the tables grow without bound;
-- without it the planner may hash-join against a full scan of ledger_accounts / ledger_transfers.
CREATE FUNCTION ledger_apply_transfers() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    bad uuid;
BEGIN
    SELECT n.id INTO bad
    FROM (SELECT * FROM new_transfers WHERE pending_id IS NOT NULL) n
    LEFT JOIN ledger_transfers p ON p.id = n.pending_id
    WHERE (
        p.id IS NULL OR p.kind <> 'pending'
        OR p.debit_account_id <> n.debit_account_id OR p.credit_account_id <> n.credit_account_id
        OR n.amount > p.amount
        OR (n.kind <> 'post' AND n.amount <> p.amount)
        OR (n.kind = 'post' AND p.expires_at IS NOT NULL AND n.created_at > p.expires_at)
        OR (n.kind = 'expire' AND (p.expires_at IS NULL OR n.created_at < p.expires_at)))
    LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'transfer % does not match its pending transfer', bad USING ERRCODE = 'check_violation';
    END IF;

    WITH t AS (
        SELECT n.debit_account_id AS d, n.credit_account_id AS c,
               CASE n.kind WHEN 'pending' THEN n.amount WHEN 'posted' THEN 0
                   ELSE -(SELECT p.amount FROM ledger_transfers p WHERE p.id = n.pending_id) END AS pend,
               CASE WHEN n.kind IN ('posted', 'post') THEN n.amount ELSE 0 END AS post
        FROM new_transfers n
    ), s AS (
        SELECT acct, sum(dpend)::bigint AS dpend, sum(dpost)::bigint AS dpost,
               sum(cpend)::bigint AS cpend, sum(cpost)::bigint AS cpost
        FROM (SELECT d AS acct, pend AS dpend, post AS dpost, 0::bigint AS cpend, 0::bigint AS cpost FROM t
              UNION ALL
              SELECT c, 0::bigint, 0::bigint, pend, post FROM t) x
        GROUP BY acct
    )
    UPDATE ledger_accounts a
    SET debits_pending = a.debits_pending + s.dpend,
        debits_posted = a.debits_posted + s.dpost,
        credits_pending = a.credits_pending + s.cpend,
        credits_posted = a.credits_posted + s.cpost
    FROM s WHERE a.id = s.acct;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_apply_transfers AFTER INSERT ON ledger_transfers
    REFERENCING NEW TABLE AS new_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_transfers();

-- Audit: every row returned is a broken invariant (empty = healthy).
CREATE FUNCTION ledger_check_invariants() RETURNS TABLE (invariant text, detail text)
LANGUAGE sql STABLE AS $$
    SELECT 'debits_equal_credits', ledger || ': ' || sum(debits_posted) || ' posted debits vs ' || sum(credits_posted) || ' posted credits; '
           || sum(debits_pending) || ' pending debits vs ' || sum(credits_pending) || ' pending credits'
    FROM ledger_accounts GROUP BY ledger
    HAVING sum(debits_posted) <> sum(credits_posted) OR sum(debits_pending) <> sum(credits_pending)
    UNION ALL
    SELECT 'balance_matches_history', a.id::text
    FROM ledger_accounts a
    LEFT JOIN LATERAL (
        SELECT coalesce(sum(CASE WHEN t.debit_account_id = a.id THEN x.pend END), 0) AS dpend,
               coalesce(sum(CASE WHEN t.debit_account_id = a.id THEN x.post END), 0) AS dpost,
               coalesce(sum(CASE WHEN t.credit_account_id = a.id THEN x.pend END), 0) AS cpend,
               coalesce(sum(CASE WHEN t.credit_account_id = a.id THEN x.post END), 0) AS cpost
        FROM ledger_transfers t
        LEFT JOIN ledger_transfers p ON p.id = t.pending_id
        CROSS JOIN LATERAL (SELECT
            CASE t.kind WHEN 'pending' THEN t.amount WHEN 'posted' THEN 0 ELSE -p.amount END AS pend,
            CASE WHEN t.kind IN ('posted', 'post') THEN t.amount ELSE 0 END AS post) x
        WHERE t.debit_account_id = a.id OR t.credit_account_id = a.id
    ) h ON true
    WHERE (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
          IS DISTINCT FROM (h.dpend, h.dpost, h.cpend, h.cpost)
    UNION ALL
    SELECT 'pending_transfer_accounts_match', t.id::text
    FROM ledger_transfers t JOIN ledger_transfers p ON p.id = t.pending_id
    WHERE p.kind <> 'pending' OR t.amount > p.amount
       OR t.debit_account_id <> p.debit_account_id OR t.credit_account_id <> p.credit_account_id
$$;

-- Escrow state (the ledger holds the money; these rows say which transfer belongs to what).
CREATE TABLE escrow_orders (
    order_id uuid PRIMARY KEY,
    studio_account_id uuid NOT NULL REFERENCES ledger_accounts (id),
    escrow_account_id uuid NOT NULL UNIQUE REFERENCES ledger_accounts (id),
    fee_account_id uuid NOT NULL REFERENCES ledger_accounts (id),
    ledger text NOT NULL,
    quantity bigint NOT NULL CHECK (quantity > 0),
    quantity_open bigint NOT NULL CHECK (quantity_open >= 0 AND quantity_open <= quantity),
    limit_price bigint NOT NULL CHECK (limit_price > 0),
    fee_bps integer NOT NULL CHECK (fee_bps >= 0 AND fee_bps <= 10000),
    unit_reserve bigint NOT NULL CHECK (unit_reserve >= limit_price),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE escrow_assignments (
    id uuid PRIMARY KEY,
    order_id uuid NOT NULL REFERENCES escrow_orders (order_id),
    provider_account_id uuid NOT NULL REFERENCES ledger_accounts (id),
    quantity bigint NOT NULL CHECK (quantity > 0),
    trade_price bigint NOT NULL CHECK (trade_price > 0),
    provider_hold_id uuid NOT NULL REFERENCES ledger_transfers (id),
    fee_hold_id uuid REFERENCES ledger_transfers (id),
    state text NOT NULL CHECK (state IN ('held', 'completed', 'voided')),
    verified_units bigint CHECK (verified_units >= 0 AND verified_units <= quantity),
    created_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE INDEX escrow_assignments_by_order ON escrow_assignments (order_id);

-- Exactly-once consumption: the worker records each event in the transaction of its effect.
CREATE TABLE processed_events (
    consumer text NOT NULL,
    event_id text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Transactional outbox: published to NATS with Nats-Msg-Id = id.
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    subject text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (created_at, id) WHERE published_at IS NULL;

-- Epoch buyback-and-burn reports (each step is also a ledger transfer).
CREATE TABLE epoch_reports (
    epoch bigint PRIMARY KEY CHECK (epoch >= 0),
    report jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
