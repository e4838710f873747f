//! `bulk_provision`: many accounts onto plans in one transaction, all or nothing. Every row is
//! checked before anything is written, and every problem is reported at once, with its index.

use std::collections::{HashMap, HashSet};

use pgrx::datum::{JsonB, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::ledger::keys::{claim_key, store_result};
use crate::ops::provisioning::{self, Provision};
use crate::pg::context::parse_uuid;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{new_uuid, timestamptz};
use crate::pg::{MecError, MecResult};

/// Rows in one call at most.
pub const MAX_ROWS: usize = 50_000;

stmt! {
    static PLANS: read (ns: uuid, plan_ids: jsonb) =
        "SELECT plan_id, active FROM mec_data.plans
          WHERE namespace_id = $1 AND plan_id IN (SELECT jsonb_array_elements_text($2))";
}

stmt! {
    static ACCOUNTS_BY_EXTERNAL_ID: read (ns: uuid, external_ids: jsonb) =
        "SELECT external_id, account_id FROM mec_data.accounts
          WHERE namespace_id = $1 AND external_id IN (SELECT jsonb_array_elements_text($2))";
}

stmt! {
    static EXISTING: read (ns: uuid, account_ids: jsonb) =
        "SELECT account_id FROM mec_data.accounts
          WHERE namespace_id = $1 AND account_id IN (SELECT (jsonb_array_elements_text($2))::uuid)";
}

stmt! {
    /// New accounts in one statement, each with its plan's rows valid from the Unix epoch (as
    /// `provision_plan` gives a new account) and its audit entry. Returns the accounts created.
    static CREATE_MANY: write (ns: uuid, rows: jsonb, rows_from: timestamptz, actor: text, plan_effective_at: timestamptz) =
        "WITH r AS (SELECT * FROM jsonb_to_recordset($2) AS r(account_id uuid, external_id text, plan_id text)),
              acc AS (INSERT INTO mec_data.accounts
                             (namespace_id, account_id, external_id, plan_id, plan_effective_at, billing_anchor_day,
                              plan_version)
                      SELECT $1, r.account_id, r.external_id, r.plan_id, $5,
                             (SELECT (n.settings->>'billing_anchor')::smallint
                                FROM mec_data.namespaces n WHERE n.namespace_id = $1),
                             (SELECT p.version FROM mec_data.plans p WHERE p.namespace_id = $1 AND p.plan_id = r.plan_id)
                        FROM r
                      ON CONFLICT (namespace_id, account_id) DO NOTHING
                      RETURNING account_id, plan_id),
              ent AS (INSERT INTO mec_data.entitlements
                             (namespace_id, account_id, resource_type, source, plan_id, quantity_limit, period,
                              enforcement, overage_cap, grace, enabled, valid_from, plan_version, dimension_limits)
                      SELECT $1, acc.account_id, pe.resource_type, 'plan', pe.plan_id, pe.quantity_limit, pe.period,
                             pe.enforcement, pe.overage_cap, pe.grace, pe.enabled, $3, p.version, pe.dimension_limits
                        FROM acc JOIN mec_data.plan_entitlements pe
                          ON pe.namespace_id = $1 AND pe.plan_id = acc.plan_id
                        JOIN mec_data.plans p ON p.namespace_id = $1 AND p.plan_id = acc.plan_id
                      RETURNING 1),
              aud AS (INSERT INTO mec_data.audit_log (namespace_id, action, subject, details, actor)
                      SELECT $1, 'provision_plan', acc.account_id::text,
                             jsonb_build_object('plan_id', acc.plan_id, 'previous_plan_id', NULL,
                                                'created', true, 'bulk', true), $4
                        FROM acc
                      RETURNING 1)
         SELECT coalesce(jsonb_agg(account_id::text), '[]') AS created,
                (SELECT count(*) FROM ent)::int8 AS entitlements, (SELECT count(*) FROM aud)::int8 AS audited
           FROM acc";
}

stmt! {
    /// The existing accounts of `rows` that already have the row's plan, external id and the plan's
    /// current entitlement rows (what `provision_plan` would call unchanged). Locks every existing one.
    static UNCHANGED: write (ns: uuid, rows: jsonb, at: timestamptz) =
        "WITH r AS (SELECT * FROM jsonb_to_recordset($2) AS r(account_id uuid, external_id text, plan_id text)),
              a AS (SELECT a.account_id, a.plan_id, a.external_id, a.plan_version, r.plan_id AS wanted_plan,
                           r.external_id AS wanted_external_id
                      FROM r JOIN mec_data.accounts a ON a.namespace_id = $1 AND a.account_id = r.account_id
                       FOR UPDATE OF a)
         SELECT coalesce(jsonb_agg(a.account_id::text), '[]') AS unchanged
           FROM a
          WHERE a.plan_id = a.wanted_plan
            AND (a.wanted_external_id IS NULL OR a.external_id = a.wanted_external_id)
            AND a.plan_version IS NOT DISTINCT FROM
                (SELECT p.version FROM mec_data.plans p WHERE p.namespace_id = $1 AND p.plan_id = a.wanted_plan)
            AND NOT EXISTS (
                  (SELECT plan_id, plan_version, resource_type, quantity_limit, period, enforcement, overage_cap,
                          grace, enabled, dimension_limits
                     FROM mec_data.entitlements e
                    WHERE e.namespace_id = $1 AND e.account_id = a.account_id AND e.source = 'plan'
                      AND e.valid_from <= $3 AND e.valid_until IS NULL
                   EXCEPT
                   SELECT pe.plan_id, p.version, pe.resource_type, pe.quantity_limit, pe.period, pe.enforcement,
                          pe.overage_cap, pe.grace, pe.enabled, pe.dimension_limits
                     FROM mec_data.plan_entitlements pe JOIN mec_data.plans p USING (namespace_id, plan_id)
                    WHERE pe.namespace_id = $1 AND pe.plan_id = a.wanted_plan)
                  UNION ALL
                  (SELECT pe.plan_id, p.version, pe.resource_type, pe.quantity_limit, pe.period, pe.enforcement,
                          pe.overage_cap, pe.grace, pe.enabled, pe.dimension_limits
                     FROM mec_data.plan_entitlements pe JOIN mec_data.plans p USING (namespace_id, plan_id)
                    WHERE pe.namespace_id = $1 AND pe.plan_id = a.wanted_plan
                   EXCEPT
                   SELECT plan_id, plan_version, resource_type, quantity_limit, period, enforcement, overage_cap,
                          grace, enabled, dimension_limits
                     FROM mec_data.entitlements e
                    WHERE e.namespace_id = $1 AND e.account_id = a.account_id AND e.source = 'plan'
                      AND e.valid_from <= $3 AND e.valid_until IS NULL))";
}

struct Row {
    account_id: Option<Uuid>,
    external_id: Option<String>,
    plan_id: String,
}

fn problem(index: usize, field: &str, message: impl Into<String>) -> Value {
    let path = if field.is_empty() {
        format!("$[{index}]")
    } else {
        format!("$[{index}].{field}")
    };
    json!({"index": index, "path": path, "message": message.into()})
}

/// Each row (`None` where its shape is wrong) and every problem of their shapes; `Err` when
/// `p_rows` itself is not an array of 1 to `MAX_ROWS` rows.
#[allow(clippy::type_complexity)]
fn parse(rows: &Value) -> Result<(Vec<Option<Row>>, Vec<Value>), Vec<Value>> {
    let Some(items) = rows.as_array() else {
        return Err(vec![
            json!({"index": null, "path": "$", "message": "p_rows must be a JSON array of {account_id | external_id, plan_id}"}),
        ]);
    };
    if items.is_empty() || items.len() > MAX_ROWS {
        return Err(vec![
            json!({"index": null, "path": "$", "message": format!("p_rows must hold 1 to {MAX_ROWS} rows, it holds {}", items.len())}),
        ]);
    }
    let mut out = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            problems.push(problem(i, "", "a row must be an object"));
            out.push(None);
            continue;
        };
        let before = problems.len();
        for key in obj.keys() {
            if !matches!(key.as_str(), "account_id" | "external_id" | "plan_id") {
                problems.push(problem(
                    i,
                    key,
                    format!("unknown field \"{key}\" (fields: account_id, external_id, plan_id)"),
                ));
            }
        }
        let account_id = match obj.get("account_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match parse_uuid(s) {
                Some(u) => Some(u),
                None => {
                    problems.push(problem(i, "account_id", format!("\"{s}\" is not a uuid")));
                    None
                }
            },
            Some(_) => {
                problems.push(problem(i, "account_id", "must be a uuid string"));
                None
            }
        };
        let external_id = match obj.get("external_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 255 => Some(s.clone()),
            Some(_) => {
                problems.push(problem(
                    i,
                    "external_id",
                    "must be a non-empty string of at most 255 characters",
                ));
                None
            }
        };
        let plan_id = match obj.get("plan_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                problems.push(problem(
                    i,
                    "plan_id",
                    "is required: the id of a plan of the catalog",
                ));
                String::new()
            }
        };
        let given = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
        if !given("account_id") && !given("external_id") {
            problems.push(problem(i, "", "a row needs account_id or external_id"));
        }
        out.push((problems.len() == before).then_some(Row {
            account_id,
            external_id,
            plan_id,
        }));
    }
    Ok((out, problems))
}

fn invalid(mut problems: Vec<Value>) -> MecError {
    problems.sort_by_key(|p| p["index"].as_u64());
    MecError::RowsInvalid {
        argument: "p_rows",
        count: problems.len(),
        problems: Value::Array(problems),
    }
}

/// Checks the rows against the namespace, then provisions each. Returns `{rows, created, changed,
/// unchanged, duplicate, results: [{index, account_id, external_id, plan_id, created, changed}]}`.
pub fn bulk_provision(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    rows: &Value,
    key: Option<&str>,
    now_us: i64,
) -> MecResult<Value> {
    let fingerprint = pg_mec_core::digest(rows);
    if let Some(key) = key {
        if let Some(v) = claim_key(client, ns, "bulk_provision", key, &fingerprint)? {
            return Ok(v);
        }
    }
    let (parsed, mut problems) = parse(rows).map_err(invalid)?;

    // Plans: each must exist and be active.
    let plan_ids: Vec<&str> = parsed
        .iter()
        .flatten()
        .map(|r| r.plan_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut plans: HashMap<String, bool> = HashMap::new();
    for row in spi::read(client, &PLANS, &[ns.into(), JsonB(json!(plan_ids)).into()])? {
        if let Some(plan) = row.get::<String>("plan_id")? {
            plans.insert(plan, row.get::<bool>("active")?.unwrap_or(false));
        }
    }
    // External ids already in use.
    let external_ids: Vec<&str> = parsed
        .iter()
        .flatten()
        .filter_map(|r| r.external_id.as_deref())
        .collect();
    let mut owners: HashMap<String, Uuid> = HashMap::new();
    if !external_ids.is_empty() {
        for row in spi::read(
            client,
            &ACCOUNTS_BY_EXTERNAL_ID,
            &[ns.into(), JsonB(json!(external_ids)).into()],
        )? {
            if let (Some(ext), Some(account)) = (
                row.get::<String>("external_id")?,
                row.get::<Uuid>("account_id")?,
            ) {
                owners.insert(ext, account);
            }
        }
    }

    let mut seen_accounts: HashMap<Uuid, usize> = HashMap::new();
    let mut seen_external: HashMap<&str, usize> = HashMap::new();
    let mut targets = Vec::with_capacity(parsed.len());
    for (i, r) in parsed.iter().enumerate() {
        let Some(r) = r else {
            continue;
        };
        match plans.get(&r.plan_id) {
            None => problems.push(problem(
                i,
                "plan_id",
                format!("unknown plan \"{}\"", r.plan_id),
            )),
            Some(false) => problems.push(problem(
                i,
                "plan_id",
                format!("plan \"{}\" is retired", r.plan_id),
            )),
            Some(true) => {}
        }
        let owner = r
            .external_id
            .as_deref()
            .and_then(|e| owners.get(e).copied());
        let account = match (r.account_id, owner) {
            (Some(a), Some(o)) if a != o => {
                problems.push(problem(
                    i,
                    "external_id",
                    format!(
                        "external id \"{}\" belongs to account {o}",
                        r.external_id.as_deref().unwrap_or_default()
                    ),
                ));
                a
            }
            (Some(a), _) => a,
            (None, Some(o)) => o,
            (None, None) => new_uuid(),
        };
        if let Some(first) = seen_accounts.insert(account, i) {
            problems.push(problem(i, "", format!("the same account as row {first}")));
        }
        if let Some(ext) = r.external_id.as_deref() {
            if let Some(first) = seen_external.insert(ext, i) {
                problems.push(problem(
                    i,
                    "external_id",
                    format!("the same external id as row {first}"),
                ));
            }
        }
        targets.push(account);
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }

    // No problem: every row parsed.
    let parsed: Vec<Row> = parsed.into_iter().flatten().collect();
    let fresh = create_new(client, ns, &parsed, &targets)?;
    let unchanged = find_unchanged(client, ns, &parsed, &targets, &fresh, now_us)?;
    let (mut created, mut changed) = (0, 0);
    let mut results = Vec::with_capacity(parsed.len());
    for (i, (r, account)) in parsed.iter().zip(targets).enumerate() {
        if fresh.contains(&account) {
            created += 1;
            results.push(json!({
                "index": i,
                "account_id": account.to_string(),
                "external_id": r.external_id,
                "plan_id": r.plan_id,
                "created": true,
                "changed": true,
            }));
            continue;
        }
        if unchanged.contains(&account) {
            results.push(json!({
                "index": i,
                "account_id": account.to_string(),
                "external_id": r.external_id,
                "plan_id": r.plan_id,
                "created": false,
                "changed": false,
            }));
            continue;
        }
        let v = provisioning::provision(
            client,
            ns,
            &Provision {
                account_id: account,
                plan_id: r.plan_id.clone(),
                effective_us: now_us,
                external_id: r.external_id.clone(),
                key: None,
            },
        )?;
        let was_created = v.get("created").and_then(Value::as_bool).unwrap_or(false);
        let was_changed = v.get("changed").and_then(Value::as_bool).unwrap_or(false);
        created += usize::from(was_created);
        changed += usize::from(was_changed && !was_created);
        results.push(json!({
            "index": i,
            "account_id": account.to_string(),
            "external_id": r.external_id,
            "plan_id": r.plan_id,
            "created": was_created,
            "changed": was_changed,
        }));
    }
    let result = json!({
        "rows": parsed.len(),
        "created": created,
        "changed": changed,
        "unchanged": parsed.len() - created - changed,
        "duplicate": false,
        "results": results,
    });
    if let Some(key) = key {
        store_result(client, ns, "bulk_provision", key, &result)?;
    }
    Ok(result)
}

/// Creates, in one statement, the accounts of `rows` that do not exist yet; returns them. The rest
/// go through `provision_plan`'s own logic, one by one.
fn create_new(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    rows: &[Row],
    targets: &[Uuid],
) -> MecResult<HashSet<Uuid>> {
    let ids: Vec<String> = targets.iter().map(Uuid::to_string).collect();
    let mut existing = HashSet::new();
    for row in spi::read(client, &EXISTING, &[ns.into(), JsonB(json!(ids)).into()])? {
        if let Some(a) = row.get::<Uuid>("account_id")? {
            existing.insert(a);
        }
    }
    let new_rows: Vec<Value> = rows
        .iter()
        .zip(targets)
        .filter(|(_, a)| !existing.contains(*a))
        .map(|(r, a)| json!({"account_id": a.to_string(), "external_id": r.external_id, "plan_id": r.plan_id}))
        .collect();
    if new_rows.is_empty() {
        return Ok(HashSet::new());
    }
    let created = spi::write(
        client,
        &CREATE_MANY,
        &[
            ns.into(),
            JsonB(Value::Array(new_rows)).into(),
            timestamptz(0).into(),
            crate::pg::owner::caller_role().into(),
            timestamptz(crate::pg::clock::now_us()).into(),
        ],
    )?
    .first()
    .map(|row| row.get::<JsonB>("created"))
    .transpose()?
    .flatten()
    .map(|j| j.0);
    Ok(uuid_set(created))
}

/// The existing accounts among `rows` (those not just created) that provisioning would leave as
/// they are; they are skipped, the rest go through `provision_plan` one by one.
fn find_unchanged(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    rows: &[Row],
    targets: &[Uuid],
    fresh: &HashSet<Uuid>,
    now_us: i64,
) -> MecResult<HashSet<Uuid>> {
    let existing: Vec<Value> = rows
        .iter()
        .zip(targets)
        .filter(|(_, a)| !fresh.contains(*a))
        .map(|(r, a)| json!({"account_id": a.to_string(), "external_id": r.external_id, "plan_id": r.plan_id}))
        .collect();
    if existing.is_empty() {
        return Ok(HashSet::new());
    }
    let found = spi::write(
        client,
        &UNCHANGED,
        &[
            ns.into(),
            JsonB(Value::Array(existing)).into(),
            timestamptz(now_us).into(),
        ],
    )?
    .first()
    .map(|row| row.get::<JsonB>("unchanged"))
    .transpose()?
    .flatten()
    .map(|j| j.0);
    Ok(uuid_set(found))
}

fn uuid_set(list: Option<Value>) -> HashSet<Uuid> {
    list.as_ref()
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(parse_uuid))
                .collect()
        })
        .unwrap_or_default()
}
