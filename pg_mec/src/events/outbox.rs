//! The webhook outbox: an event row and one delivery per enabled endpoint of the namespace that
//! subscribed to its type, in the caller's transaction. The gateway's worker delivers them
//! (`ops/webhooks.rs`, gateway `jobs/webhooks.rs`), signed per the Standard Webhooks spec.

use pgrx::datum::{JsonB, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::pg::spi::{self, stmt};
use crate::pg::values::{iso8601, new_uuid};
use crate::pg::MecResult;

/// Every event type pg_mec emits.
pub const EVENT_TYPES: &[&str] = &[
    "usage.threshold_crossed",
    "usage.limit_reached",
    "account.plan_changed",
    "account.payment_overdue",
    "account.payment_recovered",
];

stmt! {
    /// One event and its deliveries. Returns the number of deliveries queued.
    static EMIT: write (ns: uuid, event_id: uuid, event_type: text, account_id: uuid, payload: jsonb) =
        "WITH ev AS (INSERT INTO mec_data.webhook_events (namespace_id, event_id, event_type, account_id, payload)
                     VALUES ($1, $2, $3, $4, $5)
                     RETURNING event_id, event_type)
         INSERT INTO mec_data.webhook_deliveries (namespace_id, event_id, endpoint_id)
         SELECT $1, ev.event_id, e.endpoint_id
           FROM ev JOIN mec_data.webhook_endpoints e
             ON e.namespace_id = $1 AND e.enabled
            AND (cardinality(e.event_types) = 0 OR ev.event_type = ANY (e.event_types))
         RETURNING 1";
}

/// The `webhook-id` of an event: `msg_` and its id without dashes.
pub fn webhook_id(event_id: Uuid) -> String {
    let hex: String = event_id.to_string().chars().filter(|c| *c != '-').collect();
    format!("msg_{hex}")
}

/// A fresh event id.
pub fn new_event_id() -> Uuid {
    new_uuid()
}

/// The body every endpoint receives: `{type, timestamp, data}` (the Standard Webhooks shape).
pub fn payload(event_type: &str, now_us: i64, data: Value) -> Value {
    json!({"type": event_type, "timestamp": iso8601(now_us), "data": data})
}

/// Emits one event of `event_type` about `account` (if any). Returns its id.
pub fn emit(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    event_type: &str,
    account: Option<Uuid>,
    data: Value,
) -> MecResult<Uuid> {
    let id = new_event_id();
    let body = payload(event_type, crate::pg::clock::now_us(), data);
    spi::write(
        client,
        &EMIT,
        &[
            ns.into(),
            id.into(),
            event_type.into(),
            account.into(),
            JsonB(body).into(),
        ],
    )?;
    Ok(id)
}
