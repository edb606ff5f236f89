DROP TABLE epoch_burns;
DROP TABLE epoch_rewards;
DROP TABLE epoch_work;
DROP TABLE epoch_fees;
DROP TABLE node_uptime;
ALTER TABLE ledger_accounts DROP CONSTRAINT burned_never_debited;
ALTER TABLE ledger_accounts DROP CONSTRAINT grid_only_supply_may_go_negative;
ALTER TABLE ledger_accounts DROP CONSTRAINT grid_supply_bounded;
