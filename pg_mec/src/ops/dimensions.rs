//! Dimensions of usage events (`p_dimensions`, e.g. `{"model_class": "PRO_L"}`) and the plan's
//! limits per dimension value (`dimension_limits`, e.g. tokens of `PRO_L` ≤ 1 M a month).
//!
//! An event's dimensions must be declared by its resource (`$.resources[].dimensions`). Each value
//! with a limit in the plan row in force has a counter of its own — key `<resource>@<dim>=<value>`,
//! the same period as the resource's — decided together with the resource's counter: the scoped
//! counters are locked and checked first (so a refusal writes nothing), then the event is metered
//! as usual, then the scoped counters count it. Their row locks serialise concurrent callers as
//! slot 0's does, so no scoped limit is passed either; scoped counters are never striped.

use std::collections::BTreeMap;

use pg_mec_core::catalog::{Kind, ScopedLimit};
use pg_mec_core::enforcement::{Enforcement, Policy};
use pg_mec_core::period::Window;
use pg_mec_core::Decimal;
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Map, Value};

use crate::cache::entitlement::Effective;
use crate::counters::rate::{self, RateKey};
use crate::counters::scoped_name;
use crate::ledger::replay::replay_if_recorded;
use crate::ledger::Event;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{iso8601, json_decimal, num, opt_num, timestamptz, to_numeric};
use crate::pg::{MecError, MecResult};

stmt! {
    /// The resource's declared dimensions and the dimension limits of the plan row in force at `$4`.
    static DECLARED_AND_LIMITS: read (ns: uuid, account_id: uuid, resource_type: text, at: timestamptz) =
        "SELECT r.dimensions,
                (SELECT e.dimension_limits FROM mec_data.entitlements e
                  WHERE e.namespace_id = $1 AND e.account_id = $2 AND e.resource_type = $3
                    AND e.source = 'plan' AND e.valid_from <= $4
                    AND (e.valid_until IS NULL OR e.valid_until > $4)
                  ORDER BY e.valid_from DESC LIMIT 1) AS dimension_limits
           FROM mec_data.resource_types r
          WHERE r.namespace_id = $1 AND r.resource_type = $3";
}

stmt! {
    static ENSURE_COUNTER: write (ns: uuid, account_id: uuid, counter: text, period_start: timestamptz, period_end: timestamptz) =
        "INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start, slot, period_end)
              VALUES ($1, $2, $3, $4, 0, $5)
              ON CONFLICT DO NOTHING";
}

stmt! {
    static LOCK_COUNTER: write (ns: uuid, account_id: uuid, counter: text, period_start: timestamptz) =
        "SELECT used FROM mec_data.usage_counters
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0
              FOR UPDATE";
}

stmt! {
    static ADD: write (ns: uuid, account_id: uuid, counter: text, period_start: timestamptz, quantity: numeric) =
        "UPDATE mec_data.usage_counters SET used = used + $5, updated_at = now()
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0";
}

stmt! {
    /// The usage carrying `$6` = `$7` that the ledger had recorded by `$8` in the period at `$4`
    /// (an `as of` summary: corrections carry no dimensions).
    static RECORDED_BY: read (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz,
                              period_end: timestamptz, dimension: text, value: text, at: timestamptz) =
        "SELECT coalesce(sum(quantity), 0) FROM (
              SELECT quantity FROM mec_data.consumption
               WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                 AND occurred_at >= $4 AND ($5::timestamptz IS NULL OR occurred_at < $5)
                 AND period_start = $4 AND billable AND recorded_at <= $8
                 AND dimensions ->> $6 = $7
              UNION ALL
              SELECT quantity FROM mec_data.consumption_rollups
               WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                 AND period_start = $4 AND billable AND recorded_until <= $8
                 AND dimensions ->> $6 = $7) u";
}

stmt! {
    static READ_COUNTER: read (ns: uuid, account_id: uuid, counter: text, period_start: timestamptz) =
        "SELECT used FROM mec_data.usage_counters
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0";
}

/// `dimension_limits` as stored (quantities as decimal strings, so they read back exactly).
pub fn limits_json(limits: &[ScopedLimit]) -> Option<Value> {
    if limits.is_empty() {
        return None;
    }
    let mut out: Map<String, Value> = Map::new();
    for l in limits {
        let by_value = out
            .entry(l.dimension.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(m) = by_value.as_object_mut() {
            m.insert(
                l.value.clone(),
                json!({
                    "limit": l.limit.map(|d| d.normalize().to_string()),
                    "enforcement": l.enforcement.as_str(),
                    "grace": l.grace.map(|d| d.normalize().to_string()),
                    "overage_cap": l.overage_cap.map(|d| d.normalize().to_string()),
                }),
            );
        }
    }
    Some(Value::Object(out))
}

/// Reads stored `dimension_limits` back: (dimension, value) → policy.
pub fn parse_limits(v: &Value) -> BTreeMap<(String, String), Policy> {
    let mut out = BTreeMap::new();
    let Some(dims) = v.as_object() else {
        return out;
    };
    for (dimension, by_value) in dims {
        let Some(by_value) = by_value.as_object() else {
            continue;
        };
        for (value, l) in by_value {
            let dec = |k: &str| l.get(k).and_then(json_decimal);
            let enforcement = l
                .get("enforcement")
                .and_then(Value::as_str)
                .and_then(|e| e.parse::<Enforcement>().ok())
                .unwrap_or(Enforcement::Hard);
            out.insert(
                (dimension.clone(), value.clone()),
                Policy {
                    limit: dec("limit"),
                    enforcement,
                    grace: dec("grace"),
                    overage_cap: dec("overage_cap"),
                },
            );
        }
    }
    out
}

/// A scoped counter an event counts against.
pub struct Scoped {
    counter: String,
    start: TimestampWithTimeZone,
    dimension: String,
    value: String,
    /// A rate resource's window (µs): the scope counts in a sliding window, not a counter row.
    rate_window_us: Option<i64>,
}

impl Scoped {
    fn rate_key<'a>(&'a self, ev: &'a Event, window_us: i64) -> RateKey<'a> {
        RateKey {
            account_id: ev.account_id,
            resource_type: &ev.resource_type,
            scope: Some((&self.dimension, &self.value)),
            window_us,
        }
    }
}

/// What [`prepare`] found.
pub enum Prepared {
    /// The key was recorded before: its first answer.
    Replay(Value),
    /// The scoped counters to count the event in once it is recorded (locked, with room).
    Go(Vec<Scoped>),
}

fn window_args(window: &Window) -> (TimestampWithTimeZone, Option<TimestampWithTimeZone>) {
    (timestamptz(window.start_us), window.end_us.map(timestamptz))
}

/// Checks `ev`'s dimensions against its resource's declared ones (`22023` otherwise) and, for a
/// billable event, locks and checks each scoped counter it counts against: `ME429` naming every
/// scoped limit it would pass, and nothing written but empty counter rows.
pub fn prepare(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
    eff: &Effective,
    window: &Window,
    billable: bool,
    now_us: i64,
) -> MecResult<Prepared> {
    let at: TimestampWithTimeZone = timestamptz(ev.occurred_us);
    // An account that inherits its entitlement inherits its dimension limits with it.
    let limits_from = limits_account(eff, ev.account_id);
    let row = spi::read(
        client,
        &DECLARED_AND_LIMITS,
        &[
            ns.into(),
            limits_from.into(),
            ev.resource_type.as_str().into(),
            at.into(),
        ],
    )?
    .first();
    let (declared, limits) = match row {
        Some(r) => (
            r.get::<JsonB>("dimensions")?.map(|j| j.0),
            r.get::<JsonB>("dimension_limits")?.map(|j| j.0),
        ),
        None => (None, None),
    };
    let declared = declared.unwrap_or(Value::Null);
    for (name, value) in &ev.dimensions {
        let Some(values) = declared.get(name).and_then(Value::as_array) else {
            let known: Vec<&str> = declared
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            return Err(MecError::invalid_hint(
                format!(
                    "resource \"{}\" has no dimension \"{name}\"",
                    ev.resource_type
                ),
                if known.is_empty() {
                    "Declare the resource's dimensions in the catalog ($.resources[].dimensions)."
                        .to_string()
                } else {
                    format!("Its dimensions are: {}.", known.join(", "))
                },
            ));
        };
        if !values.iter().any(|v| v.as_str() == Some(value.as_str())) {
            let allowed: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
            return Err(MecError::invalid_hint(
                format!(
                    "\"{value}\" is not a value of dimension \"{name}\" of resource \"{}\"",
                    ev.resource_type
                ),
                format!("Its values are: {}.", allowed.join(", ")),
            ));
        }
    }
    let limits = limits.map(|l| parse_limits(&l)).unwrap_or_default();
    if !billable || limits.is_empty() {
        return Ok(Prepared::Go(Vec::new()));
    }
    let (start, end) = window_args(window);
    let mut scoped = Vec::new();
    let mut violated = Vec::new();
    for (name, value) in &ev.dimensions {
        let Some(policy) = limits.get(&(name.clone(), value.clone())) else {
            continue;
        };
        let counter = scoped_name(&ev.resource_type, name, value);
        let rate_window_us = (eff.kind == Kind::Rate)
            .then(|| i64::from(eff.window_seconds.unwrap_or(1)) * 1_000_000);
        let s = Scoped {
            counter,
            start,
            dimension: name.clone(),
            value: value.clone(),
            rate_window_us,
        };
        let (used, window_seconds, reset_at) = match rate_window_us {
            Some(w) => {
                let key = s.rate_key(ev, w);
                let used = rate::lock(client, ns, &key, ev.occurred_us, now_us)?;
                let reset = match policy.ceiling() {
                    Some(c) if !policy.decide(used, ev.quantity).allowed => {
                        rate::fit_at(client, ns, &key, ev.occurred_us, c, ev.quantity)?
                    }
                    _ => None,
                };
                (used, Some(w / 1_000_000), reset)
            }
            None => {
                let counter = s.counter.as_str();
                spi::write(
                    client,
                    &ENSURE_COUNTER,
                    &[
                        ns.into(),
                        ev.account_id.into(),
                        counter.into(),
                        start.into(),
                        end.into(),
                    ],
                )?;
                let used = spi::write(
                    client,
                    &LOCK_COUNTER,
                    &[
                        ns.into(),
                        ev.account_id.into(),
                        counter.into(),
                        start.into(),
                    ],
                )?
                .decimal_or_zero()?;
                (
                    used,
                    window.end_us.map(|e| (e - window.start_us) / 1_000_000),
                    window.end_us,
                )
            }
        };
        if !policy.decide(used, ev.quantity).allowed {
            violated.push(json!({
                "policy": s.counter,
                "dimension": name,
                "value": value,
                "kind": eff.kind.as_str(),
                "limit": opt_num(policy.limit),
                "ceiling": opt_num(policy.ceiling()),
                "current": num(used),
                "window": eff.window_json(),
                "window_seconds": window_seconds,
                "reset_at": reset_at.map(iso8601),
                "enforcement": policy.enforcement.as_str(),
            }));
        }
        scoped.push(s);
    }
    if !violated.is_empty() {
        if let Some(v) = replay_if_recorded(client, ns, ev)? {
            return Ok(Prepared::Replay(v));
        }
        let scopes: Vec<String> = violated
            .iter()
            .filter_map(|v| {
                Some(format!(
                    "{}={}",
                    v["dimension"].as_str()?,
                    v["value"].as_str()?
                ))
            })
            .collect();
        return Err(MecError::LimitReached {
            resource: format!("{} ({})", ev.resource_type, scopes.join(", ")),
            violated: Value::Array(violated),
        });
    }
    Ok(Prepared::Go(scoped))
}

/// Counts a recorded event in the scoped counters [`prepare`] locked.
pub fn count(client: &mut SpiClient<'_>, ns: Uuid, ev: &Event, scoped: &[Scoped]) -> MecResult<()> {
    for s in scoped {
        if let Some(w) = s.rate_window_us {
            rate::append(client, ns, &s.rate_key(ev, w), ev.occurred_us, ev.quantity)?;
            continue;
        }
        spi::write(
            client,
            &ADD,
            &[
                ns.into(),
                ev.account_id.into(),
                s.counter.as_str().into(),
                s.start.into(),
                to_numeric(ev.quantity).into(),
            ],
        )?;
    }
    Ok(())
}

/// The account whose plan row holds the dimension limits that apply to `account`: the ancestor it
/// inherits its entitlement from, else itself.
pub fn limits_account(eff: &Effective, account: Uuid) -> Uuid {
    eff.inherited_from
        .as_deref()
        .and_then(crate::pg::context::parse_uuid)
        .unwrap_or(account)
}

/// One dimension limit and its usage: (dimension, value, limit, used).
pub type ScopedUsage = (String, String, Policy, Decimal);

/// The dimension limits of the plan row in force at `at_us` for `resource`, each with its usage
/// in `window`: (dimension, value, limit, used). `as_of`: the usage the ledger had recorded by
/// `at_us`, not the counter's.
pub fn scoped_usage(
    client: &SpiClient<'_>,
    ns: Uuid,
    (account, limits_from): (Uuid, Uuid),
    resource: &str,
    window: &Window,
    at_us: i64,
    as_of: bool,
) -> MecResult<Option<Vec<ScopedUsage>>> {
    let at: TimestampWithTimeZone = timestamptz(at_us);
    let limits = spi::read(
        client,
        &DECLARED_AND_LIMITS,
        &[ns.into(), limits_from.into(), resource.into(), at.into()],
    )?
    .first()
    .map(|r| r.get::<JsonB>("dimension_limits"))
    .transpose()?
    .flatten();
    let Some(limits) = limits else {
        return Ok(None);
    };
    let (start, end) = window_args(window);
    let mut out = Vec::new();
    for ((dimension, value), policy) in parse_limits(&limits.0) {
        let counter = scoped_name(resource, &dimension, &value);
        let rows = if as_of {
            spi::read(
                client,
                &RECORDED_BY,
                &[
                    ns.into(),
                    account.into(),
                    resource.into(),
                    start.into(),
                    end.into(),
                    dimension.as_str().into(),
                    value.as_str().into(),
                    at.into(),
                ],
            )?
        } else {
            spi::read(
                client,
                &READ_COUNTER,
                &[
                    ns.into(),
                    account.into(),
                    counter.as_str().into(),
                    start.into(),
                ],
            )?
        };
        let used = rows.decimal_or_zero()?;
        out.push((dimension, value, policy, used));
    }
    Ok(Some(out))
}

/// [`scoped_usage`] (of `accounts`: the account and the one its limits come from) as `usage_summary` shows it, keyed `<dimension>=<value>`; `None` when the plan
/// row has no dimension limits.
pub fn summary(
    client: &SpiClient<'_>,
    ns: Uuid,
    accounts: (Uuid, Uuid),
    resource: &str,
    window: &Window,
    at_us: i64,
    as_of: bool,
) -> MecResult<Option<Value>> {
    let Some(scoped) = scoped_usage(client, ns, accounts, resource, window, at_us, as_of)? else {
        return Ok(None);
    };
    let mut out = Map::new();
    for (dimension, value, policy, used) in scoped {
        out.insert(
            format!("{dimension}={value}"),
            json!({
                "dimension": dimension,
                "value": value,
                "current": num(used),
                "limit": opt_num(policy.limit),
                "remaining": opt_num(policy.remaining(used)),
                "percent_used": opt_num(policy.percent_used(used)),
                "enforcement": policy.enforcement.as_str(),
            }),
        );
    }
    Ok(Some(Value::Object(out)))
}
