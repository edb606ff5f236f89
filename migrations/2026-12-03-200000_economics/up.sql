-- Economics (issue 16): a bounded GRID supply, reward epochs from measured inputs, and the
-- sweeps that join every fee and every verified assignment to exactly one epoch.

-- The GRID supply is bounded by the database itself: the genesis account can never have emitted
-- more than 1,000,000,000 GRID (10^6 base units each), and a burned token can never move again.
ALTER TABLE ledger_accounts ADD CONSTRAINT grid_supply_bounded
    CHECK (ledger <> 'GRID' OR code <> 'token_supply' OR debits_posted + debits_pending <= 1000000000000000);
-- No other GRID account may go negative: the supply account is the only way GRID comes to be.
ALTER TABLE ledger_accounts ADD CONSTRAINT grid_only_supply_may_go_negative
    CHECK (ledger <> 'GRID' OR code = 'token_supply' OR debits_must_not_exceed_credits);
ALTER TABLE ledger_accounts ADD CONSTRAINT burned_never_debited
    CHECK (code <> 'burned' OR (debits_posted = 0 AND debits_pending = 0));

-- Uptime, measured from authenticated heartbeats: one row per node and minute it was heard in.
-- Pruned after `uptime_retention_days`.
CREATE TABLE node_uptime (
    node_id uuid NOT NULL REFERENCES nodes (id),
    minute timestamptz NOT NULL,
    PRIMARY KEY (node_id, minute)
);
CREATE INDEX node_uptime_minute ON node_uptime (minute);

-- Each protocol-fee credit belongs to exactly one epoch: the first close that saw it committed.
CREATE TABLE epoch_fees (
    transfer_id uuid PRIMARY KEY REFERENCES ledger_transfers (id),
    epoch bigint NOT NULL CHECK (epoch >= 0),
    amount bigint NOT NULL CHECK (amount > 0)
);
CREATE INDEX epoch_fees_epoch ON epoch_fees (epoch, transfer_id);

-- Each verified (completed) assignment counts as work in exactly one epoch.
CREATE TABLE epoch_work (
    assignment_id uuid PRIMARY KEY REFERENCES escrow_assignments (id),
    epoch bigint NOT NULL CHECK (epoch >= 0),
    node_id uuid NOT NULL REFERENCES nodes (id),
    -- credits of verified work: verified units × trade price
    value bigint NOT NULL CHECK (value >= 0)
);
CREATE INDEX epoch_work_epoch ON epoch_work (epoch, node_id);

-- One row per epoch, node and ledger (USD, GRID): the inputs of its reward and what it got.
CREATE TABLE epoch_rewards (
    epoch bigint NOT NULL CHECK (epoch >= 0),
    node_id uuid NOT NULL REFERENCES nodes (id),
    ledger text NOT NULL,
    cluster bigint NOT NULL,
    work bigint NOT NULL CHECK (work >= 0),
    quality_bps integer NOT NULL CHECK (quality_bps BETWEEN 0 AND 10000),
    uptime_bps integer NOT NULL CHECK (uptime_bps BETWEEN 0 AND 10000),
    amount bigint NOT NULL CHECK (amount >= 0),
    transfer_id uuid REFERENCES ledger_transfers (id),
    PRIMARY KEY (epoch, node_id, ledger)
);

-- The GRID bought back, burned at the close after it arrived: each burned amount joined to the
-- close that burned it.
CREATE TABLE epoch_burns (
    epoch bigint PRIMARY KEY CHECK (epoch >= 0),
    transfer_id uuid NOT NULL REFERENCES ledger_transfers (id),
    amount bigint NOT NULL CHECK (amount > 0)
);

-- The unbounded `token_market` accounts of the old fixed-price buyback are gone (the buyback
-- buys on the GRID market now); an unused one is removed.
DELETE FROM ledger_accounts a
 WHERE a.code = 'token_market'
   AND NOT EXISTS (SELECT 1 FROM ledger_transfers t
                    WHERE t.debit_account_id = a.id OR t.credit_account_id = a.id);
