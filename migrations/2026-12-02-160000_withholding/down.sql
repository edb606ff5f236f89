DROP TABLE node_settled_counts;
DROP TABLE node_withholdings;
