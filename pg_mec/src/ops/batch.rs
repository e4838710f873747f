//! `meter_consumption_batch`: many events in one call. Each event is decided on its own; a refused
//! or malformed event is reported in its result and does not stop the others.

use pg_mec_core::time::parse_rfc3339;
use pgrx::datum::Uuid;
use pgrx::spi::SpiClient;
use serde_json::{json, Map, Value};

use crate::ledger::event::parse_dimensions;
use crate::ledger::Event;
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

/// Meters every event of `events` (a JSON array) in order.
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
    let (mut accepted, mut duplicates, mut rejected) = (0, 0, 0);
    let mut results = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let outcome =
            parse_event(i, v, now_us).and_then(|ev| metering::meter(client, ns, &ev, now_us));
        match outcome {
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
                    v.get("idempotency_key").cloned().unwrap_or(Value::Null),
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
