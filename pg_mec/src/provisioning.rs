//! `provision_plan`: put an account on a plan from a moment on. Creates the account if missing.
//! The plan's rows close at `effective_at` and the new plan's open there; usage counters are keyed
//! by period, not plan, so an upgrade or downgrade mid-period keeps what was already counted.

use pgrx::datum::{JsonB, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::errors::{MecError, MecResult};
use crate::spi::{self, Stmt};
use crate::values::timestamptz;

pub struct Provision {
    pub account_id: Uuid,
    pub plan_id: String,
    pub effective_us: i64,
    pub external_id: Option<String>,
    pub key: Option<String>,
}

static PLAN_ACTIVE: Stmt = Stmt {
    sql: "SELECT active FROM mec_data.plans WHERE namespace_id = $1 AND plan_id = $2",
    types: &[spi::UUID, spi::TEXT],
    writes: false,
};

static EXTERNAL_ID_OWNER: Stmt = Stmt {
    sql: "SELECT account_id FROM mec_data.accounts WHERE namespace_id = $1 AND external_id = $2 AND account_id <> $3",
    types: &[spi::UUID, spi::TEXT, spi::UUID],
    writes: false,
};

static CREATE_ACCOUNT: Stmt = Stmt {
    sql: "INSERT INTO mec_data.accounts (namespace_id, account_id, external_id, billing_anchor_day)
          SELECT $1, $2, $3, (n.settings->>'billing_anchor')::smallint
          FROM mec_data.namespaces n WHERE n.namespace_id = $1
          ON CONFLICT (namespace_id, account_id) DO NOTHING
          RETURNING true",
    types: &[spi::UUID, spi::UUID, spi::TEXT],
    writes: true,
};

static LOCK_ACCOUNT: Stmt = Stmt {
    sql: "SELECT plan_id, external_id FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2 FOR UPDATE",
    types: &[spi::UUID, spi::UUID],
    writes: true,
};

static SET_EXTERNAL_ID: Stmt = Stmt {
    sql: "UPDATE mec_data.accounts SET external_id = $3, updated_at = now()
          WHERE namespace_id = $1 AND account_id = $2 AND external_id IS DISTINCT FROM $3",
    types: &[spi::UUID, spi::UUID, spi::TEXT],
    writes: true,
};

/// Rows that differ between the account's open plan entitlements and the plan's.
static PLAN_DIFF: Stmt = Stmt {
    sql: "SELECT count(*)::int4 FROM (
              (SELECT plan_id, resource_type, quantity_limit, period, enforcement, overage_cap, grace, enabled
                 FROM mec_data.entitlements
                WHERE namespace_id = $1 AND account_id = $2 AND source = 'plan'
                  AND valid_from <= $4 AND valid_until IS NULL
               EXCEPT
               SELECT plan_id, resource_type, quantity_limit, period, enforcement, overage_cap, grace, enabled
                 FROM mec_data.plan_entitlements WHERE namespace_id = $1 AND plan_id = $3)
              UNION ALL
              (SELECT plan_id, resource_type, quantity_limit, period, enforcement, overage_cap, grace, enabled
                 FROM mec_data.plan_entitlements WHERE namespace_id = $1 AND plan_id = $3
               EXCEPT
               SELECT plan_id, resource_type, quantity_limit, period, enforcement, overage_cap, grace, enabled
                 FROM mec_data.entitlements
                WHERE namespace_id = $1 AND account_id = $2 AND source = 'plan'
                  AND valid_from <= $4 AND valid_until IS NULL)
          ) d",
    types: &[spi::UUID, spi::UUID, spi::TEXT, spi::TIMESTAMPTZ],
    writes: false,
};

static DROP_SCHEDULED: Stmt = Stmt {
    sql: "DELETE FROM mec_data.entitlements
          WHERE namespace_id = $1 AND account_id = $2 AND source = 'plan' AND valid_from >= $3",
    types: &[spi::UUID, spi::UUID, spi::TIMESTAMPTZ],
    writes: true,
};

static CLOSE_CURRENT: Stmt = Stmt {
    sql: "UPDATE mec_data.entitlements SET valid_until = $3
          WHERE namespace_id = $1 AND account_id = $2 AND source = 'plan'
            AND valid_from < $3 AND (valid_until IS NULL OR valid_until > $3)",
    types: &[spi::UUID, spi::UUID, spi::TIMESTAMPTZ],
    writes: true,
};

static OPEN_NEW: Stmt = Stmt {
    sql: "INSERT INTO mec_data.entitlements
              (namespace_id, account_id, resource_type, source, plan_id, quantity_limit, period, enforcement,
               overage_cap, grace, enabled, valid_from)
          SELECT namespace_id, $2, resource_type, 'plan', plan_id, quantity_limit, period, enforcement,
                 overage_cap, grace, enabled, $4
          FROM mec_data.plan_entitlements WHERE namespace_id = $1 AND plan_id = $3",
    types: &[spi::UUID, spi::UUID, spi::TEXT, spi::TIMESTAMPTZ],
    writes: true,
};

static SET_PLAN: Stmt = Stmt {
    sql: "UPDATE mec_data.accounts SET plan_id = $3, plan_effective_at = $4, updated_at = now()
          WHERE namespace_id = $1 AND account_id = $2",
    types: &[spi::UUID, spi::UUID, spi::TEXT, spi::TIMESTAMPTZ],
    writes: true,
};

static PLAN_ENTITLEMENTS: Stmt = Stmt {
    sql: "SELECT coalesce(jsonb_agg(jsonb_build_object(
                     'resource_type', pe.resource_type, 'kind', r.kind, 'limit', pe.quantity_limit,
                     'period', pe.period, 'enforcement', pe.enforcement, 'overage_cap', pe.overage_cap,
                     'grace', pe.grace, 'enabled', pe.enabled) ORDER BY pe.resource_type), '[]')
          FROM mec_data.plan_entitlements pe
          JOIN mec_data.resource_types r USING (namespace_id, resource_type)
          WHERE pe.namespace_id = $1 AND pe.plan_id = $2",
    types: &[spi::UUID, spi::TEXT],
    writes: false,
};

static AUDIT: Stmt = Stmt {
    sql: "INSERT INTO mec_data.audit_log (namespace_id, action, subject, details, actor) VALUES ($1, $2, $3, $4, $5)",
    types: &[spi::UUID, spi::TEXT, spi::TEXT, spi::JSONB, spi::TEXT],
    writes: true,
};

static STORED_RESULT: Stmt = Stmt {
    sql: "SELECT fingerprint, result FROM mec_data.idempotency_keys
          WHERE namespace_id = $1 AND operation = $2 AND idempotency_key = $3",
    types: &[spi::UUID, spi::TEXT, spi::TEXT],
    writes: false,
};

/// Claims a key before the work: a concurrent call with the same key waits here for the first
/// to commit, then finds its stored result.
static CLAIM_KEY: Stmt = Stmt {
    sql: "INSERT INTO mec_data.idempotency_keys (namespace_id, operation, idempotency_key, fingerprint, result)
          VALUES ($1, $2, $3, $4, '{}')
          ON CONFLICT (namespace_id, operation, idempotency_key) DO NOTHING
          RETURNING true",
    types: &[spi::UUID, spi::TEXT, spi::TEXT, spi::TEXT],
    writes: true,
};

static STORE_RESULT: Stmt = Stmt {
    sql: "UPDATE mec_data.idempotency_keys SET result = $4
          WHERE namespace_id = $1 AND operation = $2 AND idempotency_key = $3",
    types: &[spi::UUID, spi::TEXT, spi::TEXT, spi::JSONB],
    writes: true,
};

pub fn audit(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    action: &str,
    subject: &str,
    details: Value,
) -> MecResult<()> {
    spi::write(
        client,
        &AUDIT,
        &[
            ns.into(),
            action.into(),
            subject.into(),
            JsonB(details).into(),
            crate::owner::caller_role().into(),
        ],
    )?;
    Ok(())
}

/// The stored result of an earlier call with `key`, with `duplicate: true`; ME409 when the
/// fingerprint differs.
pub fn stored_result(
    client: &SpiClient<'_>,
    ns: Uuid,
    operation: &str,
    key: &str,
    fingerprint: &str,
) -> MecResult<Option<Value>> {
    let Some(row) = spi::read(
        client,
        &STORED_RESULT,
        &[ns.into(), operation.into(), key.into()],
    )?
    .into_iter()
    .next() else {
        return Ok(None);
    };
    if row.get::<String>(1)?.as_deref() != Some(fingerprint) {
        return Err(MecError::IdempotencyConflict {
            key: key.to_string(),
            detail: json!({"operation": operation}).to_string(),
        });
    }
    let mut result = row.get::<JsonB>(2)?.map(|j| j.0).unwrap_or(Value::Null);
    if let Some(obj) = result.as_object_mut() {
        obj.insert("duplicate".into(), Value::Bool(true));
    }
    Ok(Some(result))
}

/// Claims `key` for this call: `None` to go ahead (then [`store_result`] at the end), or the
/// stored result of an earlier call with the same key (`duplicate: true`; ME409 for another
/// payload).
pub fn claim_key(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    operation: &str,
    key: &str,
    fingerprint: &str,
) -> MecResult<Option<Value>> {
    crate::metering::validate_key(key)?;
    let claimed = spi::write(
        client,
        &CLAIM_KEY,
        &[ns.into(), operation.into(), key.into(), fingerprint.into()],
    )?;
    if !claimed.is_empty() {
        return Ok(None);
    }
    stored_result(client, ns, operation, key, fingerprint)
}

/// Records the result of the call that claimed `key`.
pub fn store_result(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    operation: &str,
    key: &str,
    result: &Value,
) -> MecResult<()> {
    spi::write(
        client,
        &STORE_RESULT,
        &[
            ns.into(),
            operation.into(),
            key.into(),
            JsonB(result.clone()).into(),
        ],
    )?;
    Ok(())
}

/// Replaces the account's plan entitlements by `plan_id`'s from `effective_us` on, unless they
/// already match. Returns whether anything changed.
pub fn apply_plan(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    plan_id: &str,
    effective_us: i64,
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
        crate::stripes::fold_account(client, ns, account)?;
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
    spi::write(
        client,
        &SET_PLAN,
        &[ns.into(), account.into(), plan_id.into(), at.into()],
    )?;
    Ok(diff > 0)
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
        if ext.trim().is_empty() {
            return Err(MecError::invalid("p_external_id must not be empty"));
        }
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
        .two::<String, String>()?;
    if let Some(ext) = &req.external_id {
        spi::write(
            client,
            &SET_EXTERNAL_ID,
            &[ns.into(), req.account_id.into(), ext.as_str().into()],
        )?;
    }
    // A new account's first plan also covers events that occurred before it was provisioned
    // (late events, client clocks slightly behind): its rows are valid from the Unix epoch.
    let rows_from = if created && req.effective_us <= crate::args::now_us() {
        0
    } else {
        req.effective_us
    };
    let changed = apply_plan(client, ns, req.account_id, &req.plan_id, rows_from)?;
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
    let result = json!({
        "account_id": req.account_id.to_string(),
        "plan_id": req.plan_id,
        "previous_plan_id": previous,
        "created": created,
        "changed": changed,
        "duplicate": false,
        "effective_at": crate::values::iso8601(req.effective_us),
        "entitlements": entitlements,
    });
    if let Some(key) = &req.key {
        store_result(client, ns, "provision_plan", key, &result)?;
    }
    Ok(result)
}
