//! Read-only answers: one resource (`check_entitlement`) or all of an account (`usage_summary`).

use pg_mec_core::catalog::Kind;
use pg_mec_core::Decimal;
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Map, Value};

use crate::cache::entitlement;
use crate::counters::{rate, usage};
use crate::ops::history;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{num, opt_num, timestamptz, ts_json};
use crate::pg::{MecError, MecResult};

stmt! {
    static ACCOUNT: read (ns: uuid, account_id: uuid) =
        "SELECT a.external_id, a.plan_id, p.name AS plan_name, a.payment_overdue, a.plan_version
              FROM mec_data.accounts a
              LEFT JOIN mec_data.plans p ON p.namespace_id = a.namespace_id AND p.plan_id = a.plan_id
              WHERE a.namespace_id = $1 AND a.account_id = $2";
}

stmt! {
    /// The plan whose rows were in force at `$3` (an `as of` summary's plan).
    static PLAN_AT: read (ns: uuid, account_id: uuid, at: timestamptz) =
        "SELECT e.plan_id, p.name AS plan_name, e.plan_version FROM mec_data.entitlements e
              LEFT JOIN mec_data.plans p ON p.namespace_id = e.namespace_id AND p.plan_id = e.plan_id
              WHERE e.namespace_id = $1 AND e.account_id = $2 AND e.source = 'plan'
                AND e.valid_from <= $3 AND (e.valid_until IS NULL OR e.valid_until > $3)
              ORDER BY e.valid_from DESC LIMIT 1";
}

stmt! {
    static RESOURCES_IN_FORCE: read (ns: uuid, account_id: uuid, at: timestamptz) =
        "WITH RECURSIVE up(account_id, depth) AS (
              SELECT $2::uuid, 0
              UNION ALL
              SELECT a.parent_account_id, up.depth + 1 FROM mec_data.accounts a
                JOIN up ON a.namespace_id = $1 AND a.account_id = up.account_id
               WHERE a.parent_account_id IS NOT NULL AND up.depth < 3)
         -- the account's resources and, inherited, its ancestors'
         SELECT DISTINCT resource_type FROM mec_data.entitlements
              WHERE namespace_id = $1 AND account_id IN (SELECT account_id FROM up)
                AND valid_from <= $3 AND (valid_until IS NULL OR valid_until > $3)
              ORDER BY resource_type";
}

pub fn check(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    resource: &str,
    requested: Decimal,
    now_us: i64,
) -> MecResult<Value> {
    if requested < Decimal::ZERO {
        return Err(MecError::invalid(format!(
            "p_requested_qty must not be negative, got {requested}"
        )));
    }
    let eff = entitlement::resolve(client, ns, account, resource, now_us)?;
    let used = usage::read(client, ns, account, &eff, now_us)?;
    let mut out = usage::check_result(&eff, &used, requested);
    with_hierarchy(client, ns, &eff, now_us, requested, &mut out)?;
    Ok(out)
}

/// An account in a hierarchy: where its entitlement comes from (`inherited_from`) and its
/// ancestors' pools (`pools`); a pool that would refuse makes the check deny (`pool_limit_reached`)
/// and the least remaining of every level is what remains.
fn with_hierarchy(
    client: &SpiClient<'_>,
    ns: Uuid,
    eff: &entitlement::Effective,
    at_us: i64,
    requested: Decimal,
    out: &mut Value,
) -> MecResult<()> {
    if eff.parent.is_none() {
        return Ok(());
    }
    let pools = crate::ops::hierarchy::pool_answers(client, ns, eff, at_us, requested)?;
    let Some(o) = out.as_object_mut() else {
        return Ok(());
    };
    o.insert("inherited_from".into(), json!(eff.inherited_from));
    if pools.is_empty() {
        return Ok(());
    }
    let decimal = |v: &Value| crate::pg::values::json_decimal(v);
    let mut remaining = o.get("quantity_remaining").and_then(decimal);
    for p in &pools {
        if let Some(r) = p.get("quantity_remaining").and_then(decimal) {
            remaining = Some(remaining.map_or(r, |m| m.min(r)));
        }
    }
    if o.get("decision").and_then(Value::as_str) == Some("allow")
        && pools.iter().any(|p| p["decision"] == "deny")
    {
        o.insert("decision".into(), json!("deny"));
        o.insert("reason".into(), json!("pool_limit_reached"));
    }
    o.insert("quantity_remaining".into(), opt_num(remaining));
    o.insert("pools".into(), Value::Array(pools));
    Ok(())
}

/// `check` as it would have answered at `at_us`: the entitlement in force then (plan rows,
/// overrides, grants by their validity windows) and the usage the ledger had recorded by then.
pub fn check_as_of(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    resource: &str,
    requested: Decimal,
    at_us: i64,
) -> MecResult<Value> {
    if requested < Decimal::ZERO {
        return Err(MecError::invalid(format!(
            "p_requested_qty must not be negative, got {requested}"
        )));
    }
    let eff = entitlement::resolve(client, ns, account, resource, at_us)?;
    let used = history::usage_at(client, ns, account, &eff, at_us)?;
    let mut out = usage::check_result(&eff, &used, requested);
    if let Some(o) = out.as_object_mut() {
        o.insert("as_of".into(), ts_json(Some(at_us)));
    }
    Ok(out)
}

/// Everything an account may use and has used at `now_us`; with `as_of`, as the ledger and the
/// entitlements' validity windows say it stood at that instant.
pub fn usage_summary(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    now_us: i64,
    as_of: bool,
) -> MecResult<Value> {
    let Some(row) = spi::read(client, &ACCOUNT, &[ns.into(), account.into()])?
        .into_iter()
        .next()
    else {
        return Err(MecError::unknown("account", account.to_string()));
    };
    let external_id = row.get::<String>("external_id")?;
    let mut plan_id = row.get::<String>("plan_id")?;
    let mut plan_name = row.get::<String>("plan_name")?;
    let mut plan_version = row.get::<String>("plan_version")?;
    if as_of {
        let at: TimestampWithTimeZone = timestamptz(now_us);
        (plan_id, plan_name, plan_version) =
            match spi::read(client, &PLAN_AT, &[ns.into(), account.into(), at.into()])?.first() {
                Some(r) => (
                    r.get::<String>("plan_id")?,
                    r.get::<String>("plan_name")?,
                    r.get::<String>("plan_version")?,
                ),
                None => (None, None, None),
            };
    }
    let overdue = row.get::<bool>("payment_overdue")?.unwrap_or(false);

    let now: TimestampWithTimeZone = timestamptz(now_us);
    let mut resources = Vec::new();
    for r in spi::read(
        client,
        &RESOURCES_IN_FORCE,
        &[ns.into(), account.into(), now.into()],
    )? {
        if let Some(name) = r.get::<String>("resource_type")? {
            resources.push(name);
        }
    }
    let mut features = Map::new();
    for resource in resources {
        let eff = entitlement::resolve(client, ns, account, &resource, now_us)?;
        let entry = if eff.kind == Kind::Feature {
            json!({"kind": "feature", "enabled": eff.enabled, "current": Value::Null, "limit": if eff.enabled { 1 } else { 0 },
                   "remaining": Value::Null, "reset_date": Value::Null, "last_updated": Value::Null})
        } else {
            let mut u = if as_of {
                history::usage_at(client, ns, account, &eff, now_us)?
            } else {
                usage::read(client, ns, account, &eff, now_us)?
            };
            if eff.kind == Kind::Rate {
                // a sliding window has no end: its usage next drops when the oldest event leaves
                let key = usage::rate_key(&eff, account);
                u.reset_us = rate::next_drop_at(client, ns, &key, now_us, as_of.then_some(now_us))?;
            }
            let scoped = if eff.kind == Kind::Metered {
                let from = crate::ops::dimensions::limits_account(&eff, account);
                crate::ops::dimensions::summary(
                    client,
                    ns,
                    (account, from),
                    &resource,
                    &u.window,
                    now_us,
                    as_of,
                )?
            } else {
                None
            };
            let mut entry = json!({
                "kind": eff.kind.as_str(),
                "current": num(u.used),
                "limit": opt_num(eff.policy.limit),
                "remaining": opt_num(eff.policy.remaining(u.used)),
                "percent_used": opt_num(eff.policy.percent_used(u.used)),
                "enforcement": eff.policy.enforcement.as_str(),
                "period": if matches!(eff.kind, Kind::Rate | Kind::Concurrency) { Value::Null } else { Value::from(eff.period.as_str()) },
                "reset_date": ts_json(u.reset_us),
                "last_updated": ts_json(u.updated_us),
            });
            if let (Some(scoped), Some(o)) = (scoped, entry.as_object_mut()) {
                o.insert("dimensions".into(), scoped);
            }
            if eff.parent.is_some() && !as_of {
                let pools =
                    crate::ops::hierarchy::pool_answers(client, ns, &eff, now_us, Decimal::ZERO)?;
                if let Some(o) = entry.as_object_mut() {
                    o.insert("inherited_from".into(), json!(eff.inherited_from));
                    o.insert("pools".into(), Value::Array(pools));
                }
            }
            entry
        };
        features.insert(resource, entry);
    }
    let mut out = json!({
        "account_id": account.to_string(),
        "external_id": external_id,
        "plan": plan_id,
        "plan_name": plan_name,
        "plan_version": plan_version,
        "payment_overdue": overdue,
        "features": features,
    });
    if as_of {
        out["as_of"] = ts_json(Some(now_us));
    }
    Ok(out)
}
