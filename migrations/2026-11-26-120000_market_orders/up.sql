-- The marketplace side of the engine's orders: which escrow order, ledger account, provider node
-- and job an engine order id (u64 in the engine, bigint here) belongs to. The API takes ids from
-- `market_order_ids` and inserts the row in the transaction that reserves the escrow and queues the
-- order command in the outbox, so the row always exists before the engine can emit an event for it.
CREATE SEQUENCE market_order_ids AS bigint MINVALUE 1 START WITH 1;

CREATE TABLE market_orders (
    engine_order_id bigint PRIMARY KEY CHECK (engine_order_id > 0),
    market text NOT NULL CHECK (market ~ '^[A-Z0-9-]{1,64}$'),
    side text NOT NULL CHECK (side IN ('bid', 'ask')),
    -- Bids: the escrow order id (escrow_orders.order_id); asks: the marketplace's order id.
    order_id uuid NOT NULL UNIQUE,
    -- Bids: the studio's account; asks: the provider's payout account.
    account_id uuid NOT NULL REFERENCES ledger_accounts (id),
    -- Asks: the provider node that runs the work.
    node_id uuid,
    job_id uuid,
    -- Set by the settlement worker from the engine's `accepted` event: a later rejection that
    -- names this order (an amend or cancel) must not release its reservation.
    accepted_seq bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT market_orders_ask_has_node CHECK (side <> 'ask' OR node_id IS NOT NULL)
);
