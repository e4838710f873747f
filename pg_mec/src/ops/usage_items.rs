//! `meter_usage`: several resources in one decision (input tokens, output tokens, requests), under
//! one idempotency key, all or nothing. Each item is metered as `meter_consumption` meters an
//! event — its ledger row keyed `<key>/<resource_type>` — in the caller's transaction; a refused
//! item raises, so no item of the call is recorded. The call's key is claimed first, so a replay
//! (or a concurrent retry, which waits for the first) answers with the first result.

use std::collections::{BTreeMap, HashMap};

use pgrx::datum::Uuid;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::ledger::event::parse_dimensions;
use crate::ledger::keys::{claim_key, store_result};
use crate::ledger::{validate_key, Event};
use crate::ops::metering;
use crate::pg::values::json_decimal;
use crate::pg::{MecError, MecResult};

/// Items in one call at most.
pub const MAX_ITEMS: usize = 100;
const ITEM_FIELDS: [&str; 3] = ["resource_type", "quantity", "dimensions"];

/// One call: the items and what they share.
pub struct Usage {
    pub key: String,
    pub account_id: Uuid,
    pub items: Value,
    pub occurred_us: i64,
    pub metadata: Value,
    pub http_status: Option<i32>,
    /// The call's dimensions; an item's own `dimensions` add to and override them.
    pub dimensions: BTreeMap<String, String>,
}

/// One item: its resource, quantity and own dimensions.
struct Item {
    resource: String,
    quantity: pg_mec_core::Decimal,
    dimensions: BTreeMap<String, String>,
}

fn item_error(index: usize, message: impl std::fmt::Display) -> MecError {
    MecError::invalid_hint(
        format!("p_items[{index}]: {message}"),
        "p_items is a JSON array of {\"resource_type\", \"quantity\"}, each resource once.",
    )
}

/// The items as (resource_type, quantity), every problem a `22023` naming the item.
fn parse_items(items: &Value) -> MecResult<Vec<Item>> {
    let Some(list) = items.as_array() else {
        return Err(MecError::invalid("p_items must be a JSON array"));
    };
    if list.is_empty() || list.len() > MAX_ITEMS {
        return Err(MecError::invalid(format!(
            "p_items must hold 1 to {MAX_ITEMS} items, got {}",
            list.len()
        )));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let Some(o) = item.as_object() else {
            return Err(item_error(i, "must be a JSON object"));
        };
        if let Some(k) = o.keys().find(|k| !ITEM_FIELDS.contains(&k.as_str())) {
            return Err(item_error(i, format!("unknown field \"{k}\"")));
        }
        let resource = o
            .get("resource_type")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| item_error(i, "resource_type must be a string"))?;
        let quantity = o
            .get("quantity")
            .and_then(json_decimal)
            .ok_or_else(|| item_error(i, "quantity must be a number"))?;
        let quantity =
            pg_mec_core::quantity::check(quantity, "quantity").map_err(|e| item_error(i, e.0))?;
        if let Some(first) = seen.insert(resource.to_string(), i) {
            return Err(item_error(
                i,
                format!("resource \"{resource}\" is already item {first}"),
            ));
        }
        let dimensions = parse_dimensions(o.get("dimensions"), "dimensions")
            .map_err(|e| item_error(i, e.parts().0))?;
        out.push(Item {
            resource: resource.to_string(),
            quantity,
            dimensions,
        });
    }
    Ok(out)
}

/// Meters every item or none. Returns `{idempotency_key, account_id, duplicate, items: [the
/// meter_consumption result of each, in order]}`.
pub fn meter_usage(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    req: &Usage,
    now_us: i64,
) -> MecResult<Value> {
    validate_key(&req.key)?;
    let items = parse_items(&req.items)?;
    if let Some(r) = items
        .iter()
        .map(|i| &i.resource)
        .find(|r| req.key.len() + 1 + r.len() > 255)
    {
        return Err(MecError::invalid(format!(
            "p_idempotency_key is too long for item \"{r}\": the key, \"/\" and the resource type must fit in 255 bytes"
        )));
    }
    // Dimensions enter the fingerprint only when sent, so keys stored before they existed replay.
    let mut payload = json!({
        "account_id": req.account_id.to_string(),
        "items": items.iter().map(|i| {
            let mut item = json!([i.resource, i.quantity.normalize().to_string()]);
            if let (false, Some(a)) = (i.dimensions.is_empty(), item.as_array_mut()) {
                a.push(json!(i.dimensions));
            }
            item
        }).collect::<Vec<_>>(),
        "http_status": req.http_status,
    });
    if !req.dimensions.is_empty() {
        payload["dimensions"] = json!(req.dimensions);
    }
    let fingerprint = pg_mec_core::digest(&payload);
    if let Some(v) = claim_key(client, ns, "meter_usage", &req.key, &fingerprint)? {
        return Ok(v);
    }
    let mut results = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let mut dimensions = req.dimensions.clone();
        dimensions.extend(item.dimensions);
        let ev = Event {
            key: format!("{}/{}", req.key, item.resource),
            account_id: req.account_id,
            resource_type: item.resource,
            quantity: item.quantity,
            occurred_us: req.occurred_us,
            metadata: req.metadata.clone(),
            http_status: req.http_status,
            dimensions,
        };
        ev.validate()?;
        let mut r = metering::meter(client, ns, &ev, now_us)?;
        if let Some(o) = r.as_object_mut() {
            o.insert("index".into(), Value::from(i));
        }
        results.push(r);
    }
    let result = json!({
        "idempotency_key": req.key,
        "account_id": req.account_id.to_string(),
        "duplicate": false,
        "items": results,
    });
    store_result(client, ns, "meter_usage", &req.key, &result)?;
    Ok(result)
}
