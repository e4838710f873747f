//! `meter_consumption`: decide and record one usage event, exactly once.
//!
//! The hot path is one statement: a guarded counter `UPDATE … WHERE used + qty <= ceiling`
//! (the row lock serialises concurrent callers, so usage never passes a hard ceiling) feeding the
//! ledger `INSERT … ON CONFLICT DO NOTHING` on the idempotency key. A striped counter (a hot one,
//! see stripes.rs) takes two: slot 0 first, then the ledger row with the stripes summed under slot
//! 0's lock. The rare cases — a replayed key, a counter row not yet created, a denial — take a
//! second look.

use std::time::Instant;

use pg_mec_core::billing::is_billable;
use pg_mec_core::catalog::Kind;
use pg_mec_core::enforcement::{Enforcement, Policy};
use pg_mec_core::period::Window;
use pg_mec_core::quantity::{counter_ceiling, passes_bound};
use pg_mec_core::Decimal;
use pgrx::datum::DatumWithOid;
use pgrx::datum::{AnyNumeric, JsonB, TimestampWithTimeZone, Uuid};
use pgrx::pg_sys::Oid;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::counters::CounterKey;
use crate::entitlement::{self, Effective};
use crate::errors::{MecError, MecResult};
use crate::spi::{self, Stmt};
use crate::stripes;
use crate::usage;
use crate::values::{num, opt_num, timestamptz, to_decimal, to_numeric, ts_json, unix_us};

/// One usage event as the caller sent it.
pub struct Event {
    pub key: String,
    pub account_id: Uuid,
    pub resource_type: String,
    pub quantity: Decimal,
    pub occurred_us: i64,
    pub metadata: Value,
    pub http_status: Option<i32>,
}

impl Event {
    /// `$1..$8` of every statement that writes a ledger row: namespace, key, account, resource,
    /// quantity, occurred_at, period_start, period_end.
    /// The metadata parameter: NULL for the usual empty object (the statements write `'{}'`), so
    /// the common call converts no JSON.
    pub fn metadata_arg(&self) -> DatumWithOid<'static> {
        let empty = self.metadata.as_object().is_some_and(|m| m.is_empty());
        (!empty).then(|| JsonB(self.metadata.clone())).into()
    }

    pub fn ledger_args<'a>(&'a self, ns: Uuid, window: &Window) -> Vec<DatumWithOid<'a>> {
        let occurred: TimestampWithTimeZone = timestamptz(self.occurred_us);
        let start: TimestampWithTimeZone = timestamptz(window.start_us);
        let end: Option<TimestampWithTimeZone> = window.end_us.map(timestamptz);
        vec![
            ns.into(),
            self.key.as_str().into(),
            self.account_id.into(),
            self.resource_type.as_str().into(),
            to_numeric(self.quantity).into(),
            occurred.into(),
            start.into(),
            end.into(),
        ]
    }
}

/// The start of every statement that records a billable usage event: the ledger columns and
/// `$1..$8` (`Event::ledger_args`); the statement goes on with overage, overage_quantity,
/// quantity_used, quantity_allowed, http_status and metadata.
macro_rules! ledger_usage_insert {
    () => {
        "INSERT INTO mec_data.consumption
              (namespace_id, idempotency_key, consumption_id, account_id, resource_type, quantity,
               occurred_at, period_start, period_end, billable, overage, overage_quantity,
               quantity_used, quantity_allowed, http_status, metadata)
          SELECT $1, $2, gen_random_uuid(), $3, $4, $5, $6, $7, $8, true, "
    };
}
pub(crate) use ledger_usage_insert;

/// The common case of metering: an unstriped counter (no stripes hold usage or quota), so slot 0 is
/// the whole count. Matches nothing on a striped counter, which then takes METER_SLOT0 and
/// RECORD_STRIPED.
static METER_PLAIN: Stmt = Stmt {
    sql: concat!(
        "WITH upd AS (
              UPDATE mec_data.usage_counters
                 SET used = used + $5, updated_at = now()
               WHERE namespace_id = $1 AND account_id = $3 AND resource_type = $4
                 AND period_start = $7 AND slot = 0 AND NOT striped
                 AND ($9::numeric IS NULL OR used + $5 <= $9)
                 AND ($11::numeric IS NULL OR used + $5 >= $11)
              RETURNING used
          ), ins AS (",
        ledger_usage_insert!(),
        "coalesce(upd.used > $10, false),
                     coalesce(greatest(0, least($5, upd.used - $10)), 0),
                     upd.used, $10, $12, coalesce($13, '{}')
              FROM upd
              ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
              RETURNING consumption_id
          )
          SELECT upd.used, (SELECT consumption_id FROM ins) FROM upd"
    ),
    types: METER_TYPES,
    writes: true,
};

/// `$1..$13` of the metering statements: `Event::ledger_args`, then ceiling, limit (overage from),
/// floor, HTTP status, metadata.
const METER_TYPE_LIST: [Oid; 13] = [
    spi::UUID,
    spi::TEXT,
    spi::UUID,
    spi::TEXT,
    spi::NUMERIC,
    spi::TIMESTAMPTZ,
    spi::TIMESTAMPTZ,
    spi::TIMESTAMPTZ,
    spi::NUMERIC,
    spi::NUMERIC,
    spi::NUMERIC,
    spi::INT4,
    spi::JSONB,
];
const METER_TYPES: &[Oid] = &METER_TYPE_LIST;

/// METER_TYPES and `$14`, slot 0's usage.
static RECORD_STRIPED_TYPES: [Oid; 14] = {
    let mut all = [spi::NUMERIC; 14];
    let mut i = 0;
    while i < METER_TYPE_LIST.len() {
        all[i] = METER_TYPE_LIST[i];
        i += 1;
    }
    all
};

/// The slot-0 half of metering a striped (or newly created) counter. Slot 0's guard counts the
/// quota granted to stripes (stripe_quota): while stripes hold quota, slot 0 alone may not cross
/// the limit, nor act under a limit other than the one the quota was granted under (the stripes
/// are folded back first), so limits and the overage flag stay exact.
static METER_SLOT0: Stmt = Stmt {
    sql: "UPDATE mec_data.usage_counters
             SET used = used + $5, updated_at = now()
           WHERE namespace_id = $1 AND account_id = $3 AND resource_type = $4
             AND period_start = $7 AND slot = 0
             AND ($9::numeric IS NULL OR used + stripe_quota + $5 <= $9)
             AND (NOT striped OR (stripe_limit IS NOT DISTINCT FROM $10::numeric
                                  AND ($10::numeric IS NULL OR used + stripe_quota + $5 <= $10)))
             AND ($11::numeric IS NULL OR used + $5 >= $11)
          RETURNING used",
    types: METER_TYPES,
    writes: true,
};

/// The ledger half, in its own statement: its snapshot is taken while this transaction holds
/// slot 0's lock, so no fold can move stripe usage into slot 0 between the two reads (`$14` is
/// slot 0's usage after the update) and the total counts every unit once.
static RECORD_STRIPED: Stmt = Stmt {
    sql: concat!(
        ledger_usage_insert!(),
        "coalesce(t.used > $10, false),
                 coalesce(greatest(0, least($5, t.used - $10)), 0),
                 t.used, $10, $12, coalesce($13, '{}')
          FROM (SELECT $14::numeric + coalesce(sum(c.used), 0) AS used
                FROM mec_data.usage_counters c
                WHERE c.namespace_id = $1 AND c.account_id = $3 AND c.resource_type = $4
                  AND c.period_start = $7 AND c.slot > 0) t
          ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
          RETURNING quantity_used, consumption_id"
    ),
    types: &RECORD_STRIPED_TYPES,
    writes: true,
};

static RECORD_UNBILLED: Stmt = Stmt {
    sql: "INSERT INTO mec_data.consumption
              (namespace_id, idempotency_key, consumption_id, account_id, resource_type, quantity,
               occurred_at, period_start, period_end, billable, quantity_used, quantity_allowed,
               http_status, metadata)
          VALUES ($1, $2, gen_random_uuid(), $3, $4, $5, $6, $7, $8, false, $9, $10, $11, coalesce($12, '{}'))
          ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
          RETURNING consumption_id",
    types: &[
        spi::UUID,
        spi::TEXT,
        spi::UUID,
        spi::TEXT,
        spi::NUMERIC,
        spi::TIMESTAMPTZ,
        spi::TIMESTAMPTZ,
        spi::TIMESTAMPTZ,
        spi::NUMERIC,
        spi::NUMERIC,
        spi::INT4,
        spi::JSONB,
    ],
    writes: true,
};

static RECORDED: Stmt = Stmt {
    sql: "SELECT consumption_id, account_id, resource_type, quantity, billable, overage,
                 quantity_used, quantity_allowed, period_start, period_end, entry_type
          FROM mec_data.consumption
          WHERE namespace_id = $1 AND idempotency_key = $2",
    types: &[spi::UUID, spi::TEXT],
    writes: false,
};

static LATE_EVENT_DAYS: Stmt = Stmt {
    sql: "SELECT coalesce((settings->>'late_event_days')::int4, 7) FROM mec_data.namespaces WHERE namespace_id = $1",
    types: &[spi::UUID],
    writes: false,
};

const MAX_KEY_LEN: usize = 255;
const FUTURE_TOLERANCE_US: i64 = 5 * 60 * 1_000_000;
const DAY_US: i64 = 86_400 * 1_000_000;

/// Checks what can be checked before touching a table.
pub fn validate(ev: &Event) -> MecResult<()> {
    validate_key(&ev.key)?;
    if !ev.metadata.is_object() {
        return Err(MecError::invalid("p_metadata must be a JSON object"));
    }
    if let Some(s) = ev.http_status {
        if !(100..=599).contains(&s) {
            return Err(MecError::invalid(format!(
                "p_http_status {s} is not an HTTP status (100-599)"
            )));
        }
    }
    Ok(())
}

pub fn validate_key(key: &str) -> MecResult<()> {
    if key.trim().is_empty() {
        return Err(MecError::invalid_hint(
            "idempotency key must not be empty",
            "Send a key that identifies the event, e.g. the request id.",
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(MecError::invalid(format!(
            "idempotency key is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_time(client: &SpiClient<'_>, ns: Uuid, occurred_us: i64, now_us: i64) -> MecResult<()> {
    if occurred_us > now_us + FUTURE_TOLERANCE_US {
        return Err(MecError::invalid("p_occurred_at is in the future"));
    }
    if occurred_us < now_us - DAY_US {
        let days = spi::read(client, &LATE_EVENT_DAYS, &[ns.into()])?
            .one::<i32>()?
            .unwrap_or(7);
        if occurred_us < now_us - i64::from(days) * DAY_US {
            return Err(MecError::invalid_hint(
                format!("p_occurred_at is more than {days} days in the past"),
                "Late events are accepted for late_event_days (a namespace setting); record a correction with adjust_consumption instead.",
            ));
        }
    }
    Ok(())
}

fn check_quantity(eff: &Effective, qty: Decimal) -> MecResult<()> {
    match eff.kind {
        Kind::Feature => Err(MecError::bad_request(
            format!(
                "resource \"{}\" is a feature and is not metered",
                eff.resource_type
            ),
            "Ask mec.check_entitlement whether the feature is on.",
        )),
        Kind::Concurrency => Err(MecError::bad_request(
            format!(
                "resource \"{}\" limits concurrency and is not metered",
                eff.resource_type
            ),
            "Use mec.acquire_lease and mec.release_lease.",
        )),
        Kind::Gauge if qty.is_zero() => Err(MecError::invalid("p_quantity must not be zero")),
        Kind::Metered | Kind::Rate if qty <= Decimal::ZERO => Err(MecError::invalid_hint(
            format!("p_quantity must be positive, got {qty}"),
            "Record corrections with mec.adjust_consumption.",
        )),
        _ => Ok(()),
    }
}

/// Records `ev` for namespace `ns`. Raises ME429 when refused, ME409 on a reused key.
pub fn meter(client: &mut SpiClient<'_>, ns: Uuid, ev: &Event, now_us: i64) -> MecResult<Value> {
    validate(ev)?;
    check_time(client, ns, ev.occurred_us, now_us)?;
    let eff = entitlement::resolve(client, ns, ev.account_id, &ev.resource_type, ev.occurred_us)?;
    check_quantity(&eff, ev.quantity)?;
    let window = eff.window(ev.occurred_us);
    if !is_billable(&eff.billable, ev.http_status) {
        return record_unbilled(client, ns, ev, &eff, &window);
    }

    // Rates: the previous bucket's weighted count lowers this bucket's ceiling.
    let carried = if eff.kind == Kind::Rate {
        usage::read(client, ns, ev.account_id, &eff, ev.occurred_us)?.used
            - current_bucket(client, ns, ev, &window)?
    } else {
        Decimal::ZERO
    };
    // Every counter row stays below pg_mec's bound (pg_mec_core::quantity), unlimited ones too.
    let ceiling = Some(counter_ceiling(
        eff.policy.ceiling().map(|c| c.saturating_sub(carried)),
    ));
    let overage_from = if eff.kind == Kind::Rate {
        None
    } else {
        eff.policy.limit
    };
    let floor = (eff.kind == Kind::Gauge).then_some(Decimal::ZERO);

    let counter = CounterKey {
        account_id: ev.account_id,
        resource_type: &ev.resource_type,
        window,
    };
    // Hot metered counters: meter on this backend's stripe (see stripes.rs).
    let stripable = eff.kind == Kind::Metered;
    if stripable && stripes::is_hot(ns, &counter) {
        if let Some(v) = stripes::meter(client, ns, ev, &eff, &counter)? {
            return Ok(v);
        }
    }
    let mut slot0_locked = false;
    for attempt in 0..4 {
        let started = Instant::now();
        let (used, consumption_id, via_slot0) =
            run_meter(client, ns, ev, &window, ceiling, overage_from, floor)?;
        if stripable && started.elapsed() >= stripes::CONTENDED {
            stripes::saw_slow(ns, &counter);
        }
        match (used, consumption_id) {
            (Some(used), Some(id)) => {
                if via_slot0 && stripable {
                    // A striped counter metered by a backend that is not hot on it: the burst
                    // may be over; idle stripes go back into slot 0 (the total stays the same).
                    stripes::fold_if_idle(client, ns, &counter).map_err(MecError::after_write)?;
                }
                return Ok(result(
                    id,
                    false,
                    true,
                    &eff.policy,
                    used.saturating_add(carried),
                    overage_from.is_some_and(|l| used > l),
                    &window,
                    ev,
                ));
            }
            (Some(_), None) => {
                // The key was recorded before: take the increment back, answer as the first time.
                counter
                    .add(client, ns, -ev.quantity)
                    .map_err(MecError::after_write)?;
                return replay(client, ns, ev);
            }
            (None, _) => {
                if let Some(v) = replay_if_recorded(client, ns, ev)? {
                    return Ok(v);
                }
                // Refused by the guard, or no row to update. Before refusing: create the counter
                // (here, or concurrently after this statement's snapshot), give back quota held by
                // expired reservations, and fold the stripes back under slot 0's lock. The fold
                // keeps that lock to the end of the transaction, so no stripe is granted quota
                // again and the next attempt decides on the exact total. (Whether the fold moved
                // anything does not matter: another backend may have folded since our attempt.)
                if attempt == 0 {
                    counter.create(client, ns)?;
                    continue;
                }
                if counter.sweep_expired_holds(client, ns)? {
                    continue;
                }
                if !slot0_locked {
                    stripes::fold(client, ns, &counter)?;
                    slot0_locked = true;
                    continue;
                }
                return Err(refusal(client, ns, ev, &eff));
            }
        }
    }
    // Holds kept expiring between attempts: decide on what is there now.
    Err(refusal(client, ns, ev, &eff))
}

/// The raw count of the current rate bucket (without the previous bucket's weight).
fn current_bucket(
    client: &SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
    window: &Window,
) -> MecResult<Decimal> {
    let start: TimestampWithTimeZone = timestamptz(window.start_us);
    let row = spi::read(
        client,
        &COUNTER_AT,
        &[
            ns.into(),
            ev.account_id.into(),
            ev.resource_type.as_str().into(),
            start.into(),
        ],
    )?
    .one::<AnyNumeric>()?;
    Ok(row
        .as_ref()
        .map(to_decimal)
        .transpose()?
        .unwrap_or_default())
}

static COUNTER_AT: Stmt = Stmt {
    sql: "SELECT coalesce(sum(used), 0) FROM mec_data.usage_counters
          WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4",
    types: &[spi::UUID, spi::UUID, spi::TEXT, spi::TIMESTAMPTZ],
    writes: false,
};

/// Meters through slot 0: the usage after the event (`None`: refused or no counter row), the new
/// ledger row's id (`None`: the key was recorded before), and whether the counter was striped
/// (decided by METER_SLOT0, not the one-statement METER_PLAIN).
#[allow(clippy::too_many_arguments)]
fn run_meter(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
    window: &Window,
    ceiling: Option<Decimal>,
    overage_from: Option<Decimal>,
    floor: Option<Decimal>,
) -> MecResult<(Option<Decimal>, Option<Uuid>, bool)> {
    let mut args = ev.ledger_args(ns, window);
    args.extend([
        ceiling.map(to_numeric).into(),
        overage_from.map(to_numeric).into(),
        floor.map(to_numeric).into(),
        ev.http_status.into(),
        ev.metadata_arg(),
    ]);
    let plain = spi::write(client, &METER_PLAIN, &args)?.two::<AnyNumeric, Uuid>()?;
    if plain.0.is_some() {
        return Ok((
            plain
                .0
                .as_ref()
                .map(to_decimal)
                .transpose()
                .map_err(MecError::after_write)?,
            plain.1,
            false,
        ));
    }
    // Striped, missing or refused: slot 0 decides, then the ledger row counts the stripes.
    let Some(slot0) = spi::write(client, &METER_SLOT0, &args)?.one::<AnyNumeric>()? else {
        return Ok((None, None, false));
    };
    args.push(slot0.clone().into());
    let recorded = spi::write(client, &RECORD_STRIPED, &args).map_err(MecError::after_write)?;
    match recorded.two::<AnyNumeric, Uuid>()? {
        (Some(total), Some(id)) => Ok((
            Some(to_decimal(&total).map_err(MecError::after_write)?),
            Some(id),
            true,
        )),
        // The key was recorded before: the caller takes the increment back.
        _ => Ok((
            Some(to_decimal(&slot0).map_err(MecError::after_write)?),
            None,
            true,
        )),
    }
}

fn record_unbilled(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
    eff: &Effective,
    window: &Window,
) -> MecResult<Value> {
    let used = usage::read(client, ns, ev.account_id, eff, ev.occurred_us)?.used;
    let mut args = ev.ledger_args(ns, window);
    args.extend([
        to_numeric(used).into(),
        eff.policy.limit.map(to_numeric).into(),
        ev.http_status.into(),
        ev.metadata_arg(),
    ]);
    let id = spi::write(client, &RECORD_UNBILLED, &args)?.one::<Uuid>()?;
    match id {
        Some(id) => Ok(result(
            id,
            false,
            false,
            &eff.policy,
            used,
            false,
            window,
            ev,
        )),
        None => replay(client, ns, ev),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn result(
    id: Uuid,
    duplicate: bool,
    billable: bool,
    policy: &Policy,
    used: Decimal,
    overage: bool,
    window: &Window,
    ev: &Event,
) -> Value {
    json!({
        "consumption_id": id.to_string(),
        "duplicate": duplicate,
        "billable": billable,
        "overage": overage,
        "account_id": ev.account_id.to_string(),
        "resource_type": ev.resource_type,
        "quantity": num(ev.quantity),
        "quantity_used": num(used),
        "quantity_allowed": opt_num(policy.limit),
        "quantity_remaining": opt_num(policy.remaining(used)),
        "percent_used": opt_num(policy.percent_used(used)),
        "period_start": ts_json(Some(window.start_us)),
        "period_end": ts_json(window.end_us),
    })
}

pub fn replay_if_recorded(
    client: &SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
) -> MecResult<Option<Value>> {
    let table = spi::read(client, &RECORDED, &[ns.into(), ev.key.as_str().into()])?;
    let Some(row) = table.into_iter().next() else {
        return Ok(None);
    };
    let id = row
        .get::<Uuid>(1)?
        .ok_or_else(|| MecError::Internal("ledger row without id".into()))?;
    let account = row.get::<Uuid>(2)?;
    let resource = row.get::<String>(3)?;
    let quantity = row
        .get::<AnyNumeric>(4)?
        .as_ref()
        .map(to_decimal)
        .transpose()?;
    let entry_type = row.get::<String>(11)?;
    if account != Some(ev.account_id)
        || resource.as_deref() != Some(ev.resource_type.as_str())
        || quantity != Some(ev.quantity)
        || entry_type.as_deref() != Some("usage")
    {
        let detail = json!({
            "idempotency_key": ev.key,
            "recorded_entry_type": entry_type,
            "recorded": {"account_id": account.map(|a| a.to_string()), "resource_type": resource, "quantity": opt_num(quantity)},
            "sent": {"account_id": ev.account_id.to_string(), "resource_type": ev.resource_type, "quantity": num(ev.quantity)},
        });
        return Err(MecError::IdempotencyConflict {
            key: ev.key.clone(),
            detail: detail.to_string(),
        });
    }
    let billable = row.get::<bool>(5)?.unwrap_or(true);
    let overage = row.get::<bool>(6)?.unwrap_or(false);
    let used = row
        .get::<AnyNumeric>(7)?
        .as_ref()
        .map(to_decimal)
        .transpose()?
        .unwrap_or_default();
    let allowed = row
        .get::<AnyNumeric>(8)?
        .as_ref()
        .map(to_decimal)
        .transpose()?;
    let start = row
        .get::<TimestampWithTimeZone>(9)?
        .map(unix_us)
        .transpose()?
        .unwrap_or_default();
    let end = row
        .get::<TimestampWithTimeZone>(10)?
        .map(unix_us)
        .transpose()?;
    let window = Window {
        start_us: start,
        end_us: end,
    };
    Ok(Some(result(
        id,
        true,
        billable,
        &Policy::new(allowed, Enforcement::Hard),
        used,
        overage,
        &window,
        ev,
    )))
}

fn replay(client: &SpiClient<'_>, ns: Uuid, ev: &Event) -> MecResult<Value> {
    replay_if_recorded(client, ns, ev)?.ok_or_else(|| {
        MecError::Internal("idempotency key conflicted but no ledger row is visible".into())
    })
}

/// Why the guarded update matched nothing: over the ceiling (ME429) or, for gauges, below zero.
fn refusal(client: &SpiClient<'_>, ns: Uuid, ev: &Event, eff: &Effective) -> MecError {
    let usage = match usage::read(client, ns, ev.account_id, eff, ev.occurred_us) {
        Ok(u) => u,
        Err(e) => return e,
    };
    if passes_bound(usage.used, ev.quantity) {
        return MecError::invalid_hint(
            format!(
                "usage of \"{}\" would reach 10^17 ({} + {}), the most one counter holds exactly",
                eff.resource_type, usage.used, ev.quantity
            ),
            "Count in a larger unit (thousands, millions) for quantities this large.",
        );
    }
    if eff.kind == Kind::Gauge && usage.used.saturating_add(ev.quantity) < Decimal::ZERO {
        return MecError::invalid(format!(
            "gauge \"{}\" would go below zero ({} + {})",
            eff.resource_type, usage.used, ev.quantity
        ));
    }
    MecError::LimitReached {
        resource: eff.resource_type.clone(),
        violated: Value::Array(vec![usage::violated_policy(eff, &usage)]),
    }
}
