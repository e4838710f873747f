//! `provision_plan`: put an account on a plan from a moment on. Creates the account if missing.
//! The plan's rows close at `effective_at` and the new plan's open there; usage counters are keyed
//! by period, not plan, so an upgrade or downgrade mid-period keeps what was already counted.

use pgrx::datum::{JsonB, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::events::outbox;
use crate::ledger::audit::audit;
use crate::ledger::keys::{claim_key, store_result};
use crate::pg::spi::{self, stmt};
use crate::pg::values::timestamptz;
use crate::pg::{MecError, MecResult};

pub struct Provision {
    pub account_id: Uuid,
    pub plan_id: String,
    pub effective_us: i64,
    pub external_id: Option<String>,
    pub key: Option<String>,
}

stmt! {
    static PLAN_ACTIVE: read (ns: uuid, plan_id: text) =
        "SELECT active FROM mec_data.plans WHERE namespace_id = $1 AND plan_id = $2";
}

stmt! {
    static EXTERNAL_ID_OWNER: read (ns: uuid, external_id: text, account_id: uuid) =
        "SELECT account_id FROM mec_data.accounts WHERE namespace_id = $1 AND external_id = $2 AND account_id <> $3";
}

stmt! {
    static CREATE_ACCOUNT: write (ns: uuid, account_id: uuid, external_id: text) =
        "INSERT INTO mec_data.accounts (namespace_id, account_id, external_id, billing_anchor_day)
              SELECT $1, $2, $3, (n.settings->>'billing_anchor')::smallint
              FROM mec_data.namespaces n WHERE n.namespace_id = $1
              ON CONFLICT (namespace_id, account_id) DO NOTHING
              RETURNING true";
}

stmt! {
    static LOCK_ACCOUNT: write (ns: uuid, account_id: uuid) =
        "SELECT plan_id, external_id FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2 FOR UPDATE";
}

stmt! {
    static SET_EXTERNAL_ID: write (ns: uuid, account_id: uuid, external_id: text) =
        "UPDATE mec_data.accounts SET external_id = $3, updated_at = now()
              WHERE namespace_id = $1 AND account_id = $2 AND external_id IS DISTINCT FROM $3";
}

stmt! {
    /// Rows that differ between the account's open plan entitlements and the plan's current version.
    static PLAN_DIFF: read (ns: uuid, account_id: uuid, plan_id: text, effective_at: timestamptz) =
        "WITH current AS (
                  SELECT pe.plan_id, p.version AS plan_version, pe.resource_type, pe.quantity_limit, pe.period,
                         pe.enforcement, pe.overage_cap, pe.grace, pe.enabled, pe.dimension_limits
                    FROM mec_data.plan_entitlements pe
                    JOIN mec_data.plans p USING (namespace_id, plan_id)
                   WHERE pe.namespace_id = $1 AND pe.plan_id = $3),
              held AS (
                  SELECT plan_id, plan_version, resource_type, quantity_limit, period, enforcement, overage_cap,
                         grace, enabled, dimension_limits
                    FROM mec_data.entitlements
                   WHERE namespace_id = $1 AND account_id = $2 AND source = 'plan'
                     AND valid_from <= $4 AND valid_until IS NULL)
         SELECT count(*)::int4 FROM ((SELECT * FROM held EXCEPT SELECT * FROM current)
                                     UNION ALL
                                     (SELECT * FROM current EXCEPT SELECT * FROM held)) d";
}

stmt! {
    static DROP_SCHEDULED: write (ns: uuid, account_id: uuid, effective_at: timestamptz) =
        "DELETE FROM mec_data.entitlements
              WHERE namespace_id = $1 AND account_id = $2 AND source = 'plan' AND valid_from >= $3";
}

stmt! {
    static CLOSE_CURRENT: write (ns: uuid, account_id: uuid, effective_at: timestamptz) =
        "UPDATE mec_data.entitlements SET valid_until = $3
              WHERE namespace_id = $1 AND account_id = $2 AND source = 'plan'
                AND valid_from < $3 AND (valid_until IS NULL OR valid_until > $3)";
}

stmt! {
    static OPEN_NEW: write (ns: uuid, account_id: uuid, plan_id: text, effective_at: timestamptz) =
        "INSERT INTO mec_data.entitlements
                  (namespace_id, account_id, resource_type, source, plan_id, quantity_limit, period, enforcement,
                   overage_cap, grace, enabled, valid_from, plan_version, dimension_limits)
              SELECT pe.namespace_id, $2, pe.resource_type, 'plan', pe.plan_id, pe.quantity_limit, pe.period,
                     pe.enforcement, pe.overage_cap, pe.grace, pe.enabled, $4, p.version, pe.dimension_limits
              FROM mec_data.plan_entitlements pe JOIN mec_data.plans p USING (namespace_id, plan_id)
              WHERE pe.namespace_id = $1 AND pe.plan_id = $3";
}

stmt! {
    static SET_PLAN: write (ns: uuid, account_id: uuid, plan_id: text, effective_at: timestamptz) =
        "UPDATE mec_data.accounts
                 SET plan_id = $3, plan_effective_at = $4, updated_at = now(),
                     plan_version = (SELECT version FROM mec_data.plans WHERE namespace_id = $1 AND plan_id = $3)
              WHERE namespace_id = $1 AND account_id = $2";
}

stmt! {
    static PLAN_ENTITLEMENTS: read (ns: uuid, plan_id: text) =
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                         'resource_type', pe.resource_type, 'kind', r.kind, 'limit', pe.quantity_limit,
                         'period', pe.period, 'enforcement', pe.enforcement, 'overage_cap', pe.overage_cap,
                         'grace', pe.grace, 'enabled', pe.enabled, 'dimension_limits', pe.dimension_limits)
                         ORDER BY pe.resource_type), '[]')
              FROM mec_data.plan_entitlements pe
              JOIN mec_data.resource_types r USING (namespace_id, resource_type)
              WHERE pe.namespace_id = $1 AND pe.plan_id = $2";
}

/// Replaces the account's plan entitlements by `plan_id`'s from `effective_us` on, unless they
/// already match. Returns whether anything changed.
pub fn apply_plan(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    plan_id: &str,
    effective_us: i64,
    plan_effective_us: i64,
) -> MecResult<bool> {
    let at: TimestampWithTimeZone = timestamptz(effective_us);
    let diff = spi::read(
        client,
        &PLAN_DIFF,
        &[ns.into(), account.into(), plan_id.into(), at.into()],
    )?
    .one::<i32>()?
    .unwrap_or(1);
    if diff > 0 {
        // Limits change: no stripe may keep quota granted under the old ones.
        crate::counters::stripes::fold_account(client, ns, account)?;
        spi::write(
            client,
            &DROP_SCHEDULED,
            &[ns.into(), account.into(), at.into()],
        )?;
        spi::write(
            client,
            &CLOSE_CURRENT,
            &[ns.into(), account.into(), at.into()],
        )?;
        spi::write(
            client,
            &OPEN_NEW,
            &[ns.into(), account.into(), plan_id.into(), at.into()],
        )?;
    }
    let plan_at: TimestampWithTimeZone = timestamptz(plan_effective_us);
    spi::write(
        client,
        &SET_PLAN,
        &[ns.into(), account.into(), plan_id.into(), plan_at.into()],
    )?;
    Ok(diff > 0)
}

stmt! {
    static DEFAULT_PLAN: read (ns: uuid) =
        "SELECT settings->>'default_plan_id' FROM mec_data.namespaces WHERE namespace_id = $1";
}

/// The namespace's default plan (`default_plan_id`, set by the catalog's default plan).
pub fn default_plan(client: &SpiClient<'_>, ns: Uuid) -> MecResult<Option<String>> {
    spi::read(client, &DEFAULT_PLAN, &[ns.into()])?.one::<String>()
}

/// External ids are not blank and at most 255 bytes (they are indexed, and `bulk_provision` has
/// the same bound).
pub fn check_external_id(ext: &str) -> MecResult<()> {
    if ext.trim().is_empty() {
        return Err(MecError::invalid("p_external_id must not be empty"));
    }
    if ext.len() > 255 {
        return Err(MecError::invalid(format!(
            "p_external_id is {} bytes long; at most 255",
            ext.len()
        )));
    }
    Ok(())
}

/// Creates the account with no plan unless it exists. Returns whether it was created.
pub fn create_account(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    external_id: Option<&str>,
) -> MecResult<bool> {
    if let Some(ext) = external_id {
        check_external_id(ext)?;
    }
    Ok(!spi::write(
        client,
        &CREATE_ACCOUNT,
        &[ns.into(), account.into(), external_id.into()],
    )?
    .is_empty())
}

/// Takes the account off its plan from `effective_us` on: its plan rows close there and no plan
/// replaces them (every check answers `not_entitled`, grants and overrides aside). Returns whether
/// the account had a plan.
pub fn remove_plan(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    effective_us: i64,
) -> MecResult<bool> {
    let (previous, _) = spi::write(client, &LOCK_ACCOUNT, &[ns.into(), account.into()])?
        .two::<String, String>("plan_id", "external_id")?;
    let Some(previous) = previous else {
        return Ok(false);
    };
    let at: TimestampWithTimeZone = timestamptz(effective_us);
    crate::counters::stripes::fold_account(client, ns, account)?;
    spi::write(
        client,
        &DROP_SCHEDULED,
        &[ns.into(), account.into(), at.into()],
    )?;
    spi::write(
        client,
        &CLOSE_CURRENT,
        &[ns.into(), account.into(), at.into()],
    )?;
    spi::write(
        client,
        &SET_PLAN,
        &[
            ns.into(),
            account.into(),
            Option::<&str>::None.into(),
            at.into(),
        ],
    )?;
    audit(
        client,
        ns,
        "remove_plan",
        &account.to_string(),
        json!({"previous_plan_id": previous}),
    )?;
    plan_changed(client, ns, account, None, Some(&previous), effective_us)?;
    Ok(true)
}

/// Emits `account.plan_changed` (events/outbox.rs).
fn plan_changed(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    plan_id: Option<&str>,
    previous: Option<&str>,
    effective_us: i64,
) -> MecResult<()> {
    outbox::emit(
        client,
        ns,
        "account.plan_changed",
        Some(account),
        json!({"account_id": account.to_string(), "plan_id": plan_id, "previous_plan_id": previous,
               "effective_at": crate::pg::values::iso8601(effective_us)}),
    )?;
    Ok(())
}

pub fn provision(client: &mut SpiClient<'_>, ns: Uuid, req: &Provision) -> MecResult<Value> {
    let fingerprint = format!(
        "{}|{}|{}",
        req.account_id,
        req.plan_id,
        req.external_id.as_deref().unwrap_or("")
    );
    if let Some(key) = &req.key {
        if let Some(v) = claim_key(client, ns, "provision_plan", key, &fingerprint)? {
            return Ok(v);
        }
    }
    match spi::read(
        client,
        &PLAN_ACTIVE,
        &[ns.into(), req.plan_id.as_str().into()],
    )?
    .one::<bool>()?
    {
        None => return Err(MecError::unknown("plan", req.plan_id.clone())),
        Some(false) => {
            return Err(MecError::bad_request(
                format!(
                    "plan \"{}\" is retired (no longer in the catalog)",
                    req.plan_id
                ),
                "Provision a plan of the current catalog.",
            ))
        }
        Some(true) => {}
    }
    if let Some(ext) = &req.external_id {
        check_external_id(ext)?;
        let owner = spi::read(
            client,
            &EXTERNAL_ID_OWNER,
            &[ns.into(), ext.as_str().into(), req.account_id.into()],
        )?
        .one::<Uuid>()?;
        if let Some(other) = owner {
            return Err(MecError::Conflict {
                message: format!("external id \"{ext}\" already belongs to account {other}"),
                hint: Some("External ids are unique per namespace.".into()),
            });
        }
    }
    let created = !spi::write(
        client,
        &CREATE_ACCOUNT,
        &[
            ns.into(),
            req.account_id.into(),
            req.external_id.as_deref().into(),
        ],
    )?
    .is_empty();
    let (previous, _) = spi::write(client, &LOCK_ACCOUNT, &[ns.into(), req.account_id.into()])?
        .two::<String, String>("plan_id", "external_id")?;
    if let Some(ext) = &req.external_id {
        spi::write(
            client,
            &SET_EXTERNAL_ID,
            &[ns.into(), req.account_id.into(), ext.as_str().into()],
        )?;
    }
    // A new account's first plan also covers events that occurred before it was provisioned
    // (late events, client clocks slightly behind): its rows are valid from the Unix epoch.
    let rows_from = if created && req.effective_us <= crate::pg::clock::now_us() {
        0
    } else {
        req.effective_us
    };
    let changed = apply_plan(
        client,
        ns,
        req.account_id,
        &req.plan_id,
        rows_from,
        req.effective_us,
    )?;
    let entitlements = spi::read(
        client,
        &PLAN_ENTITLEMENTS,
        &[ns.into(), req.plan_id.as_str().into()],
    )?
    .one::<JsonB>()?
    .map(|j| j.0)
    .unwrap_or(Value::Array(vec![]));
    if changed || created {
        audit(
            client,
            ns,
            "provision_plan",
            &req.account_id.to_string(),
            json!({"plan_id": req.plan_id, "previous_plan_id": previous, "created": created}),
        )?;
    }
    if !created && previous.as_deref() != Some(req.plan_id.as_str()) {
        plan_changed(
            client,
            ns,
            req.account_id,
            Some(&req.plan_id),
            previous.as_deref(),
            req.effective_us,
        )?;
    }
    let result = json!({
        "account_id": req.account_id.to_string(),
        "plan_id": req.plan_id,
        "previous_plan_id": previous,
        "created": created,
        "changed": changed,
        "duplicate": false,
        "effective_at": crate::pg::values::iso8601(req.effective_us),
        "entitlements": entitlements,
    });
    if let Some(key) = &req.key {
        store_result(client, ns, "provision_plan", key, &result)?;
    }
    Ok(result)
}
