//! Reading the outbox: stream entries written by the scripts' `emit` (lib.lua), decoded into the
//! model's [`Event`]s through the shared wire form ([`crate::ledger::wire`]). The settler reads
//! through here, and the differential tests compare these events with the reference model's.
//!
//! An entry's fields: `account`, `seq`, `at`, `request` (empty when none), `kind`, `data`.

use redis::Value;

use crate::engine::Error;
use crate::ledger::event::Event;
use crate::ledger::{AccountId, wire};

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::Internal(format!("malformed outbox entry: {what}"))
}

/// One outbox entry as Redis sent it: its id and its field-value pairs, in order.
///
/// Read from the reply by hand rather than through the redis crate's `StreamReadReply` and
/// `StreamId`: redis 1.8 clones a whole XREADGROUP reply before parsing it, and builds a
/// `HashMap` with a `String` per field name for every entry. Those were the largest share of
/// the settler's allocations; here an entry's values move out of the reply.
#[derive(Debug)]
pub struct Entry {
    pub id: String,
    /// Empty when the entry was deleted after it was delivered (a pending entry read again).
    pub fields: Vec<(Value, Value)>,
}

fn string(value: Value) -> Result<String, Error> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).map_err(malformed),
        Value::SimpleString(text) => Ok(text),
        other => Err(malformed(format!("expected a string, got {other:?}"))),
    }
}

impl Entry {
    /// `[id, [field, value, …]]` (RESP2), `[id, {field: value, …}]` (RESP3) or `[id, nil]`.
    fn parse(value: Value) -> Result<Self, Error> {
        let Value::Array(parts) = value else { return Err(malformed(format!("not an entry: {value:?}"))) };
        let mut parts = parts.into_iter();
        let id = string(parts.next().ok_or_else(|| malformed("an entry without an id"))?)?;
        let fields = match parts.next() {
            Some(Value::Array(flat)) => pairs(flat)?,
            Some(Value::Map(pairs)) => pairs,
            Some(Value::Nil) | None => Vec::new(),
            Some(other) => return Err(malformed(format!("fields of {id}: {other:?}"))),
        };
        Ok(Self { id, fields })
    }
}

fn pairs(flat: Vec<Value>) -> Result<Vec<(Value, Value)>, Error> {
    if !flat.len().is_multiple_of(2) {
        return Err(malformed("a field without its value"));
    }
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(field), Some(value)) = (flat.next(), flat.next()) {
        pairs.push((field, value));
    }
    Ok(pairs)
}

/// Entries in order: an XRANGE reply, or the entries of an XREADGROUP stream or an XAUTOCLAIM
/// reply. Nil is none.
pub fn entries(value: Value) -> Result<Vec<Entry>, Error> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) => items.into_iter().map(Entry::parse).collect(),
        other => Err(malformed(format!("not a list of entries: {other:?}"))),
    }
}

/// The entries of an XREADGROUP reply, streams in order (Nil: nothing new).
pub fn read_reply(value: Value) -> Result<Vec<Entry>, Error> {
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(streams) => streams,
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    Ok((pair.next().unwrap_or(Value::Nil), pair.next().unwrap_or(Value::Nil)))
                }
                other => Err(malformed(format!("not a stream's reply: {other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(malformed(format!("not an XREADGROUP reply: {other:?}"))),
    };
    let mut all = Vec::new();
    for (_, stream) in streams {
        all.extend(entries(stream)?);
    }
    Ok(all)
}

/// The entries claimed by an XAUTOCLAIM reply: `[next id, [entries], [deleted ids]]`. An entry
/// deleted before it was claimed is not one of them (Redis 7 lists its id last; a nil in the
/// entries, as older servers sent, is skipped).
pub fn claimed(value: Value) -> Result<Vec<Entry>, Error> {
    match value {
        Value::Array(items) if (2..=3).contains(&items.len()) => match items.into_iter().nth(1) {
            Some(Value::Array(claimed)) => {
                claimed.into_iter().filter(|entry| !matches!(entry, Value::Nil)).map(Entry::parse).collect()
            }
            other => entries(other.unwrap_or(Value::Nil)),
        },
        other => Err(malformed(format!("not an XAUTOCLAIM reply: {other:?}"))),
    }
}

fn text<'a>(fields: &'a [(Value, Value)], name: &str) -> Result<&'a str, Error> {
    let named = |field: &Value| match field {
        Value::BulkString(bytes) => bytes == name.as_bytes(),
        Value::SimpleString(text) => text == name,
        _ => false,
    };
    match fields.iter().find(|(field, _)| named(field)).map(|(_, value)| value) {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).map_err(malformed),
        Some(Value::SimpleString(text)) => Ok(text),
        _ => Err(malformed(format!("field {name} missing"))),
    }
}

fn number<T: std::str::FromStr>(fields: &[(Value, Value)], name: &str) -> Result<T, Error> {
    text(fields, name)?.parse().map_err(|_| malformed(format!("field {name} is not a number")))
}

/// Decodes one outbox entry.
pub fn decode(fields: &[(Value, Value)]) -> Result<Event, Error> {
    let account = AccountId::parse(text(fields, "account")?).map_err(malformed)?;
    let request = text(fields, "request")?;
    let kind = wire::decode(text(fields, "kind")?, text(fields, "data")?).map_err(malformed)?;
    Ok(Event {
        account,
        seq: number(fields, "seq")?,
        at_ms: number(fields, "at")?,
        request_id: (!request.is_empty()).then(|| request.to_owned()),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::cycle::Cycle;
    use crate::ledger::event::EventKind;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn cycle_started() -> EventKind {
        EventKind::CycleStarted { cycle: Cycle { start_ms: 1_700_000_000_000, end_ms: 1_702_592_000_000 } }
    }

    /// An entry's fields as `emit` (lib.lua) writes them, flat (RESP2).
    fn flat_fields(seq: u64) -> Vec<Value> {
        let (kind, data) = wire::encode(&cycle_started());
        [("account", "acme"), ("seq", &seq.to_string()), ("at", "1700000000000"), ("request", "r-1")]
            .into_iter()
            .chain([("kind", kind), ("data", &data)])
            .flat_map(|(field, value)| [bulk(field), bulk(value)])
            .collect()
    }

    fn entry(id: &str, fields: Value) -> Value {
        Value::Array(vec![bulk(id), fields])
    }

    #[test]
    fn an_xreadgroup_reply_gives_every_entry_in_order_with_its_fields() {
        let stream =
            Value::Array(vec![entry("1-0", Value::Array(flat_fields(1))), entry("2-0", Value::Array(flat_fields(2)))]);
        let reply = Value::Array(vec![Value::Array(vec![bulk("cs:{s0}:events"), stream])]);
        let entries = read_reply(reply).unwrap();
        assert_eq!(entries.iter().map(|entry| entry.id.as_str()).collect::<Vec<_>>(), ["1-0", "2-0"]);
        assert_eq!(text(&entries[1].fields, "seq").unwrap(), "2");
        let event = decode(&entries[1].fields).unwrap();
        assert_eq!((event.account.as_str(), event.seq, event.at_ms), ("acme", 2, 1_700_000_000_000));
        assert_eq!((event.request_id.as_deref(), event.kind), (Some("r-1"), cycle_started()));
        assert_eq!(read_reply(Value::Nil).unwrap().len(), 0, "nothing new");
    }

    #[test]
    fn resp3_maps_read_as_resp2_arrays_do() {
        let pairs = |seq| {
            let flat = flat_fields(seq);
            flat.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect::<Vec<_>>()
        };
        let stream = Value::Array(vec![entry("7-1", Value::Map(pairs(7)))]);
        let entries = read_reply(Value::Map(vec![(bulk("cs:{s0}:events"), stream)])).unwrap();
        assert_eq!(entries[0].id, "7-1");
        assert_eq!(text(&entries[0].fields, "seq").unwrap(), "7");
    }

    #[test]
    fn an_entry_deleted_after_delivery_has_no_fields_and_does_not_decode() {
        let entries = entries(Value::Array(vec![entry("3-0", Value::Nil)])).unwrap();
        assert_eq!((entries[0].id.as_str(), entries[0].fields.len()), ("3-0", 0));
        let error = decode(&entries[0].fields).unwrap_err().to_string();
        assert!(error.contains("field account missing"), "{error}");
    }

    #[test]
    fn an_xautoclaim_reply_gives_the_claimed_entries() {
        let claimed_entries = Value::Array(vec![entry("4-0", Value::Array(flat_fields(4))), Value::Nil]);
        let reply = Value::Array(vec![bulk("0-0"), claimed_entries, Value::Array(vec![bulk("5-0")])]);
        let entries = claimed(reply).unwrap();
        assert_eq!(entries.iter().map(|entry| entry.id.as_str()).collect::<Vec<_>>(), ["4-0"]);
        assert!(claimed(Value::Array(vec![bulk("0-0")])).is_err(), "too short for XAUTOCLAIM");
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let odd = Value::Array(vec![entry("6-0", Value::Array(vec![bulk("account")]))]);
        assert!(entries(odd).unwrap_err().to_string().contains("a field without its value"));
        assert!(entries(Value::Int(1)).is_err());
        assert!(entries(Value::Array(vec![Value::Array(vec![])])).is_err(), "an entry without an id");
        assert!(read_reply(Value::Array(vec![Value::Array(vec![bulk("only a key")])])).is_err());
    }
}
