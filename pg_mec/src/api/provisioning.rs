//! `provision_plan`: accounts and their plans.

use pgrx::prelude::*;
use pgrx::Uuid;

use crate::api;
use crate::ops::bulk;
use crate::ops::plan_versions::{self, Migration};
use crate::ops::provisioning::{self, Provision};
use crate::pg::args;
use crate::pg::jsonb::{Jsonb, JsonbArg};

/// Puts `p_account_id` on `p_plan_id` from `p_effective_at` on, creating the account if missing
/// (with `p_external_id`). Usage already counted in the period is kept. Idempotent on
/// `p_idempotency_key` when given; provisioning the current plan again changes nothing.
///
/// Returns `{account_id, plan_id, previous_plan_id, created, changed, effective_at,
/// entitlements: [...]}`. Raises `ME404` (unknown plan), `ME400` (retired plan), `ME409` (key
/// reused with another payload), `23505` (external id of another account), `22023`, `42501`.
#[pg_extern]
fn provision_plan(
    p_account_id: Option<Uuid>,
    p_plan_id: Option<&str>,
    p_effective_at: default!(Option<TimestampWithTimeZone>, "now()"),
    p_external_id: default!(Option<&str>, "NULL"),
    p_idempotency_key: default!(Option<&str>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let req = Provision {
            account_id: args::required(p_account_id, "p_account_id")?,
            plan_id: args::text(p_plan_id, "p_plan_id")?,
            effective_us: args::instant(p_effective_at, "p_effective_at")?,
            external_id: p_external_id.map(str::to_string),
            key: p_idempotency_key.map(str::to_string),
        };
        provisioning::provision(client, ns, &req)
    }))
}

/// Provisions many accounts in one transaction, all or nothing: `p_rows` is a JSON array of
/// `{account_id | external_id, plan_id}` (at most 50 000). A row with only an external id names
/// the account that has it, or a new one. Every row is checked before anything is written: an unknown
/// or retired plan, a bad uuid, an external id of another account, the same account twice — any of
/// them refuses the whole batch with every problem listed. Provisioning a row's current plan again
/// changes nothing; with `p_idempotency_key` a replay returns the first result.
///
/// Returns `{rows, created, changed, unchanged, duplicate, results: [{index, account_id, external_id,
/// plan_id, created, changed}]}`. Raises `22023` (DETAIL `{"problems": [{index, path, message}]}`),
/// `ME409` (key reused with other rows), `42501`.
#[pg_extern]
fn bulk_provision(
    p_rows: Option<JsonbArg>,
    p_idempotency_key: default!(Option<&str>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let rows = args::required(p_rows, "p_rows")?.parse("p_rows")?;
        bulk::bulk_provision(
            client,
            caller.namespace,
            &rows,
            p_idempotency_key,
            crate::pg::clock::now_us(),
        )
    }))
}

/// Moves the accounts on version `p_from_version` of plan `p_plan_id` (or only `p_account_id`) to
/// `p_to_version` — any version of the plan ever loaded (`mec.plan_versions`), forward or back — from
/// now on, in one transaction: their plan rows close now and the version's open now; usage counted
/// so far and overrides and grants stay. Running it again moves nobody.
///
/// Returns `{plan_id, from_version, to_version, accounts_migrated, account_ids}`. Raises `ME404`
/// (unknown plan, version or account), `ME409` (`p_account_id` is not on that plan version),
/// `22023` (NULL argument, the same version twice), `42501`.
#[pg_extern]
fn migrate_plan_version(
    p_plan_id: Option<&str>,
    p_from_version: Option<&str>,
    p_to_version: Option<&str>,
    p_account_id: default!(Option<Uuid>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let m = Migration {
            plan_id: args::text(p_plan_id, "p_plan_id")?,
            from_version: args::text(p_from_version, "p_from_version")?,
            to_version: args::text(p_to_version, "p_to_version")?,
            account_id: p_account_id,
        };
        plan_versions::migrate(client, caller.namespace, &m)
    }))
}

/// Puts `p_account_id` under `p_parent_account_id` in its namespace's hierarchy (organisation →
/// team → member → key: at most four levels), or makes it top-level with NULL; creates the account
/// (without a plan) if missing. An account without an entitlement of its own inherits its nearest
/// entitled ancestor's; its metered and gauge usage counts against every entitled ancestor too,
/// decided all or nothing. Usage already counted stays where it was counted.
///
/// Returns `{account_id, parent_account_id, previous_parent_account_id, created, changed,
/// ancestors}`. Raises `ME404` (unknown parent), `22023` (NULL account, itself as parent, a cycle,
/// more than four levels), `42501`.
#[pg_extern]
fn set_parent_account(p_account_id: Option<Uuid>, p_parent_account_id: Option<Uuid>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let account = args::required(p_account_id, "p_account_id")?;
        crate::ops::hierarchy::set_parent(client, caller.namespace, account, p_parent_account_id)
    }))
}
