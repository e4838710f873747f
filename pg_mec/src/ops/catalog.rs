//! `load_catalog`: validate the whole document first, then apply it in the caller's transaction.
//! Rows are only written when they differ, so loading the same catalog twice changes nothing.

use pg_mec_core::billing::StatusClass;
use pg_mec_core::catalog::{self, Catalog};
use pgrx::spi::SpiClient;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Value};

use crate::ops::provisioning;
use crate::pg::spi::{self, stmt};
use crate::pg::values::to_numeric;
use crate::pg::{MecError, MecResult};

stmt! {
    static CURRENT_DIGEST: read (ns: uuid) =
        "SELECT digest FROM mec_data.catalogs WHERE namespace_id = $1";
}

stmt! {
    static UPSERT_RESOURCE: write (ns: uuid, resource_type: text, kind: text, unit: text, description: text, window_seconds: int4, billable_statuses: jsonb, stripe_meter_event: text, dimensions: jsonb) =
        "INSERT INTO mec_data.resource_types AS r
                  (namespace_id, resource_type, kind, unit, description, window_seconds, billable_statuses,
                   stripe_meter_event, dimensions)
              VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
              ON CONFLICT (namespace_id, resource_type) DO UPDATE
                 SET kind = excluded.kind, unit = excluded.unit, description = excluded.description,
                     window_seconds = excluded.window_seconds, billable_statuses = excluded.billable_statuses,
                     stripe_meter_event = excluded.stripe_meter_event, dimensions = excluded.dimensions
               WHERE (r.kind, r.unit, r.description, r.window_seconds, r.billable_statuses, r.stripe_meter_event,
                      r.dimensions)
                     IS DISTINCT FROM (excluded.kind, excluded.unit, excluded.description, excluded.window_seconds,
                                       excluded.billable_statuses, excluded.stripe_meter_event, excluded.dimensions)
              RETURNING (xmax = 0)";
}

stmt! {
    static UPSERT_PLAN: write (ns: uuid, plan_id: text, name: text, price_amount: numeric, currency: text, price_interval: text, stripe_price_id: text, is_default: bool, version: text, policy: jsonb) =
        "INSERT INTO mec_data.plans AS p
                  (namespace_id, plan_id, name, price_amount, currency, price_interval, stripe_price_id, is_default, active,
                   version, policy)
              VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true, $9, $10)
              ON CONFLICT (namespace_id, plan_id) DO UPDATE
                 SET name = excluded.name, price_amount = excluded.price_amount, currency = excluded.currency,
                     price_interval = excluded.price_interval, stripe_price_id = excluded.stripe_price_id,
                     is_default = excluded.is_default, active = true, policy = excluded.policy, updated_at = now()
               WHERE (p.name, p.price_amount, p.currency, p.price_interval, p.stripe_price_id, p.is_default, p.active,
                      p.policy)
                     IS DISTINCT FROM (excluded.name, excluded.price_amount, excluded.currency, excluded.price_interval,
                                       excluded.stripe_price_id, excluded.is_default, true, excluded.policy)
              RETURNING (xmax = 0)";
}

stmt! {
    static UPSERT_PLAN_ENTITLEMENT: write (ns: uuid, plan_id: text, resource_type: text, quantity_limit: numeric, period: text, enforcement: text, overage_cap: numeric, grace: numeric, enabled: bool, dimension_limits: jsonb) =
        "INSERT INTO mec_data.plan_entitlements AS e
                  (namespace_id, plan_id, resource_type, quantity_limit, period, enforcement, overage_cap, grace, enabled,
                   dimension_limits)
              VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
              ON CONFLICT (namespace_id, plan_id, resource_type) DO UPDATE
                 SET quantity_limit = excluded.quantity_limit, period = excluded.period, enforcement = excluded.enforcement,
                     overage_cap = excluded.overage_cap, grace = excluded.grace, enabled = excluded.enabled,
                     dimension_limits = excluded.dimension_limits
               WHERE (e.quantity_limit, e.period, e.enforcement, e.overage_cap, e.grace, e.enabled, e.dimension_limits)
                     IS DISTINCT FROM (excluded.quantity_limit, excluded.period, excluded.enforcement,
                                       excluded.overage_cap, excluded.grace, excluded.enabled, excluded.dimension_limits)
              RETURNING 1";
}

stmt! {
    /// The plan's version before this load, and whether its policy changes (`$3`).
    static PLAN_STATE: read (ns: uuid, plan_id: text, policy: jsonb) =
        "SELECT version, policy IS DISTINCT FROM $3 AS policy_changed
              FROM mec_data.plans WHERE namespace_id = $1 AND plan_id = $2";
}

stmt! {
    /// The version new provisioning gets (a new plan's was set by UPSERT_PLAN).
    static SET_PLAN_VERSION: write (ns: uuid, plan_id: text, version: text) =
        "UPDATE mec_data.plans SET version = $3, updated_at = now()
              WHERE namespace_id = $1 AND plan_id = $2 AND version <> $3
              RETURNING 1";
}

stmt! {
    /// Records the plan's version as now loaded (its plan_entitlements rows and policy). An explicit
    /// version is never redefined: VERSION_CONFLICT then tells whether this load differs from it.
    static UPSERT_PLAN_VERSION: write (ns: uuid, plan_id: text, version: text, policy: jsonb, explicit: bool) =
        "INSERT INTO mec_data.plan_versions AS v (namespace_id, plan_id, version, entitlements, policy, explicit)
              SELECT $1, $2, $3, (SELECT coalesce(jsonb_agg(jsonb_build_object(
                             'resource_type', pe.resource_type, 'quantity_limit', pe.quantity_limit, 'period', pe.period,
                             'enforcement', pe.enforcement, 'overage_cap', pe.overage_cap, 'grace', pe.grace,
                             'enabled', pe.enabled, 'dimension_limits', pe.dimension_limits) ORDER BY pe.resource_type), '[]')
                        FROM mec_data.plan_entitlements pe WHERE pe.namespace_id = $1 AND pe.plan_id = $2), $4, $5
              ON CONFLICT (namespace_id, plan_id, version) DO UPDATE
                 SET entitlements = excluded.entitlements, policy = excluded.policy,
                     explicit = v.explicit OR excluded.explicit, loaded_at = now()
               WHERE NOT v.explicit
                 AND (v.entitlements, v.policy, v.explicit) IS DISTINCT FROM
                     (excluded.entitlements, excluded.policy, excluded.explicit)";
}

stmt! {
    /// (A write: it must see this load's plan_entitlements rows, which a read-only SPI call would not.)
    static VERSION_CONFLICT: write (ns: uuid, plan_id: text, version: text, policy: jsonb) =
        "SELECT (v.entitlements, v.policy) IS DISTINCT FROM ((SELECT coalesce(jsonb_agg(jsonb_build_object(
                             'resource_type', pe.resource_type, 'quantity_limit', pe.quantity_limit, 'period', pe.period,
                             'enforcement', pe.enforcement, 'overage_cap', pe.overage_cap, 'grace', pe.grace,
                             'enabled', pe.enabled, 'dimension_limits', pe.dimension_limits) ORDER BY pe.resource_type), '[]')
                        FROM mec_data.plan_entitlements pe WHERE pe.namespace_id = $1 AND pe.plan_id = $2), $4)
              FROM mec_data.plan_versions v
              WHERE v.namespace_id = $1 AND v.plan_id = $2 AND v.version = $3";
}

stmt! {
    static DROP_STALE_PLAN_ENTITLEMENTS: write (ns: uuid, plan_id: text, kept_resources: text) =
        "DELETE FROM mec_data.plan_entitlements
              WHERE namespace_id = $1 AND plan_id = $2 AND resource_type <> ALL ($3::text[])
              RETURNING 1";
}

stmt! {
    static RETIRE_PLANS: write (ns: uuid, kept_plans: text) =
        "UPDATE mec_data.plans SET active = false, is_default = false, updated_at = now()
              WHERE namespace_id = $1 AND active AND plan_id <> ALL ($2::text[])
              RETURNING plan_id";
}

stmt! {
    static STORE_CATALOG: write (ns: uuid, version: text, currency: text, document: jsonb, digest: text, billable_statuses: jsonb) =
        "INSERT INTO mec_data.catalogs (namespace_id, version, currency, document, digest, billable_statuses, loaded_at)
              VALUES ($1, $2, $3, $4, $5, $6, now())
              ON CONFLICT (namespace_id) DO UPDATE
                 SET version = excluded.version, currency = excluded.currency, document = excluded.document,
                     digest = excluded.digest, billable_statuses = excluded.billable_statuses, loaded_at = now()";
}

stmt! {
    static SET_DEFAULT_PLAN: write (ns: uuid, plan_id: text) =
        "UPDATE mec_data.namespaces
                 SET settings = jsonb_set(settings, '{default_plan_id}', to_jsonb($2::text)), updated_at = now()
              WHERE namespace_id = $1 AND settings->>'default_plan_id' IS DISTINCT FROM $2";
}

stmt! {
    /// The catalog's alert thresholds, read by metering (events/alerts.rs).
    static SET_ALERT_THRESHOLDS: write (ns: uuid, thresholds: jsonb) =
        "UPDATE mec_data.namespaces
                 SET settings = jsonb_set(settings, '{alert_thresholds}', $2), updated_at = now()
              WHERE namespace_id = $1 AND settings->'alert_thresholds' IS DISTINCT FROM $2";
}

stmt! {
    static ACCOUNTS_ON_PLAN: read (ns: uuid, plan_id: text) =
        "SELECT account_id FROM mec_data.accounts WHERE namespace_id = $1 AND plan_id = $2 ORDER BY account_id";
}

fn statuses_json(classes: &[StatusClass]) -> Value {
    Value::Array(classes.iter().map(StatusClass::to_json).collect())
}

fn text_array(items: impl Iterator<Item = String>) -> String {
    let quoted: Vec<String> = items
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", quoted.join(","))
}

/// Validates `doc`; on success applies it to namespace `ns` and returns the counts.
pub fn load(client: &mut SpiClient<'_>, ns: Uuid, doc: &Value) -> MecResult<Value> {
    let cat = catalog::validate(doc).map_err(|problems| MecError::CatalogInvalid {
        count: problems.len(),
        problems: serde_json::to_value(&problems).unwrap_or(Value::Null),
    })?;
    crate::ops::namespaces::require_namespace(client, ns)?;
    let digest = catalog::digest(doc);
    let previous = spi::read(client, &CURRENT_DIGEST, &[ns.into()])?
        .one::<String>()
        .ok()
        .flatten();
    if previous.as_deref() == Some(digest.as_str()) {
        return Ok(json!({
            "unchanged": true, "version": cat.version, "digest": digest,
            "plans_created": 0, "plans_updated": 0, "plans_unchanged": cat.plans.len(), "plans_retired": 0,
            "resources": cat.resources.len(), "resources_created": 0, "resources_updated": 0,
            "accounts_reprovisioned": 0,
        }));
    }
    let (resources_created, resources_updated) = apply_resources(client, ns, &cat)?;
    let (created, updated) = apply_plans(client, ns, &cat)?;
    let plan_ids = text_array(cat.plans.iter().map(|p| p.plan_id.clone()));
    let retired = spi::write(
        client,
        &RETIRE_PLANS,
        &[ns.into(), plan_ids.as_str().into()],
    )?
    .len();
    if let Some(default) = cat.default_plan() {
        spi::write(
            client,
            &SET_DEFAULT_PLAN,
            &[ns.into(), default.plan_id.as_str().into()],
        )?;
    }
    let thresholds: Vec<Value> = cat
        .alert_thresholds
        .iter()
        .map(|t| crate::pg::values::num(*t))
        .collect();
    spi::write(
        client,
        &SET_ALERT_THRESHOLDS,
        &[ns.into(), JsonB(Value::Array(thresholds)).into()],
    )?;
    spi::write(
        client,
        &STORE_CATALOG,
        &[
            ns.into(),
            cat.version.as_deref().into(),
            cat.currency.as_deref().into(),
            JsonB(doc.clone()).into(),
            digest.as_str().into(),
            JsonB(statuses_json(&cat.billable_statuses)).into(),
        ],
    )?;
    let mut reprovisioned = 0;
    if cat.apply_now {
        for plan_id in created.iter().chain(updated.iter()) {
            let mut accounts = Vec::new();
            for row in spi::read(
                client,
                &ACCOUNTS_ON_PLAN,
                &[ns.into(), plan_id.as_str().into()],
            )? {
                if let Some(a) = row.get::<Uuid>("account_id")? {
                    accounts.push(a);
                }
            }
            for account in accounts {
                let now = crate::pg::clock::now_us();
                provisioning::apply_plan(client, ns, account, plan_id, now, now)?;
                reprovisioned += 1;
            }
        }
    }
    Ok(json!({
        "unchanged": false, "version": cat.version, "digest": digest,
        "plans_created": created.len(), "plans_updated": updated.len(),
        "plans_unchanged": cat.plans.len() - created.len() - updated.len(), "plans_retired": retired,
        "resources": cat.resources.len(), "resources_created": resources_created, "resources_updated": resources_updated,
        "accounts_reprovisioned": reprovisioned,
    }))
}

fn apply_resources(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    cat: &Catalog,
) -> MecResult<(usize, usize)> {
    let (mut created, mut updated) = (0, 0);
    for r in &cat.resources {
        let statuses = statuses_json(cat.billable_statuses_for(&r.resource_type));
        let row = spi::write(
            client,
            &UPSERT_RESOURCE,
            &[
                ns.into(),
                r.resource_type.as_str().into(),
                r.kind.as_str().into(),
                r.unit.as_deref().into(),
                r.description.as_deref().into(),
                r.window_seconds.map(|w| w as i32).into(),
                JsonB(statuses).into(),
                r.stripe_meter_event.as_deref().into(),
                (!r.dimensions.is_empty())
                    .then(|| JsonB(json!(r.dimensions)))
                    .into(),
            ],
        )?
        .one::<bool>()?;
        match row {
            Some(true) => created += 1,
            Some(false) => updated += 1,
            None => {}
        }
    }
    Ok((created, updated))
}

/// Returns the ids of the plans created and of those whose row or entitlements changed.
fn apply_plans(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    cat: &Catalog,
) -> MecResult<(Vec<String>, Vec<String>)> {
    let (mut created, mut updated) = (Vec::new(), Vec::new());
    let mut problems = Vec::new();
    for (i, p) in cat.plans.iter().enumerate() {
        let policy = p
            .policy
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| MecError::Internal(format!("policy as JSON: {e}")))?;
        let (old_version, policy_changed) = match spi::read(
            client,
            &PLAN_STATE,
            &[
                ns.into(),
                p.plan_id.as_str().into(),
                policy.clone().map(JsonB).into(),
            ],
        )?
        .first()
        {
            Some(r) => (
                r.get::<String>("version")?,
                r.get::<bool>("policy_changed")?.unwrap_or(true),
            ),
            None => (None, true),
        };
        let row = spi::write(
            client,
            &UPSERT_PLAN,
            &[
                ns.into(),
                p.plan_id.as_str().into(),
                p.name.as_str().into(),
                p.price_amount.map(to_numeric).into(),
                cat.currency.as_deref().into(),
                p.price_interval.as_deref().into(),
                p.stripe_price_id.as_deref().into(),
                p.is_default.into(),
                cat.plan_version(p).into(),
                policy.clone().map(JsonB).into(),
            ],
        )?
        .one::<bool>()?;
        let mut changed = row.is_some();
        let mut content_changed = policy_changed;
        for e in &p.entitlements {
            let n = spi::write(
                client,
                &UPSERT_PLAN_ENTITLEMENT,
                &[
                    ns.into(),
                    p.plan_id.as_str().into(),
                    e.resource_type.as_str().into(),
                    e.limit.map(to_numeric).into(),
                    e.period.map(|x| x.as_str()).into(),
                    e.enforcement.as_str().into(),
                    e.overage_cap.map(to_numeric).into(),
                    e.grace.map(to_numeric).into(),
                    e.enabled.into(),
                    crate::ops::dimensions::limits_json(&e.dimension_limits)
                        .map(JsonB)
                        .into(),
                ],
            )?
            .len();
            content_changed |= n > 0;
        }
        let keep = text_array(p.entitlements.iter().map(|e| e.resource_type.clone()));
        content_changed |= !spi::write(
            client,
            &DROP_STALE_PLAN_ENTITLEMENTS,
            &[ns.into(), p.plan_id.as_str().into(), keep.as_str().into()],
        )?
        .is_empty();
        changed |= content_changed;
        // A plan without a version of its own keeps the one it has while its contents stay the same:
        // a new catalog version creates a plan version only for the plans it changes.
        let version = match (&p.version, old_version) {
            (Some(v), _) => v.clone(),
            (None, Some(old)) if !content_changed => old,
            (None, _) => cat.plan_version(p).to_string(),
        };
        let version = version.as_str();
        changed |= !spi::write(
            client,
            &SET_PLAN_VERSION,
            &[ns.into(), p.plan_id.as_str().into(), version.into()],
        )?
        .is_empty();
        let policy_json = || policy.clone().map(JsonB);
        spi::write(
            client,
            &UPSERT_PLAN_VERSION,
            &[
                ns.into(),
                p.plan_id.as_str().into(),
                version.into(),
                policy_json().into(),
                p.version.is_some().into(),
            ],
        )?;
        let conflict = spi::write(
            client,
            &VERSION_CONFLICT,
            &[
                ns.into(),
                p.plan_id.as_str().into(),
                version.into(),
                policy_json().into(),
            ],
        )?
        .one::<bool>()?;
        if conflict == Some(true) {
            problems.push(json!({
                "path": format!("$.plans[{i}].version"),
                "message": format!(
                    "version '{version}' of plan '{}' was loaded before with other entitlements or policy; \
                     a version named in the catalog never changes: give the plan a new version",
                    p.plan_id
                ),
            }));
        }
        match row {
            Some(true) => created.push(p.plan_id.clone()),
            _ if changed => updated.push(p.plan_id.clone()),
            _ => {}
        }
    }
    if !problems.is_empty() {
        return Err(MecError::CatalogInvalid {
            count: problems.len(),
            problems: Value::Array(problems),
        });
    }
    Ok((created, updated))
}
