//! The Redis outbox as the settler sees it: the shards' streams, read through one consumer group
//! (`settlers`) that every replica joins with its own consumer name.
//!
//! - **Its own connection.** The settler talks to Redis over a connection of its own
//!   ([`RedisEngine::open_connection`]), so its large reads never queue behind hot-path calls,
//!   nor delay them.
//! - **All shards in one round trip.** Every step (claim, read, acknowledge, measure) sends each
//!   shard's commands at once: one pipeline on a single Redis; on a Cluster, which refuses
//!   pipelines across hash slots, one pipeline per shard, all in flight together.
//! - **Reading.** New entries with XREADGROUP `>`; a shard whose last read or acknowledgement
//!   failed is read with id `0` first, which returns this consumer's own pending entries at once
//!   (a failed read may still have delivered them). Entries another consumer read and never
//!   acknowledged (it died mid-batch) are claimed with XAUTOCLAIM once idle for `claim_idle`.
//! - **Acknowledging deletes.** A settled entry is acknowledged and deleted in one atomic step
//!   (a small script), so a stream holds exactly the entries not yet settled: its length is the
//!   backlog and its first entry the oldest unsettled one — true whatever Redis reloaded or
//!   forgot about the group's counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::streams::StreamPendingReply;
use redis::{Cmd, FromRedisValue, Value};

use super::events::{self, Entry};
use super::{Connection, RedisEngine};
use crate::engine::Error;
use crate::settle::outbox::{Backlog, Batch, Outbox, Records};

pub const GROUP: &str = "settlers";

/// Most rounds of XREADGROUP one read makes: the first asks every shard for an even share of
/// the batch; later ones give what is left to the shards that filled their share (uneven load).
const READ_ROUNDS_MAX: usize = 3;

/// Acknowledges and deletes entries atomically (KEYS[1] the stream, ARGV[1] the group, then the
/// ids), in slices that stay under Lua's limit on unpacked arguments. Returns how many were
/// acknowledged.
const ACK_DELETE: &str = r"
local acked = 0
for first = 2, #ARGV, 1000 do
  local last = math.min(first + 999, #ARGV)
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, first, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, first, last))
end
return acked
";

pub struct RedisOutbox {
    engine: Arc<RedisEngine>,
    /// The settler's own connection, apart from the one hot-path calls share.
    connection: Connection,
    consumer: String,
    claim_idle: Duration,
    last_claim: std::sync::Mutex<Option<Instant>>,
    /// Per shard: this consumer may hold entries it read but did not settle (a read or an
    /// acknowledgement failed); the next read of the shard takes them back at once.
    recovering: Vec<AtomicBool>,
}

/// A batch: the entry ids read from each shard.
pub type Token = Vec<(u32, Vec<String>)>;

/// One shard's replies to one step, or why it failed.
type Replies = Result<Vec<Value>, Error>;

fn text(error: Error) -> String {
    error.to_string()
}

fn id_ms(id: &str) -> Option<i64> {
    id.split_once('-')?.0.parse().ok()
}

fn parse<T: FromRedisValue>(value: Value) -> Result<T, Error> {
    redis::from_redis_value(value).map_err(|error| Error::Internal(format!("redis reply: {error}")))
}

/// The replies, or the first server error among them.
fn server_errors(replies: impl IntoIterator<Item = Value>) -> Replies {
    replies.into_iter().map(|reply| reply.extract_error().map_err(super::unavailable)).collect()
}

fn ack_delete(key: &str, ids: &[String]) -> Cmd {
    let mut command = redis::cmd("EVAL");
    command.arg(ACK_DELETE).arg(1).arg(key).arg(GROUP).arg(ids);
    command
}

/// `total` split over `parts` as evenly as possible (at least 1 each).
fn share(total: usize, parts: usize) -> usize {
    total.div_ceil(parts.max(1)).max(1)
}

impl RedisOutbox {
    /// Opens the settler's own connection and joins (creating if needed) the consumer group on
    /// every shard's stream.
    pub async fn join(engine: Arc<RedisEngine>, consumer: String, claim_idle: Duration) -> Result<Self, Error> {
        let connection = engine.open_connection().await?;
        let shards = engine.layout.shards;
        let outbox = Self {
            engine,
            connection,
            consumer,
            claim_idle,
            last_claim: std::sync::Mutex::new(None),
            // A consumer name reused after a crash may still own entries: take them back first.
            recovering: (0..shards).map(|_| AtomicBool::new(true)).collect(),
        };
        outbox.create_groups(&(0..shards).collect::<Vec<_>>()).await?;
        Ok(outbox)
    }

    fn key(&self, shard: u32) -> String {
        self.engine.layout.events_key(shard)
    }

    /// Sends each shard's commands, all shards in one round trip, and returns each shard's
    /// replies in the order asked (a shard fails as a whole if any of its commands failed).
    async fn exchange(&self, requests: Vec<(u32, Vec<Cmd>)>) -> Vec<(u32, Replies)> {
        match &self.connection {
            Connection::Single(_) => self.exchange_pipelined(requests).await,
            Connection::Cluster(_) => {
                let each = requests.into_iter().map(|(shard, commands)| async move {
                    let replies = self.pipeline(commands).await;
                    (shard, replies)
                });
                futures_util::future::join_all(each).await
            }
        }
    }

    /// A single Redis: every shard's commands in one pipeline.
    async fn exchange_pipelined(&self, requests: Vec<(u32, Vec<Cmd>)>) -> Vec<(u32, Replies)> {
        let all: Vec<Cmd> = requests.iter().flat_map(|(_, commands)| commands.iter().cloned()).collect();
        let mut replies = match self.send(all).await {
            Ok(replies) => replies.into_iter(),
            Err(error) => return requests.into_iter().map(|(shard, _)| (shard, Err(error.clone()))).collect(),
        };
        let split = |(shard, commands): (u32, Vec<Cmd>)| (shard, server_errors(replies.by_ref().take(commands.len())));
        requests.into_iter().map(split).collect()
    }

    /// One pipeline; fails as a whole if any command failed.
    async fn pipeline(&self, commands: Vec<Cmd>) -> Replies {
        server_errors(self.send(commands).await?)
    }

    /// One pipeline on the settler's connection, within the engine's timeout. Fails only when
    /// the round trip did; each command's own error comes back in its place, so one shard's
    /// error does not hide the others' replies.
    async fn send(&self, commands: Vec<Cmd>) -> Result<Vec<Value>, Error> {
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        for command in commands {
            pipeline.add_command(command);
        }
        let mut connection = self.connection.clone();
        self.engine.bounded(pipeline.query_async(&mut connection)).await
    }

    /// Creates the group on the shards' streams (from their first entry) unless it exists. Also
    /// used when Redis lost the group (a flush, or a restart without persistence).
    async fn create_groups(&self, shards: &[u32]) -> Result<(), Error> {
        let requests = shards
            .iter()
            .map(|&shard| {
                let mut command = redis::cmd("XGROUP");
                command.arg("CREATE").arg(self.key(shard)).arg(GROUP).arg("0").arg("MKSTREAM");
                (shard, vec![command])
            })
            .collect();
        for (_, replies) in self.exchange(requests).await {
            match replies {
                Err(error) if error.to_string().contains("BUSYGROUP") => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// Entries acknowledged but not deleted (left by versions that trimmed later) would count as
    /// backlog: trims each stream up to its oldest pending entry, or its group's next undelivered
    /// one. Run at join and with every claim pass.
    async fn trim_acknowledged(&self) -> Result<(), Error> {
        for shard in 0..self.engine.layout.shards {
            let key = self.key(shard);
            let mut pending = redis::cmd("XPENDING");
            pending.arg(&key).arg(GROUP);
            let mut groups = redis::cmd("XINFO");
            groups.arg("GROUPS").arg(&key);
            let mut replies = self.pipeline(vec![pending, groups]).await?.into_iter();
            let pending: StreamPendingReply = parse(replies.next().unwrap_or(Value::Nil))?;
            let groups: redis::streams::StreamInfoGroupsReply = parse(replies.next().unwrap_or(Value::Nil))?;
            let keep_from = match pending {
                StreamPendingReply::Data(data) => Some(data.start_id),
                _ => groups
                    .groups
                    .into_iter()
                    .find(|group| group.name == GROUP)
                    .map(|group| format!("({}", group.last_delivered_id)),
            };
            if let Some(keep_from) = keep_from {
                self.trim_before(&key, &keep_from).await?;
            }
        }
        Ok(())
    }

    /// XTRIM MINID takes an inclusive id; `(id` (exclusive) means the id right after it.
    async fn trim_before(&self, key: &str, keep_from: &str) -> Result<(), Error> {
        let keep_from = match keep_from.strip_prefix('(') {
            Some(id) => match id.split_once('-').and_then(|(ms, seq)| Some((ms, seq.parse::<u64>().ok()?))) {
                Some((ms, seq)) => format!("{ms}-{}", seq + 1),
                None => return Ok(()),
            },
            None => keep_from.to_owned(),
        };
        let mut command = redis::cmd("XTRIM");
        command.arg(key).arg("MINID").arg(keep_from);
        self.pipeline(vec![command]).await?;
        Ok(())
    }

    /// Claims entries idle past `claim_idle` — read by a consumer that never acknowledged them —
    /// at most every half `claim_idle`.
    fn claim_due(&self) -> bool {
        let mut last = self.last_claim.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= self.claim_idle / 2);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// XAUTOCLAIM on every shard, `want` entries at most in all; also trims what older
    /// versions acknowledged without deleting.
    async fn claim(&self, want: usize) -> Result<Vec<(u32, Entry)>, Error> {
        self.trim_acknowledged().await?;
        let shards = self.engine.layout.shards;
        let count = share(want, shards as usize);
        let requests = (0..shards)
            .map(|shard| {
                let mut command = redis::cmd("XAUTOCLAIM");
                command.arg(self.key(shard)).arg(GROUP).arg(&self.consumer);
                command.arg(self.claim_idle.as_millis() as u64).arg("0-0").arg("COUNT").arg(count);
                (shard, vec![command])
            })
            .collect();
        let mut claimed = Vec::new();
        for (shard, replies) in self.exchange(requests).await {
            let Some(reply) = replies?.pop() else { continue };
            let entries = events::claimed(reply)?;
            if !entries.is_empty() {
                tracing::info!(shard, claimed = entries.len(), "claimed events a replica left unsettled");
            }
            claimed.extend(entries.into_iter().map(|entry| (shard, entry)));
        }
        Ok(claimed)
    }

    /// One round of XREADGROUP: `count` entries from each shard in `shards`, or — for a shard
    /// recovering — its own pending ones. Returns the entries, the shards to read again (they
    /// filled their share, or just finished recovering), and the first error (its shard then
    /// recovers).
    async fn read_round(&self, shards: &[u32], count: usize) -> (Vec<(u32, Entry)>, Vec<u32>, Option<Error>) {
        let recovering: Vec<u32> =
            shards.iter().copied().filter(|&shard| self.recovering[shard as usize].load(Ordering::Relaxed)).collect();
        let requests = shards
            .iter()
            .map(|&shard| (shard, vec![self.read_command(shard, count, recovering.contains(&shard))]))
            .collect();
        let (mut entries, mut again, mut failed) = (Vec::new(), Vec::new(), None);
        for (shard, replies) in self.exchange(requests).await {
            let reply = replies.and_then(|mut replies| events::read_reply(replies.pop().unwrap_or(Value::Nil)));
            let ids: Vec<Entry> = match reply {
                Ok(entries) => entries,
                Err(error) => {
                    self.recovering[shard as usize].store(true, Ordering::Relaxed);
                    failed.get_or_insert(error);
                    continue;
                }
            };
            if ids.len() == count {
                again.push(shard);
            } else if recovering.contains(&shard) {
                // Short: that was all this consumer owned; new entries are next.
                self.recovering[shard as usize].store(false, Ordering::Relaxed);
                again.push(shard);
            }
            entries.extend(ids.into_iter().map(|entry| (shard, entry)));
        }
        (entries, again, failed)
    }

    /// XREADGROUP on one shard: new entries (`>`), or this consumer's own pending ones (`0`).
    fn read_command(&self, shard: u32, count: usize, own_pending: bool) -> Cmd {
        let mut command = redis::cmd("XREADGROUP");
        command.arg("GROUP").arg(GROUP).arg(&self.consumer).arg("COUNT").arg(count);
        command.arg("STREAMS").arg(self.key(shard)).arg(if own_pending { "0" } else { ">" });
        command
    }

    /// Up to `max` entries over all shards: an even share each, then what is left to the shards
    /// that had more. A shard that failed is left for the next read (it recovers its entries
    /// then); the error is returned only when nothing was read. A lost consumer group is
    /// recreated and read at once.
    async fn read_entries(&self, max: usize) -> Result<Vec<(u32, Entry)>, Error> {
        let (mut entries, failure) = self.read_all(max).await;
        match failure {
            Some(error) if error.to_string().contains("NOGROUP") => {
                tracing::warn!("the settlers' consumer group was gone (Redis lost data?); recreating it");
                self.create_groups(&(0..self.engine.layout.shards).collect::<Vec<_>>()).await?;
                let (more, failure) = self.read_all(max.saturating_sub(entries.len())).await;
                entries.extend(more);
                Self::with_failure(entries, failure)
            }
            failure => Self::with_failure(entries, failure),
        }
    }

    fn with_failure(entries: Vec<(u32, Entry)>, failure: Option<Error>) -> Result<Vec<(u32, Entry)>, Error> {
        match failure {
            Some(error) if entries.is_empty() => Err(error),
            Some(error) => {
                tracing::warn!(%error, "reading a shard failed; its entries are read again next time");
                Ok(entries)
            }
            None => Ok(entries),
        }
    }

    /// Claims (when due), then reads in rounds; returns what it got and the first failure.
    async fn read_all(&self, max: usize) -> (Vec<(u32, Entry)>, Option<Error>) {
        let mut failure = None;
        let mut entries = Vec::new();
        if self.claim_due() {
            match self.claim(max).await {
                Ok(claimed) => entries = claimed,
                Err(error) => failure = Some(error),
            }
        }
        let mut shards: Vec<u32> = (0..self.engine.layout.shards).collect();
        for _ in 0..READ_ROUNDS_MAX {
            let budget = max.saturating_sub(entries.len());
            if budget == 0 || shards.is_empty() {
                break;
            }
            let (read, again, failed) = self.read_round(&shards, share(budget, shards.len())).await;
            entries.extend(read);
            shards = again;
            failure = failure.or(failed);
        }
        (entries, failure)
    }

    /// An entry that cannot be decoded (a bug, or corruption) would block settlement forever:
    /// it moves, with its fields and the reason, to the shard's dead-letter stream
    /// (`…:events:dead`, same hash slot), and is acknowledged.
    async fn dead_letter(&self, shard: u32, entry: &Entry, error: &Error) -> Result<(), Error> {
        let key = self.key(shard);
        tracing::error!(shard, id = %entry.id, %error, "undecodable outbox entry moved to the dead-letter stream");
        let mut command = redis::cmd("XADD");
        command.arg(format!("{key}:dead")).arg("*").arg("id").arg(&entry.id).arg("error").arg(error.to_string());
        let shown = |value: &Value| match value {
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::SimpleString(text) => text.clone(),
            other => format!("{other:?}"),
        };
        for (field, value) in &entry.fields {
            command.arg(shown(field)).arg(shown(value));
        }
        self.pipeline(vec![command, ack_delete(&key, std::slice::from_ref(&entry.id))]).await?;
        Ok(())
    }
}

impl Outbox for RedisOutbox {
    type Token = Token;

    /// Batches hold events only; replicas already settle them side by side.
    fn concurrent(&self) -> bool {
        true
    }

    fn recovering(&self) -> bool {
        self.recovering.iter().any(|shard| shard.load(Ordering::Relaxed))
    }

    /// Its shards read their own pending entries (id 0) next, so the flush at shutdown, or the
    /// next start under the same consumer name, settles them without waiting for a claim.
    fn abandon(&self, token: Token) {
        for (shard, _) in token {
            self.recovering[shard as usize].store(true, Ordering::Relaxed);
        }
    }

    /// Redis reused settled sequence numbers: it lost acknowledged writes (a failover to a
    /// replica that lacked them). The guard refuses calls until Redis is restored.
    async fn conflicts_found(&self, count: usize) {
        let cause = format!(
            "{count} new events reuse settled sequence numbers with other content (kept in ledger_conflicts): \
             Redis lost acknowledged writes, e.g. in a failover to a replica that lacked them"
        );
        self.engine.report_lost(cause).await;
    }

    async fn read(&self, max: usize) -> Result<Batch<Token>, String> {
        let entries = self.read_entries(max).await.map_err(text)?;
        let mut events = Vec::with_capacity(entries.len());
        let mut token = Token::new();
        for (shard, entry) in entries {
            match events::decode(&entry.fields) {
                Ok(event) => events.push(event),
                Err(error) => {
                    self.dead_letter(shard, &entry, &error).await.map_err(text)?;
                    continue;
                }
            }
            match token.last_mut() {
                Some((last, ids)) if *last == shard => ids.push(entry.id),
                _ => token.push((shard, vec![entry.id])),
            }
        }
        Ok((!events.is_empty()).then_some((Records { events, ..Records::default() }, token)))
    }

    /// Acknowledges and deletes the batch's entries on every shard at once. A shard that failed
    /// recovers: its entries (already in SQL) are read again at once and change nothing.
    async fn ack(&self, token: Token) -> Result<(), String> {
        let mut ids_of: std::collections::BTreeMap<u32, Vec<String>> = std::collections::BTreeMap::new();
        for (shard, ids) in token {
            ids_of.entry(shard).or_default().extend(ids);
        }
        let requests = ids_of.into_iter().map(|(shard, ids)| (shard, vec![ack_delete(&self.key(shard), &ids)]));
        let mut failure = None;
        for (shard, replies) in self.exchange(requests.collect()).await {
            if let Err(error) = replies {
                self.recovering[shard as usize].store(true, Ordering::Relaxed);
                failure.get_or_insert(error);
            }
        }
        failure.map_or(Ok(()), |error| Err(error.to_string()))
    }

    /// Settled entries are deleted as they are acknowledged, so the streams' lengths are the
    /// backlog and their first entries the oldest unsettled events.
    async fn backlog(&self) -> Result<Backlog, String> {
        let requests = (0..self.engine.layout.shards)
            .map(|shard| {
                let key = self.key(shard);
                let mut first = redis::cmd("XRANGE");
                first.arg(&key).arg("-").arg("+").arg("COUNT").arg(1);
                (shard, vec![redis::cmd("XLEN").arg(&key).clone(), first])
            })
            .collect();
        let now = chrono::Utc::now().timestamp_millis();
        let mut backlog = Backlog::default();
        for (_, replies) in self.exchange(requests).await {
            let mut replies = replies.map_err(text)?.into_iter();
            let length: u64 = parse(replies.next().unwrap_or(Value::Nil)).map_err(text)?;
            let first = events::entries(replies.next().unwrap_or(Value::Nil)).map_err(text)?;
            backlog.events += length;
            if let Some(oldest) = first.first().and_then(|entry| id_ms(&entry.id)) {
                backlog.oldest_ms = backlog.oldest_ms.max(now - oldest);
            }
        }
        Ok(backlog)
    }
}
