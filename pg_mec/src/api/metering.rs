//! `meter_consumption`: record usage exactly once.

use pgrx::prelude::*;
use pgrx::{AnyNumeric, Uuid};

use crate::api;
use crate::ledger::event::parse_dimensions;
use crate::ledger::Event;
use crate::ops::metering;
use crate::pg::args;
use crate::pg::clock;
use crate::pg::jsonb::{Jsonb, JsonbArg};

/// `p_metadata` as JSON; `{}` when NULL.
fn metadata(p_metadata: Option<JsonbArg>) -> crate::pg::MecResult<serde_json::Value> {
    Ok(p_metadata
        .map(|j| j.parse("p_metadata"))
        .transpose()?
        .unwrap_or_else(|| serde_json::json!({})))
}

/// Records `p_quantity` of `p_resource_type` for `p_account_id`, deciding and counting in one
/// statement under the counter's row lock, idempotently on `p_idempotency_key`.
///
/// Returns `{consumption_id, duplicate, billable, overage, quantity_used, quantity_allowed,
/// quantity_remaining, percent_used, period_start, period_end}`; a replay of the same key and
/// payload returns the original result with `duplicate: true` and changes nothing.
///
/// `p_dimensions` (`{"model_class": "PRO_L"}`) names values of the resource's declared dimensions:
/// the event counts against the plan's limits for those values too (all decided together) and
/// `usage_history` can group by them.
///
/// Raises `ME429` (limit reached; DETAIL `{"violated_policies": [...]}`), `ME409` (key reused
/// with another account, resource, quantity or dimensions), `ME404` (unknown account or resource
/// type), `ME400` (a feature or concurrency resource), `22023` (empty key, non-positive quantity,
/// bad status, event in the future or older than `late_event_days`, an undeclared dimension or
/// value), `42501` (no namespace).
#[pg_extern]
#[allow(clippy::too_many_arguments)]
fn meter_consumption(
    p_idempotency_key: Option<&str>,
    p_account_id: Option<Uuid>,
    p_resource_type: Option<&str>,
    p_quantity: Option<AnyNumeric>,
    p_occurred_at: default!(Option<TimestampWithTimeZone>, "now()"),
    p_metadata: default!(Option<JsonbArg>, "'{}'"),
    p_http_status: default!(Option<i32>, "NULL"),
    p_dimensions: default!(Option<JsonbArg>, "'{}'"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let dimensions = match p_dimensions {
            None => Default::default(),
            Some(d) => parse_dimensions(Some(&d.parse("p_dimensions")?), "p_dimensions")?,
        };
        let event = Event {
            key: args::required(p_idempotency_key, "p_idempotency_key")?.to_string(),
            account_id: args::required(p_account_id, "p_account_id")?,
            resource_type: args::text(p_resource_type, "p_resource_type")?,
            quantity: args::quantity(p_quantity, "p_quantity")?,
            occurred_us: args::instant(p_occurred_at, "p_occurred_at")?,
            metadata: metadata(p_metadata)?,
            http_status: p_http_status,
            dimensions,
        };
        event.validate()?;
        metering::meter(client, ns, &event, clock::now_us())
    }))
}

/// Meters an array of events (`p_events`: objects with `idempotency_key, account_id,
/// resource_type, quantity, occurred_at, metadata, http_status, dimensions`), each decided on its
/// own.
///
/// Returns `{accepted, duplicates, rejected, results: [...]}` with one result per event, in
/// order: the `meter_consumption` result, or `{index, status: "rejected", error: {code, message,
/// details, hint}}`. Raises `22023` (not an array, more than 1000 events), `42501`.
#[pg_extern]
fn meter_consumption_batch(p_events: Option<JsonbArg>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let events = args::required(p_events, "p_events")?.parse("p_events")?;
        crate::ops::batch::meter_batch(client, ns, &events, clock::now_us())
    }))
}

/// Records several resources in one decision under one idempotency key, all or nothing:
/// `p_items` is `[{"resource_type", "quantity", "dimensions"}, …]` (1 to 100, each resource once),
/// each metered as `meter_consumption` meters an event (its ledger row keyed
/// `<p_idempotency_key>/<resource_type>`) with the item's `dimensions` over `p_dimensions`.
/// A refused item raises, and no item of the call is recorded.
///
/// Returns `{idempotency_key, account_id, duplicate, items: [{index, …the meter_consumption
/// result}]}`; a replay of the key with the same items returns the first result with
/// `duplicate: true`. Raises what `meter_consumption` raises (`ME429` naming the refused resource,
/// `ME404`, `ME400`, `ME402`), `ME409` (key reused with other items), `22023` (bad items),
/// `42501`.
#[pg_extern]
fn meter_usage(
    p_idempotency_key: Option<&str>,
    p_account_id: Option<Uuid>,
    p_items: Option<JsonbArg>,
    p_occurred_at: default!(Option<TimestampWithTimeZone>, "now()"),
    p_metadata: default!(Option<JsonbArg>, "'{}'"),
    p_http_status: default!(Option<i32>, "NULL"),
    p_dimensions: default!(Option<JsonbArg>, "'{}'"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let dimensions = match p_dimensions {
            None => Default::default(),
            Some(d) => parse_dimensions(Some(&d.parse("p_dimensions")?), "p_dimensions")?,
        };
        let req = crate::ops::usage_items::Usage {
            key: args::required(p_idempotency_key, "p_idempotency_key")?.to_string(),
            account_id: args::required(p_account_id, "p_account_id")?,
            items: args::required(p_items, "p_items")?.parse("p_items")?,
            occurred_us: args::instant(p_occurred_at, "p_occurred_at")?,
            metadata: metadata(p_metadata)?,
            http_status: p_http_status,
            dimensions,
        };
        crate::ops::usage_items::meter_usage(client, caller.namespace, &req, clock::now_us())
    }))
}
