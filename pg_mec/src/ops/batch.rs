//! `meter_consumption_batch`: many events in one call. Each event gets the answer it would have had
//! alone, in the batch's order; a refused or malformed event is reported in its result and does not
//! stop the others. Plain events are decided set-wise (`ops/batch_setwise.rs`).

use std::collections::{HashMap, HashSet};

use pg_mec_core::time::parse_rfc3339;
use pgrx::datum::Uuid;
use pgrx::spi::SpiClient;
use serde_json::{json, Map, Value};

use crate::ledger::event::parse_dimensions;
use crate::ledger::Event;
use crate::ops::batch_setwise::{self, Route};
use crate::ops::metering;
use crate::pg::context::parse_uuid;
use crate::pg::values::json_decimal;
use crate::pg::{MecError, MecResult};

pub const MAX_EVENTS: usize = 1000;
const FIELDS: [&str; 8] = [
    "idempotency_key",
    "account_id",
    "resource_type",
    "quantity",
    "occurred_at",
    "metadata",
    "http_status",
    "dimensions",
];

fn field_error(index: usize, message: String) -> MecError {
    MecError::invalid(format!("event {index}: {message}"))
}

/// Reads one event object; every problem is a `22023` naming the field.
fn parse_event(index: usize, v: &Value, now_us: i64) -> MecResult<Event> {
    let Some(o) = v.as_object() else {
        return Err(field_error(index, "must be a JSON object".into()));
    };
    if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(field_error(
            index,
            format!("unknown field \"{k}\" (fields: {})", FIELDS.join(", ")),
        ));
    }
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let key = text("idempotency_key")
        .ok_or_else(|| field_error(index, "idempotency_key must be a string".into()))?;
    let account_id: Uuid = text("account_id")
        .and_then(|s| parse_uuid(&s))
        .ok_or_else(|| field_error(index, "account_id must be a uuid".into()))?;
    let resource_type = text("resource_type")
        .ok_or_else(|| field_error(index, "resource_type must be a string".into()))?;
    let quantity = o
        .get("quantity")
        .and_then(json_decimal)
        .ok_or_else(|| field_error(index, "quantity must be a number".into()))?;
    let quantity =
        pg_mec_core::quantity::check(quantity, "quantity").map_err(|e| field_error(index, e.0))?;
    let occurred_us = match o.get("occurred_at") {
        None | Some(Value::Null) => now_us,
        Some(Value::String(s)) => parse_rfc3339(s).ok_or_else(|| {
            field_error(
                index,
                format!("occurred_at \"{s}\" is not an RFC 3339 timestamp"),
            )
        })?,
        Some(_) => {
            return Err(field_error(
                index,
                "occurred_at must be an RFC 3339 string".into(),
            ))
        }
    };
    let http_status = match o.get("http_status") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .and_then(|s| i32::try_from(s).ok())
                .ok_or_else(|| field_error(index, "http_status must be an integer".into()))?,
        ),
    };
    Ok(Event {
        key,
        account_id,
        resource_type,
        quantity,
        occurred_us,
        metadata: o.get("metadata").cloned().unwrap_or_else(|| json!({})),
        http_status,
        dimensions: parse_dimensions(o.get("dimensions"), "dimensions")
            .map_err(|e| field_error(index, e.parts().0))?,
    })
}

fn error_json(e: &MecError) -> Value {
    let (message, detail, hint) = e.parts();
    let detail = detail.map(|d| serde_json::from_str::<Value>(&d).unwrap_or(Value::String(d)));
    json!({"code": e.sqlstate(), "message": message, "details": detail, "hint": hint})
}

/// Meters every event of `events` (a JSON array), each with the answer it would have had alone in
/// the batch's order: the plain ones set-wise (`ops/batch_setwise.rs`), the others one by one.
pub fn meter_batch(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    events: &Value,
    now_us: i64,
) -> MecResult<Value> {
    let Some(list) = events.as_array() else {
        return Err(MecError::invalid(
            "p_events must be a JSON array of event objects",
        ));
    };
    if list.len() > MAX_EVENTS {
        return Err(MecError::invalid(format!(
            "at most {MAX_EVENTS} events per batch, got {}",
            list.len()
        )));
    }
    let parsed: Vec<MecResult<Event>> = list
        .iter()
        .enumerate()
        .map(|(i, v)| parse_event(i, v, now_us))
        .collect();
    let mut outcomes: Vec<Option<MecResult<Value>>> = (0..list.len()).map(|_| None).collect();
    let (plain, mut single) = route(client, ns, parsed, &mut outcomes, now_us);
    let decided = batch_setwise::meter(client, ns, plain)?;
    for (i, outcome) in decided.outcomes {
        outcomes[i] = Some(outcome);
    }
    single.extend(decided.handed_back);
    single.sort_by_key(|(i, _)| *i);
    for (i, ev) in single {
        outcomes[i] = Some(metering::meter(client, ns, &ev, now_us));
    }

    let (mut accepted, mut duplicates, mut rejected) = (0, 0, 0);
    let mut results = Vec::with_capacity(list.len());
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome.unwrap_or_else(|| Err(MecError::Internal(format!("event {i} undecided")))) {
            Ok(mut r) => {
                if r.get("duplicate").and_then(Value::as_bool) == Some(true) {
                    duplicates += 1;
                } else {
                    accepted += 1;
                }
                if let Some(o) = r.as_object_mut() {
                    o.insert("index".into(), Value::from(i));
                    o.insert("status".into(), Value::from("recorded"));
                }
                results.push(r);
            }
            // What a failed event wrote is undone only by aborting the statement: the whole call.
            Err(e @ (MecError::Internal(_) | MecError::AfterWrite(_))) => return Err(e),
            Err(e) => {
                rejected += 1;
                let mut r = Map::new();
                r.insert("index".into(), Value::from(i));
                r.insert("status".into(), Value::from("rejected"));
                r.insert(
                    "idempotency_key".into(),
                    list[i]
                        .get("idempotency_key")
                        .cloned()
                        .unwrap_or(Value::Null),
                );
                r.insert("error".into(), error_json(&e));
                results.push(Value::Object(r));
            }
        }
    }
    Ok(
        json!({"accepted": accepted, "duplicates": duplicates, "rejected": rejected, "results": results}),
    )
}

/// Splits the parsed events into the plain ones and those metered one by one. A malformed event's
/// error goes straight to `outcomes`. An event goes one by one when its key is sent twice in the
/// batch, or another event of its account and resource goes one by one (a counter's events are
/// decided in order, all one way); every event does when one counts in its ancestors' pools (they
/// are other accounts' counters).
fn route(
    client: &SpiClient<'_>,
    ns: Uuid,
    parsed: Vec<MecResult<Event>>,
    outcomes: &mut [Option<MecResult<Value>>],
    now_us: i64,
) -> (Vec<batch_setwise::Plain>, Vec<(usize, Event)>) {
    let mut sent: HashMap<String, usize> = HashMap::new();
    for ev in parsed.iter().flatten() {
        *sent.entry(ev.key.clone()).or_default() += 1;
    }
    let mut plain = Vec::new();
    let mut single: Vec<(usize, Event)> = Vec::new();
    let mut pooled = false;
    for (i, ev) in parsed.into_iter().enumerate() {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                outcomes[i] = Some(Err(e));
                continue;
            }
        };
        let twice = sent.get(&ev.key).copied().unwrap_or(0) > 1;
        match batch_setwise::classify(client, ns, ev, now_us) {
            Route::Plain(mut p) if !twice => {
                p.index = i;
                plain.push(*p);
            }
            // (a key sent twice goes one by one, but still tells whether it is pooled)
            Route::Plain(p) => single.push((i, p.event)),
            Route::Single { event, pooled: p } => {
                pooled |= p;
                single.push((i, event));
            }
        }
    }
    if pooled {
        single.extend(plain.into_iter().map(|p| (p.index, p.event)));
        return (Vec::new(), single);
    }
    let one_by_one: HashSet<(Uuid, String)> = single
        .iter()
        .map(|(_, ev)| (ev.account_id, ev.resource_type.clone()))
        .collect();
    let (plain, moved): (Vec<_>, Vec<_>) = plain
        .into_iter()
        .partition(|p| !one_by_one.contains(&(p.event.account_id, p.event.resource_type.clone())));
    single.extend(moved.into_iter().map(|p| (p.index, p.event)));
    (plain, single)
}
