//! `provision_plan`: accounts and their plans.

use pgrx::prelude::*;
use pgrx::Uuid;

use crate::api;
use crate::ops::provisioning::{self, Provision};
use crate::pg::args;
use crate::pg::jsonb::Jsonb;

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
