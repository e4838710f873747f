//! The set-wise half of `meter_consumption_batch`: the batch's plain events decided together.
//!
//! A plain event is one `meter_consumption` would meter through `METER_PLAIN` alone: a metered or
//! gauge resource, billable, no dimensions, an account whose entitlement pools nothing (no
//! parent), a counter neither striped, hot nor holding reservations, a key sent once in the batch.
//! Their counters are created (those missing) and locked in one statement each, in key order (so
//! concurrent batches never deadlock on each other), the events decided in the batch's order against running
//! totals exactly as one by one, their ledger rows written in one `INSERT`, and each counter
//! changed once. Every other event is metered one by one (`ops/batch.rs`); its counter is never
//! one of these, so the order between the two halves changes no answer.
//!
//! One difference, documented in docs/CONTRACT.md: when another transaction records one of the
//! batch's keys while the batch runs (its `INSERT` then finds the key taken), that event answers as
//! a replay, and later events of the batch on the same counter were decided counting it — they
//! may be refused where they would have fit, never let through past a limit; those let through
//! are counted and recorded without it.

use std::collections::{BTreeMap, HashMap, HashSet};

use pg_mec_core::billing::is_billable;
use pg_mec_core::catalog::Kind;
use pg_mec_core::period::Window;
use pg_mec_core::quantity::counter_ceiling;
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, DatumWithOid, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use pgrx::{pg_sys, JsonB, PgSqlErrorCode};
use serde_json::Value;

use crate::cache::entitlement::{self, Effective};
use crate::counters::usage::Usage;
use crate::counters::{stripes, CounterKey};
use crate::events::alerts;
use crate::ledger::replay::replay;
use crate::ledger::{Event, UsageResult};
use crate::ops::metering;
use crate::pg::spi::{self, stmt};
use crate::pg::subtransaction;
use crate::pg::values::{new_uuid, timestamptz, to_decimal, to_numeric, unix_us};
use crate::pg::{MecError, MecResult};

stmt! {
    /// Locks the counters, in key order: their totals, whether each can be metered set-wise, and
    /// where each row is (ADD_ALL).
    /// Each key is looked up on its own (the `OFFSET 0`s keep the lateral subquery from being
    /// flattened into a join): a generic plan that merge-joined the keys against the namespace's
    /// counters read every counter of the namespace for a batch of one event.
    static LOCK_COUNTERS: write (ns: uuid, accounts: uuid_array, resources: text_array, starts: timestamptz_array) =
        "SELECT u.account_id, u.resource_type, u.period_start, u.used, u.striped, u.has_holds, u.tid
           FROM (SELECT * FROM unnest($2::uuid[], $3::text[], $4::timestamptz[])
                                AS c(account_id, resource_type, period_start)
                  ORDER BY 1, 2, 3 OFFSET 0) c
          CROSS JOIN LATERAL (
                SELECT x.*, x.ctid AS tid FROM mec_data.usage_counters x
                 WHERE x.namespace_id = $1 AND x.account_id = c.account_id
                   AND x.resource_type = c.resource_type AND x.period_start = c.period_start
                   AND x.slot = 0
                OFFSET 0 FOR UPDATE) u";
}

stmt! {
    /// Creates those missing, in key order (then LOCK_COUNTERS locks them all).
    static CREATE_COUNTERS: write (ns: uuid, accounts: uuid_array, resources: text_array,
                                   starts: timestamptz_array, ends: timestamptz_array) =
        "INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start, slot, period_end)
         SELECT $1, c.account_id, c.resource_type, c.period_start, 0, c.period_end
           FROM unnest($2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[])
                AS c(account_id, resource_type, period_start, period_end)
          ORDER BY 2, 3, 4
         ON CONFLICT DO NOTHING";
}

stmt! {
    /// Which of the keys the ledger holds already, each looked up by itself (`LIMIT 1` keeps the
    /// subquery apart): with `= ANY($2)` a generic plan filtered the namespace's whole ledger.
    static RECORDED_KEYS: read (ns: uuid, keys: text_array) =
        "SELECT k.key AS idempotency_key
           FROM unnest($2::text[]) AS k(key)
          CROSS JOIN LATERAL (SELECT 1 FROM mec_data.consumption c
                               WHERE c.namespace_id = $1 AND c.idempotency_key = k.key
                               LIMIT 1) AS found";
}

/// The accepted events' ledger rows, as METER_PLAIN writes one (RECORD_NEW, RECORD_ALL).
macro_rules! insert_ledger_rows {
    () => {
        "INSERT INTO mec_data.consumption
                (namespace_id, idempotency_key, consumption_id, account_id, resource_type, quantity,
                 occurred_at, period_start, period_end, billable, overage, overage_quantity,
                 quantity_used, quantity_allowed, http_status, metadata)
         SELECT $1, e.key, e.id, e.account_id, e.resource_type, e.quantity, e.occurred_at,
                e.period_start, e.period_end, true, e.overage, e.overage_quantity, e.quantity_used,
                e.quantity_allowed, e.http_status, coalesce(e.metadata, '{}')
           FROM unnest($2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::numeric[], $7::timestamptz[],
                       $8::timestamptz[], $9::timestamptz[], $10::bool[], $11::numeric[], $12::numeric[],
                       $13::numeric[], $14::int4[], $15::jsonb[])
                AS e(key, id, account_id, resource_type, quantity, occurred_at, period_start, period_end,
                     overage, overage_quantity, quantity_used, quantity_allowed, http_status, metadata)"
    };
}

/// A statement over the ledger rows as [`LedgerRows::args`] gives them (RECORD_NEW, RECORD_ALL).
macro_rules! ledger_rows_stmt {
    ($(#[$meta:meta])* static $name:ident = $sql:expr;) => {
        stmt! {
            $(#[$meta])*
            static $name: write (ns: uuid, keys: text_array, ids: uuid_array, accounts: uuid_array,
                                 resources: text_array, quantities: numeric_array,
                                 occurred: timestamptz_array, starts: timestamptz_array,
                                 ends: timestamptz_array, overage: bool_array,
                                 overage_quantities: numeric_array, used: numeric_array,
                                 allowed: numeric_array, statuses: int4_array, metadata: jsonb_array) =
                $sql;
        }
    };
}

ledger_rows_stmt! {
    /// The ledger rows when none of their keys is taken (RECORDED_KEYS found none, and no other
    /// transaction recorded one since): a plain `INSERT`, without `ON CONFLICT`'s speculative
    /// insertion, which costs about a third more per row. A taken key raises `23505`.
    static RECORD_NEW = insert_ledger_rows!();
}

ledger_rows_stmt! {
    /// The ledger rows, skipping the keys another transaction recorded meanwhile: the keys written.
    static RECORD_ALL = concat!(
        insert_ledger_rows!(),
        " ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
          RETURNING idempotency_key::text AS idempotency_key"
    );
}

stmt! {
    /// A ledger row counted again (see `meter`: a key recorded meanwhile by another transaction).
    static RECOUNT_ROW: write (ns: uuid, key: text, quantity_used: numeric, overage: bool,
                               overage_quantity: numeric) =
        "UPDATE mec_data.consumption SET quantity_used = $3, overage = $4, overage_quantity = $5
          WHERE namespace_id = $1 AND idempotency_key = $2";
}

stmt! {
    /// Each counter changed once, by what its recorded events add up to: found by the address
    /// LOCK_COUNTERS read it at (the row is locked since, so it has not moved).
    static ADD_ALL: write (tids: tid_array, deltas: numeric_array) =
        "UPDATE mec_data.usage_counters u SET used = u.used + d.delta, updated_at = now()
           FROM unnest($1::tid[], $2::numeric[]) AS d(tid, delta)
          WHERE u.ctid = d.tid";
}
/// What [`meter`] did: each decided event's answer by batch index, and the events it handed back
/// to be metered one by one (their counter turned out striped or holding reservations).
pub struct Decided {
    pub outcomes: Vec<(usize, MecResult<Value>)>,
    pub handed_back: Vec<(usize, Event)>,
}

/// One plain event: where it is in the batch, and what governs it.
pub struct Plain {
    pub index: usize,
    pub event: Event,
    eff: Effective,
    window: Window,
}

/// A counter: account, resource, period start.
type Key = (Uuid, String, i64);

fn key_of(p: &Plain) -> Key {
    (
        p.event.account_id,
        p.event.resource_type.clone(),
        p.window.start_us,
    )
}

/// What [`classify`] decided for one parsed event.
pub enum Route {
    /// Decided set-wise.
    Plain(Box<Plain>),
    /// Metered one by one; `pooled`: it counts in its ancestors' counters too.
    Single { event: Event, pooled: bool },
}

/// Whether `ev` is plain, given what `meter_consumption` would check before its first write. An
/// event that fails a check goes the single way, which raises the same error.
pub fn classify(client: &SpiClient<'_>, ns: Uuid, ev: Event, now_us: i64) -> Route {
    let mut pooled = false;
    let plain = (|| -> MecResult<Option<(Effective, Window)>> {
        ev.validate()?;
        metering::check_time(client, ns, ev.occurred_us, now_us)?;
        let eff = entitlement::resolve_for_use(
            client,
            ns,
            ev.account_id,
            &ev.resource_type,
            ev.occurred_us,
        )?;
        metering::check_quantity(&eff, ev.quantity)?;
        pooled = eff.parent.is_some();
        if !matches!(eff.kind, Kind::Metered | Kind::Gauge)
            || pooled
            || !ev.dimensions.is_empty()
            || !is_billable(&eff.billable, ev.http_status)
        {
            return Ok(None);
        }
        let window = eff.window(ev.occurred_us);
        let counter = CounterKey {
            account_id: ev.account_id,
            resource_type: &ev.resource_type,
            window,
        };
        if stripes::is_hot(ns, &counter) {
            return Ok(None);
        }
        Ok(Some((eff, window)))
    })();
    match plain {
        Ok(Some((eff, window))) => Route::Plain(Box::new(Plain {
            index: 0,
            event: ev,
            eff,
            window,
        })),
        _ => Route::Single { event: ev, pooled },
    }
}

/// Counters as the statements above take them: parallel arrays, in key order.
#[derive(Default)]
struct Counters {
    accounts: Vec<Uuid>,
    resources: Vec<String>,
    starts: Vec<TimestampWithTimeZone>,
    ends: Vec<Option<TimestampWithTimeZone>>,
}

impl Counters {
    fn of<'k>(keys: impl IntoIterator<Item = (&'k Key, &'k Option<i64>)>) -> Counters {
        let mut c = Counters::default();
        for ((account, resource, start), end) in keys {
            c.accounts.push(*account);
            c.resources.push(resource.clone());
            c.starts.push(timestamptz(*start));
            c.ends.push(end.map(timestamptz));
        }
        c
    }
}

/// What [`lock`] found.
struct Locked {
    /// The totals of the counters that may be metered set-wise (not striped, holding no
    /// reservations) ...
    totals: HashMap<Key, Decimal>,
    /// ... and where their rows are.
    tids: HashMap<Key, pg_sys::ItemPointerData>,
    /// Every key found.
    found: HashSet<Key>,
}

/// Locks the counters of `wanted` (key order).
fn lock(client: &mut SpiClient<'_>, ns: Uuid, wanted: &Counters) -> MecResult<Locked> {
    let rows = spi::write(
        client,
        &LOCK_COUNTERS,
        &[
            ns.into(),
            wanted.accounts.clone().into(),
            wanted.resources.clone().into(),
            wanted.starts.clone().into(),
        ],
    )?;
    let mut locked = Locked {
        totals: HashMap::new(),
        tids: HashMap::new(),
        found: HashSet::new(),
    };
    for row in rows {
        let account = row.get::<Uuid>("account_id")?;
        let resource = row.get::<String>("resource_type")?;
        let start = row.get::<TimestampWithTimeZone>("period_start")?;
        let (Some(account), Some(resource), Some(start)) = (account, resource, start) else {
            continue;
        };
        let key = (account, resource, unix_us(start)?);
        locked.found.insert(key.clone());
        if row.get::<bool>("striped")?.unwrap_or(false)
            || row.get::<bool>("has_holds")?.unwrap_or(false)
        {
            continue;
        }
        let used = row
            .get::<AnyNumeric>("used")?
            .as_ref()
            .map(to_decimal)
            .transpose()?
            .unwrap_or_default();
        if let Some(tid) = row.get::<pg_sys::ItemPointerData>("tid")? {
            locked.tids.insert(key.clone(), tid);
        }
        locked.totals.insert(key, used);
    }
    Ok(locked)
}

/// Decides and records `plain` (in batch order).
pub fn meter(client: &mut SpiClient<'_>, ns: Uuid, plain: Vec<Plain>) -> MecResult<Decided> {
    if plain.is_empty() {
        return Ok(Decided {
            outcomes: Vec::new(),
            handed_back: Vec::new(),
        });
    }
    let mut wanted: BTreeMap<Key, Option<i64>> = BTreeMap::new();
    for p in &plain {
        wanted.insert(key_of(p), p.window.end_us);
    }
    // Created (those missing) and then locked, all in key order: two batches never wait for each
    // other in opposite orders. Counters this backend has seen are not offered for creating again.
    let unknown: Vec<(&Key, &Option<i64>)> =
        wanted.iter().filter(|(k, _)| !known::has(ns, k)).collect();
    if !unknown.is_empty() {
        let missing = Counters::of(unknown);
        spi::write(
            client,
            &CREATE_COUNTERS,
            &[
                ns.into(),
                missing.accounts.into(),
                missing.resources.into(),
                missing.starts.into(),
                missing.ends.into(),
            ],
        )?;
    }
    let Locked {
        mut totals,
        tids,
        found,
    } = lock(client, ns, &Counters::of(&wanted))?;
    known::learn(ns, wanted.keys(), &found);
    let (plain, back): (Vec<Plain>, Vec<Plain>) = plain
        .into_iter()
        .partition(|p| totals.contains_key(&key_of(p)));
    let handed_back = back.into_iter().map(|p| (p.index, p.event)).collect();
    let keys: Vec<&str> = plain.iter().map(|p| p.event.key.as_str()).collect();
    let recorded: HashSet<String> = spi::read(client, &RECORDED_KEYS, &[ns.into(), keys.into()])?
        .into_iter()
        .filter_map(|r| r.get::<String>("idempotency_key").ok().flatten())
        .collect();

    let locked = totals.clone();
    let mut outcomes: Vec<(usize, MecResult<Value>)> = Vec::new();
    // Accepted events: (position in `plain`, usage after it).
    let mut accepted: Vec<(usize, Decimal)> = Vec::new();
    for (i, p) in plain.iter().enumerate() {
        if recorded.contains(&p.event.key) {
            outcomes.push((p.index, replay(client, ns, &p.event)));
            continue;
        }
        let key = key_of(p);
        let used = totals.get(&key).copied().unwrap_or_default();
        let after = used.saturating_add(p.event.quantity);
        let fits = after <= counter_ceiling(p.eff.policy.ceiling())
            && (p.eff.kind != Kind::Gauge || after >= Decimal::ZERO);
        if fits {
            totals.insert(key, after);
            accepted.push((i, after));
        } else {
            let usage = Usage {
                used,
                window: p.window,
                updated_us: None,
                reset_us: p.window.end_us,
            };
            outcomes.push((
                p.index,
                Err(metering::refusal_from(&p.eff, &p.event, usage)),
            ));
        }
    }
    // The ledger rows, one statement: a plain INSERT, or when a key turns out taken after all
    // (another transaction recorded it meanwhile), one that skips those.
    let mut ids: HashMap<String, Uuid> = HashMap::new();
    if !accepted.is_empty() {
        let rows = LedgerRows::of(accepted.iter().map(|&(i, after)| (&plain[i], after)));
        let made: Vec<(String, Uuid)> = rows
            .keys
            .iter()
            .cloned()
            .zip(rows.ids.iter().copied())
            .collect();
        let args = rows.args(ns);
        let all_new =
            subtransaction::unless_raised(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, || {
                spi::write(client, &RECORD_NEW, &args).map(drop)
            })?;
        if all_new.is_some() {
            ids.extend(made);
        } else {
            let written: HashSet<String> = spi::write(client, &RECORD_ALL, &args)?
                .into_iter()
                .filter_map(|row| row.get::<String>("idempotency_key").ok().flatten())
                .collect();
            ids.extend(made.into_iter().filter(|(k, _)| written.contains(k)));
        }
    }
    if ids.len() < accepted.len() {
        // Keys recorded meanwhile by another transaction: those events are replays now, and the
        // events after them on their counters are counted again without them, ledger rows too
        // (whether they fit was decided counting them: never past a limit).
        let mut running = locked;
        for (i, after) in accepted.iter_mut() {
            let p = &plain[*i];
            if !ids.contains_key(&p.event.key) {
                continue;
            }
            let key = key_of(p);
            let recount = running
                .get(&key)
                .copied()
                .unwrap_or_default()
                .saturating_add(p.event.quantity);
            running.insert(key, recount);
            if recount != *after {
                *after = recount;
                let (overage, overage_quantity) = overage_of(p, recount);
                spi::write(
                    client,
                    &RECOUNT_ROW,
                    &[
                        ns.into(),
                        p.event.key.as_str().into(),
                        to_numeric(recount).into(),
                        overage.into(),
                        to_numeric(overage_quantity).into(),
                    ],
                )
                .map_err(MecError::after_write)?;
            }
        }
    }
    // Each counter once, by what was recorded.
    let mut deltas: BTreeMap<Key, Decimal> = BTreeMap::new();
    for &(i, _) in &accepted {
        let p = &plain[i];
        if ids.contains_key(&p.event.key) {
            let d = deltas.entry(key_of(p)).or_default();
            *d = d.saturating_add(p.event.quantity);
        }
    }
    if !deltas.is_empty() {
        let mut rows: Vec<pg_sys::ItemPointerData> = Vec::with_capacity(deltas.len());
        let mut amounts: Vec<AnyNumeric> = Vec::with_capacity(deltas.len());
        for (key, delta) in &deltas {
            // Every accepted event's counter was locked, and its address read with it.
            let tid = tids.get(key).ok_or_else(|| {
                MecError::Internal(format!("counter {key:?} was not locked")).after_write()
            })?;
            rows.push(*tid);
            amounts.push(to_numeric(*delta));
        }
        spi::write(client, &ADD_ALL, &[rows.into(), amounts.into()])
            .map_err(MecError::after_write)?;
    }
    for &(i, after) in &accepted {
        let p = &plain[i];
        let Some(&id) = ids.get(&p.event.key) else {
            // Recorded meanwhile by another transaction: a replay now.
            outcomes.push((p.index, replay(client, ns, &p.event)));
            continue;
        };
        alerts::after_usage_written(
            client,
            ns,
            &alerts::Usage {
                account_id: p.event.account_id,
                eff: &p.eff,
                window: &p.window,
                used: after,
                consumption_id: Some(id),
            },
        )?;
        let result = UsageResult {
            consumption_id: id,
            duplicate: false,
            billable: true,
            overage: p.eff.policy.limit.is_some_and(|l| after > l),
            used: after,
            policy: &p.eff.policy,
            window: &p.window,
            event: &p.event,
        }
        .to_json();
        outcomes.push((p.index, Ok(result)));
    }
    Ok(Decided {
        outcomes,
        handed_back,
    })
}

/// Whether `p` with usage `after` is overage, and how much of it (as METER_PLAIN records them;
/// past no limit nothing is overage).
fn overage_of(p: &Plain, after: Decimal) -> (bool, Decimal) {
    match p.eff.policy.limit {
        Some(l) => (
            after > l,
            after
                .saturating_sub(l)
                .min(p.event.quantity)
                .max(Decimal::ZERO),
        ),
        None => (false, Decimal::ZERO),
    }
}

/// The accepted events' ledger rows as RECORD_ALL takes them (parallel arrays), each as
/// METER_PLAIN writes one.
#[derive(Default)]
struct LedgerRows {
    keys: Vec<String>,
    /// Their consumption ids, made here: a plain INSERT answers nothing.
    ids: Vec<Uuid>,
    accounts: Vec<Uuid>,
    resources: Vec<String>,
    quantities: Vec<AnyNumeric>,
    occurred: Vec<TimestampWithTimeZone>,
    starts: Vec<TimestampWithTimeZone>,
    ends: Vec<Option<TimestampWithTimeZone>>,
    overage: Vec<bool>,
    overage_quantities: Vec<AnyNumeric>,
    used: Vec<AnyNumeric>,
    allowed: Vec<Option<AnyNumeric>>,
    statuses: Vec<Option<i32>>,
    metadata: Vec<Option<JsonB>>,
}

impl LedgerRows {
    fn of<'p>(events: impl Iterator<Item = (&'p Plain, Decimal)>) -> LedgerRows {
        let mut r = LedgerRows::default();
        for (p, after) in events {
            let limit = p.eff.policy.limit;
            let (overage, overage_quantity) = overage_of(p, after);
            let metadata = p.event.metadata.as_object().filter(|m| !m.is_empty());
            r.keys.push(p.event.key.clone());
            r.ids.push(new_uuid());
            r.accounts.push(p.event.account_id);
            r.resources.push(p.event.resource_type.clone());
            r.quantities.push(to_numeric(p.event.quantity));
            r.occurred.push(timestamptz(p.event.occurred_us));
            r.starts.push(timestamptz(p.window.start_us));
            r.ends.push(p.window.end_us.map(timestamptz));
            r.overage.push(overage);
            r.overage_quantities.push(to_numeric(overage_quantity));
            r.used.push(to_numeric(after));
            r.allowed.push(limit.map(to_numeric));
            r.statuses.push(p.event.http_status);
            r.metadata
                .push(metadata.map(|_| JsonB(p.event.metadata.clone())));
        }
        r
    }

    fn args(self, ns: Uuid) -> Vec<DatumWithOid<'static>> {
        vec![
            ns.into(),
            self.keys.into(),
            self.ids.into(),
            self.accounts.into(),
            self.resources.into(),
            self.quantities.into(),
            self.occurred.into(),
            self.starts.into(),
            self.ends.into(),
            self.overage.into(),
            self.overage_quantities.into(),
            self.used.into(),
            self.allowed.into(),
            self.statuses.into(),
            self.metadata.into(),
        ]
    }
}

/// The counters this backend has seen exist, so that a batch offers only the others to
/// CREATE_COUNTERS (an `INSERT … ON CONFLICT` that probes every key it is given). Never trusted for
/// more than that: a key it lists whose row is gone (its transaction rolled back, its account
/// deleted) is not locked, so its events are metered one by one, which creates the row, and the key
/// is forgotten.
mod known {
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};

    use pgrx::datum::Uuid;

    use super::Key;

    /// Forgotten all at once past this many (a few MB).
    const MAX: usize = 20_000;

    #[derive(Default)]
    struct Seen {
        by_namespace: HashMap<Uuid, HashSet<Key>>,
        count: usize,
    }

    thread_local! {
        static SEEN: RefCell<Seen> = RefCell::new(Seen::default());
    }

    pub fn has(ns: Uuid, key: &Key) -> bool {
        SEEN.with(|s| {
            s.borrow()
                .by_namespace
                .get(&ns)
                .is_some_and(|keys| keys.contains(key))
        })
    }

    /// Remembers which of `wanted` LOCK_COUNTERS `found`, and forgets the others.
    pub fn learn<'k>(ns: Uuid, wanted: impl Iterator<Item = &'k Key>, found: &HashSet<Key>) {
        SEEN.with(|s| {
            let mut seen = s.borrow_mut();
            for key in wanted {
                if found.contains(key) {
                    if seen.count >= MAX {
                        *seen = Seen::default();
                    }
                    let keys = seen.by_namespace.entry(ns).or_default();
                    if !keys.contains(key) {
                        keys.insert(key.clone());
                        seen.count += 1;
                    }
                } else if let Some(keys) = seen.by_namespace.get_mut(&ns) {
                    if keys.remove(key) {
                        seen.count -= 1;
                    }
                }
            }
        });
    }
}
