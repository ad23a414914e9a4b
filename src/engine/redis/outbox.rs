//! The Redis outbox as the settler sees it: the shards' streams, read through one consumer group
//! (`settlers`) that every replica joins with its own consumer name. New entries are read with
//! XREADGROUP; entries another consumer read but never acknowledged (it died mid-batch) are
//! claimed with XAUTOCLAIM once they have been idle for `claim_idle`. Acknowledged entries are
//! trimmed once no consumer still needs them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingReply, StreamReadReply};
use tokio::sync::Mutex;

use super::{RedisEngine, events};
use crate::engine::Error;
use crate::settle::outbox::{Backlog, Batch, Outbox};

pub const GROUP: &str = "settlers";

pub struct RedisOutbox {
    engine: Arc<RedisEngine>,
    consumer: String,
    claim_idle: Duration,
    next_shard: AtomicU32,
    last_claim: Mutex<Option<Instant>>,
}

/// A batch: the entry ids read from each shard.
pub type Token = Vec<(u32, Vec<String>)>;

fn text(error: Error) -> String {
    error.to_string()
}

/// The id right after `id` (`<ms>-<seq>`), the first one XTRIM MINID must keep.
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    Some(format!("{ms}-{}", seq.parse::<u64>().ok()? + 1))
}

fn id_ms(id: &str) -> Option<i64> {
    id.split_once('-')?.0.parse().ok()
}

impl RedisOutbox {
    /// Joins (creating if needed) the consumer group on every shard's stream.
    pub async fn join(engine: Arc<RedisEngine>, consumer: String, claim_idle: Duration) -> Result<Self, Error> {
        let outbox = Self { engine, consumer, claim_idle, next_shard: AtomicU32::new(0), last_claim: Mutex::new(None) };
        for shard in 0..outbox.engine.layout.shards {
            outbox.create_group(shard).await?;
        }
        Ok(outbox)
    }

    /// Creates the group on a shard's stream (from its first entry) unless it exists. Also used
    /// when Redis lost the group (a flush, or a restart without persistence).
    async fn create_group(&self, shard: u32) -> Result<(), Error> {
        let mut command = redis::cmd("XGROUP");
        command.arg("CREATE").arg(self.engine.layout.events_key(shard)).arg(GROUP).arg("0").arg("MKSTREAM");
        let mut connection = self.engine.connection.clone();
        match tokio::time::timeout(self.engine.timeout, command.query_async::<()>(&mut connection)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) if error.code() == Some("BUSYGROUP") => Ok(()),
            Ok(Err(error)) => Err(super::unavailable(error)),
            Err(_) => Err(Error::Unavailable("redis: no answer creating the consumer group".into())),
        }
    }

    /// Claims entries idle past `claim_idle` — read by a consumer that never acknowledged them —
    /// at most every half `claim_idle`.
    async fn claim_due(&self) -> bool {
        let mut last = self.last_claim.lock().await;
        let due = last.is_none_or(|at| at.elapsed() >= self.claim_idle / 2);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    async fn read_shard(&self, shard: u32, want: usize, claim: bool) -> Result<Vec<StreamId>, Error> {
        let key = self.engine.layout.events_key(shard);
        let mut entries = Vec::new();
        if claim {
            let mut command = redis::cmd("XAUTOCLAIM");
            command
                .arg(&key)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(self.claim_idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(want);
            let mut connection = self.engine.connection.clone();
            let reply: StreamAutoClaimReply = self.engine.bounded(command.query_async(&mut connection)).await?;
            if !reply.claimed.is_empty() {
                tracing::info!(shard, claimed = reply.claimed.len(), "claimed events a replica left unsettled");
            }
            entries.extend(reply.claimed);
        }
        if entries.len() < want {
            let mut command = redis::cmd("XREADGROUP");
            command
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(want - entries.len())
                .arg("STREAMS")
                .arg(&key)
                .arg(">");
            let mut connection = self.engine.connection.clone();
            let reply: Option<StreamReadReply> = self.engine.bounded(command.query_async(&mut connection)).await?;
            entries.extend(reply.into_iter().flat_map(|reply| reply.keys).flat_map(|stream| stream.ids));
        }
        Ok(entries)
    }

    /// Trims what every consumer has acknowledged: entries before the oldest pending one, or
    /// before the group's next undelivered one when nothing is pending.
    async fn trim(&self, shard: u32) -> Result<(), Error> {
        let key = self.engine.layout.events_key(shard);
        let mut connection = self.engine.connection.clone();
        let pending: StreamPendingReply =
            self.engine.bounded(redis::cmd("XPENDING").arg(&key).arg(GROUP).query_async(&mut connection)).await?;
        let keep_from = if let StreamPendingReply::Data(data) = pending {
            Some(data.start_id)
        } else {
            let groups: StreamInfoGroupsReply =
                self.engine.bounded(redis::cmd("XINFO").arg("GROUPS").arg(&key).query_async(&mut connection)).await?;
            groups.groups.into_iter().find(|group| group.name == GROUP).and_then(|g| next_id(&g.last_delivered_id))
        };
        if let Some(keep_from) = keep_from {
            let mut command = redis::cmd("XTRIM");
            command.arg(&key).arg("MINID").arg(keep_from);
            self.engine.bounded(command.query_async::<i64>(&mut connection)).await?;
        }
        Ok(())
    }

    /// An entry that cannot be decoded (a bug, or corruption) would block settlement forever:
    /// it moves, with its fields and the reason, to the shard's dead-letter stream
    /// (`…:events:dead`, same hash slot), and is acknowledged.
    async fn dead_letter(&self, shard: u32, entry: &StreamId, error: &Error) -> Result<(), Error> {
        let key = self.engine.layout.events_key(shard);
        tracing::error!(shard, id = %entry.id, %error, "undecodable outbox entry moved to the dead-letter stream");
        let mut command = redis::cmd("XADD");
        command.arg(format!("{key}:dead")).arg("*").arg("id").arg(&entry.id).arg("error").arg(error.to_string());
        for (field, value) in &entry.map {
            let value = match value {
                redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                other => format!("{other:?}"),
            };
            command.arg(field).arg(value);
        }
        let mut connection = self.engine.connection.clone();
        self.engine.bounded(command.query_async::<String>(&mut connection)).await?;
        let mut ack = redis::cmd("XACK");
        ack.arg(&key).arg(GROUP).arg(&entry.id);
        self.engine.bounded(ack.query_async::<i64>(&mut connection)).await?;
        Ok(())
    }

    async fn shard_backlog(&self, shard: u32) -> Result<(u64, Option<i64>), Error> {
        let key = self.engine.layout.events_key(shard);
        let mut connection = self.engine.connection.clone();
        let groups: StreamInfoGroupsReply =
            self.engine.bounded(redis::cmd("XINFO").arg("GROUPS").arg(&key).query_async(&mut connection)).await?;
        let Some(group) = groups.groups.into_iter().find(|group| group.name == GROUP) else {
            return Ok((0, None));
        };
        let events = (group.pending + group.lag.unwrap_or(0)) as u64;
        if events == 0 {
            return Ok((0, None));
        }
        // The oldest unsettled entry: the oldest pending one, else the first undelivered one.
        let oldest = if group.pending > 0 {
            let pending: StreamPendingReply =
                self.engine.bounded(redis::cmd("XPENDING").arg(&key).arg(GROUP).query_async(&mut connection)).await?;
            if let StreamPendingReply::Data(data) = pending { id_ms(&data.start_id) } else { None }
        } else {
            let start = format!("({}", group.last_delivered_id);
            let mut command = redis::cmd("XRANGE");
            command.arg(&key).arg(start).arg("+").arg("COUNT").arg(1);
            let reply: redis::streams::StreamRangeReply =
                self.engine.bounded(command.query_async(&mut connection)).await?;
            reply.ids.first().and_then(|entry| id_ms(&entry.id))
        };
        Ok((events, oldest))
    }
}

impl Outbox for RedisOutbox {
    type Token = Token;

    async fn read(&self, max: usize) -> Result<Batch<Token>, String> {
        let shards = self.engine.layout.shards;
        let start = self.next_shard.fetch_add(1, Ordering::Relaxed) % shards;
        let claim = self.claim_due().await;
        let mut events = Vec::new();
        let mut token = Token::new();
        for offset in 0..shards {
            if events.len() >= max {
                break;
            }
            let shard = (start + offset) % shards;
            let entries = match self.read_shard(shard, max - events.len(), claim).await {
                Err(error) if error.to_string().contains("NOGROUP") => {
                    tracing::warn!(shard, "the settlers' consumer group was gone (Redis lost data?); recreating it");
                    self.create_group(shard).await.map_err(text)?;
                    self.read_shard(shard, max - events.len(), claim).await.map_err(text)?
                }
                other => other.map_err(text)?,
            };
            if entries.is_empty() {
                continue;
            }
            let mut ids = Vec::with_capacity(entries.len());
            for entry in entries {
                match events::decode(&entry.map) {
                    Ok(event) => {
                        events.push(event);
                        ids.push(entry.id);
                    }
                    Err(error) => self.dead_letter(shard, &entry, &error).await.map_err(text)?,
                }
            }
            if !ids.is_empty() {
                token.push((shard, ids));
            }
        }
        Ok((!events.is_empty()).then_some((events, token)))
    }

    async fn ack(&self, token: Token) -> Result<(), String> {
        for (shard, ids) in token {
            let mut command = redis::cmd("XACK");
            command.arg(self.engine.layout.events_key(shard)).arg(GROUP).arg(&ids);
            let mut connection = self.engine.connection.clone();
            self.engine.bounded(command.query_async::<i64>(&mut connection)).await.map_err(text)?;
            self.trim(shard).await.map_err(text)?;
        }
        Ok(())
    }

    async fn backlog(&self) -> Result<Backlog, String> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut backlog = Backlog::default();
        for shard in 0..self.engine.layout.shards {
            let (events, oldest) = self.shard_backlog(shard).await.map_err(text)?;
            backlog.events += events;
            if let Some(oldest) = oldest {
                backlog.oldest_ms = backlog.oldest_ms.max(now - oldest);
            }
        }
        Ok(backlog)
    }
}
