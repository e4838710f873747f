//! `check_policy`: the account's plan's access policy (of the plan version it is on) applied to one
//! request, with the quotas it names read as `check_entitlement` reads them. Read-only; the
//! decision itself is `pg_mec_core::access::decide`.

use pg_mec_core::access::{self, Remaining, Request};
use pg_mec_core::catalog::{AccessPolicy, Kind};
use pg_mec_core::enforcement::Enforcement;
use pg_mec_core::Decimal;
use pgrx::datum::Uuid;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::cache::entitlement;
use crate::counters::usage;
use crate::ops::dimensions;
use crate::pg::spi::{self, stmt};
use crate::pg::values::json_decimal;
use crate::pg::{MecError, MecResult};

stmt! {
    /// The account's plan, its version, and that version's policy (the plan's current policy for
    /// an account provisioned before versions were kept).
    static ACCOUNT_POLICY: read (ns: uuid, account_id: uuid) =
        "SELECT a.plan_id, a.plan_version,
                CASE WHEN v.version IS NOT NULL THEN v.policy ELSE p.policy END AS policy
              FROM mec_data.accounts a
              LEFT JOIN mec_data.plans p ON p.namespace_id = a.namespace_id AND p.plan_id = a.plan_id
              LEFT JOIN mec_data.plan_versions v
                ON v.namespace_id = a.namespace_id AND v.plan_id = a.plan_id AND v.version = a.plan_version
              WHERE a.namespace_id = $1 AND a.account_id = $2";
}

/// What is left under each dimension limit, by (dimension, value).
type ScopedLeft = Vec<((String, String), Option<Decimal>)>;

/// What is left of `resource` for `account` now — `None` when it cannot run out (unlimited or a
/// soft limit), zero when the account is not entitled or is blocked for payment — and what is left
/// under each of its dimension limits, by (dimension, value).
fn left(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    resource: Option<&str>,
    now_us: i64,
) -> MecResult<(Option<Decimal>, ScopedLeft)> {
    let Some(resource) = resource else {
        return Ok((None, Vec::new()));
    };
    let eff = entitlement::resolve(client, ns, account, resource, now_us)?;
    if !eff.entitled || eff.blocked || (eff.kind == Kind::Feature && !eff.enabled) {
        return Ok((Some(Decimal::ZERO), Vec::new()));
    }
    let used = usage::read(client, ns, account, &eff, now_us)?;
    let scoped = if eff.kind == Kind::Metered {
        let from = dimensions::limits_account(&eff, account);
        dimensions::scoped_usage(
            client,
            ns,
            (account, from),
            resource,
            &used.window,
            now_us,
            false,
        )?
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, _, p, _)| p.enforcement != Enforcement::Soft)
        .map(|(d, v, p, u)| ((d, v), p.remaining(u)))
        .collect()
    } else {
        Vec::new()
    };
    if eff.policy.enforcement == Enforcement::Soft {
        return Ok((None, scoped));
    }
    // A member's pools limit it too: the least left at any level.
    let mut remaining = eff.policy.remaining(used.used);
    for pool in crate::ops::hierarchy::pool_answers(client, ns, &eff, now_us, Decimal::ZERO)? {
        if let Some(r) = pool.get("quantity_remaining").and_then(json_decimal) {
            remaining = Some(remaining.map_or(r, |m| m.min(r)));
        }
    }
    Ok((remaining, scoped))
}

pub fn check_policy(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    request: &Value,
    now_us: i64,
) -> MecResult<Value> {
    let req = Request::parse(request).map_err(MecError::invalid)?;
    let Some(row) = spi::read(client, &ACCOUNT_POLICY, &[ns.into(), account.into()])?.first()
    else {
        return Err(MecError::unknown("account", account.to_string()));
    };
    let Some(plan_id) = row.get::<String>("plan_id")? else {
        return Err(MecError::bad_request(
            format!("account {account} has no plan"),
            "Provision a plan with mec.provision_plan(p_account_id, p_plan_id).",
        ));
    };
    let plan_version = row.get::<String>("plan_version")?;
    let policy: Option<AccessPolicy> = row
        .get::<JsonB>("policy")?
        .map(|j| serde_json::from_value(j.0))
        .transpose()
        .map_err(|e| MecError::Internal(format!("stored policy of plan {plan_id}: {e}")))?;
    let mut remaining = Remaining::default();
    if let Some(p) = &policy {
        let (input, input_scoped) =
            left(client, ns, account, p.quota.input_tokens.as_deref(), now_us)?;
        let (output, output_scoped) = left(
            client,
            ns,
            account,
            p.quota.output_tokens.as_deref(),
            now_us,
        )?;
        let (requests, requests_scoped) =
            left(client, ns, account, p.quota.requests.as_deref(), now_us)?;
        remaining.input_tokens = input;
        remaining.output_tokens = output;
        remaining.requests = requests;
        for (key, r) in input_scoped {
            remaining.scoped.entry(key).or_default().input_tokens = r;
        }
        for (key, r) in output_scoped {
            remaining.scoped.entry(key).or_default().output_tokens = r;
        }
        for (key, r) in requests_scoped {
            remaining.scoped.entry(key).or_default().requests = r;
        }
    }
    let d = access::decide(policy.as_ref(), &req, &remaining);
    Ok(json!({
        "decision": if d.allowed { "allow" } else { "deny" },
        "account_id": account.to_string(),
        "plan_id": plan_id,
        "plan_version": plan_version,
        "task": req.task,
        "reasons": d.reasons,
        "shaped": d.shaped,
    }))
}
