//! The Redis Function library: the Lua the engine loads with `FUNCTION LOAD`, built once from
//! the files in `lua/` and a header of constants taken from Rust, so the two sides cannot drift
//! (the balance bound, the lots' burn order, the per-call work limits, a request key's length and
//! digits).
//!
//! The library's name and every function's name carry a digest of the whole source
//! (`credit_sidecar_4_<digest>`, functions `cs4_<digest>_<operation>`): sidecars of different
//! versions can share one Redis during a rolling upgrade, each calling its own functions, and a
//! `FUNCTION LOAD` of a library already there is a no-op. Functions survive a failover (they are
//! replicated and persisted with the data); after a restart that lost them, the engine loads the
//! library again and retries.

use std::fmt::Write as _;
use std::sync::LazyLock;

use sha2::{Digest, Sha256};

use super::keys::{LAYOUT_VERSION, REQUEST_KEY_DIGITS, REQUEST_KEY_LEN, RESERVATIONS_PER_HASH};
use crate::ledger::command::COMMIT_BATCH_MAX;
use crate::ledger::types::BALANCE_MAX;
use crate::ledger::{LotKind, wire};

/// The most catch-up steps (a lot expiring, a hold expiring, a renewal) one call performs. A call
/// that finds more due answers "due" after doing these, and the engine calls again; so no single
/// call holds Redis long however long an account went untouched.
pub const CATCHUP_STEPS_MAX: u32 = 64;
/// The most closed reservations one sweep call forgets, and the most items of an account's
/// forget queue (request ids and marks) it reads.
pub const PURGE_MAX: u32 = 1000;
/// An account's forget queue (F, in remembering order) carries a time mark at most every
/// `1/FORGET_MARKS` of the retention: the ids behind a mark come due no sooner than a retention
/// past it, so the sweep reads the queue only as far as what is due. A finer mark costs a few
/// bytes more per mark; a coarser one lets an id the sweep must step past (one kept longer, a
/// Reserve's past its hold's deadline) hold back the ids behind it for longer (up to this
/// fraction of the retention; they are forgotten all the same: a call finds them expired).
pub const FORGET_MARKS: u32 = 8;

const FILES: [&str; 16] = [
    include_str!("lua/lib.lua"),
    include_str!("lua/reserve.lua"),
    include_str!("lua/commit.lua"),
    include_str!("lua/extend.lua"),
    include_str!("lua/release.lua"),
    include_str!("lua/charge.lua"),
    include_str!("lua/set_plan.lua"),
    include_str!("lua/grant.lua"),
    include_str!("lua/start_trial.lua"),
    include_str!("lua/set_user_limit.lua"),
    include_str!("lua/set_category_budget.lua"),
    include_str!("lua/balance.lua"),
    include_str!("lua/account.lua"),
    include_str!("lua/reservation.lua"),
    include_str!("lua/list.lua"),
    include_str!("lua/maintenance.lua"),
];

/// The library's source, its name, and the prefix of its functions' names.
pub struct Library {
    pub source: String,
    pub name: String,
    pub prefix: String,
}

pub static LIBRARY: LazyLock<Library> = LazyLock::new(build);

/// The constants the Lua shares with Rust, as Lua.
fn constants() -> String {
    let ranks: Vec<String> = LotKind::ALL
        .iter()
        .enumerate()
        .map(|(rank, kind)| format!("{} = {rank}", wire::lot_kind_name(*kind)))
        .collect();
    let mut header = String::new();
    writeln!(header, "local BALANCE_MAX = {BALANCE_MAX}").unwrap();
    writeln!(header, "local RANK = {{ {} }}", ranks.join(", ")).unwrap();
    writeln!(header, "local CATCHUP_STEPS_MAX = {CATCHUP_STEPS_MAX}").unwrap();
    writeln!(header, "local PURGE_MAX = {PURGE_MAX}").unwrap();
    writeln!(header, "local FORGET_MARKS = {FORGET_MARKS}").unwrap();
    writeln!(header, "local RES_BUCKET = {RESERVATIONS_PER_HASH}").unwrap();
    writeln!(header, "local COMMIT_BATCH_MAX = {COMMIT_BATCH_MAX}").unwrap();
    writeln!(header, "local REQUEST_KEY_LEN = {REQUEST_KEY_LEN}").unwrap();
    writeln!(header, "local REQUEST_KEY_DIGITS = '{REQUEST_KEY_DIGITS}'").unwrap();
    header
}

fn build() -> Library {
    let body = format!("{}{}", constants(), FILES.join("\n"));
    let digest = Sha256::digest(body.as_bytes());
    let digest: String = digest[..6].iter().map(|byte| format!("{byte:02x}")).collect();
    let prefix = format!("cs{LAYOUT_VERSION}_{digest}_");
    let name = format!("credit_sidecar_{LAYOUT_VERSION}_{digest}");
    let source = format!("#!lua name={name}\nlocal FN_PREFIX = '{prefix}'\n{body}");
    Library { source, name, prefix }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_carries_the_rust_constants() {
        let source = &LIBRARY.source;
        assert!(source.starts_with("#!lua name=credit_sidecar_4_"), "{}", &source[..60]);
        assert!(source.contains("local BALANCE_MAX = 10000000000000\n"));
        assert!(source.contains("local RANK = { trial = 0, promo = 1, plan = 2, addon = 3, adjustment = 4 }"));
        assert!(source.contains("local PURGE_MAX = 1000\nlocal FORGET_MARKS = 8\n"));
        assert!(source.contains("local REQUEST_KEY_LEN = 14\nlocal REQUEST_KEY_DIGITS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'\n"));
        assert!(LIBRARY.prefix.starts_with("cs4_") && LIBRARY.prefix.len() == "cs4_".len() + 12 + 1);
    }

    #[test]
    fn burn_ranks_follow_the_kinds_order() {
        let mut sorted = LotKind::ALL;
        sorted.sort();
        assert_eq!(sorted, LotKind::ALL);
    }
}
