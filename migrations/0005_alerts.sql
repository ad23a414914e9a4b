-- Alert thresholds per account (CreditAdmin.SetAlertThresholds replaces an account's set), and
-- the alerts they fired: at most one per threshold (its id and its definition: a threshold
-- redefined under the same id is another one) and billing cycle, whichever replica saw it first
-- (the primary key). `kind`, `scope_id` and `value` are src/ledger/alerts.rs's Threshold::parts.
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
    PRIMARY KEY (account_id, threshold_id, kind, scope_id, value, cycle_start_ms)
);
CREATE INDEX alerts_by_fired ON alerts (account_id, fired_ms);

-- Each alert's delivery to each webhook URL configured when it fired: retried with backoff
-- until delivered or `webhook_attempts_max` attempts failed. `next_attempt_ms` also leases a
-- pending delivery to the replica sending it.
CREATE TABLE alert_deliveries (
    account_id TEXT NOT NULL,
    threshold_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    scope_id TEXT NOT NULL DEFAULT '',
    value BIGINT NOT NULL,
    cycle_start_ms BIGINT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT,
    delivered_ms BIGINT,
    PRIMARY KEY (account_id, threshold_id, kind, scope_id, value, cycle_start_ms, url)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (state, next_attempt_ms);
