-- Overdrafts (docs/rules.md#overdraft): credits that work admitted during a Redis outage spent
-- beyond what the account's lots held ("overdrawn" events), and what later grants repaid of them
-- ("repaid" events). account_totals: granted + owed = available + held + spent + expired.
-- lots: remaining = granted - repaid - drawn + returned - expired.
-- Existing rows read 0 for both: no ledger written before this migration has an overdraft.
ALTER TABLE account_totals ADD COLUMN owed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE lots ADD COLUMN repaid BIGINT NOT NULL DEFAULT 0;
