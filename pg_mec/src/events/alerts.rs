//! Usage alerts: the catalog's `alerts.thresholds` (percent of the limit) and the limit itself
//! (`usage.limit_reached`), each recorded once per account × resource × period × threshold, in the
//! transaction of the usage that crossed it (`sql/record_crossings.sql`), with `NOTIFY mec_alerts`
//! on commit and a webhook event in the outbox.
//!
//! A crossing is a usage event after which the counter is at or past the threshold's value; the
//! primary key keeps the first one. Metering decides on the exact total under the counter's row
//! lock, and hot counters stop their stripes short of every alert value (`fences`), so the event
//! that crosses one is decided on slot 0 with the exact total too. Costs nothing below the first
//! threshold; past one, one statement per backend and threshold (then this backend remembers it).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use pg_mec_core::alerts::{fences as fences_of, lowest, parse_thresholds, points, Point};
use pg_mec_core::catalog::Kind;
use pg_mec_core::period::Window;
use pg_mec_core::Decimal;
use pgrx::datum::{JsonB, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::cache::entitlement::Effective;
use crate::events::outbox;
use crate::pg::invalidation;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{num, ts_json};
use crate::pg::{MecError, MecResult};

stmt! {
    static THRESHOLDS: read (ns: uuid) =
        "SELECT settings->'alert_thresholds' FROM mec_data.namespaces WHERE namespace_id = $1";
}

stmt! {
    static RECORD_CROSSINGS: write (ns: uuid, crossings: jsonb) =
        include_str!("sql/record_crossings.sql");
}

/// Crossings this backend saw already recorded (committed), so it asks no more.
const MAX_REMEMBERED: usize = 16_384;

/// Thresholds of one namespace, with the cache epoch they were read in.
type Cached = (u64, Rc<Vec<Decimal>>);

type Seen = ([u8; 16], [u8; 16], String, i64, &'static str, String);

thread_local! {
    /// namespace -> (epoch, thresholds in percent)
    static THRESHOLD_CACHE: RefCell<HashMap<Uuid, Cached>> = RefCell::new(HashMap::new());
    static RECORDED: RefCell<HashSet<Seen>> = RefCell::new(HashSet::new());
}

/// The namespace's alert thresholds (percent), from this backend's cache while nothing changed.
pub fn thresholds(client: &SpiClient<'_>, ns: Uuid) -> MecResult<Rc<Vec<Decimal>>> {
    let load = || -> MecResult<Rc<Vec<Decimal>>> {
        let stored = spi::read(client, &THRESHOLDS, &[ns.into()])?.one::<JsonB>()?;
        Ok(Rc::new(parse_thresholds(stored.as_ref().map(|j| &j.0))))
    };
    if invalidation::snapshot_per_transaction() {
        return load();
    }
    let epoch = invalidation::epoch();
    if let Some(hit) = THRESHOLD_CACHE.with(|c| {
        c.borrow()
            .get(&ns)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, t)| t.clone())
    }) {
        return Ok(hit);
    }
    let loaded = invalidation::with_fresh_snapshot(load)?;
    THRESHOLD_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 1024 {
            c.clear();
        }
        c.insert(ns, (epoch, loaded.clone()));
    });
    Ok(loaded)
}

/// Whether `eff` raises alerts: a metered resource with a positive limit.
fn alerting(eff: &Effective) -> Option<Decimal> {
    (eff.kind == Kind::Metered)
        .then_some(eff.policy.limit)
        .flatten()
        .filter(|l| *l > Decimal::ZERO)
}

/// The values stripes must stop short of for `eff` (ascending): every alert value up to the limit.
pub fn fences(client: &SpiClient<'_>, ns: Uuid, eff: &Effective) -> MecResult<Vec<Decimal>> {
    let Some(limit) = alerting(eff) else {
        return Ok(Vec::new());
    };
    Ok(fences_of(&thresholds(client, ns)?, limit))
}

/// What one usage event changed: the counter it went to and the total after it.
pub struct Usage<'a> {
    pub account_id: Uuid,
    pub eff: &'a Effective,
    pub window: &'a Window,
    /// The counter after the event, exact (decided under the counter's lock).
    pub used: Decimal,
    pub consumption_id: Option<Uuid>,
}

fn seen_key(ns: Uuid, u: &Usage<'_>, p: &Point) -> Seen {
    (
        *ns.as_bytes(),
        *u.account_id.as_bytes(),
        u.eff.resource_type.clone(),
        u.window.start_us,
        p.event_type,
        p.threshold.normalize().to_string(),
    )
}

/// Records the alerts `u` crossed (if any). Returns how many were recorded now.
pub fn after_usage(client: &mut SpiClient<'_>, ns: Uuid, u: &Usage<'_>) -> MecResult<usize> {
    let Some(limit) = alerting(u.eff) else {
        return Ok(0);
    };
    let thresholds = thresholds(client, ns)?;
    if lowest(&thresholds, limit).is_none_or(|v| u.used < v) {
        return Ok(0);
    }
    let crossed: Vec<Point> = points(&thresholds, limit)
        .into_iter()
        .filter(|p| u.used >= p.value)
        .filter(|p| !RECORDED.with(|r| r.borrow().contains(&seen_key(ns, u, p))))
        .collect();
    if crossed.is_empty() {
        return Ok(0);
    }
    let now_us = crate::pg::clock::now_us();
    let rows: Vec<Value> = crossed
        .iter()
        .map(|p| {
            let event_id = outbox::new_event_id();
            let data = json!({
                "account_id": u.account_id.to_string(),
                "resource_type": u.eff.resource_type,
                "threshold": num(p.threshold),
                "quantity_allowed": num(limit),
                "quantity_used": num(u.used),
                "percent_used": u.eff.policy.percent_used(u.used).map(num),
                "period_start": ts_json(Some(u.window.start_us)),
                "period_end": ts_json(u.window.end_us),
                "consumption_id": u.consumption_id.map(|c| c.to_string()),
            });
            json!({
                "account_id": u.account_id.to_string(),
                "resource_type": u.eff.resource_type,
                "period_start": ts_json(Some(u.window.start_us)),
                "period_end": ts_json(u.window.end_us),
                "event_type": p.event_type,
                "threshold": num(p.threshold),
                "quantity_limit": num(limit),
                "quantity_used": num(u.used),
                "consumption_id": u.consumption_id.map(|c| c.to_string()),
                "event_id": event_id.to_string(),
                "payload": outbox::payload(p.event_type, now_us, data),
            })
        })
        .collect();
    let ids: Vec<String> = rows
        .iter()
        .filter_map(|r| r["event_id"].as_str().map(str::to_string))
        .collect();
    let recorded: HashSet<String> = spi::write(
        client,
        &RECORD_CROSSINGS,
        &[ns.into(), JsonB(Value::Array(rows)).into()],
    )?
    .first()
    .map(|row| row.get::<JsonB>("recorded"))
    .transpose()?
    .flatten()
    .and_then(|j| j.0.as_array().cloned())
    .unwrap_or_default()
    .iter()
    .filter_map(|v| v.as_str().map(str::to_string))
    .collect();
    // Those not recorded now were recorded by a committed transaction: remember them.
    RECORDED.with(|r| {
        let mut r = r.borrow_mut();
        if r.len() >= MAX_REMEMBERED {
            r.clear();
        }
        for (p, id) in crossed.iter().zip(&ids) {
            if !recorded.contains(id) {
                r.insert(seen_key(ns, u, p));
            }
        }
    });
    Ok(recorded.len())
}

/// `after_usage` for a call that already wrote: its failure is an error after a write.
pub fn after_usage_written(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    u: &Usage<'_>,
) -> MecResult<usize> {
    after_usage(client, ns, u).map_err(MecError::after_write)
}
