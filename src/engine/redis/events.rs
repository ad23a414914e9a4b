//! Reading the outbox: stream entries written by the scripts' `emit` (lib.lua), decoded into the
//! model's [`Event`]s through the shared wire form ([`crate::ledger::wire`]). The settler reads
//! through here, and the differential tests compare these events with the reference model's.
//!
//! An entry's fields: `account`, `seq`, `at`, `request` (empty when none), `kind`, `data`.

use std::collections::HashMap;

use redis::Value;

use crate::engine::Error;
use crate::ledger::event::Event;
use crate::ledger::{AccountId, wire};

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::Internal(format!("malformed outbox entry: {what}"))
}

fn text<'a>(fields: &'a HashMap<String, Value>, name: &str) -> Result<&'a str, Error> {
    match fields.get(name) {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).map_err(malformed),
        Some(Value::SimpleString(text)) => Ok(text),
        _ => Err(malformed(format!("field {name} missing"))),
    }
}

fn number<T: std::str::FromStr>(fields: &HashMap<String, Value>, name: &str) -> Result<T, Error> {
    text(fields, name)?.parse().map_err(|_| malformed(format!("field {name} is not a number")))
}

/// Decodes one outbox entry.
pub fn decode(fields: &HashMap<String, Value>) -> Result<Event, Error> {
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
