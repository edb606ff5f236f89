-- The GRID/credits spot market (issue 16): token orders placed through the API (and the
-- protocol's buyback), the GRID held for sell orders, and the fills settled between them.

-- A sell order's GRID hold (gridbook-ledger `token_escrow`): the seller's open lots are held by
-- ONE pending ledger transfer seller → the order's escrow account (`hold_id`); a fill posts the
-- part it delivers and holds the rest again, a cancel voids it. NULL hold: nothing open.
CREATE TABLE token_escrow_orders (
    order_id uuid PRIMARY KEY,
    seller_account_id uuid NOT NULL REFERENCES ledger_accounts (id),
    escrow_account_id uuid NOT NULL UNIQUE REFERENCES ledger_accounts (id),
    ledger text NOT NULL,
    -- ledger base units per lot (1 GRID = 10^6)
    units_per_lot bigint NOT NULL CHECK (units_per_lot > 0),
    quantity bigint NOT NULL CHECK (quantity > 0),
    quantity_open bigint NOT NULL CHECK (quantity_open >= 0 AND quantity_open <= quantity),
    hold_id uuid REFERENCES ledger_transfers (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT token_escrow_orders_hold_iff_open CHECK ((quantity_open = 0) = (hold_id IS NULL))
);

-- One order on a token market. `id` is its escrow order: `escrow_orders.order_id` for a buy
-- (credits reserved like a job's bid), `token_escrow_orders.order_id` for a sell. The engine
-- order id comes from `market_order_ids`, so it never meets a job's or an ask's.
CREATE TABLE token_orders (
    id uuid PRIMARY KEY,
    engine_order_id bigint NOT NULL UNIQUE CHECK (engine_order_id > 0),
    market text NOT NULL CHECK (market ~ '^[A-Z0-9-]{1,64}$'),
    -- The user who placed it; NULL for the protocol's buyback order of `epoch`.
    owner uuid REFERENCES users (id),
    epoch bigint UNIQUE CHECK (epoch >= 0),
    side text NOT NULL CHECK (side IN ('buy', 'sell')),
    -- credits' minor units per whole token (= engine ticks)
    price bigint NOT NULL CHECK (price > 0),
    -- whole tokens (= engine lots)
    quantity bigint NOT NULL CHECK (quantity > 0),
    filled bigint NOT NULL DEFAULT 0 CHECK (filled >= 0 AND filled <= quantity),
    time_in_force text NOT NULL CHECK (time_in_force IN ('gtc', 'ioc')),
    client_order_id text CHECK (length(client_order_id) BETWEEN 1 AND 64),
    -- The credits account it pays from (buy) or is paid into (sell), and the token account it
    -- receives into (buy) or delivers from (sell).
    credit_account_id uuid NOT NULL REFERENCES ledger_accounts (id),
    token_account_id uuid NOT NULL REFERENCES ledger_accounts (id),
    engine_account bigint NOT NULL,
    status text NOT NULL CHECK (status IN ('open', 'cancel_requested', 'filled', 'cancelled', 'rejected')),
    accepted_seq bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT token_orders_owner_or_epoch CHECK ((owner IS NULL) <> (epoch IS NULL)),
    CONSTRAINT token_orders_protocol_orders_buy CHECK (epoch IS NULL OR side = 'buy'),
    CONSTRAINT token_orders_filled_status CHECK ((status = 'filled') = (filled = quantity)),
    UNIQUE (owner, client_order_id)
);
CREATE INDEX token_orders_by_owner ON token_orders (owner, id);

-- Every settled fill of a token market: both legs moved in the transaction that wrote it.
CREATE TABLE token_fills (
    -- = the engine event's fill id (`decide::fill_id`)
    fill_id uuid PRIMARY KEY,
    market text NOT NULL,
    event_seq bigint NOT NULL CHECK (event_seq > 0),
    buy_order uuid NOT NULL REFERENCES token_orders (id),
    sell_order uuid NOT NULL REFERENCES token_orders (id),
    qty bigint NOT NULL CHECK (qty > 0),
    price bigint NOT NULL CHECK (price > 0),
    -- the buyer's fee (credits' minor units)
    fee bigint NOT NULL CHECK (fee >= 0),
    -- the engine command's time
    traded_at timestamptz NOT NULL,
    settled_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (market, event_seq),
    CONSTRAINT token_fills_two_orders CHECK (buy_order <> sell_order)
);
CREATE INDEX token_fills_by_time ON token_fills (market, traded_at);
CREATE INDEX token_fills_by_buy ON token_fills (buy_order);
CREATE INDEX token_fills_by_sell ON token_fills (sell_order);
