//! The entitlement in force for one account and resource at one moment: the plan's row, replaced by
//! an override, raised by grants. One indexed query per account and resource, then answered from
//! this backend's cache until a change to the tables it read invalidates it (`cache.rs`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::str::FromStr;

use pg_mec_core::billing::{default_billable, StatusClass};
use pg_mec_core::catalog::Kind;
use pg_mec_core::enforcement::{Enforcement, Policy};
use pg_mec_core::period::{period_window, rate_window, Period, Window};
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;

use crate::errors::{MecError, MecResult};
use crate::{args, cache};
use crate::spi::{self, Stmt};
use crate::values::{timestamptz, to_decimal};

/// What governs one account's use of one resource at one moment.
#[derive(Debug, Clone)]
pub struct Effective {
    pub resource_type: String,
    pub kind: Kind,
    pub window_seconds: Option<u32>,
    pub policy: Policy,
    pub period: Period,
    /// Features: on or off. Other kinds: true.
    pub enabled: bool,
    /// Whether any entitlement row applies (none: limit 0, reason `not_entitled`).
    pub entitled: bool,
    pub anchor_day: Option<u8>,
    pub billable: Vec<StatusClass>,
}

impl Effective {
    /// The counter window that an event at `at_us` falls into.
    pub fn window(&self, at_us: i64) -> Window {
        match (self.kind, self.window_seconds) {
            (Kind::Rate, Some(w)) => rate_window(w, at_us),
            _ => period_window(self.period, at_us, self.anchor_day),
        }
    }

    /// The window as the policy names it in denials: seconds for rates, the period otherwise.
    pub fn window_json(&self) -> serde_json::Value {
        match (self.kind, self.window_seconds) {
            (Kind::Rate, Some(w)) => serde_json::Value::from(w),
            _ => serde_json::Value::from(self.period.as_str()),
        }
    }
}

/// Every entitlement row of one account and resource still in force at or after `$4`, with the
/// resource's and the account's header columns (one row with NULL entitlement columns when there
/// is none). The moment of the call is applied in Rust, so one fetch serves any later moment.
static LOOKUP: Stmt = Stmt {
    sql: "SELECT r.kind, r.window_seconds, r.billable_statuses::text, a.billing_anchor_day::int4,
                 e.source, e.quantity_limit, e.period, e.enforcement, e.overage_cap, e.grace, e.enabled,
                 e.valid_from, e.valid_until
          FROM mec_data.accounts a
          JOIN mec_data.resource_types r
            ON r.namespace_id = a.namespace_id AND r.resource_type = $3
          LEFT JOIN mec_data.entitlements e
            ON e.namespace_id = a.namespace_id AND e.account_id = a.account_id
           AND e.resource_type = $3 AND (e.valid_until IS NULL OR e.valid_until > $4)
          WHERE a.namespace_id = $1 AND a.account_id = $2",
    types: &[spi::UUID, spi::UUID, spi::TEXT, spi::TIMESTAMPTZ],
    writes: false,
};

static EXISTS: Stmt = Stmt {
    sql: "SELECT EXISTS (SELECT 1 FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2),
                 EXISTS (SELECT 1 FROM mec_data.resource_types WHERE namespace_id = $1 AND resource_type = $3)",
    types: &[spi::UUID, spi::UUID, spi::TEXT],
    writes: false,
};

/// One entitlement row (source plan / override / grant) and its validity window.
#[derive(Debug)]
struct Row {
    source: String,
    limit: Option<Decimal>,
    period: Option<String>,
    enforcement: Option<String>,
    overage_cap: Option<Decimal>,
    grace: Option<Decimal>,
    enabled: bool,
    valid_from_us: i64,
    valid_until_us: Option<i64>,
}

impl Row {
    fn in_force(&self, at_us: i64) -> bool {
        self.valid_from_us <= at_us && self.valid_until_us.is_none_or(|u| u > at_us)
    }
}

/// What LOOKUP returned for one account and resource: everything `resolve` needs at any moment
/// from `since_us` on.
#[derive(Debug)]
struct Fetched {
    kind: Kind,
    window_seconds: Option<i32>,
    billable: Vec<StatusClass>,
    anchor: Option<i32>,
    /// Newest first (the newest override wins).
    rows: Vec<Row>,
    since_us: i64,
}

/// How far back a cached lookup answers: events older than this (late events) query directly.
const CACHE_HORIZON_US: i64 = 40 * 86_400 * 1_000_000;
/// Entries per backend before the cache starts over.
const CACHE_CAPACITY: usize = 50_000;

type Key = (Uuid, Uuid, String);

thread_local! {
    /// Lookups of this backend: (namespace, account, resource) -> rows, valid for one epoch.
    static CACHE: RefCell<(u64, HashMap<Key, Rc<Fetched>>)> = RefCell::new((0, HashMap::new()));
}

fn dec(v: Option<AnyNumeric>) -> MecResult<Option<Decimal>> {
    v.as_ref().map(to_decimal).transpose()
}

fn micros(v: Option<TimestampWithTimeZone>) -> MecResult<Option<i64>> {
    v.map(crate::values::unix_us).transpose()
}

fn parse_statuses(text: Option<String>) -> Vec<StatusClass> {
    text.and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
        .map(|vals| {
            vals.iter()
                .filter_map(|v| StatusClass::from_json(v).ok())
                .collect()
        })
        .unwrap_or_else(default_billable)
}

/// Runs LOOKUP: `None` when the account or the resource type does not exist.
fn fetch(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    since_us: i64,
) -> MecResult<Option<Fetched>> {
    let since: TimestampWithTimeZone = timestamptz(since_us);
    let table = spi::read(
        client,
        &LOOKUP,
        &[
            ns.into(),
            account_id.into(),
            resource_type.into(),
            since.into(),
        ],
    )?;
    let mut fetched: Option<Fetched> = None;
    for row in table {
        let f = match fetched.as_mut() {
            Some(f) => f,
            None => {
                let kind = row.get::<String>(1)?.unwrap_or_default();
                fetched.insert(Fetched {
                    kind: Kind::from_str(&kind).map_err(|e| MecError::Internal(e.to_string()))?,
                    window_seconds: row.get::<i32>(2)?,
                    billable: parse_statuses(row.get::<String>(3)?),
                    anchor: row.get::<i32>(4)?,
                    rows: Vec::new(),
                    since_us,
                })
            }
        };
        if let Some(source) = row.get::<String>(5)? {
            f.rows.push(Row {
                source,
                limit: dec(row.get::<AnyNumeric>(6)?)?,
                period: row.get::<String>(7)?,
                enforcement: row.get::<String>(8)?,
                overage_cap: dec(row.get::<AnyNumeric>(9)?)?,
                grace: dec(row.get::<AnyNumeric>(10)?)?,
                enabled: row.get::<bool>(11)?.unwrap_or(true),
                valid_from_us: micros(row.get::<TimestampWithTimeZone>(12)?)?.unwrap_or(0),
                valid_until_us: micros(row.get::<TimestampWithTimeZone>(13)?)?,
            });
        }
    }
    if let Some(f) = fetched.as_mut() {
        // Newest first, sorted here rather than by a Sort node per call.
        f.rows
            .sort_by_key(|r| std::cmp::Reverse(r.valid_from_us));
    }
    Ok(fetched)
}

/// LOOKUP through this backend's cache (see `cache.rs` for how it stays fresh). Events older
/// than the cache's horizon query directly.
fn lookup(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    at_us: i64,
) -> MecResult<Option<Rc<Fetched>>> {
    let epoch = cache::epoch();
    let key: Key = (ns, account_id, resource_type.to_string());
    let hit = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != epoch {
            *c = (epoch, HashMap::new());
            return None;
        }
        c.1.get(&key).filter(|f| f.since_us <= at_us).cloned()
    });
    if hit.is_some() {
        return Ok(hit);
    }
    let since_us = args::now_us() - CACHE_HORIZON_US;
    if at_us < since_us {
        return Ok(fetch(client, ns, account_id, resource_type, at_us)?.map(Rc::new));
    }
    let Some(fetched) = fetch(client, ns, account_id, resource_type, since_us)?.map(Rc::new) else {
        return Ok(None);
    };
    // Keep it only if no invalidation arrived while it was read.
    if cache::epoch() == epoch {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 == epoch {
                if c.1.len() >= CACHE_CAPACITY {
                    c.1.clear();
                }
                c.1.insert(key, fetched.clone());
            }
        });
    }
    Ok(Some(fetched))
}

/// Resolves the entitlement of `account_id` for `resource_type` at `at_us`.
/// Raises `ME404` for an unknown account or resource type.
pub fn resolve(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    at_us: i64,
) -> MecResult<Effective> {
    let Some(f) = lookup(client, ns, account_id, resource_type, at_us)? else {
        return Err(diagnose_missing(client, ns, account_id, resource_type));
    };
    Ok(combine(resource_type, &f, at_us))
}

fn diagnose_missing(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
) -> MecError {
    let found = spi::read(
        client,
        &EXISTS,
        &[ns.into(), account_id.into(), resource_type.into()],
    )
    .and_then(|t| t.two::<bool, bool>());
    match found {
        Ok((Some(false), _)) => MecError::unknown("account", account_id.to_string()),
        Ok((_, Some(false))) => MecError::unknown("resource type", resource_type),
        Ok(_) => {
            MecError::Internal("entitlement lookup found neither a row nor a missing key".into())
        }
        Err(e) => e,
    }
}

/// Folds the rows in force at `at_us` (newest first) into one policy: the newest override
/// replaces the plan row; grants add their quantity to a finite limit.
fn combine(resource_type: &str, f: &Fetched, at_us: i64) -> Effective {
    let kind = f.kind;
    let in_force = || f.rows.iter().filter(|r| r.in_force(at_us));
    let base = in_force()
        .find(|r| r.source == "override")
        .or_else(|| in_force().find(|r| r.source == "plan"));
    let grants: Decimal = in_force()
        .filter(|r| r.source == "grant")
        .filter_map(|r| r.limit)
        .sum();
    let entitled = in_force().next().is_some();
    let default_period = kind.default_period().unwrap_or(Period::Month);
    let (policy, period, enabled) = match base {
        Some(b) => {
            let enforcement = b
                .enforcement
                .as_deref()
                .and_then(|e| Enforcement::from_str(e).ok());
            let mut policy = Policy::new(
                b.limit.map(|l| l + grants),
                enforcement.unwrap_or(Enforcement::Hard),
            );
            // Leases are whole slots: no grace unless the catalog asks for it.
            policy.grace = b
                .grace
                .or((kind == Kind::Concurrency).then_some(Decimal::ZERO));
            policy.overage_cap = b.overage_cap;
            let period = b
                .period
                .as_deref()
                .and_then(|p| Period::from_str(p).ok())
                .unwrap_or(default_period);
            (policy, period, b.enabled)
        }
        None => (
            Policy::new(Some(grants), Enforcement::Hard),
            default_period,
            false,
        ),
    };
    Effective {
        resource_type: resource_type.to_string(),
        kind,
        window_seconds: f.window_seconds.and_then(|w| u32::try_from(w).ok()),
        policy,
        period,
        enabled: enabled || (kind != Kind::Feature && base.is_some()),
        entitled,
        anchor_day: f.anchor.and_then(|a| u8::try_from(a).ok()),
        billable: f.billable.clone(),
    }
}
