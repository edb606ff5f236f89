DROP TABLE market_orders;
DROP SEQUENCE market_order_ids;
