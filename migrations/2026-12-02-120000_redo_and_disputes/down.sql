DROP TABLE assignment_verifications;
ALTER TABLE job_assignments DROP COLUMN bid_engine_order_id;
DROP INDEX job_assignments_live_units;
ALTER TABLE job_assignments ADD CONSTRAINT job_assignments_job_id_unit_start_key UNIQUE (job_id, unit_start);
DROP INDEX market_orders_job;
DROP INDEX market_orders_first_of_order;
ALTER TABLE market_orders DROP CONSTRAINT market_orders_reoffer_is_a_bid;
ALTER TABLE market_orders DROP COLUMN reoffer_of, DROP COLUMN reoffer, DROP COLUMN units_taken, DROP COLUMN unit_start;
ALTER TABLE market_orders ADD CONSTRAINT market_orders_order_id_key UNIQUE (order_id);
