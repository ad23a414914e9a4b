//! Who may call: bearer tokens from a TOML file, each with scopes and optionally the accounts it
//! may touch. Only SHA-256 digests are kept in memory and compared, in constant time, against
//! the digest of the presented token; every token is compared, so timing does not tell which one
//! nearly matched. The file is re-read when its content changes ([`watch_tokens`]), so a rotated
//! Kubernetes Secret takes effect without a restart; a file that no longer parses keeps the
//! previous tokens.
//!
//! ```toml
//! [[tokens]]
//! name = "dialer"                         # shown in logs, never the secret
//! token = "at-least-16-characters-long"   # or: sha256 = "<64 hex digits of sha256(token)>"
//! scopes = ["authorize"]                  # authorize: CreditAuthorizer; admin: CreditAdmin
//! accounts = ["acme"]                     # optional; absent = every account
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted: shorter ones are guessable.
pub const TOKEN_LEN_MIN: usize = 16;

/// What a token lets its holder call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `credits.v1.CreditAuthorizer`: reserve, commit, extend, release, charge, reads.
    Authorize,
    /// `credits.v1.CreditAdmin`: plans, grants, trials, user limits, listings, usage.
    Admin,
}

/// An authenticated caller, put in each request's extensions for the API to consult.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    /// None: every account.
    pub accounts: Option<BTreeSet<String>>,
}

impl Caller {
    pub fn may_touch(&self, account: &str) -> bool {
        self.accounts.as_ref().is_none_or(|accounts| accounts.contains(account))
    }
}

#[derive(Clone, Debug)]
struct Token {
    digest: [u8; 32],
    scopes: BTreeSet<Scope>,
    caller: Caller,
}

/// The tokens of one version of the file.
#[derive(Clone, Debug, Default)]
pub struct TokenSet {
    tokens: Vec<Token>,
    /// SHA-256 of the text they were read from: the reload compares it with the file.
    source: [u8; 32],
}

/// Why a presented token was not accepted (the gate answers with `api::Refusal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// No token, or one that is not in the file: UNAUTHENTICATED.
    Unknown,
    /// A known token without the scope the service needs: PERMISSION_DENIED.
    MissingScope { caller: String, scope: Scope },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    tokens: Vec<TokenShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenShape {
    name: String,
    token: Option<String>,
    sha256: Option<String>,
    scopes: BTreeSet<Scope>,
    accounts: Option<BTreeSet<String>>,
}

impl TokenSet {
    /// Reads and checks a tokens file; errors say which entry is wrong and why.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        Self::parse(&text).map_err(|error| format!("{}: {error}", path.display()))
    }

    /// Parses a tokens file. An empty one is refused: it would lock every caller out (to run
    /// without authentication, say so with `auth_disabled`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: FileShape = toml::from_str(text).map_err(|error| error.to_string())?;
        if file.tokens.is_empty() {
            return Err("tokens: the file lists no [[tokens]]".into());
        }
        let mut tokens: Vec<Token> = Vec::with_capacity(file.tokens.len());
        let mut names = BTreeSet::new();
        for (index, shape) in file.tokens.into_iter().enumerate() {
            let at = format!("tokens[{index}]");
            if shape.name.is_empty() || !names.insert(shape.name.clone()) {
                return Err(format!("{at}.name: must be present and unique"));
            }
            if shape.scopes.is_empty() {
                return Err(format!("{at}.scopes: name at least one of authorize, admin"));
            }
            let digest = match (shape.token, shape.sha256) {
                (Some(token), None) if token.len() >= TOKEN_LEN_MIN => Sha256::digest(token.as_bytes()).into(),
                (Some(_), None) => return Err(format!("{at}.token: must be at least {TOKEN_LEN_MIN} characters")),
                (None, Some(hex)) => parse_digest(&hex).ok_or_else(|| format!("{at}.sha256: must be 64 hex digits"))?,
                _ => return Err(format!("{at}: give exactly one of token, sha256")),
            };
            if tokens.iter().any(|other| other.digest == digest) {
                return Err(format!("{at}: the same token as an earlier entry"));
            }
            if shape.accounts.as_ref().is_some_and(BTreeSet::is_empty) {
                return Err(format!("{at}.accounts: leave it out for every account; an empty list allows none"));
            }
            let caller = Caller { name: shape.name, accounts: shape.accounts };
            tokens.push(Token { digest, scopes: shape.scopes, caller });
        }
        Ok(Self { tokens, source: Sha256::digest(text.as_bytes()).into() })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller a presented bearer token belongs to, if it has `scope`.
    pub fn authenticate(&self, presented: &str, scope: Scope) -> Result<Caller, Rejected> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        let token = found.ok_or(Rejected::Unknown)?;
        if !token.scopes.contains(&scope) {
            return Err(Rejected::MissingScope { caller: token.caller.name.clone(), scope });
        }
        Ok(token.caller.clone())
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(digest)
}

/// The current tokens, shared by the server and the task that reloads them.
#[derive(Clone, Debug)]
pub struct Tokens {
    current: Arc<RwLock<Arc<TokenSet>>>,
    /// Versions of the file that did not parse (and were not taken).
    rejected: Arc<AtomicU64>,
}

impl Tokens {
    pub fn new(set: TokenSet) -> Self {
        Self { current: Arc::new(RwLock::new(Arc::new(set))), rejected: Arc::default() }
    }

    pub fn current(&self) -> Arc<TokenSet> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// How many changed versions of the file were refused since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    fn replace(&self, set: TokenSet) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
    }
}

/// Re-reads `path` into `tokens` whenever its content differs from what the current tokens were
/// read from, checking every `interval`, until `stopped` closes. The content is compared, not
/// the modification time: a Kubernetes Secret is swapped by a symlink, and two versions can
/// share a size and a timestamp. A version that does not parse is logged once and the previous
/// tokens stay in force.
pub async fn watch_tokens(
    tokens: Tokens,
    path: PathBuf,
    interval: Duration,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    let mut refused: Option<[u8; 32]> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(%error, file = %path.display(), "cannot read the bearer tokens file; keeping the tokens");
                continue;
            }
        };
        let source: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if source == tokens.current().source || Some(source) == refused {
            continue;
        }
        match TokenSet::parse(&text) {
            Ok(set) => {
                tracing::info!(tokens = set.len(), file = %path.display(), "bearer tokens reloaded");
                tokens.replace(set);
                refused = None;
                metrics::counter!(crate::telemetry::AUTH_RELOADS, "result" => "ok").increment(1);
            }
            Err(error) => {
                tracing::error!(%error, file = %path.display(), "bearer tokens file is invalid; keeping the previous tokens");
                refused = Some(source);
                tokens.rejected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::telemetry::AUTH_RELOADS, "result" => "error").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[tokens]]
        name = "dialer"
        token = "dialer-token-0123456789"
        scopes = ["authorize"]
        accounts = ["acme"]

        [[tokens]]
        name = "ops"
        sha256 = "SHA"
        scopes = ["admin", "authorize"]
    "#;

    fn file() -> String {
        let digest = Sha256::digest(b"ops-token-0123456789");
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        FILE.replace("SHA", &hex)
    }

    #[test]
    fn tokens_carry_scopes_and_accounts() {
        let set = TokenSet::parse(&file()).unwrap();
        let dialer = set.authenticate("dialer-token-0123456789", Scope::Authorize).unwrap();
        assert!(dialer.may_touch("acme") && !dialer.may_touch("globex"));
        assert_eq!(
            set.authenticate("dialer-token-0123456789", Scope::Admin),
            Err(Rejected::MissingScope { caller: "dialer".into(), scope: Scope::Admin })
        );
        let ops = set.authenticate("ops-token-0123456789", Scope::Admin).unwrap();
        assert!(ops.may_touch("globex"));
        assert_eq!(set.authenticate("nobody-0123456789", Scope::Authorize), Err(Rejected::Unknown));
        assert_eq!(set.authenticate("", Scope::Authorize), Err(Rejected::Unknown));
    }

    #[test]
    fn bad_files_name_the_entry() {
        let table = [
            ("[[tokens]]\nname = \"a\"\ntoken = \"short\"\nscopes = [\"admin\"]", "tokens[0].token: "),
            ("[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nscopes = []", "tokens[0].scopes: "),
            ("[[tokens]]\nname = \"a\"\nsha256 = \"xyz\"\nscopes = [\"admin\"]", "tokens[0].sha256: "),
            ("[[tokens]]\nname = \"a\"\nscopes = [\"admin\"]", "tokens[0]: give exactly one"),
            ("", "tokens: "),
            (
                "[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nscopes = [\"admin\"]\n\
                 [[tokens]]\nname = \"b\"\ntoken = \"0123456789abcdef\"\nscopes = [\"authorize\"]",
                "tokens[1]: the same token",
            ),
            (
                "[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nscopes = [\"admin\"]\naccounts = []",
                "tokens[0].accounts: ",
            ),
            (
                "[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nscopes = [\"admin\"]\n\
                 [[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\nscopes = [\"admin\"]",
                "tokens[1].name: ",
            ),
        ];
        for (text, expected) in table {
            let error = TokenSet::parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text}: {error}");
        }
        assert!(
            TokenSet::parse("[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nscopes = [\"root\"]").is_err()
        );
    }
}
