//! The key layout: the one place that names Redis keys (layout version [`LAYOUT_VERSION`]).
//!
//! Accounts are spread over a fixed number of shards (`redis_shards`, set at first deployment and
//! recorded in Redis under [`LAYOUT_KEY`] with the layout version). Every key of an account, and
//! its shard's wake-up index and event stream, carries the shard's hash tag `{sN}`, so every
//! function touches one hash slot and runs unchanged on Redis Cluster; the outbox is one stream per
//! shard, not one per account.
//!
//! Every key starts with the configured prefix (`redis_key_prefix`, empty by default), so several
//! deployments can share one Redis. What each key holds is documented field by field in
//! `lua/lib.lua`, the code that writes them.
//!
//! ```text
//! cs:{sN}:a:<account>   hash    native scalar fields: totals, cycle, counters, due/wake times, plan
//! cs:{sN}:l:<account>   hash    lots: m<id> -> fixed facts, r<id> -> remaining
//! cs:{sN}:b:<account>   zset    lots with credit left, in burn order
//! cs:{sN}:e:<account>   zset    live lots by expiry
//! cs:{sN}:r:<account>/<n>  hash reservations n*64 .. n*64+63: m<seq> -> hot fields, i<seq> -> facts
//! cs:{sN}:d:<account>   zset    open reservations by deadline
//! cs:{sN}:q:<account>   hash    remembered request ids: key -> keep until, fingerprint, compact answer
//! cs:{sN}:p:<account>   zset    purge schedule: closed reservations, and when f's head comes due
//! cs:{sN}:u:<account>   hash    users: id -> limit, cycle generation, used
//! cs:{sN}:k:<account>   set     business keys charged this cycle
//! cs:{sN}:x:<account>:<seq>  hash  answers to Commit/Extend/Release on reservation <seq>
//! cs:{sN}:wake          zset    account -> when the sweep next has work for it
//! cs:{sN}:events        stream  the outbox of shard N
//! cs:{sN}:upgraded      set     during an in-place layout upgrade: the shard's accounts converted
//! cs:{sN}:f:<account>   list    q's keys in the order they were remembered, with time marks
//! cs:layout             string  "<layout version> <shard count>", written at first start; its
//!                               absence while the ledger holds events means Redis lost its state
//! cs:recovered          string  when the state was last restored from the ledger (Unix ms)
//! cs:recovery           string  the automatic recovery's lock (held by one replica, with a TTL)
//! cs:shards             string  layout 1's marker (its shard count); its presence means layout 1
//! ```

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::ledger::{AccountId, RequestId};

/// Characters of a request id's key (see [`request_key`]).
pub const REQUEST_KEY_LEN: usize = 14;

/// The key under which an account's hash q and queue f keep a request id (layout 4): each of
/// the first [`REQUEST_KEY_LEN`] bytes of SHA-1(id), taken mod 64, as a URL-safe base64 digit:
/// 84 bits, so two ids of one account meet with a chance of about n²/2⁸⁵ among n remembered at
/// once (SHA-1 serves as a spreading function here, not against an adversary: a caller can only
/// confuse its own account's ids). A key costs the same whatever the id's length (up to 128
/// characters), and Redis keeps 14 characters in a 16-byte allocation. lib.lua's `request_key`
/// computes the same from the id (Redis scripts have SHA-1, not SHA-256), for a reservation's
/// opening request and in the upgrade from layout 3.
pub fn request_key(request: &RequestId) -> [u8; REQUEST_KEY_LEN] {
    let digits = REQUEST_KEY_DIGITS.as_bytes();
    let digest = Sha1::digest(request.as_str().as_bytes());
    std::array::from_fn(|i| digits[usize::from(digest[i] % 64)])
}

/// The digits of a request key, in the order of their values (URL-safe base64); lib.lua gets
/// them in its header.
pub const REQUEST_KEY_DIGITS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A call's fingerprint as Redis keeps it: its first 16 hex digits (64 bits: ample to tell a
/// retry from a reuse of the same id, at half the memory per remembered id).
pub fn stored_fingerprint(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

/// A state change's ARGV 5 (lib.lua): the request id's key, then its stored fingerprint.
pub fn stamp(request: &RequestId, fingerprint: &str) -> String {
    let mut stamp = String::with_capacity(REQUEST_KEY_LEN + 16);
    stamp.extend(request_key(request).iter().map(|&byte| char::from(byte)));
    stamp.push_str(stored_fingerprint(fingerprint));
    stamp
}

/// Reservations per hash (`cs:{sN}:r:<account>/<seq / 64>`): small hashes stay
/// listpack-encoded in Redis, a few bytes per field instead of a hash table entry each.
pub const RESERVATIONS_PER_HASH: u64 = 64;

/// The version of this layout. A Redis holding another version is refused at start (see
/// README, "Upgrading the Redis layout"). Version 4 keeps an account-scoped request id in q and
/// f under its key ([`request_key`]), where version 3 kept the id itself; version 3 kept a
/// remembered request id's keep-until time in its answer (q) and queued the id in f for the
/// sweep, where version 2 kept a purge-schedule entry per request id in p. `rebuild
/// --upgrade-layout` converts a version-2 or version-3 Redis in place.
pub const LAYOUT_VERSION: u32 = 4;
pub const LAYOUT_KEY: &str = "cs:layout";
/// See [`Layout::recovered_key`].
pub const RECOVERED_KEY: &str = "cs:recovered";
/// See [`Layout::recovery_lock_key`].
pub const RECOVERY_LOCK_KEY: &str = "cs:recovery";
/// Where layout 1 recorded its shard count: its presence marks a Redis laid out by version 1.
pub const LAYOUT_1_KEY: &str = "cs:shards";
/// The default shard count. More shards spread a Redis Cluster's load over more slots; the
/// count cannot change once accounts exist (their keys would move).
pub const SHARDS_DEFAULT: u32 = 16;
pub const SHARDS_MAX: u32 = 4096;

/// Most keys one function call takes: an account's thirteen and a reservation's answers hash.
pub const KEYS_MAX: usize = 14;

/// A function call's keys, written into one buffer: built on every call, where one `String` per
/// key cost thirteen allocations.
#[derive(Clone, Debug)]
pub struct Keys {
    text: String,
    ends: [usize; KEYS_MAX],
    count: usize,
}

impl Keys {
    fn with_capacity(bytes: usize) -> Self {
        Self { text: String::with_capacity(bytes), ends: [0; KEYS_MAX], count: 0 }
    }

    /// One key (a shard's function that takes no account).
    pub fn one(key: &str) -> Self {
        let mut keys = Self::with_capacity(key.len());
        keys.push(&[key], &[]);
        keys
    }

    /// Appends the key made of `tag`'s parts, then `rest`'s.
    fn push(&mut self, tag: &[&str], rest: &[&str]) {
        assert!(self.count < KEYS_MAX, "a call takes at most {KEYS_MAX} keys");
        for part in tag.iter().chain(rest) {
            self.text.push_str(part);
        }
        self.ends[self.count] = self.text.len();
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Key `index` (panics past the last).
    pub fn get(&self, index: usize) -> &str {
        assert!(index < self.count, "key {index} of {}", self.count);
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.text[start..self.ends[index]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.count).map(|index| self.get(index))
    }

    /// The keys' bytes in all.
    pub fn bytes(&self) -> usize {
        self.text.len()
    }

    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub prefix: String,
    pub shards: u32,
}

impl Layout {
    /// The shard of an account: a stable hash of its id.
    pub fn shard(&self, account: &AccountId) -> u32 {
        let digest = Sha256::digest(account.as_str().as_bytes());
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % self.shards
    }

    /// The thirteen keys every account function takes, in the order lib.lua expects.
    pub fn account_keys(&self, account: &AccountId) -> [String; 13] {
        let keys = self.call_keys(account, None);
        std::array::from_fn(|index| keys.get(index).to_owned())
    }

    /// The keys of `rekey_requests` (an in-place layout upgrade): the account's thirteen, then
    /// its shard's set of converted accounts ([`Layout::upgraded_key`]).
    pub fn upgrade_keys(&self, account: &AccountId) -> Keys {
        let mut keys = self.call_keys(account, None);
        let shard_tag = self.shard_tag(self.shard(account));
        keys.push(&[shard_tag.as_str()], &["upgraded"]);
        keys
    }

    /// A call's keys: the account's thirteen and, for a call on reservation `seq`, its answers
    /// hash — the shard hashed once for all of them, the keys written into one buffer.
    pub fn call_keys(&self, account: &AccountId, reservation: Option<u64>) -> Keys {
        let shard_tag = self.shard_tag(self.shard(account));
        let tag = [shard_tag.as_str()];
        let account = account.as_str();
        let mut keys = Keys::with_capacity(KEYS_MAX * (shard_tag.len() + account.len() + 24));
        for kind in ["a", "l", "b", "e", "r", "d", "q", "p", "u", "k"] {
            keys.push(&tag, &[kind, ":", account]);
        }
        keys.push(&tag, &["wake"]);
        keys.push(&tag, &["events"]);
        keys.push(&tag, &["f:", account]);
        if let Some(seq) = reservation {
            keys.push(&tag, &["x:", account, ":", itoa::Buffer::new().format(seq)]);
        }
        keys
    }

    /// `<prefix>cs:{s<shard>}:`, the start of every key of a shard.
    fn shard_tag(&self, shard: u32) -> String {
        let mut tag = String::with_capacity(self.prefix.len() + 16);
        tag.push_str(&self.prefix);
        tag.push_str("cs:{s");
        tag.push_str(itoa::Buffer::new().format(shard));
        tag.push_str("}:");
        tag
    }

    /// Where answers to calls on one reservation are remembered (deleted with it).
    pub fn answers_key(&self, account: &AccountId, seq: u64) -> String {
        self.answers_key_in(self.shard(account), account, seq)
    }

    fn answers_key_in(&self, shard: u32, account: &AccountId, seq: u64) -> String {
        let mut key = self.answers_prefix_in(shard, account);
        key.push_str(itoa::Buffer::new().format(seq));
        key
    }

    pub fn answers_prefix(&self, account: &AccountId) -> String {
        self.answers_prefix_in(self.shard(account), account)
    }

    fn answers_prefix_in(&self, shard: u32, account: &AccountId) -> String {
        let mut key = self.shard_tag(shard);
        key.push_str("x:");
        key.push_str(account.as_str());
        key.push(':');
        key
    }

    pub fn wake_key(&self, shard: u32) -> String {
        self.shard_tag(shard) + "wake"
    }

    pub fn events_key(&self, shard: u32) -> String {
        self.shard_tag(shard) + "events"
    }

    /// The accounts of a shard an in-place layout upgrade has converted so far (a set; deleted
    /// once the layout is recorded), so a run interrupted part way converts none twice.
    pub fn upgraded_key(&self, shard: u32) -> String {
        self.shard_tag(shard) + "upgraded"
    }

    pub fn layout_key(&self) -> String {
        format!("{}{LAYOUT_KEY}", self.prefix)
    }

    /// When Redis's state was last restored from the ledger (ms): ends a loss noticed before.
    pub fn recovered_key(&self) -> String {
        format!("{}{RECOVERED_KEY}", self.prefix)
    }

    /// Held while one replica restores Redis from the ledger (the automatic recovery).
    pub fn recovery_lock_key(&self) -> String {
        format!("{}{RECOVERY_LOCK_KEY}", self.prefix)
    }

    pub fn layout_1_key(&self) -> String {
        format!("{}{LAYOUT_1_KEY}", self.prefix)
    }

    /// What [`Layout::layout_key`] holds for this layout: version and shard count.
    pub fn layout_value(&self) -> String {
        format!("{LAYOUT_VERSION} {}", self.shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_an_account_shares_its_shard_tag() {
        let layout = Layout { prefix: String::new(), shards: SHARDS_DEFAULT };
        let account = AccountId::parse("acme").unwrap();
        let shard = layout.shard(&account);
        let tag = format!("{{s{shard}}}");
        let kinds = ["a", "l", "b", "e", "r", "d", "q", "p", "u", "k"];
        let mut expected: Vec<String> = kinds.iter().map(|kind| format!("cs:{tag}:{kind}:acme")).collect();
        expected.extend([
            format!("cs:{tag}:wake"),
            format!("cs:{tag}:events"),
            format!("cs:{tag}:f:acme"),
            format!("cs:{tag}:x:acme:7"),
        ]);
        let keys = layout.call_keys(&account, Some(7)).to_vec();
        assert_eq!(keys, expected, "the account's thirteen keys in lib.lua's order, then its answers hash");
        assert_eq!(keys[13], layout.answers_key(&account, 7));
        assert_eq!(layout.call_keys(&account, None).to_vec(), keys[..13]);
        assert_eq!(layout.account_keys(&account).to_vec(), keys[..13]);
        for key in keys {
            assert!(key.contains(&tag), "{key}");
            assert_eq!(key.matches('{').count(), 1, "exactly one hash tag: {key}");
        }
        assert_eq!(layout.account_keys(&account)[0], format!("cs:{tag}:a:acme"));
    }

    /// Pinned: a key is a durable format (Redis holds request ids under it), and lib.lua's
    /// `request_key` must compute the same (tests/it/layout.rs checks it through Redis).
    #[test]
    fn request_keys_are_pinned() {
        let key = |id: &str| String::from_utf8(request_key(&RequestId::parse(id).unwrap()).to_vec()).unwrap();
        // SHA-1("r-1") = 360bf8469ec2f6f957ccf5c075db027e…: 0x36 % 64 = 54 -> '2', 0x0b -> 'L', …
        assert_eq!(key("r-1"), "2L4GeC25XM1A1b");
        assert_eq!(key("3f2c8a4e-7b1d-4c9a-9e21-5d0b6f8a1c33").len(), REQUEST_KEY_LEN);
        assert_ne!(key("r-1"), key("r-2"));
        assert_eq!(stamp(&RequestId::parse("r-1").unwrap(), "d21bfbc27d5c71af0123"), "2L4GeC25XM1A1bd21bfbc27d5c71af");
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let layout = Layout { prefix: "t1:".into(), shards: 16 };
        let shard = layout.shard(&AccountId::parse("acme").unwrap());
        assert_eq!(shard, layout.shard(&AccountId::parse("acme").unwrap()));
        assert!(layout.account_keys(&AccountId::parse("acme").unwrap())[0].starts_with("t1:cs:{s"));
        let used: std::collections::HashSet<u32> =
            (0..200).map(|i| layout.shard(&AccountId::parse(&format!("team-{i}")).unwrap())).collect();
        assert!(used.len() >= 14, "200 accounts over 16 shards used only {}", used.len());
    }
}
