//! `meter_consumption`: decide and record one usage event, exactly once.
//!
//! The hot path is one statement (`sql/meter_plain.sql`): a guarded counter `UPDATE … WHERE used +
//! qty <= ceiling` (the row lock serialises concurrent callers, so usage never passes a hard
//! ceiling) feeding the ledger `INSERT … ON CONFLICT DO NOTHING` on the idempotency key. A striped
//! counter (a hot one, see `counters/stripes.rs`) takes two: slot 0 first, then the ledger row
//! with the stripes summed under slot 0's lock. The rare cases — a replayed key, a counter row not
//! yet created, a denial — take a second look.
//!
//! Everything that can refuse the event is decided before the first write; what fails after one
//! is `MecError::AfterWrite`, so a batch never reports such an event as merely rejected.

use std::time::Instant;

use pg_mec_core::billing::is_billable;
use pg_mec_core::catalog::Kind;
use pg_mec_core::period::Window;
use pg_mec_core::quantity::{counter_ceiling, passes_bound};
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, Uuid};
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::Value;

use crate::cache::entitlement::{self, Effective};
use crate::counters::usage::Usage;
use crate::counters::{rate, stripes, usage, CounterKey};
use crate::events::alerts;
use crate::ledger::replay::{replay, replay_if_recorded};
use crate::ledger::{Event, UsageResult};
use crate::ops::dimensions::{self, Prepared};
use crate::ops::hierarchy::{self, Pools};
use crate::pg::spi::{self, stmt};
use crate::pg::values::{new_uuid, to_decimal, to_numeric};
use crate::pg::{MecError, MecResult};

/// Events up to this far in the future are accepted (clients' clocks drift).
const FUTURE_TOLERANCE_US: i64 = 5 * 60 * 1_000_000;
const DAY_US: i64 = 86_400 * 1_000_000;

stmt! {
    /// The common case of metering, one statement: see `sql/meter_plain.sql`.
    static METER_PLAIN: write (ns: uuid, key: text, account_id: uuid, resource_type: text,
                               quantity: numeric, occurred_at: timestamptz, period_start: timestamptz,
                               period_end: timestamptz, ceiling: numeric, overage_from: numeric,
                               floor: numeric, http_status: int4, metadata: jsonb, dimensions: jsonb,
                               consumption_id: uuid) =
        include_str!("sql/meter_plain.sql");
}

stmt! {
    /// The slot-0 half of metering a striped (or newly created) counter. Slot 0's guard counts the
    /// quota granted to stripes (stripe_quota): while stripes hold quota, slot 0 alone may not cross
    /// the limit, nor act under a limit other than the one the quota was granted under (the stripes
    /// are folded back first), so limits and the overage flag stay exact. The parameters are the
    /// first eleven of METER_PLAIN's (key, occurred_at and period_end unused, for the numbering),
    /// then the alert values (`fences`, jsonb): while stripes hold quota, slot 0 may not cross one
    /// either, so the event that crosses it is decided after a fold, on the exact total.
    static METER_SLOT0: write (ns: uuid, key: text, account_id: uuid, resource_type: text,
                               quantity: numeric, occurred_at: timestamptz, period_start: timestamptz,
                               period_end: timestamptz, ceiling: numeric, overage_from: numeric,
                               floor: numeric, fences: jsonb) =
        "UPDATE mec_data.usage_counters
            SET used = used + $5, updated_at = now()
          WHERE namespace_id = $1 AND account_id = $3 AND resource_type = $4
            AND period_start = $7 AND slot = 0
            AND ($9::numeric IS NULL OR used + stripe_quota + $5 <= $9)
            AND (NOT striped OR (stripe_limit IS NOT DISTINCT FROM $10::numeric
                                 AND ($10::numeric IS NULL OR used + stripe_quota + $5 <= $10)
                                 AND ($12::jsonb IS NULL OR NOT EXISTS (
                                        SELECT 1 FROM jsonb_array_elements_text($12) f
                                         WHERE f::numeric > used AND f::numeric <= used + stripe_quota + $5))))
            AND ($11::numeric IS NULL OR used + $5 >= $11)
          RETURNING used";
}

stmt! {
    /// The ledger half of metering a striped counter: see `sql/record_striped.sql`.
    static RECORD_STRIPED: write (ns: uuid, key: text, account_id: uuid, resource_type: text,
                                  quantity: numeric, occurred_at: timestamptz, period_start: timestamptz,
                                  period_end: timestamptz, ceiling: numeric, overage_from: numeric,
                                  floor: numeric, http_status: int4, metadata: jsonb,
                                  dimensions: jsonb, consumption_id: uuid, slot_used: numeric) =
        include_str!("sql/record_striped.sql");
}

stmt! {
    static RECORD_UNBILLED: write (ns: uuid, key: text, account_id: uuid, resource_type: text, quantity: numeric, occurred_at: timestamptz, period_start: timestamptz, period_end: timestamptz, quantity_used: numeric, quantity_allowed: numeric, http_status: int4, metadata: jsonb, dimensions: jsonb) =
        "INSERT INTO mec_data.consumption
                  (namespace_id, idempotency_key, consumption_id, account_id, resource_type, quantity,
                   occurred_at, period_start, period_end, billable, quantity_used, quantity_allowed,
                   http_status, metadata, dimensions)
              VALUES ($1, $2, gen_random_uuid(), $3, $4, $5, $6, $7, $8, false, $9, $10, $11, coalesce($12, '{}'), $13)
              ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
              RETURNING consumption_id";
}

stmt! {
    static LATE_EVENT_DAYS: read (ns: uuid) =
        "SELECT coalesce((settings->>'late_event_days')::int4, 7) FROM mec_data.namespaces WHERE namespace_id = $1";
}

/// Events up to `FUTURE_TOLERANCE_US` ahead of the server's clock, and up to `late_event_days`
/// plus the same tolerance behind it, are accepted (clients' clocks drift both ways; with
/// `late_event_days = 0` only that tolerance).
pub(crate) fn check_time(
    client: &SpiClient<'_>,
    ns: Uuid,
    occurred_us: i64,
    now_us: i64,
) -> MecResult<()> {
    if occurred_us > now_us + FUTURE_TOLERANCE_US {
        return Err(MecError::invalid_hint(
            "p_occurred_at is in the future",
            "Events may be dated at most 5 minutes ahead of the database's clock.",
        ));
    }
    if occurred_us < now_us - FUTURE_TOLERANCE_US {
        let days = spi::read(client, &LATE_EVENT_DAYS, &[ns.into()])?
            .one::<i32>()?
            .unwrap_or(7);
        if occurred_us < now_us - i64::from(days) * DAY_US - FUTURE_TOLERANCE_US {
            return Err(MecError::invalid_hint(
                format!("p_occurred_at is more than {days} days in the past"),
                "Late events are accepted for late_event_days (a namespace setting); record a correction with adjust_consumption instead.",
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_quantity(eff: &Effective, qty: Decimal) -> MecResult<()> {
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

/// What the counter's guard enforces for one event.
#[derive(Clone, Copy)]
struct Guard {
    /// The most the counter may hold after the event (never `None`: see `counter_ceiling`).
    ceiling: Option<Decimal>,
    /// Usage past this is overage (`None`: no overage).
    overage_from: Option<Decimal>,
    /// The least the counter may hold (gauges: zero).
    floor: Option<Decimal>,
}

/// What one metering statement did.
struct Metered {
    /// The counter after the event; `None`: refused, or no counter row yet.
    used: Option<Decimal>,
    /// The new ledger row; `None`: the key was recorded before.
    consumption_id: Option<Uuid>,
    /// Decided on slot 0 of a striped counter (METER_SLOT0), not by METER_PLAIN.
    via_slot0: bool,
}

/// Records `ev` for namespace `ns`. Raises ME429 when refused, ME409 on a reused key.
pub fn meter(client: &mut SpiClient<'_>, ns: Uuid, ev: &Event, now_us: i64) -> MecResult<Value> {
    ev.validate()?;
    check_time(client, ns, ev.occurred_us, now_us)?;
    let eff = match entitlement::resolve_for_use(
        client,
        ns,
        ev.account_id,
        &ev.resource_type,
        ev.occurred_us,
    ) {
        // A blocked account's replays still answer as the first time.
        Err(e @ MecError::PaymentOverdue { .. }) => {
            return replay_if_recorded(client, ns, ev)?.ok_or(e);
        }
        other => other?,
    };
    check_quantity(&eff, ev.quantity)?;
    let window = eff.window(ev.occurred_us);
    let billable = is_billable(&eff.billable, ev.http_status);
    // Dimensions: checked against the resource's, and their limits locked and decided first.
    let scoped = if ev.dimensions.is_empty() {
        Vec::new()
    } else {
        match dimensions::prepare(client, ns, ev, &eff, &window, billable, now_us)? {
            Prepared::Replay(v) => return Ok(v),
            Prepared::Go(scoped) => scoped,
        }
    };
    if !billable {
        return record_unbilled(client, ns, ev, &eff, &window);
    }
    // Ancestors' pools: locked and decided before the account's own counter.
    let pools = match hierarchy::prepare(client, ns, ev, &eff)? {
        Pools::Replay(v) => return Ok(v),
        Pools::Go(pools) => pools,
    };

    // What was taken on the stripes of hot pools is given back unless the event is recorded.
    let levels = OtherLevels {
        scoped: &scoped,
        pools: &pools,
    };
    let outcome = meter_own(client, ns, ev, &eff, window, &levels, now_us);
    if pools.iter().any(hierarchy::Pool::on_stripe) && !matches!(outcome, Ok((_, true))) {
        hierarchy::give_back(client, ns, &pools, ev.quantity).map_err(MecError::after_write)?;
    }
    outcome.map(|(v, _)| v)
}

/// What an event counts against besides the account's own counter, decided before it.
struct OtherLevels<'a> {
    /// Its dimension limits (locked).
    scoped: &'a [dimensions::Scoped],
    /// Its ancestors' pools (locked, or taken on a stripe).
    pools: &'a [hierarchy::Pool],
}

/// Decides and records `ev` on the account's own counter, once its other levels are decided: the
/// answer, and whether the event was recorded now (not a replay).
fn meter_own(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
    eff: &Effective,
    window: Window,
    levels: &OtherLevels<'_>,
    now_us: i64,
) -> MecResult<(Value, bool)> {
    let (scoped, pools) = (levels.scoped, levels.pools);
    if eff.kind == Kind::Rate {
        // (not pooled: nothing was taken on a pool's stripe)
        return meter_rate(client, ns, ev, eff, &window, scoped, now_us).map(|v| (v, true));
    }
    let guard = Guard {
        // Every counter row stays below pg_mec's bound (pg_mec_core::quantity), unlimited too.
        ceiling: Some(counter_ceiling(eff.policy.ceiling())),
        overage_from: eff.policy.limit,
        floor: (eff.kind == Kind::Gauge).then_some(Decimal::ZERO),
    };

    let counter = CounterKey {
        account_id: ev.account_id,
        resource_type: &ev.resource_type,
        window,
    };
    // Hot metered counters: meter on this backend's stripe (see counters/stripes.rs), which stops
    // short of every alert value (events/alerts.rs).
    // (An event counted against a dimension limit or a pool also takes slot 0's lock: one decision.)
    let stripable = eff.kind == Kind::Metered && scoped.is_empty() && pools.is_empty();
    if stripable && stripes::is_hot(ns, &counter) {
        let fences = alerts::fences(client, ns, eff)?;
        if let Some(v) = stripes::meter(client, ns, ev, eff, &counter, &fences)? {
            return Ok((v, true));
        }
    }
    let mut slot0_locked = false;
    for attempt in 0..4 {
        let started = Instant::now();
        let metered = run_meter(client, ns, ev, eff, &counter, guard)?;
        if stripable && started.elapsed() >= stripes::CONTENDED {
            stripes::saw_slow(ns, &counter);
        }
        match (metered.used, metered.consumption_id) {
            (Some(used), Some(id)) => {
                dimensions::count(client, ns, ev, scoped).map_err(MecError::after_write)?;
                let totals = hierarchy::count(client, ns, pools, ev.quantity)
                    .map_err(MecError::after_write)?;
                hierarchy::alert(client, ns, pools, &totals, ev.occurred_us, id)
                    .map_err(MecError::after_write)?;
                if metered.via_slot0 && stripable {
                    // A striped counter metered by a backend that is not hot on it: the burst
                    // may be over; idle stripes go back into slot 0 (the total stays the same).
                    stripes::fold_if_idle(client, ns, &counter).map_err(MecError::after_write)?;
                }
                alerts::after_usage_written(
                    client,
                    ns,
                    &alerts::Usage {
                        account_id: ev.account_id,
                        eff,
                        window: &window,
                        used,
                        consumption_id: Some(id),
                    },
                )?;
                return Ok((
                    UsageResult {
                        consumption_id: id,
                        duplicate: false,
                        billable: true,
                        overage: guard.overage_from.is_some_and(|l| used > l),
                        used,
                        policy: &eff.policy,
                        window: &window,
                        event: ev,
                    }
                    .to_json(),
                    true,
                ));
            }
            (Some(_), None) => {
                // The key was recorded before: take the increment back, answer as the first time.
                counter
                    .add(client, ns, -ev.quantity)
                    .map_err(MecError::after_write)?;
                return replay(client, ns, ev).map(|v| (v, false));
            }
            (None, _) => {
                if let Some(v) = replay_if_recorded(client, ns, ev)? {
                    return Ok((v, false));
                }
                // Refused by the guard, or no row to update (each attempt's slot-0 path already gave
                // back expired holds). Before refusing: create the counter (here, or concurrently
                // after this statement's snapshot), and fold the stripes back under slot 0's lock. The fold
                // keeps that lock to the end of the transaction, so no stripe is granted quota
                // again and the next attempt decides on the exact total. (Whether the fold moved
                // anything does not matter: another backend may have folded since our attempt.)
                if attempt == 0 {
                    counter.create(client, ns)?;
                    continue;
                }
                if !slot0_locked {
                    stripes::fold(client, ns, &counter)?;
                    slot0_locked = true;
                    continue;
                }
                return Err(refusal(client, ns, ev, eff));
            }
        }
    }
    // Every path above returns within three attempts; refuse if that ever changes.
    Err(refusal(client, ns, ev, eff))
}

/// Meters through slot 0: METER_PLAIN on an unstriped counter, else METER_SLOT0 and RECORD_STRIPED.
fn run_meter(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
    eff: &Effective,
    counter: &CounterKey<'_>,
    guard: Guard,
) -> MecResult<Metered> {
    let window = &counter.window;
    let mut args = ev.ledger_args(ns, window);
    args.extend([
        guard.ceiling.map(to_numeric).into(),
        guard.overage_from.map(to_numeric).into(),
        guard.floor.map(to_numeric).into(),
        ev.http_status.into(),
        ev.metadata_arg(),
        ev.dimensions_arg(),
        new_uuid().into(),
    ]);
    let written = |v: Option<AnyNumeric>| -> MecResult<Option<Decimal>> {
        v.as_ref()
            .map(to_decimal)
            .transpose()
            .map_err(MecError::after_write)
    };
    if let Some(row) = spi::write(client, &METER_PLAIN, &args)?.first() {
        if let Some(used) = row.get::<AnyNumeric>("used")? {
            return Ok(Metered {
                used: written(Some(used))?,
                consumption_id: row.get::<Uuid>("consumption_id")?,
                via_slot0: false,
            });
        }
    }
    // Striped, missing, refused or holding an expired reservation: expired holds leave, slot 0
    // decides, then the ledger row counts the stripes.
    counter.sweep_expired_holds(client, ns, None)?;
    let fences = alerts::fences(client, ns, eff)?;
    let fences = (!fences.is_empty()).then(|| {
        JsonB(Value::Array(
            fences.iter().map(|f| Value::from(f.to_string())).collect(),
        ))
    });
    let mut slot0_args = ev.ledger_args(ns, window);
    slot0_args.extend([
        guard.ceiling.map(to_numeric).into(),
        guard.overage_from.map(to_numeric).into(),
        guard.floor.map(to_numeric).into(),
        fences.into(),
    ]);
    let Some(slot0) = spi::write(client, &METER_SLOT0, &slot0_args)?.one::<AnyNumeric>()? else {
        return Ok(Metered {
            used: None,
            consumption_id: None,
            via_slot0: false,
        });
    };
    args.push(slot0.clone().into());
    let recorded = spi::write(client, &RECORD_STRIPED, &args)
        .map_err(MecError::after_write)?
        .first();
    let (total, id) = match recorded {
        Some(row) => (
            row.get::<AnyNumeric>("quantity_used")?,
            row.get::<Uuid>("consumption_id")?,
        ),
        None => (None, None),
    };
    Ok(match id {
        Some(id) => Metered {
            used: written(total)?,
            consumption_id: Some(id),
            via_slot0: true,
        },
        // The key was recorded before: the caller takes the increment back.
        None => Metered {
            used: written(Some(slot0))?,
            consumption_id: None,
            via_slot0: true,
        },
    })
}

/// Meters a rate resource: its window locked (`counters/rate.rs`), decided exactly, the ledger
/// row written, then the window counts it. No counter row: a rate writes no WAL but the ledger's.
fn meter_rate(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
    eff: &Effective,
    window: &Window,
    scoped: &[dimensions::Scoped],
    now_us: i64,
) -> MecResult<Value> {
    let key = usage::rate_key(eff, ev.account_id);
    let used = rate::lock(client, ns, &key, ev.occurred_us, now_us)?;
    let fits = eff
        .policy
        .ceiling()
        .is_none_or(|c| used.saturating_add(ev.quantity) <= c);
    if !fits || passes_bound(used, ev.quantity) {
        if let Some(v) = replay_if_recorded(client, ns, ev)? {
            return Ok(v);
        }
        return Err(refusal(client, ns, ev, eff));
    }
    let after = used.saturating_add(ev.quantity);
    let Some(id) = rate::record(client, ns, &key, ev, window, after, eff.policy.limit)? else {
        return replay(client, ns, ev);
    };
    dimensions::count(client, ns, ev, scoped).map_err(MecError::after_write)?;
    Ok(UsageResult {
        consumption_id: id,
        duplicate: false,
        billable: true,
        overage: false,
        used: after,
        policy: &eff.policy,
        window,
        event: ev,
    }
    .to_json())
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
        ev.dimensions_arg(),
    ]);
    match spi::write(client, &RECORD_UNBILLED, &args)?.one::<Uuid>()? {
        Some(id) => Ok(UsageResult {
            consumption_id: id,
            duplicate: false,
            billable: false,
            overage: false,
            used,
            policy: &eff.policy,
            window,
            event: ev,
        }
        .to_json()),
        None => replay(client, ns, ev),
    }
}

/// Why the guarded update matched nothing: over the ceiling (ME429) or, for gauges, below zero.
fn refusal(client: &SpiClient<'_>, ns: Uuid, ev: &Event, eff: &Effective) -> MecError {
    let mut usage = match usage::read(client, ns, ev.account_id, eff, ev.occurred_us) {
        Ok(u) => u,
        Err(e) => return e,
    };
    // A rate's window slides: its reset is when this request would fit, not the bucket's end.
    match usage::rate_fit_at(client, ns, ev.account_id, eff, ev.occurred_us, ev.quantity) {
        Ok(Some(at)) => usage.reset_us = Some(at),
        Ok(None) => {}
        Err(e) => return e,
    }
    refusal_from(eff, ev, usage)
}

/// Why `ev` does not fit `usage`: `22023` past pg_mec's bound or below a gauge's zero, else `ME429`.
pub(crate) fn refusal_from(eff: &Effective, ev: &Event, usage: Usage) -> MecError {
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
