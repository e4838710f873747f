//! Reservations: hold quota now, settle it later. `reserve` adds the quantity to the period's
//! counter under the same guarded update as metering; `commit` replaces it by the actual quantity
//! and writes the ledger row under the reservation's idempotency key; `cancel` and expiry give the
//! quota back (expired holds are swept lazily the moment quota runs short).

use pg_mec_core::catalog::Kind;
use pg_mec_core::period::Window;
use pg_mec_core::quantity::counter_ceiling;
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::cache::entitlement;
use crate::counters::stripes;
use crate::counters::usage;
use crate::counters::CounterKey;
use crate::events::alerts;
use crate::ledger::keys::{claim_key, store_result, stored_result};
use crate::ledger::replay::replay_if_recorded;
use crate::ledger::{validate_key, Event, UsageResult};
use crate::ops::usage_items;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{
    json_decimal, num, opt_num, timestamptz, to_decimal, to_numeric, ts_json, unix_us,
};
use crate::pg::{MecError, MecResult};

pub struct Reserve {
    pub key: String,
    pub account_id: Uuid,
    pub resource_type: String,
    pub quantity: Decimal,
    pub ttl_seconds: i32,
}

stmt! {
    static INSERT: write (ns: uuid, key: text, account_id: uuid, resource_type: text, quantity: numeric, period_start: timestamptz, period_end: timestamptz, ttl_seconds: int4) =
        "INSERT INTO mec_data.reservations
                  (namespace_id, idempotency_key, account_id, resource_type, quantity, period_start, period_end, expires_at)
              VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp() + make_interval(secs => $8))
              ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
              RETURNING reservation_id, expires_at";
}

stmt! {
    static BY_KEY: read (ns: uuid, key: text) =
        "SELECT reservation_id, account_id, resource_type, quantity, expires_at, state
              FROM mec_data.reservations WHERE namespace_id = $1 AND idempotency_key = $2";
}

stmt! {
    static LOCK: write (ns: uuid, reservation_id: uuid) =
        "SELECT idempotency_key, account_id, resource_type, quantity, period_start, period_end, state,
                     expires_at > clock_timestamp() AS live, actual_quantity
              FROM mec_data.reservations WHERE namespace_id = $1 AND reservation_id = $2 FOR UPDATE";
}

stmt! {
    static SETTLE: write (ns: uuid, reservation_id: uuid, state: text, actual_quantity: numeric) =
        "UPDATE mec_data.reservations SET state = $3, actual_quantity = $4, settled_at = now()
              WHERE namespace_id = $1 AND reservation_id = $2";
}

stmt! {
    static RECORD: write (ns: uuid, key: text, account_id: uuid, resource_type: text, quantity: numeric, period_start: timestamptz, period_end: timestamptz, quantity_used: numeric, quantity_allowed: numeric, reservation_id: text) =
        "INSERT INTO mec_data.consumption
                  (namespace_id, idempotency_key, consumption_id, account_id, resource_type, quantity, occurred_at,
                   period_start, period_end, billable, overage, overage_quantity, quantity_used, quantity_allowed, metadata)
              VALUES ($1, $2, gen_random_uuid(), $3, $4, $5, now(), $6, $7, true,
                      coalesce($8 > $9, false), CASE WHEN $9 IS NULL THEN 0 ELSE greatest(0, least($5, $8 - $9)) END, $8, $9,
                      jsonb_build_object('reservation_id', $10::text))
              ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
              RETURNING consumption_id";
}

fn refused(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    eff: &entitlement::Effective,
    now_us: i64,
) -> MecError {
    match usage::read(client, ns, account, eff, now_us) {
        Ok(u) => MecError::LimitReached {
            resource: eff.resource_type.clone(),
            violated: Value::Array(vec![usage::violated_policy(eff, &u)]),
        },
        Err(e) => e,
    }
}

/// Holds `quantity` of a metered or gauge resource for `ttl_seconds`. Idempotent on the key.
pub fn reserve(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    req: &Reserve,
    now_us: i64,
) -> MecResult<Value> {
    validate_key(&req.key)?;
    if req.quantity <= Decimal::ZERO {
        return Err(MecError::invalid(format!(
            "p_quantity must be positive, got {}",
            req.quantity
        )));
    }
    if let Some(v) = replay(client, ns, req)? {
        return Ok(v);
    }
    let eff = entitlement::resolve_for_use(client, ns, req.account_id, &req.resource_type, now_us)?;
    if !matches!(eff.kind, Kind::Metered | Kind::Gauge) {
        return Err(MecError::bad_request(
            format!("resource \"{}\" is {}; only metered and gauge resources take reservations", req.resource_type, eff.kind.as_str()),
            "Use leases for concurrency, check_entitlement for features, meter_consumption for rates.",
        ));
    }
    if crate::ops::hierarchy::has_pools(client, ns, &eff, now_us)? {
        return Err(MecError::bad_request(
            format!(
                "account {} pools \"{}\" with its ancestors; reservations are not carried up a hierarchy yet",
                req.account_id, req.resource_type
            ),
            "Meter the actual usage with meter_consumption (or meter_usage) when the work is done.",
        ));
    }
    let counter = CounterKey {
        account_id: req.account_id,
        resource_type: &req.resource_type,
        window: eff.window(now_us),
    };
    let ceiling = Some(counter_ceiling(eff.policy.ceiling()));
    // Expired holds leave first, so the answer's usage is what a read shows.
    counter.sweep_expired_holds(client, ns, None)?;
    let mut used = None;
    for attempt in 0..4 {
        used = counter.hold(client, ns, req.quantity, ceiling)?;
        if used.is_some() {
            break;
        }
        // Missing counter (maybe created concurrently after this statement's snapshot) or a
        // striped counter (holds are decided on slot 0 with the exact total): try again;
        // otherwise refuse. Expired holds were given back before the first attempt.
        if attempt == 0 {
            counter.create(client, ns)?;
        } else if !stripes::fold(client, ns, &counter)? {
            break;
        }
    }
    let Some(used) = used else {
        // A concurrent call with the same key may have taken the quota while this one waited.
        if let Some(v) = replay(client, ns, req)? {
            return Ok(v);
        }
        return Err(refused(client, ns, req.account_id, &eff, now_us));
    };
    let start: TimestampWithTimeZone = timestamptz(counter.window.start_us);
    let end: Option<TimestampWithTimeZone> = counter.window.end_us.map(timestamptz);
    let (id, expires) = spi::write(
        client,
        &INSERT,
        &[
            ns.into(),
            req.key.as_str().into(),
            req.account_id.into(),
            req.resource_type.as_str().into(),
            to_numeric(req.quantity).into(),
            start.into(),
            end.into(),
            req.ttl_seconds.into(),
        ],
    )?
    .two::<Uuid, TimestampWithTimeZone>("reservation_id", "expires_at")?;
    let Some(id) = id else {
        // A concurrent call with the same key won: give the quota back and answer as it did.
        counter.add(client, ns, -req.quantity)?;
        return replay(client, ns, req)?.ok_or_else(|| {
            MecError::Internal("reservation key conflicted but no row is visible".into())
        });
    };
    Ok(json!({
        "reservation_id": id.to_string(),
        "duplicate": false,
        "account_id": req.account_id.to_string(),
        "resource_type": req.resource_type,
        "expires_at": ts_json(expires.map(unix_us).transpose()?),
        "quantity_reserved": num(req.quantity),
        "quantity_used": num(used),
        "quantity_allowed": opt_num(eff.policy.limit),
        "quantity_remaining": opt_num(eff.policy.remaining(used)),
        "period_start": ts_json(Some(counter.window.start_us)),
        "period_end": ts_json(counter.window.end_us),
    }))
}

fn replay(client: &SpiClient<'_>, ns: Uuid, req: &Reserve) -> MecResult<Option<Value>> {
    let Some(row) = spi::read(client, &BY_KEY, &[ns.into(), req.key.as_str().into()])?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let account = row.get::<Uuid>("account_id")?;
    let resource = row.get::<String>("resource_type")?;
    let quantity = row
        .get::<AnyNumeric>("quantity")?
        .as_ref()
        .map(to_decimal)
        .transpose()?;
    if account != Some(req.account_id)
        || resource.as_deref() != Some(req.resource_type.as_str())
        || quantity != Some(req.quantity)
    {
        return Err(MecError::IdempotencyConflict {
            key: req.key.clone(),
            detail: json!({"operation": "reserve_consumption"}).to_string(),
        });
    }
    Ok(Some(json!({
        "reservation_id": row.get::<Uuid>("reservation_id")?.map(|u| u.to_string()),
        "duplicate": true,
        "account_id": req.account_id.to_string(),
        "resource_type": req.resource_type,
        "expires_at": ts_json(row.get::<TimestampWithTimeZone>("expires_at")?.map(unix_us).transpose()?),
        "quantity_reserved": num(req.quantity),
        "state": row.get::<String>("state")?,
    })))
}

struct Held {
    key: String,
    account_id: Uuid,
    resource_type: String,
    quantity: Decimal,
    window: Window,
    state: String,
    live: bool,
    actual: Option<Decimal>,
}

fn lock(client: &mut SpiClient<'_>, ns: Uuid, id: Uuid) -> MecResult<Held> {
    let Some(row) = spi::write(client, &LOCK, &[ns.into(), id.into()])?
        .into_iter()
        .next()
    else {
        return Err(MecError::NotFound {
            what: "reservation",
            id: id.to_string(),
        });
    };
    let missing = || MecError::Internal("reservation row with NULL columns".into());
    Ok(Held {
        key: row.get::<String>("idempotency_key")?.ok_or_else(missing)?,
        account_id: row.get::<Uuid>("account_id")?.ok_or_else(missing)?,
        resource_type: row.get::<String>("resource_type")?.ok_or_else(missing)?,
        quantity: row
            .get::<AnyNumeric>("quantity")?
            .as_ref()
            .map(to_decimal)
            .transpose()?
            .ok_or_else(missing)?,
        window: Window {
            start_us: row
                .get::<TimestampWithTimeZone>("period_start")?
                .map(unix_us)
                .transpose()?
                .ok_or_else(missing)?,
            end_us: row
                .get::<TimestampWithTimeZone>("period_end")?
                .map(unix_us)
                .transpose()?,
        },
        state: row.get::<String>("state")?.ok_or_else(missing)?,
        live: row.get::<bool>("live")?.unwrap_or(false),
        actual: row
            .get::<AnyNumeric>("actual_quantity")?
            .as_ref()
            .map(to_decimal)
            .transpose()?,
    })
}

fn as_event(h: &Held, quantity: Decimal, now_us: i64) -> Event {
    Event {
        key: h.key.clone(),
        account_id: h.account_id,
        resource_type: h.resource_type.clone(),
        quantity,
        occurred_us: now_us,
        metadata: json!({}),
        http_status: None,
        dimensions: Default::default(),
    }
}

/// The operation under which a commit with items keeps its result (by the reservation's key).
const COMMIT_ITEMS: &str = "commit_reservation";

/// Settles a held reservation at `actual` (default: the reserved quantity) and records it; or, with
/// `items`, releases the hold and meters the items in one decision (`meter_usage` under the
/// reservation's key): reserve a budget, commit the actual split.
pub fn commit(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    id: Uuid,
    actual: Option<Decimal>,
    items: Option<&Value>,
    now_us: i64,
) -> MecResult<Value> {
    if actual.is_some() && items.is_some() {
        return Err(MecError::invalid(
            "give p_actual_quantity or p_items, not both",
        ));
    }
    let h = lock(client, ns, id)?;
    if let Some(items) = items {
        return commit_items(client, ns, id, &h, items, now_us);
    }
    match (h.state.as_str(), h.live) {
        ("committed", _) => {
            let ev = as_event(&h, h.actual.unwrap_or(h.quantity), now_us);
            if let Some(v) = replay_if_recorded(client, ns, &ev)? {
                return Ok(v);
            }
            return Err(MecError::IdempotencyConflict {
                key: h.key.clone(),
                detail: json!({"operation": "commit_reservation",
                               "reason": "the reservation was committed with p_items"})
                .to_string(),
            });
        }
        ("held", true) => {}
        (state, _) => return Err(not_committable(id, state)),
    }
    let actual = actual.unwrap_or(h.quantity);
    if actual < Decimal::ZERO {
        return Err(MecError::invalid(format!(
            "p_actual_quantity must not be negative, got {actual}"
        )));
    }
    let eff = entitlement::resolve(client, ns, h.account_id, &h.resource_type, now_us)?;
    let counter = CounterKey {
        account_id: h.account_id,
        resource_type: &h.resource_type,
        window: h.window,
    };
    // Slot 0 must hold the exact total for the ledger row's usage and overage: without the
    // stripes' and without other reservations that expired (this one is locked and live).
    stripes::fold(client, ns, &counter)?;
    counter.sweep_expired_holds(client, ns, Some(id))?;
    let delta = actual - h.quantity;
    let used = if delta > Decimal::ZERO {
        counter
            .hold(
                client,
                ns,
                delta,
                Some(counter_ceiling(eff.policy.ceiling())),
            )?
            .ok_or_else(|| refused(client, ns, h.account_id, &eff, now_us))?
    } else {
        counter.add(client, ns, delta)?.unwrap_or_default()
    };
    let start: TimestampWithTimeZone = timestamptz(h.window.start_us);
    let end: Option<TimestampWithTimeZone> = h.window.end_us.map(timestamptz);
    let consumption_id = spi::write(
        client,
        &RECORD,
        &[ns.into(), h.key.as_str().into(), h.account_id.into(), h.resource_type.as_str().into(), to_numeric(actual).into(),
          start.into(), end.into(), to_numeric(used).into(), eff.policy.limit.map(to_numeric).into(), id.to_string().as_str().into()],
    )?
    .one::<Uuid>()?
    .ok_or_else(|| MecError::IdempotencyConflict {
        key: h.key.clone(),
        detail: json!({"operation": "commit_reservation", "reason": "a usage event already has this key"}).to_string(),
    })?;
    spi::write(
        client,
        &SETTLE,
        &[
            ns.into(),
            id.into(),
            "committed".into(),
            to_numeric(actual).into(),
        ],
    )?;
    alerts::after_usage(
        client,
        ns,
        &alerts::Usage {
            account_id: h.account_id,
            eff: &eff,
            window: &h.window,
            used,
            consumption_id: Some(consumption_id),
        },
    )?;
    let ev = as_event(&h, actual, now_us);
    let overage = eff.policy.limit.is_some_and(|l| used > l);
    let mut result = UsageResult {
        consumption_id,
        duplicate: false,
        billable: true,
        overage,
        used,
        policy: &eff.policy,
        window: &h.window,
        event: &ev,
    }
    .to_json();
    if let Some(o) = result.as_object_mut() {
        o.insert("reservation_id".into(), Value::from(id.to_string()));
        o.insert("quantity_reserved".into(), num(h.quantity));
    }
    Ok(result)
}

/// `ME410` for a reservation that can no longer be committed (cancelled or expired).
fn not_committable(id: Uuid, state: &str) -> MecError {
    MecError::Expired {
        what: "reservation",
        id: id.to_string(),
        detail: Some(if state == "cancelled" {
            "the reservation was cancelled".into()
        } else {
            "the reservation passed its expires_at; its hold no longer counts".into()
        }),
    }
}

fn commit_items(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    id: Uuid,
    h: &Held,
    items: &Value,
    now_us: i64,
) -> MecResult<Value> {
    let fingerprint = pg_mec_core::digest(items);
    match (h.state.as_str(), h.live) {
        ("committed", _) => {
            return stored_result(client, ns, COMMIT_ITEMS, &h.key, &fingerprint)?.ok_or_else(|| {
                MecError::IdempotencyConflict {
                    key: h.key.clone(),
                    detail: json!({"operation": "commit_reservation",
                                   "reason": "the reservation was committed with p_actual_quantity"})
                    .to_string(),
                }
            });
        }
        ("held", true) => {}
        (state, _) => return Err(not_committable(id, state)),
    }
    if let Some(v) = claim_key(client, ns, COMMIT_ITEMS, &h.key, &fingerprint)? {
        return Ok(v);
    }
    // What the split uses of the reserved resource itself (none when it names other resources).
    let actual = items
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|i| i.get("resource_type") == Some(&Value::from(h.resource_type.as_str())))
                .filter_map(|i| i.get("quantity").and_then(json_decimal))
                .fold(Decimal::ZERO, |a, q| a.saturating_add(q))
        })
        .unwrap_or_default();
    // The hold goes and the reservation is settled first (so no sweep gives the hold back twice),
    // then the items are decided on what is really used; a refused item raises, and the whole call
    // is undone: the hold stays, as before it.
    release(client, ns, id, h, "committed", Some(actual))?;
    let mut result = usage_items::meter_usage(
        client,
        ns,
        &usage_items::Usage {
            key: h.key.clone(),
            account_id: h.account_id,
            items: items.clone(),
            occurred_us: now_us,
            metadata: json!({}),
            http_status: None,
            dimensions: Default::default(),
        },
        now_us,
    )?;
    if let Some(o) = result.as_object_mut() {
        o.insert("reservation_id".into(), Value::from(id.to_string()));
        o.insert("quantity_reserved".into(), num(h.quantity));
        o.insert(
            "resource_type".into(),
            Value::from(h.resource_type.as_str()),
        );
    }
    store_result(client, ns, COMMIT_ITEMS, &h.key, &result)?;
    Ok(result)
}

/// Gives the hold of reservation `h` back to its counter and settles it in `state` (with the
/// quantity it used, when committed).
fn release(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    id: Uuid,
    h: &Held,
    state: &str,
    actual: Option<Decimal>,
) -> MecResult<()> {
    CounterKey {
        account_id: h.account_id,
        resource_type: &h.resource_type,
        window: h.window,
    }
    .add(client, ns, -h.quantity)?;
    spi::write(
        client,
        &SETTLE,
        &[
            ns.into(),
            id.into(),
            state.into(),
            actual.map(to_numeric).into(),
        ],
    )?;
    Ok(())
}

/// Gives a held reservation's quota back. Cancelling twice is not an error.
pub fn cancel(client: &mut SpiClient<'_>, ns: Uuid, id: Uuid) -> MecResult<Value> {
    let h = lock(client, ns, id)?;
    match h.state.as_str() {
        "held" => {
            release(client, ns, id, &h, "cancelled", None)?;
            Ok(
                json!({"reservation_id": id.to_string(), "cancelled": true, "already_settled": false, "expired": !h.live, "quantity_released": num(h.quantity)}),
            )
        }
        "committed" => Err(MecError::bad_request(
            format!("reservation \"{id}\" was already committed"),
            "Correct committed usage with mec.adjust_consumption.",
        )),
        _ => Ok(
            json!({"reservation_id": id.to_string(), "cancelled": true, "already_settled": true, "expired": h.state == "expired", "quantity_released": 0}),
        ),
    }
}
