//! Operator corrections: per-account overrides and grants (new entitlement rows, never edits of
//! the plan's), signed ledger adjustments, and forgetting an account.

use pg_mec_core::enforcement::{check_fields, Enforcement, Field};
use pg_mec_core::Decimal;
use pgrx::datum::{JsonB, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::cache::entitlement;
use crate::events::alerts;
use crate::ledger::audit::audit;
use crate::ledger::keys::{claim_key, store_result};
use crate::ledger::validate_key;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{num, timestamptz, to_numeric};
use crate::pg::{MecError, MecResult};

pub struct Override {
    pub account_id: Uuid,
    pub resource_type: String,
    pub limit: Option<Decimal>,
    pub enforcement: Option<String>,
    /// `None`: the plan row's.
    pub overage_cap: Option<Decimal>,
    /// `None`: the plan row's.
    pub grace: Option<Decimal>,
    pub valid_from_us: i64,
    pub valid_until_us: Option<i64>,
    pub reason: Option<String>,
    pub key: Option<String>,
}

pub struct Grant {
    pub account_id: Uuid,
    pub resource_type: String,
    pub quantity: Decimal,
    pub expires_us: Option<i64>,
    pub reason: Option<String>,
    pub key: Option<String>,
}

pub struct Adjustment {
    pub key: String,
    pub account_id: Uuid,
    pub resource_type: String,
    pub quantity: Decimal,
    pub reason: String,
    pub occurred_us: i64,
}

stmt! {
    static CLOSE_OVERRIDES: write (ns: uuid, account_id: uuid, resource_type: text, from: timestamptz) =
        "UPDATE mec_data.entitlements SET valid_until = $4
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND source = 'override'
                AND valid_from < $4 AND (valid_until IS NULL OR valid_until > $4)";
}

stmt! {
    /// A new override or grant row. Its period, and unless `$12` (explicit) its enforcement, overage
    /// cap and grace, come from the plan row in force at `$6`.
    static INSERT_ENTITLEMENT: write (ns: uuid, account_id: uuid, resource_type: text, source: text, quantity_limit: numeric, valid_from: timestamptz, valid_until: timestamptz, enforcement: text, reason: text, overage_cap: numeric, grace: numeric, explicit: bool) =
        "WITH base AS (
                  SELECT period, enforcement, overage_cap, grace FROM mec_data.entitlements
                  WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND source = 'plan'
                    AND valid_from <= $6 AND (valid_until IS NULL OR valid_until > $6)
                  ORDER BY valid_from DESC LIMIT 1)
              INSERT INTO mec_data.entitlements AS e
                  (namespace_id, account_id, resource_type, source, quantity_limit, period, enforcement,
                   overage_cap, grace, valid_from, valid_until, reason)
              SELECT $1, $2, $3, $4, $5, (SELECT period FROM base),
                     coalesce($8, (SELECT enforcement FROM base), 'hard'),
                     CASE WHEN $12 THEN $10 ELSE (SELECT overage_cap FROM base) END,
                     CASE WHEN $12 THEN $11 ELSE (SELECT grace FROM base) END, $6, $7, $9
              RETURNING to_jsonb(e) - 'namespace_id'";
}

stmt! {
    /// The plan row's enforcement, overage cap and grace at `$4` (what an override inherits).
    static BASE_FIELDS: read (ns: uuid, account_id: uuid, resource_type: text, at: timestamptz) =
        "SELECT enforcement, overage_cap, grace FROM mec_data.entitlements
          WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND source = 'plan'
            AND valid_from <= $4 AND (valid_until IS NULL OR valid_until > $4)
          ORDER BY valid_from DESC LIMIT 1";
}

stmt! {
    static ADJUST: write (ns: uuid, key: text, account_id: uuid, resource_type: text, quantity: numeric, occurred_at: timestamptz, period_start: timestamptz, period_end: timestamptz, reason: text) =
        "WITH ins AS (
                  INSERT INTO mec_data.consumption AS c
                      (namespace_id, idempotency_key, consumption_id, account_id, resource_type, entry_type, quantity,
                       occurred_at, period_start, period_end, billable, reason)
                  VALUES ($1, $2, gen_random_uuid(), $3, $4, 'adjustment', $5, $6, $7, $8, true, $9)
                  ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
                  RETURNING to_jsonb(c) - 'namespace_id' AS row)
              SELECT row FROM ins";
}

stmt! {
    static APPLY_ADJUSTMENT: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, period_end: timestamptz, quantity: numeric) =
        "INSERT INTO mec_data.usage_counters AS u (namespace_id, account_id, resource_type, period_start, slot, period_end, used)
              VALUES ($1, $2, $3, $4, 0, $5, $6)
              ON CONFLICT (namespace_id, account_id, resource_type, period_start, slot)
              DO UPDATE SET used = u.used + excluded.used, updated_at = now()
              RETURNING used";
}

stmt! {
    static ADJUSTMENT_BY_KEY: read (ns: uuid, key: text) =
        "SELECT to_jsonb(c) - 'namespace_id' AS row, account_id, resource_type, quantity::text AS quantity, entry_type
              FROM mec_data.consumption c WHERE namespace_id = $1 AND idempotency_key = $2";
}

stmt! {
    static FORGET: write (ns: uuid, account_id: uuid) =
        "WITH c AS (DELETE FROM mec_data.consumption WHERE namespace_id = $1 AND account_id = $2 RETURNING 1),
                   r AS (DELETE FROM mec_data.consumption_rollups WHERE namespace_id = $1 AND account_id = $2
                         RETURNING 1),
                   k AS (DELETE FROM mec_data.idempotency_keys
                         WHERE namespace_id = $1 AND fingerprint LIKE $2::text || '|%' RETURNING 1),
                   -- the Stripe inbox keeps each event id (a redelivery stays a no-op), not its content
                   s AS (UPDATE mec_data.stripe_events SET payload = '{}', customer_id = NULL, detail = NULL
                         WHERE namespace_id = $1 AND account_id = $2 RETURNING 1),
                   u AS (UPDATE mec_data.auth0_events SET user_id = NULL, detail = NULL
                         WHERE namespace_id = $1 AND account_id = $2 RETURNING 1),
                   a AS (DELETE FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2 RETURNING 1)
              SELECT (SELECT count(*) FROM a)::int4 AS accounts, (SELECT count(*) FROM c)::int4 AS events";
}

fn require_known(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    resource: &str,
    at_us: i64,
) -> MecResult<()> {
    entitlement::resolve(client, ns, account, resource, at_us).map(|_| ())
}

/// A new override or grant row; period, enforcement and caps follow the plan's row in force.
struct NewEntitlement<'a> {
    account: Uuid,
    resource: &'a str,
    source: &'a str,
    limit: Option<Decimal>,
    from_us: i64,
    until_us: Option<i64>,
    enforcement: Option<&'a str>,
    /// Explicit overage cap and grace (`None`: the plan row's).
    fields: Option<(Option<Decimal>, Option<Decimal>)>,
    reason: Option<&'a str>,
}

fn insert_entitlement(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    e: &NewEntitlement<'_>,
) -> MecResult<Value> {
    let from: TimestampWithTimeZone = timestamptz(e.from_us);
    let until: Option<TimestampWithTimeZone> = e.until_us.map(timestamptz);
    Ok(spi::write(
        client,
        &INSERT_ENTITLEMENT,
        &[
            ns.into(),
            e.account.into(),
            e.resource.into(),
            e.source.into(),
            e.limit.map(to_numeric).into(),
            from.into(),
            until.into(),
            e.enforcement.into(),
            e.reason.into(),
            e.fields.and_then(|f| f.0).map(to_numeric).into(),
            e.fields.and_then(|f| f.1).map(to_numeric).into(),
            e.fields.is_some().into(),
        ],
    )?
    .one::<JsonB>()?
    .map(|j| j.0)
    .unwrap_or(Value::Null))
}

/// An override replaces the plan's limit for one resource from `valid_from` (until `valid_until`).
pub fn set_override(client: &mut SpiClient<'_>, ns: Uuid, req: &Override) -> MecResult<Value> {
    if let Some(e) = &req.enforcement {
        if !["hard", "soft", "capped"].contains(&e.as_str()) {
            return Err(MecError::invalid(format!(
                "p_enforcement must be hard, soft or capped, got \"{e}\""
            )));
        }
    }
    if req.limit.is_some_and(|l| l < Decimal::ZERO) {
        return Err(MecError::invalid(
            "p_limit must not be negative (NULL means unlimited)",
        ));
    }
    if req.valid_until_us.is_some_and(|u| u <= req.valid_from_us) {
        return Err(MecError::invalid(
            "p_valid_until must be after p_valid_from",
        ));
    }
    let fingerprint = format!(
        "{}|{}|{:?}|{:?}|{:?}|{:?}",
        req.account_id, req.resource_type, req.limit, req.enforcement, req.overage_cap, req.grace
    );
    if let Some(key) = &req.key {
        if let Some(v) = claim_key(client, ns, "set_override", key, &fingerprint)? {
            return Ok(v);
        }
    }
    require_known(
        client,
        ns,
        req.account_id,
        &req.resource_type,
        req.valid_from_us,
    )?;
    let fields = override_fields(client, ns, req)?;
    crate::counters::stripes::fold_account(client, ns, req.account_id)?;
    let from: TimestampWithTimeZone = timestamptz(req.valid_from_us);
    spi::write(
        client,
        &CLOSE_OVERRIDES,
        &[
            ns.into(),
            req.account_id.into(),
            req.resource_type.as_str().into(),
            from.into(),
        ],
    )?;
    let row = insert_entitlement(
        client,
        ns,
        &NewEntitlement {
            account: req.account_id,
            resource: &req.resource_type,
            source: "override",
            limit: req.limit,
            from_us: req.valid_from_us,
            until_us: req.valid_until_us,
            enforcement: Some(fields.0.as_str()),
            fields: Some((fields.1, fields.2)),
            reason: req.reason.as_deref(),
        },
    )?;
    audit(
        client,
        ns,
        "set_override",
        &req.account_id.to_string(),
        json!({"resource_type": req.resource_type, "limit": req.limit.map(num)}),
    )?;
    if let Some(key) = &req.key {
        store_result(client, ns, "set_override", key, &row)?;
    }
    Ok(first_time(row))
}

/// The override's enforcement, overage cap and grace: what it gives, else the plan row's, checked
/// by the catalog's own rule (`pg_mec_core::enforcement::check_fields`).
fn override_fields(
    client: &SpiClient<'_>,
    ns: Uuid,
    req: &Override,
) -> MecResult<(String, Option<Decimal>, Option<Decimal>)> {
    let at: TimestampWithTimeZone = timestamptz(req.valid_from_us);
    let (base_e, base_cap, base_grace) = match spi::read(
        client,
        &BASE_FIELDS,
        &[
            ns.into(),
            req.account_id.into(),
            req.resource_type.as_str().into(),
            at.into(),
        ],
    )?
    .first()
    {
        Some(row) => (
            row.get::<String>("enforcement")?,
            row.get::<pgrx::AnyNumeric>("overage_cap")?
                .as_ref()
                .map(crate::pg::values::to_decimal)
                .transpose()?,
            row.get::<pgrx::AnyNumeric>("grace")?
                .as_ref()
                .map(crate::pg::values::to_decimal)
                .transpose()?,
        ),
        None => (None, None, None),
    };
    let name = req
        .enforcement
        .clone()
        .or(base_e)
        .unwrap_or_else(|| "hard".into());
    let e: Enforcement = name
        .parse()
        .map_err(|_| MecError::invalid(format!("unknown enforcement \"{name}\"")))?;
    let cap = match e {
        Enforcement::Capped => req.overage_cap.or(base_cap),
        _ => req.overage_cap,
    };
    let grace = match e {
        Enforcement::Soft => req.grace,
        _ => req.grace.or(base_grace),
    };
    if let Some((field, message)) = check_fields(e, cap, grace).into_iter().next() {
        let arg = match field {
            Field::Entitlement | Field::OverageCap => "p_overage_cap",
            Field::Grace => "p_grace",
        };
        return Err(MecError::invalid_hint(
            format!("{arg}: {message}"),
            "Overrides follow the catalog's rule: capped needs p_overage_cap (or a plan row that has one), only capped has one, and soft has no grace.",
        ));
    }
    if [cap, grace].iter().flatten().any(|d| *d < Decimal::ZERO) {
        return Err(MecError::invalid(
            "p_overage_cap and p_grace must not be negative",
        ));
    }
    Ok((name, cap, grace))
}

/// A result as the first call returns it: `duplicate: false` (a replay's stored copy says true).
fn first_time(mut row: Value) -> Value {
    if let Some(o) = row.as_object_mut() {
        o.insert("duplicate".into(), Value::Bool(false));
    }
    row
}

/// A grant adds `quantity` to the limit while it is valid (from now until `expires_at`).
pub fn grant_credits(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    req: &Grant,
    now_us: i64,
) -> MecResult<Value> {
    if req.quantity <= Decimal::ZERO {
        return Err(MecError::invalid(format!(
            "p_quantity must be positive, got {}",
            req.quantity
        )));
    }
    if req.expires_us.is_some_and(|e| e <= now_us) {
        return Err(MecError::invalid("p_expires_at must be in the future"));
    }
    let fingerprint = format!("{}|{}|{}", req.account_id, req.resource_type, req.quantity);
    if let Some(key) = &req.key {
        if let Some(v) = claim_key(client, ns, "grant_credits", key, &fingerprint)? {
            return Ok(v);
        }
    }
    require_known(client, ns, req.account_id, &req.resource_type, now_us)?;
    let row = insert_entitlement(
        client,
        ns,
        &NewEntitlement {
            account: req.account_id,
            resource: &req.resource_type,
            source: "grant",
            limit: Some(req.quantity),
            from_us: now_us,
            until_us: req.expires_us,
            enforcement: None,
            fields: None,
            reason: req.reason.as_deref(),
        },
    )?;
    audit(
        client,
        ns,
        "grant_credits",
        &req.account_id.to_string(),
        json!({"resource_type": req.resource_type, "quantity": num(req.quantity)}),
    )?;
    if let Some(key) = &req.key {
        store_result(client, ns, "grant_credits", key, &row)?;
    }
    Ok(first_time(row))
}

/// The earlier adjustment recorded under `req.key`, with `duplicate: true`; ME409 when it was
/// another payload (or not an adjustment).
fn replay_adjustment(
    client: &SpiClient<'_>,
    ns: Uuid,
    req: &Adjustment,
) -> MecResult<Option<Value>> {
    let Some(row) = spi::read(
        client,
        &ADJUSTMENT_BY_KEY,
        &[ns.into(), req.key.as_str().into()],
    )?
    .into_iter()
    .next() else {
        return Ok(None);
    };
    let same = row.get::<Uuid>("account_id")? == Some(req.account_id)
        && row.get::<String>("resource_type")?.as_deref() == Some(req.resource_type.as_str())
        && row
            .get::<String>("quantity")?
            .and_then(|q| q.parse::<Decimal>().ok())
            .map(|d| d.normalize())
            == Some(req.quantity.normalize())
        && row.get::<String>("entry_type")?.as_deref() == Some("adjustment");
    if !same {
        return Err(MecError::IdempotencyConflict {
            key: req.key.clone(),
            detail: json!({"operation": "adjust_consumption"}).to_string(),
        });
    }
    let mut v = row.get::<JsonB>("row")?.map(|j| j.0).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("duplicate".into(), Value::Bool(true));
    }
    Ok(Some(v))
}

/// Appends a signed correction to the ledger and applies it to the period's counter.
pub fn adjust(client: &mut SpiClient<'_>, ns: Uuid, req: &Adjustment) -> MecResult<Value> {
    validate_key(&req.key)?;
    if req.quantity.is_zero() {
        return Err(MecError::invalid("p_quantity must not be zero"));
    }
    if req.reason.trim().is_empty() {
        return Err(MecError::invalid(
            "p_reason must say why usage is corrected",
        ));
    }
    if let Some(v) = replay_adjustment(client, ns, req)? {
        return Ok(v);
    }
    let eff = entitlement::resolve(
        client,
        ns,
        req.account_id,
        &req.resource_type,
        req.occurred_us,
    )?;
    let window = eff.window(req.occurred_us);
    // The below-zero check and the counter need the exact total on slot 0: the stripes folded
    // in, expired holds given back.
    let counter = crate::counters::CounterKey {
        account_id: req.account_id,
        resource_type: &req.resource_type,
        window,
    };
    // The ancestors' pools take the correction too: locked first, as metering locks them.
    let pools = crate::ops::hierarchy::pools(client, ns, &eff, req.occurred_us)?;
    crate::ops::hierarchy::lock_all(client, ns, &pools)?;
    crate::counters::stripes::fold(client, ns, &counter)?;
    counter.sweep_expired_holds(client, ns, None)?;
    let occurred: TimestampWithTimeZone = timestamptz(req.occurred_us);
    let start: TimestampWithTimeZone = timestamptz(window.start_us);
    let end: Option<TimestampWithTimeZone> = window.end_us.map(timestamptz);
    let recorded = spi::write(
        client,
        &ADJUST,
        &[
            ns.into(),
            req.key.as_str().into(),
            req.account_id.into(),
            req.resource_type.as_str().into(),
            to_numeric(req.quantity).into(),
            occurred.into(),
            start.into(),
            end.into(),
            req.reason.as_str().into(),
        ],
    )?
    .one::<JsonB>()?
    .map(|j| j.0);
    // A concurrent call with the same key committed first: answer as it did.
    let Some(mut row) = recorded else {
        return replay_adjustment(client, ns, req)?.ok_or_else(|| {
            MecError::Internal("adjustment key conflicted but no ledger row is visible".into())
        });
    };
    let used = spi::write(
        client,
        &APPLY_ADJUSTMENT,
        &[
            ns.into(),
            req.account_id.into(),
            req.resource_type.as_str().into(),
            start.into(),
            end.into(),
            to_numeric(req.quantity).into(),
        ],
    )?
    .one::<pgrx::AnyNumeric>()?;
    let used = used
        .as_ref()
        .map(crate::pg::values::to_decimal)
        .transpose()?;
    // Recorded usage is the counter less its holds (live ones, and expired ones another
    // transaction kept from the sweep): a correction may not take that below zero.
    let recorded_usage = match used {
        Some(u) if req.quantity < Decimal::ZERO => Some(u - counter.held(client, ns)?),
        other => other,
    };
    if recorded_usage.is_some_and(|u| u < Decimal::ZERO) {
        return Err(MecError::invalid(
            "the adjustment would take usage below zero",
        ));
    }
    crate::ops::hierarchy::count(client, ns, &pools, req.quantity)?;
    // A correction upwards crosses alerts as usage does (the stripes were folded: exact).
    if let (Some(used), true) = (used, req.quantity > Decimal::ZERO) {
        alerts::after_usage(
            client,
            ns,
            &alerts::Usage {
                account_id: req.account_id,
                eff: &eff,
                window: &window,
                used,
                consumption_id: row
                    .get("consumption_id")
                    .and_then(Value::as_str)
                    .and_then(crate::pg::context::parse_uuid),
            },
        )?;
    }

    audit(
        client,
        ns,
        "adjust_consumption",
        &req.account_id.to_string(),
        json!({"resource_type": req.resource_type, "quantity": num(req.quantity)}),
    )?;
    if let Some(o) = row.as_object_mut() {
        o.insert("duplicate".into(), Value::Bool(false));
    }
    Ok(row)
}

/// Deletes the account and every row about it; leaves an audit entry without personal data.
pub fn forget(client: &mut SpiClient<'_>, ns: Uuid, account: Uuid) -> MecResult<Value> {
    let counts = spi::write(client, &FORGET, &[ns.into(), account.into()])?.first();
    let (accounts, events) = match counts {
        Some(row) => (row.get::<i32>("accounts")?, row.get::<i32>("events")?),
        None => (None, None),
    };
    let existed = accounts.unwrap_or(0) > 0;
    if existed {
        audit(
            client,
            ns,
            "forget_account",
            &account.to_string(),
            json!({"ledger_rows_deleted": events.unwrap_or(0)}),
        )?;
    }
    Ok(
        json!({"account_id": account.to_string(), "forgotten": true, "existed": existed, "ledger_rows_deleted": events.unwrap_or(0)}),
    )
}
