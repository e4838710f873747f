//! The entitlement in force for one account and resource at one moment: the plan's row, replaced by
//! an override, raised by grants. One indexed query per call.

use std::str::FromStr;

use pg_mec_core::billing::{default_billable, StatusClass};
use pg_mec_core::catalog::Kind;
use pg_mec_core::enforcement::{Enforcement, Policy};
use pg_mec_core::period::{period_window, rate_window, Period, Window};
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;

use crate::errors::{MecError, MecResult};
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

static LOOKUP: Stmt = Stmt {
    sql: "SELECT r.kind, r.window_seconds, r.billable_statuses::text, a.billing_anchor_day::int4,
                 e.source, e.quantity_limit, e.period, e.enforcement, e.overage_cap, e.grace, e.enabled,
                 e.valid_from
          FROM mec_data.accounts a
          JOIN mec_data.resource_types r
            ON r.namespace_id = a.namespace_id AND r.resource_type = $3
          LEFT JOIN mec_data.entitlements e
            ON e.namespace_id = a.namespace_id AND e.account_id = a.account_id
           AND e.resource_type = $3 AND e.valid_from <= $4
           AND (e.valid_until IS NULL OR e.valid_until > $4)
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

/// Per resource: kind, window seconds, billable statuses (JSON text), the account's anchor day.
type Header = (String, Option<i32>, Option<String>, Option<i32>);

struct Row {
    source: String,
    limit: Option<Decimal>,
    period: Option<String>,
    enforcement: Option<String>,
    overage_cap: Option<Decimal>,
    grace: Option<Decimal>,
    enabled: bool,
    valid_from_us: i64,
}

fn dec(v: Option<AnyNumeric>) -> MecResult<Option<Decimal>> {
    v.as_ref().map(to_decimal).transpose()
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

/// Resolves the entitlement of `account_id` for `resource_type` at `at_us`.
/// Raises `ME404` for an unknown account or resource type.
pub fn resolve(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    at_us: i64,
) -> MecResult<Effective> {
    let at: TimestampWithTimeZone = timestamptz(at_us);
    let table = spi::read(
        client,
        &LOOKUP,
        &[
            ns.into(),
            account_id.into(),
            resource_type.into(),
            at.into(),
        ],
    )?;
    let mut header: Option<Header> = None;
    let mut rows = Vec::new();
    for row in table {
        if header.is_none() {
            header = Some((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<i32>(2)?,
                row.get::<String>(3)?,
                row.get::<i32>(4)?,
            ));
        }
        if let Some(source) = row.get::<String>(5)? {
            rows.push(Row {
                source,
                limit: dec(row.get::<AnyNumeric>(6)?)?,
                period: row.get::<String>(7)?,
                enforcement: row.get::<String>(8)?,
                overage_cap: dec(row.get::<AnyNumeric>(9)?)?,
                grace: dec(row.get::<AnyNumeric>(10)?)?,
                enabled: row.get::<bool>(11)?.unwrap_or(true),
                valid_from_us: row
                    .get::<TimestampWithTimeZone>(12)?
                    .map(crate::values::unix_us)
                    .transpose()?
                    .unwrap_or(0),
            });
        }
    }
    // Newest first: the newest override wins (sorted here rather than by a Sort node per call).
    rows.sort_by_key(|r| std::cmp::Reverse(r.valid_from_us));
    let Some((kind, window_seconds, statuses, anchor)) = header else {
        return Err(diagnose_missing(client, ns, account_id, resource_type));
    };
    let kind = Kind::from_str(&kind).map_err(|e| MecError::Internal(e.to_string()))?;
    Ok(combine(
        resource_type,
        kind,
        window_seconds,
        parse_statuses(statuses),
        anchor,
        rows,
    ))
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

/// Folds the rows in force (newest first) into one policy: the newest override replaces the plan
/// row; grants add their quantity to a finite limit.
fn combine(
    resource_type: &str,
    kind: Kind,
    window_seconds: Option<i32>,
    billable: Vec<StatusClass>,
    anchor: Option<i32>,
    rows: Vec<Row>,
) -> Effective {
    let base = rows
        .iter()
        .find(|r| r.source == "override")
        .or_else(|| rows.iter().find(|r| r.source == "plan"));
    let grants: Decimal = rows
        .iter()
        .filter(|r| r.source == "grant")
        .filter_map(|r| r.limit)
        .sum();
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
        window_seconds: window_seconds.and_then(|w| u32::try_from(w).ok()),
        policy,
        period,
        enabled: enabled || (kind != Kind::Feature && base.is_some()),
        entitled: !rows.is_empty(),
        anchor_day: anchor.and_then(|a| u8::try_from(a).ok()),
        billable,
    }
}
