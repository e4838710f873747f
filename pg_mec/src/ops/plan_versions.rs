//! `migrate_plan_version`: move accounts grandfathered on one version of a plan to another, from
//! now on, in one transaction. Their plan rows close now and the version's rows open now (copied from
//! `mec_data.plan_versions`); usage counters are keyed by period, not plan, so usage is kept, and
//! overrides and grants are rows of their own, so they stay.

use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::ledger::audit::audit;
use crate::pg::spi::{self, stmt};
use crate::pg::values::timestamptz;
use crate::pg::{MecError, MecResult};

stmt! {
    static PLAN_EXISTS: read (ns: uuid, plan_id: text) =
        "SELECT true FROM mec_data.plans WHERE namespace_id = $1 AND plan_id = $2";
}

stmt! {
    static VERSION_EXISTS: read (ns: uuid, plan_id: text, version: text) =
        "SELECT true FROM mec_data.plan_versions WHERE namespace_id = $1 AND plan_id = $2 AND version = $3";
}

stmt! {
    /// The accounts to move, locked (a provisioning racing the migration waits, then sees it).
    static LOCK_ACCOUNTS: write (ns: uuid, plan_id: text, from_version: text, account_id: uuid) =
        "SELECT account_id FROM mec_data.accounts
              WHERE namespace_id = $1 AND plan_id = $2 AND plan_version = $3
                AND ($4::uuid IS NULL OR account_id = $4)
              ORDER BY account_id
              FOR UPDATE";
}

stmt! {
    static ACCOUNT_EXISTS: read (ns: uuid, account_id: uuid) =
        "SELECT plan_id, plan_version FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2";
}

stmt! {
    /// Plan rows starting at or after `at` are replaced, not closed (they would close before they open).
    static DROP_FROM: write (ns: uuid, accounts: text, at: timestamptz) =
        "DELETE FROM mec_data.entitlements
              WHERE namespace_id = $1 AND account_id = ANY ($2::uuid[]) AND source = 'plan' AND valid_from >= $3";
}

stmt! {
    static CLOSE_AT: write (ns: uuid, accounts: text, at: timestamptz) =
        "UPDATE mec_data.entitlements SET valid_until = $3
              WHERE namespace_id = $1 AND account_id = ANY ($2::uuid[]) AND source = 'plan'
                AND valid_from < $3 AND (valid_until IS NULL OR valid_until > $3)";
}

stmt! {
    static OPEN_VERSION: write (ns: uuid, accounts: text, plan_id: text, version: text, at: timestamptz) =
        "INSERT INTO mec_data.entitlements
                  (namespace_id, account_id, resource_type, source, plan_id, plan_version, quantity_limit, period,
                   enforcement, overage_cap, grace, enabled, valid_from, dimension_limits)
              SELECT $1, a.account_id, e.resource_type, 'plan', $3, $4, e.quantity_limit, e.period,
                     e.enforcement, e.overage_cap, e.grace, e.enabled, $5, e.dimension_limits
              FROM unnest($2::uuid[]) AS a(account_id)
              CROSS JOIN mec_data.plan_versions v
              CROSS JOIN LATERAL jsonb_to_recordset(v.entitlements) AS e(
                     resource_type text, quantity_limit numeric, period text, enforcement text,
                     overage_cap numeric, grace numeric, enabled boolean, dimension_limits jsonb)
              -- a resource retired from the catalog since that version was loaded has no row to point at
              JOIN mec_data.resource_types r ON r.namespace_id = $1 AND r.resource_type = e.resource_type
              WHERE v.namespace_id = $1 AND v.plan_id = $3 AND v.version = $4";
}

stmt! {
    static SET_VERSION: write (ns: uuid, accounts: text, version: text) =
        "UPDATE mec_data.accounts SET plan_version = $3, updated_at = now()
              WHERE namespace_id = $1 AND account_id = ANY ($2::uuid[])";
}

/// What `migrate_plan_version` was asked.
pub struct Migration {
    pub plan_id: String,
    pub from_version: String,
    pub to_version: String,
    pub account_id: Option<Uuid>,
}

pub fn migrate(client: &mut SpiClient<'_>, ns: Uuid, m: &Migration) -> MecResult<Value> {
    if m.from_version == m.to_version {
        return Err(MecError::invalid(format!(
            "p_from_version and p_to_version are both '{}'",
            m.from_version
        )));
    }
    let plan = m.plan_id.as_str();
    if spi::read(client, &PLAN_EXISTS, &[ns.into(), plan.into()])?
        .one::<bool>()?
        .is_none()
    {
        return Err(MecError::unknown("plan", plan));
    }
    for version in [&m.from_version, &m.to_version] {
        if spi::read(
            client,
            &VERSION_EXISTS,
            &[ns.into(), plan.into(), version.as_str().into()],
        )?
        .one::<bool>()?
        .is_none()
        {
            return Err(MecError::UnknownObject {
                what: "plan version",
                id: format!("{plan}@{version}"),
                hint: Some(
                    "List the versions with SELECT plan_id, version FROM mec.plan_versions.".into(),
                ),
            });
        }
    }
    let mut accounts: Vec<Uuid> = Vec::new();
    for row in spi::write(
        client,
        &LOCK_ACCOUNTS,
        &[
            ns.into(),
            plan.into(),
            m.from_version.as_str().into(),
            m.account_id.into(),
        ],
    )? {
        if let Some(a) = row.get::<Uuid>("account_id")? {
            accounts.push(a);
        }
    }
    if let (Some(account), true) = (m.account_id, accounts.is_empty()) {
        let Some(row) = spi::read(client, &ACCOUNT_EXISTS, &[ns.into(), account.into()])?.first()
        else {
            return Err(MecError::unknown("account", account.to_string()));
        };
        let (on_plan, on_version) = (
            row.get::<String>("plan_id")?,
            row.get::<String>("plan_version")?,
        );
        return Err(MecError::StateConflict {
            message: format!(
                "account {account} is on plan {} version {}, not {plan} version {}",
                on_plan.as_deref().unwrap_or("(none)"),
                on_version.as_deref().unwrap_or("(none)"),
                m.from_version
            ),
            hint: Some("Name the plan and version the account is on (mec.accounts).".into()),
        });
    }
    if !accounts.is_empty() {
        let now = crate::pg::clock::now_us();
        let at: TimestampWithTimeZone = timestamptz(now);
        // Limits change: no stripe may keep quota granted under the old ones.
        for account in &accounts {
            crate::counters::stripes::fold_account(client, ns, *account)?;
        }
        // A Postgres array literal of the ids ({uuid,uuid,...}): uuids need no quoting.
        let ids = format!(
            "{{{}}}",
            accounts
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let ids = ids.as_str();
        spi::write(client, &DROP_FROM, &[ns.into(), ids.into(), at.into()])?;
        spi::write(client, &CLOSE_AT, &[ns.into(), ids.into(), at.into()])?;
        spi::write(
            client,
            &OPEN_VERSION,
            &[
                ns.into(),
                ids.into(),
                plan.into(),
                m.to_version.as_str().into(),
                at.into(),
            ],
        )?;
        spi::write(
            client,
            &SET_VERSION,
            &[ns.into(), ids.into(), m.to_version.as_str().into()],
        )?;
        audit(
            client,
            ns,
            "migrate_plan_version",
            plan,
            json!({"from_version": m.from_version, "to_version": m.to_version,
                   "accounts": accounts.len(),
                   "effective_at": crate::pg::values::iso8601(now)}),
        )?;
    }
    Ok(json!({
        "plan_id": plan,
        "from_version": m.from_version,
        "to_version": m.to_version,
        "accounts_migrated": accounts.len(),
        "account_ids": accounts.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    }))
}
