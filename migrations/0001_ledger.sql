-- The durable record. Portable SQL: the same migration runs on PostgreSQL and SQLite.

-- The append-only ledger: every event exactly once, keyed on its own identity (account, seq),
-- never on its position in a stream. `data` is the event's JSON wire form (src/ledger/wire.rs).
CREATE TABLE ledger_events (
    account_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT,
    reservation_seq BIGINT,
    data TEXT NOT NULL,
    settled_ms BIGINT NOT NULL,
    PRIMARY KEY (account_id, seq)
);
CREATE INDEX ledger_events_by_reservation ON ledger_events (account_id, reservation_seq);
CREATE INDEX ledger_events_by_settled ON ledger_events (settled_ms);

-- Each reservation's state, folded from its events. Every column is updated commutatively
-- (sums, maxima, set-once values), so replicas settling one account's events in any order
-- converge on the same row.
CREATE TABLE reservations (
    account_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'held',
    reserved BIGINT NOT NULL DEFAULT 0,
    committed BIGINT NOT NULL DEFAULT 0,
    returned BIGINT NOT NULL DEFAULT 0,
    commit_count BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL DEFAULT 0,
    deadline_ms BIGINT NOT NULL DEFAULT 0,
    closed_ms BIGINT,
    labels TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (account_id, seq)
);

-- Credits spent per account, billing cycle, user and category.
CREATE TABLE usage_totals (
    account_id TEXT NOT NULL,
    cycle_start_ms BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    category TEXT NOT NULL,
    spent BIGINT NOT NULL DEFAULT 0,
    commits BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, cycle_start_ms, user_id, category)
);

-- Each lot (grant) and what happened to it; its history is in ledger_events.
-- remaining = granted - drawn + returned - expired.
CREATE TABLE lots (
    account_id TEXT NOT NULL,
    lot_id BIGINT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    granted BIGINT NOT NULL DEFAULT 0,
    drawn BIGINT NOT NULL DEFAULT 0,
    returned BIGINT NOT NULL DEFAULT 0,
    expired BIGINT NOT NULL DEFAULT 0,
    granted_ms BIGINT NOT NULL DEFAULT 0,
    expires_ms BIGINT NOT NULL DEFAULT 0,
    expired_ms BIGINT,
    PRIMARY KEY (account_id, lot_id)
);

-- Per-account totals: granted = available + held + spent + expired.
CREATE TABLE account_totals (
    account_id TEXT NOT NULL PRIMARY KEY,
    granted BIGINT NOT NULL DEFAULT 0,
    held BIGINT NOT NULL DEFAULT 0,
    spent BIGINT NOT NULL DEFAULT 0,
    expired BIGINT NOT NULL DEFAULT 0,
    events BIGINT NOT NULL DEFAULT 0,
    last_seq BIGINT NOT NULL DEFAULT 0
);
