-- Events whose identity (account, seq) was already settled with different content. This
-- happens only when Redis lost acknowledged writes (a failover, or weaker persistence) and then
-- reused sequence numbers. They are kept here, never dropped; `verify` reports them and an
-- operator reconciles them (see README, "Settlement").
CREATE TABLE ledger_conflicts (
    account_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT,
    data TEXT NOT NULL,
    seen_ms BIGINT NOT NULL
);
CREATE INDEX ledger_conflicts_by_account ON ledger_conflicts (account_id, seq);
