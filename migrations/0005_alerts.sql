-- Alert thresholds per account (CreditAdmin.SetAlertThresholds replaces an account's set), and
-- the alerts they fired: at most one per threshold and billing cycle, whichever replica saw it
-- first (the primary key). `kind`, `scope_id` and `value` are src/ledger/alerts.rs's
-- Threshold::parts.
CREATE TABLE alert_thresholds (
    account_id TEXT NOT NULL,
    threshold_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    scope_id TEXT NOT NULL DEFAULT '',
    value BIGINT NOT NULL,
    PRIMARY KEY (account_id, threshold_id)
);

CREATE TABLE alerts (
    account_id TEXT NOT NULL,
    threshold_id TEXT NOT NULL,
    cycle_start_ms BIGINT NOT NULL,
    fired_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    scope_id TEXT NOT NULL DEFAULT '',
    value BIGINT NOT NULL,
    observed BIGINT NOT NULL,
    base BIGINT NOT NULL,
    PRIMARY KEY (account_id, threshold_id, cycle_start_ms)
);
CREATE INDEX alerts_by_fired ON alerts (account_id, fired_ms);
