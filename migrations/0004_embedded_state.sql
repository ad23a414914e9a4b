-- What the embedded engine keeps beside the ledger so that a restart finds exactly what it
-- acknowledged (src/ledger/durable.rs). Unused by the Redis engine.

-- Every answer remembered under a request id, declines included: a retry after a restart gets
-- its first answer. reservation_seq is 0 for account-scoped requests (Reserve, Charge, SetPlan,
-- Grant, StartTrial, SetUserLimit) and the reservation's seq for Commit, Extend and Release.
-- `data` is the answer's JSON in format `format`.
CREATE TABLE request_answers (
    account_id TEXT NOT NULL,
    reservation_seq BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    keep_until_ms BIGINT NOT NULL,
    format BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (account_id, reservation_seq, request_id)
);
CREATE INDEX request_answers_by_keep_until ON request_answers (keep_until_ms);

-- One snapshot per account: its whole state (but its remembered answers) after event last_seq.
-- A restart loads it and replays only the events after it. `data` is the JSON of
-- src/ledger/snapshot.rs in format `format`.
CREATE TABLE engine_snapshots (
    account_id TEXT NOT NULL PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    format BIGINT NOT NULL,
    data TEXT NOT NULL,
    taken_ms BIGINT NOT NULL
);
