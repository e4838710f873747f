//! Striped counters for hot accounts (escrow), so that many callers metering one account do not
//! queue on one row lock that is held through every commit's flush.
//!
//! A backend that keeps waiting on slot 0 of a `metered` counter ([`SLOW_TO_HOT`] statements
//! slower than [`CONTENDED`] within [`SLOW_WINDOW`]; one slow statement alone is as likely a busy
//! CPU as a lock wait) marks the counter hot for itself and meters on its own stripe from then on:
//! slot `1 + pid % STRIPES`. A stripe may only consume the quota slot 0 granted it; slot 0 keeps
//! `stripe_quota` = the sum of the stripes' quotas and counts it in its own guard. So:
//!
//! * total = used₀ + Σ usedᵢ ≤ used₀ + Σ quotaᵢ = used₀ + stripe_quota ≤ ceiling — never more
//!   than the limit allows, not by one unit;
//! * quota is granted only up to the *limit*, and slot 0 may not cross the limit while stripes
//!   hold quota, so every event past the limit is decided on slot 0 with the exact total and the
//!   overage flag is exact;
//! * when a stripe runs dry and slot 0 has no headroom left to grant, the stripes are folded back
//!   into slot 0 (their usage moved, their quota returned) and the event is decided there;
//! * quota stops strictly short of the next alert value (`events/alerts.rs`; the limit is one),
//!   and slot 0 may not cross one while stripes hold quota, so the event that crosses an alert is
//!   decided on the exact total and the alert is recorded in its transaction.
//!
//! An ancestor's pool that its members' events keep waiting on (a busy organisation) is striped the
//! same way: [`take`] counts a member's event on the pool's stripe, without a ledger row (the
//! member's own counter records it), and [`give_back`] returns it if the event is not recorded.
//!
//! Lock order is always slot 0 first, then stripes in slot order. Unlimited counters get
//! unbounded stripes (quota NULL); a plan or override change folds the account's stripes first.
//!
//! When the contention is over, the stripes go back into slot 0: a backend that meters a striped
//! counter through slot 0 (it is not hot itself) and finds that no stripe was touched for
//! [`IDLE_AFTER_SECS`] folds them ([`fold_if_idle`]), so the counter returns to the one-statement
//! path instead of staying striped to the end of its period. That fold never waits: it locks the
//! stripes `SKIP LOCKED` and folds only if it got every one of them (a stripe locked by a
//! transaction still in progress is not idle, and waiting for it while holding slot 0 could
//! deadlock with that transaction asking for slot 0).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pg_mec_core::quantity::counter_ceiling;
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, TimestampWithTimeZone, Uuid};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use serde_json::Value;

use crate::cache::entitlement::Effective;
use crate::counters::CounterKey;
use crate::ledger::replay::replay_if_recorded;
use crate::ledger::{Event, UsageResult};
use crate::pg::spi::{self, stmt};
use crate::pg::subtransaction;
use crate::pg::values::{to_decimal, to_numeric};
use crate::pg::{MecError, MecResult};

/// Stripes per hot counter.
pub const STRIPES: i32 = 16;
/// A slot-0 statement slower than this most likely waited for the row lock.
pub const CONTENDED: Duration = Duration::from_millis(2);
/// Slow statements on one counter within [`SLOW_WINDOW`] that make it hot.
pub const SLOW_TO_HOT: u32 = 3;
pub const SLOW_WINDOW: Duration = Duration::from_secs(1);
/// How long a backend keeps metering a counter it found hot on its stripe.
const HOT_FOR: Duration = Duration::from_secs(300);
const MAX_TRACKED: usize = 4096;

/// Stripes untouched for this long are folded back by a backend metering through slot 0.
pub const IDLE_AFTER_SECS: i32 = 5;
/// How often one backend looks for idle stripes on one counter.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(1);

type HotKey = ([u8; 16], [u8; 16], String, i64);

/// What this backend saw of one counter: slow statements since `since`, hot from `hot` on.
#[derive(Clone, Copy)]
struct Seen {
    since: Instant,
    slow: u32,
    hot: Option<Instant>,
}

thread_local! {
    static HOT: RefCell<HashMap<HotKey, Seen>> = RefCell::new(HashMap::new());
    /// When this backend last looked for idle stripes on a counter.
    static IDLE_CHECKED: RefCell<HashMap<HotKey, Instant>> = RefCell::new(HashMap::new());
}

fn hot_key(ns: Uuid, c: &CounterKey<'_>) -> HotKey {
    (
        *ns.as_bytes(),
        *c.account_id.as_bytes(),
        c.resource_type.to_string(),
        c.window.start_us,
    )
}

pub fn is_hot(ns: Uuid, c: &CounterKey<'_>) -> bool {
    HOT.with(|h| {
        h.borrow()
            .get(&hot_key(ns, c))
            .and_then(|seen| seen.hot)
            .is_some_and(|since| since.elapsed() < HOT_FOR)
    })
}

/// Records a slot-0 statement on `c` that took longer than [`CONTENDED`].
pub fn saw_slow(ns: Uuid, c: &CounterKey<'_>) {
    HOT.with(|h| {
        let mut h = h.borrow_mut();
        if h.len() >= MAX_TRACKED {
            h.retain(|_, seen| {
                seen.since.elapsed() < SLOW_WINDOW
                    || seen.hot.is_some_and(|t| t.elapsed() < HOT_FOR)
            });
            if h.len() >= MAX_TRACKED {
                h.clear();
            }
        }
        let now = Instant::now();
        let seen = h.entry(hot_key(ns, c)).or_insert(Seen {
            since: now,
            slow: 0,
            hot: None,
        });
        if seen.hot.is_some_and(|t| now.duration_since(t) < HOT_FOR) {
            return;
        }
        if now.duration_since(seen.since) > SLOW_WINDOW {
            *seen = Seen {
                since: now,
                slow: 0,
                hot: None,
            };
        }
        seen.slow += 1;
        if seen.slow >= SLOW_TO_HOT {
            seen.hot = Some(now);
        }
    });
}

/// This backend's stripe.
fn my_slot() -> i32 {
    // SAFETY: MyProcPid is set once at backend start.
    let pid = unsafe { pg_sys::MyProcPid };
    1 + pid.rem_euclid(STRIPES)
}

stmt! {
    static STRIPE_METER: write (ns: uuid, key: text, account_id: uuid, resource_type: text, quantity: numeric, occurred_at: timestamptz, period_start: timestamptz, period_end: timestamptz, slot: int4, limit: numeric, http_status: int4, metadata: jsonb, bound: numeric, dimensions: jsonb) =
        include_str!("sql/stripe_meter.sql");
}

stmt! {
    /// Takes `$5` on stripe `$6` of a counter that another account's usage counts against (an
    /// ancestor's pool), within the quota slot 0 granted it under the limit in force (`$7`), and
    /// answers the counter's total. As STRIPE_METER, without the ledger row (the member's own).
    static STRIPE_TAKE: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz,
                               quantity: numeric, slot: int4, limit: numeric, bound: numeric) =
        "WITH upd AS (
              UPDATE mec_data.usage_counters
                 SET used = used + $5, updated_at = clock_timestamp()
               WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                 AND period_start = $4 AND slot = $6
                 AND (quota IS NULL OR used + $5 <= quota)
                 AND used + $5 <= $8
                 AND EXISTS (SELECT 1 FROM mec_data.usage_counters h
                              WHERE h.namespace_id = $1 AND h.account_id = $2 AND h.resource_type = $3
                                AND h.period_start = $4 AND h.slot = 0 AND h.striped
                                AND h.stripe_limit IS NOT DISTINCT FROM $7::numeric)
              RETURNING used)
         SELECT upd.used + (SELECT coalesce(sum(c.used), 0) FROM mec_data.usage_counters c
                             WHERE c.namespace_id = $1 AND c.account_id = $2 AND c.resource_type = $3
                               AND c.period_start = $4 AND c.slot <> $6) AS used
           FROM upd";
}

stmt! {
    static UNDO_STRIPE: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, quantity: numeric, slot: int4) =
        "UPDATE mec_data.usage_counters SET used = used - $5
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = $6";
}

stmt! {
    /// Locks slot 0 (creating it if missing): its usage and the quota granted to stripes.
    /// `$6` is the limit in force; the last column says the stripes hold quota granted under another.
    static LOCK_SLOT0: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, period_end: timestamptz, limit: numeric) =
        "INSERT INTO mec_data.usage_counters AS u (namespace_id, account_id, resource_type, period_start, slot, period_end)
              VALUES ($1, $2, $3, $4, 0, $5)
              ON CONFLICT (namespace_id, account_id, resource_type, period_start, slot)
              DO UPDATE SET updated_at = now()
              RETURNING used, stripe_quota, striped AND stripe_limit IS DISTINCT FROM $6::numeric AS stale";
}

stmt! {
    /// Grants `$7` more quota to stripe `$6` (NULL: unbounded), under slot 0's lock.
    static GRANT: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, period_end: timestamptz, slot: int4, quota: numeric, limit: numeric) =
        "WITH stripe AS (
                  INSERT INTO mec_data.usage_counters AS u
                      (namespace_id, account_id, resource_type, period_start, slot, period_end, quota, updated_at)
                  VALUES ($1, $2, $3, $4, $6, $5, $7, clock_timestamp())
                  ON CONFLICT (namespace_id, account_id, resource_type, period_start, slot)
                  DO UPDATE SET quota = CASE WHEN excluded.quota IS NULL THEN NULL ELSE coalesce(u.quota, 0) + excluded.quota END,
                                updated_at = excluded.updated_at
                  RETURNING 1)
              UPDATE mec_data.usage_counters
                 SET stripe_quota = stripe_quota + coalesce($7, 0), striped = true, stripe_limit = $8
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0
                AND EXISTS (SELECT 1 FROM stripe)";
}

/// The statement that moves the stripes' usage into slot 0 and takes their quota back, when the
/// `idle` CTE (a condition on the `locked` stripes) has a row. `$lock` is how the stripes are
/// locked. Slot 0 must be locked first.
macro_rules! fold_sql {
    ($lock:literal, $idle:literal) => {
        concat!(
            "WITH locked AS MATERIALIZED (
                  SELECT slot, used, updated_at FROM mec_data.usage_counters
                  WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot > 0
                  ORDER BY slot ",
            $lock,
            "), idle AS MATERIALIZED (",
            $idle,
            "), zeroed AS (
                  UPDATE mec_data.usage_counters c SET used = 0, quota = 0, updated_at = clock_timestamp()
                  FROM locked, idle
                  WHERE c.namespace_id = $1 AND c.account_id = $2 AND c.resource_type = $3 AND c.period_start = $4
                    AND c.slot = locked.slot
                  RETURNING locked.used
              )
              UPDATE mec_data.usage_counters
                 SET used = used + (SELECT coalesce(sum(used), 0) FROM zeroed), stripe_quota = 0,
                     striped = false, stripe_limit = NULL, updated_at = now()
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0
                AND EXISTS (SELECT 1 FROM idle)
                AND (striped OR EXISTS (SELECT 1 FROM zeroed WHERE used <> 0))
              RETURNING true"
        )
    };
}

stmt! {
    /// Moves the stripes' usage into slot 0 and takes their quota back, waiting for every stripe.
    static FOLD: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz) =
        fold_sql!("FOR UPDATE", "SELECT true AS yes");
}

stmt! {
    /// Whether the counter has stripes and none was touched for `$5` seconds (a plain read: the
    /// common answer, no, costs no lock).
    static STRIPES_IDLE: read (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, idle_seconds: int4) =
        "SELECT max(updated_at) < clock_timestamp() - $5 * interval '1 second'
              FROM mec_data.usage_counters
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4
                AND slot > 0";
}

stmt! {
    /// FOLD for idle stripes, without ever waiting: locks the stripes `SKIP LOCKED` and folds only
    /// when it locked every stripe and none of them was touched for `$5` seconds (re-checked on the
    /// locked rows). Slot 0 must be locked first (no stripe can be created meanwhile).
    static FOLD_IF_IDLE: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, idle_seconds: int4) =
        fold_sql!(
            "FOR UPDATE SKIP LOCKED",
            "SELECT true AS yes
             WHERE (SELECT count(*) FROM locked)
                   = (SELECT count(*) FROM mec_data.usage_counters
                      WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                        AND period_start = $4 AND slot > 0)
               AND NOT EXISTS (SELECT 1 FROM locked
                               WHERE updated_at >= clock_timestamp() - $5 * interval '1 second')"
        );
}

/// Called by a backend that just metered `c` through slot 0, in READ COMMITTED (it holds slot 0's
/// lock): folds the stripes back when none was touched for [`IDLE_AFTER_SECS`] and none is locked
/// by a transaction in progress. Looks at most once per [`IDLE_CHECK_EVERY`] per counter, so a
/// counter that stays striped costs one extra read a second. Never waits for a lock.
pub fn fold_if_idle(client: &mut SpiClient<'_>, ns: Uuid, c: &CounterKey<'_>) -> MecResult<()> {
    if crate::pg::invalidation::snapshot_per_transaction() {
        // Locking rows changed since a transaction snapshot raises a serialization failure.
        return Ok(());
    }
    let key = hot_key(ns, c);
    let due = IDLE_CHECKED.with(|m| {
        let mut m = m.borrow_mut();
        let now = Instant::now();
        if m.get(&key)
            .is_some_and(|t| now.duration_since(*t) < IDLE_CHECK_EVERY)
        {
            return false;
        }
        if m.len() >= MAX_TRACKED {
            m.clear();
        }
        m.insert(key, now);
        true
    });
    if !due {
        return Ok(());
    }
    let mut args = c.args(ns, false);
    args.push(IDLE_AFTER_SECS.into());
    if spi::read(client, &STRIPES_IDLE, &args)?.one::<bool>()? == Some(true) {
        spi::write(client, &FOLD_IF_IDLE, &args)?;
    }
    Ok(())
}

stmt! {
    /// The slot-0 rows of an account's striped counters, locked in key order.
    static STRIPED_HEADS: write (ns: uuid, account_id: uuid) =
        "SELECT h.resource_type, h.period_start FROM mec_data.usage_counters h
              WHERE h.namespace_id = $1 AND h.account_id = $2 AND h.slot = 0
                AND EXISTS (SELECT 1 FROM mec_data.usage_counters s
                            WHERE s.namespace_id = $1 AND s.account_id = $2 AND s.resource_type = h.resource_type
                              AND s.period_start = h.period_start AND s.slot > 0)
              ORDER BY h.resource_type, h.period_start
              FOR UPDATE";
}

/// Folds the stripes of one counter back into slot 0; true when there was anything to fold.
pub fn fold(client: &mut SpiClient<'_>, ns: Uuid, c: &CounterKey<'_>) -> MecResult<bool> {
    let mut lock = c.args(ns, true);
    lock.push(Option::<AnyNumeric>::None.into());
    spi::write(client, &LOCK_SLOT0, &lock)?;
    let folded = spi::write(client, &FOLD, &c.args(ns, false))?;
    Ok(!folded.is_empty())
}

/// Folds every striped counter of an account: before its limits change.
pub fn fold_account(client: &mut SpiClient<'_>, ns: Uuid, account_id: Uuid) -> MecResult<()> {
    let mut heads = Vec::new();
    for row in spi::write(client, &STRIPED_HEADS, &[ns.into(), account_id.into()])? {
        if let (Some(resource), Some(start)) = (
            row.get::<String>("resource_type")?,
            row.get::<TimestampWithTimeZone>("period_start")?,
        ) {
            heads.push((resource, start));
        }
    }
    for (resource, start) in heads {
        spi::write(
            client,
            &FOLD,
            &[
                ns.into(),
                account_id.into(),
                resource.as_str().into(),
                start.into(),
            ],
        )?;
    }
    Ok(())
}

enum Grant {
    Granted,
    Exhausted,
}

/// Under slot 0's lock, grants this backend's stripe enough quota for `qty`, if the limit and the
/// next of `fences` (alert values, ascending) leave room; otherwise the stripes must be folded.
fn grant(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    c: &CounterKey<'_>,
    slot: i32,
    limit: Option<Decimal>,
    qty: Decimal,
    fences: &[Decimal],
) -> MecResult<Grant> {
    let (used0, granted, stale) = {
        let mut args = c.args(ns, true);
        args.push(limit.map(to_numeric).into());
        spi::write(client, &LOCK_SLOT0, &args)?
    }
    .three::<AnyNumeric, AnyNumeric, bool>("used", "stripe_quota", "stale")?;
    if stale == Some(true) {
        // Quota granted under another limit (or unbounded): take it all back first.
        return Ok(Grant::Exhausted);
    }
    let chunk = match limit {
        None => None,
        Some(limit) => {
            let used0 = used0
                .as_ref()
                .map(to_decimal)
                .transpose()?
                .unwrap_or_default();
            let granted = granted
                .as_ref()
                .map(to_decimal)
                .transpose()?
                .unwrap_or_default();
            // Quota stops short of the next fence (an alert value, the limit among them), strictly:
            // the event that reaches one is decided on slot 0 with the exact total.
            let upper = used0 + granted;
            let fenced = pg_mec_core::alerts::next_fence(fences, upper).filter(|f| *f <= limit);
            let headroom = fenced.unwrap_or(limit) - upper;
            if headroom < qty || (fenced.is_some() && headroom == qty) {
                return Ok(Grant::Exhausted);
            }
            let share = (headroom / Decimal::from(2 * STRIPES)).floor();
            Some(share.max(qty).min(headroom))
        }
    };
    let mut args = c.args(ns, true);
    args.extend([
        slot.into(),
        chunk.map(to_numeric).into(),
        limit.map(to_numeric).into(),
    ]);
    spi::write(client, &GRANT, &args)?;
    Ok(Grant::Granted)
}

// A guarded `UPDATE` that waited for a row and then failed its re-check keeps the row locked. On
// a stripe that would break the lock order (slot 0 first): a backend holding its stripe would then
// wait for slot 0 while a fold holding slot 0 waits for that stripe. So each try on a stripe runs
// in a subtransaction, rolled back when it takes nothing: that releases the stripe before slot 0
// is asked for (also in `meter` below).

/// Takes `qty` on this backend's stripe of `c`, a counter the event counts against besides its
/// own (an ancestor's pool): the counter's total after it. `None`: the stripes were folded; decide
/// on slot 0. What it takes is given back with [`give_back`] if the event is not recorded.
pub fn take(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    c: &CounterKey<'_>,
    limit: Option<Decimal>,
    qty: Decimal,
    fences: &[Decimal],
) -> MecResult<Option<Decimal>> {
    let slot = my_slot();
    for _ in 0..3 {
        let total = subtransaction::kept_if(
            || {
                let mut args = c.args(ns, false);
                args.extend([
                    to_numeric(qty).into(),
                    slot.into(),
                    limit.map(to_numeric).into(),
                    to_numeric(counter_ceiling(None)).into(),
                ]);
                spi::write(client, &STRIPE_TAKE, &args)?.one::<AnyNumeric>()
            },
            Option::is_some,
        )?;
        if let Some(total) = total {
            return Ok(Some(to_decimal(&total)?));
        }
        if let Grant::Exhausted = grant(client, ns, c, slot, limit, qty, fences)? {
            fold(client, ns, c)?;
            return Ok(None);
        }
    }
    fold(client, ns, c)?;
    Ok(None)
}

/// Gives back what [`take`] took on this backend's stripe of `c` (the event was not recorded).
pub fn give_back(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    c: &CounterKey<'_>,
    qty: Decimal,
) -> MecResult<()> {
    let mut args = c.args(ns, false);
    args.extend([to_numeric(qty).into(), my_slot().into()]);
    spi::write(client, &UNDO_STRIPE, &args)?;
    Ok(())
}

/// Meters `ev` on this backend's stripe. `None`: the stripes were folded; decide on slot 0.
pub fn meter(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
    eff: &Effective,
    c: &CounterKey<'_>,
    fences: &[Decimal],
) -> MecResult<Option<Value>> {
    let slot = my_slot();
    for _ in 0..3 {
        let (total, id) = subtransaction::kept_if(
            || {
                let mut args = ev.ledger_args(ns, &c.window);
                args.extend([
                    slot.into(),
                    eff.policy.limit.map(to_numeric).into(),
                    ev.http_status.into(),
                    ev.metadata_arg(),
                    to_numeric(counter_ceiling(None)).into(),
                    ev.dimensions_arg(),
                ]);
                spi::write(client, &STRIPE_METER, &args)?
                    .two::<AnyNumeric, Uuid>("used", "consumption_id")
            },
            |(total, _)| total.is_some(),
        )?;
        let total = total
            .as_ref()
            .map(to_decimal)
            .transpose()
            .map_err(MecError::after_write)?;
        match (total, id) {
            (Some(total), Some(id)) => {
                return Ok(Some(
                    UsageResult {
                        consumption_id: id,
                        duplicate: false,
                        billable: true,
                        overage: false,
                        used: total,
                        policy: &eff.policy,
                        window: &c.window,
                        event: ev,
                    }
                    .to_json(),
                ))
            }
            (Some(_), None) => {
                let mut args = c.args(ns, false);
                args.extend([to_numeric(ev.quantity).into(), slot.into()]);
                spi::write(client, &UNDO_STRIPE, &args).map_err(MecError::after_write)?;
                return replay_if_recorded(client, ns, ev);
            }
            (None, _) => {
                if let Some(v) = replay_if_recorded(client, ns, ev)? {
                    return Ok(Some(v));
                }
                if let Grant::Exhausted =
                    grant(client, ns, c, slot, eff.policy.limit, ev.quantity, fences)?
                {
                    fold(client, ns, c)?;
                    return Ok(None);
                }
            }
        }
    }
    fold(client, ns, c)?;
    Ok(None)
}
