//! Operator corrections (mec_admin): overrides, grants, ledger adjustments, forgetting accounts.

use pgrx::prelude::*;
use pgrx::{AnyNumeric, Uuid};

use crate::api;
use crate::ops::corrections::{self, Adjustment, Grant, Override};
use crate::pg::args;
use crate::pg::clock;
use crate::pg::jsonb::Jsonb;

/// Replaces the plan's limit for one account and resource from `p_valid_from` (until
/// `p_valid_until`); `p_limit` NULL = unlimited. `p_enforcement`, `p_overage_cap` and `p_grace`
/// default to the plan row's, and follow the catalog's rule (capped needs an overage cap, only
/// capped has one, soft has no grace). Returns the new entitlement row with
/// `duplicate: false` (a replay of `p_idempotency_key`: the same row, `duplicate: true`).
/// Raises `ME404` (unknown account/resource), `ME409` (key reused), `22023`, `42501`.
#[pg_extern]
#[allow(clippy::too_many_arguments)]
fn set_override(
    p_account_id: Option<Uuid>,
    p_resource_type: Option<&str>,
    p_limit: Option<AnyNumeric>,
    p_enforcement: default!(Option<&str>, "NULL"),
    p_valid_from: default!(Option<TimestampWithTimeZone>, "now()"),
    p_valid_until: default!(Option<TimestampWithTimeZone>, "NULL"),
    p_reason: default!(Option<&str>, "NULL"),
    p_idempotency_key: default!(Option<&str>, "NULL"),
    p_overage_cap: default!(Option<AnyNumeric>, "NULL"),
    p_grace: default!(Option<AnyNumeric>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let dec = |v: Option<AnyNumeric>| v.map(|n| crate::pg::values::to_decimal(&n)).transpose();
        let req = Override {
            overage_cap: dec(p_overage_cap)?,
            grace: dec(p_grace)?,
            account_id: args::required(p_account_id, "p_account_id")?,
            resource_type: args::text(p_resource_type, "p_resource_type")?,
            limit: p_limit
                .map(|n| crate::pg::values::to_decimal(&n))
                .transpose()?,
            enforcement: p_enforcement.map(str::to_string),
            valid_from_us: args::instant(p_valid_from, "p_valid_from")?,
            valid_until_us: p_valid_until
                .map(|t| args::instant(Some(t), "p_valid_until"))
                .transpose()?,
            reason: p_reason.map(str::to_string),
            key: p_idempotency_key.map(str::to_string),
        };
        corrections::set_override(client, ns, &req)
    }))
}

/// Grants `p_quantity` extra units of a resource (added to the limit while valid), optionally
/// expiring at `p_expires_at`. Returns the grant's entitlement row with `duplicate: false`
/// (a replay of `p_idempotency_key`: the same row, `duplicate: true`).
/// Raises `ME404`, `ME409`, `22023` (non-positive quantity, expiry in the past), `42501`.
#[pg_extern]
fn grant_credits(
    p_account_id: Option<Uuid>,
    p_resource_type: Option<&str>,
    p_quantity: Option<AnyNumeric>,
    p_expires_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    p_reason: default!(Option<&str>, "NULL"),
    p_idempotency_key: default!(Option<&str>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let req = Grant {
            account_id: args::required(p_account_id, "p_account_id")?,
            resource_type: args::text(p_resource_type, "p_resource_type")?,
            quantity: args::quantity(p_quantity, "p_quantity")?,
            expires_us: p_expires_at
                .map(|t| args::instant(Some(t), "p_expires_at"))
                .transpose()?,
            reason: p_reason.map(str::to_string),
            key: p_idempotency_key.map(str::to_string),
        };
        corrections::grant_credits(client, ns, &req, clock::now_us())
    }))
}

/// Appends a signed correction to the ledger (never edits it) and applies it to the counter of
/// the period of `p_occurred_at`. Idempotent on `p_idempotency_key`. Returns the ledger row.
/// Raises `ME404`, `ME409`, `22023` (zero quantity, empty reason, usage below zero), `42501`.
#[pg_extern]
fn adjust_consumption(
    p_idempotency_key: Option<&str>,
    p_account_id: Option<Uuid>,
    p_resource_type: Option<&str>,
    p_quantity: Option<AnyNumeric>,
    p_reason: Option<&str>,
    p_occurred_at: default!(Option<TimestampWithTimeZone>, "now()"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let req = Adjustment {
            key: args::required(p_idempotency_key, "p_idempotency_key")?.to_string(),
            account_id: args::required(p_account_id, "p_account_id")?,
            resource_type: args::text(p_resource_type, "p_resource_type")?,
            quantity: args::quantity(p_quantity, "p_quantity")?,
            reason: args::text(p_reason, "p_reason")?,
            occurred_us: args::instant(p_occurred_at, "p_occurred_at")?,
        };
        corrections::adjust(client, ns, &req)
    }))
}

/// Removes the account and every row about it (entitlements, usage, leases, ledger), leaving an
/// audit entry without personal data. Safe to call again. Returns `{account_id, forgotten,
/// existed, ledger_rows_deleted}`. Raises `22023`, `42501`.
#[pg_extern]
fn forget_account(p_account_id: Option<Uuid>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let account = args::required(p_account_id, "p_account_id")?;
        corrections::forget(client, ns, account)
    }))
}
