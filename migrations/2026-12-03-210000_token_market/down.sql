DROP TABLE token_fills;
DROP TABLE token_orders;
DROP TABLE token_escrow_orders;
