//! `check_entitlement` and `usage_summary`: read-only answers about an account.

use pgrx::prelude::*;
use pgrx::{AnyNumeric, Uuid};

use crate::api;
use crate::ops::summary;
use crate::pg::args;
use crate::pg::clock;
use crate::pg::jsonb::Jsonb;

/// May `p_account_id` use `p_requested_qty` more of `p_resource_type` now? Read-only.
///
/// Returns `{decision: "allow"|"deny", reason, quantity_allowed, quantity_used,
/// quantity_remaining, percent_used, period_start, period_end, enforcement}`; a denial is an
/// answer (HTTP 200), not an error. Features answer with `quantity_allowed` 1 or 0.
///
/// With `p_as_of`, answers as it would have at that instant: the entitlement in force then
/// (plan rows, overrides and grants by their validity windows) and the usage the ledger had
/// recorded by then (adds `as_of`).
///
/// Raises `22023` (NULL or negative quantity, `p_as_of` in the future), `42501` (no namespace; a
/// `mec_user` asking about another account), `ME404` (unknown account or resource type).
#[pg_extern(stable, parallel_safe)]
fn check_entitlement(
    p_account_id: Option<Uuid>,
    p_resource_type: Option<&str>,
    p_requested_qty: default!(Option<AnyNumeric>, 1),
    p_as_of: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> Jsonb {
    Jsonb(api::read(|caller, client| {
        let ns = caller.namespace;
        let account = args::required(p_account_id, "p_account_id")?;
        let resource = args::text(p_resource_type, "p_resource_type")?;
        let qty = args::quantity(p_requested_qty, "p_requested_qty")?;
        caller.require_account_access(account)?;
        match as_of(p_as_of)? {
            None => summary::check(client, ns, account, &resource, qty, clock::now_us()),
            Some(at) => summary::check_as_of(client, ns, account, &resource, qty, at),
        }
    }))
}

/// `p_as_of`, which may not be in the future.
fn as_of(p_as_of: Option<TimestampWithTimeZone>) -> crate::pg::MecResult<Option<i64>> {
    let Some(at) = p_as_of else {
        return Ok(None);
    };
    let at = args::instant(Some(at), "p_as_of")?;
    if at > clock::now_us() {
        return Err(crate::pg::MecError::invalid(
            "p_as_of must not be in the future",
        ));
    }
    Ok(Some(at))
}

/// Everything an account may use and has used: `{account_id, external_id, plan, plan_name,
/// payment_overdue, features: {<resource>: {kind, current, limit, remaining, reset_date,
/// last_updated, enforcement}}}`. Read-only. With `p_as_of`, as it stood at that instant (see
/// `check_entitlement`; adds `as_of`).
///
/// Raises `22023` (NULL account), `42501` (no namespace; a `mec_user` asking about another
/// account), `ME404` (unknown account).
#[pg_extern(stable, parallel_safe)]
fn usage_summary(
    p_account_id: Option<Uuid>,
    p_as_of: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> Jsonb {
    Jsonb(api::read(|caller, client| {
        let ns = caller.namespace;
        let account = args::required(p_account_id, "p_account_id")?;
        caller.require_account_access(account)?;
        match as_of(p_as_of)? {
            None => summary::usage_summary(client, ns, account, clock::now_us(), false),
            Some(at) => summary::usage_summary(client, ns, account, at, true),
        }
    }))
}

/// An account's usage of one resource from `p_from` to `p_to` (exclusive), from the ledger: usage
/// events and corrections, summed per `p_bucket` (`hour`, `day` or `month`: UTC, by `occurred_at`),
/// and per value of the dimension (or, for events without it, the metadata key) `p_group_by` when given (e.g. `model_class`). Read-only.
///
/// Returns `{account_id, resource_type, from, to, bucket, group_by, total, billable_total,
/// buckets: [{start, group, quantity, billable_quantity, events, adjustments}]}` (empty buckets
/// left out). Raises `22023` (bad bucket or range, more than 10 000 buckets), `ME404` (unknown
/// account or resource type), `42501` (no namespace; a `mec_user` asking about another account).
#[pg_extern(stable, parallel_safe)]
fn usage_history(
    p_account_id: Option<Uuid>,
    p_resource_type: Option<&str>,
    p_from: Option<TimestampWithTimeZone>,
    p_to: default!(Option<TimestampWithTimeZone>, "now()"),
    p_bucket: default!(Option<&str>, "'day'"),
    p_group_by: default!(Option<&str>, "NULL"),
) -> Jsonb {
    Jsonb(api::read(|caller, client| {
        let account = args::required(p_account_id, "p_account_id")?;
        caller.require_account_access(account)?;
        let resource = args::text(p_resource_type, "p_resource_type")?;
        let from = args::instant(p_from, "p_from")?;
        let to = args::instant(p_to, "p_to")?;
        let bucket = args::text(p_bucket, "p_bucket")?;
        crate::ops::history::usage_history(
            client,
            caller.namespace,
            account,
            &resource,
            from,
            to,
            &bucket,
            p_group_by,
        )
    }))
}

/// Applies the access policy of the account's plan (the version it is on) to one request before the
/// work: `p_request` is `{task, dimensions: {<dimension>: <value>}, input_tokens, max_output_tokens}`.
/// Read-only. A denial is an answer, not an error.
///
/// Returns `{decision: "allow"|"deny", account_id, plan_id, plan_version, task, reasons: [{code,
/// message, …}], shaped: {<dimension>: <value>, input_tokens, max_output_tokens}}`: every reason
/// found (`task_not_allowed`, `unknown_dimension`, `dimension_value_not_allowed`,
/// `input_tokens_over_cap`, `request_quota_exhausted`, `input_quota_exhausted`,
/// `output_quota_exhausted` deny; `fallback` and `max_output_tokens_reduced` shape), and the request
/// as it may run. Raises `22023` (a malformed request), `ME404` (unknown account), `ME400` (the
/// account has no plan), `42501` (no namespace; a `mec_user` asking about another account).
#[pg_extern(stable, parallel_safe)]
fn check_policy(
    p_account_id: Option<Uuid>,
    p_request: Option<crate::pg::jsonb::JsonbArg>,
) -> Jsonb {
    Jsonb(api::read(|caller, client| {
        let account = args::required(p_account_id, "p_account_id")?;
        caller.require_account_access(account)?;
        let request = args::required(p_request, "p_request")?.parse("p_request")?;
        crate::ops::policy::check_policy(
            client,
            caller.namespace,
            account,
            &request,
            clock::now_us(),
        )
    }))
}
