DROP TABLE IF EXISTS credit_snapshots;
