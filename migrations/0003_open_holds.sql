-- The metrics count open reservations every health check; keep that an index scan of the open
-- ones only (partial indexes: PostgreSQL and SQLite alike).
CREATE INDEX reservations_open ON reservations (account_id) WHERE state = 'held';
