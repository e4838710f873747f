//! Leases of concurrency resources: acquire, renew, release, expire.

use pgrx::prelude::*;
use pgrx::Uuid;

use crate::api;
use crate::ops::leases::{self, Acquire};
use crate::pg::args;
use crate::pg::clock;
use crate::pg::jsonb::Jsonb;

/// Takes one slot of the concurrency resource `p_resource_type` for `p_account_id` for
/// `p_ttl_seconds` (1–86400). Idempotent on `p_idempotency_key` when given.
///
/// Returns `{lease_id, expires_at, active_leases, max_concurrent, duplicate}`.
/// Raises `ME429` (every slot held; DETAIL lists the policy and when the soonest lease expires),
/// `ME409` (key reused for another account or resource), `ME404`, `ME400` (not a concurrency
/// resource), `22023` (NULLs, TTL out of range), `42501`.
#[pg_extern]
fn acquire_lease(
    p_account_id: Option<Uuid>,
    p_resource_type: Option<&str>,
    p_holder: default!(Option<&str>, "NULL"),
    p_ttl_seconds: default!(Option<i32>, 300),
    p_idempotency_key: default!(Option<&str>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let req = Acquire {
            account_id: args::required(p_account_id, "p_account_id")?,
            resource_type: args::text(p_resource_type, "p_resource_type")?,
            holder: p_holder.map(str::to_string),
            ttl_seconds: args::ttl_seconds(p_ttl_seconds, "p_ttl_seconds")?,
            key: p_idempotency_key.map(str::to_string),
        };
        leases::acquire(client, ns, &req, clock::now_us())
    }))
}

/// Extends an active lease to `now() + p_ttl_seconds`. Returns `{lease_id, renewed, expires_at}`.
/// Raises `ME410` (the lease expired or was released), `P0002` (unknown lease), `22023`, `42501`.
#[pg_extern]
fn renew_lease(p_lease_id: Option<Uuid>, p_ttl_seconds: default!(Option<i32>, 300)) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let id = args::required(p_lease_id, "p_lease_id")?;
        let ttl = args::ttl_seconds(p_ttl_seconds, "p_ttl_seconds")?;
        leases::renew(client, ns, id, ttl)
    }))
}

/// Frees a lease's slot. Returns `{lease_id, released: true, already_released, expired,
/// released_at}`; releasing twice is not an error. Raises `P0002` (unknown lease), `22023`, `42501`.
#[pg_extern]
fn release_lease(p_lease_id: Option<Uuid>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let id = args::required(p_lease_id, "p_lease_id")?;
        leases::release(client, ns, id)
    }))
}

/// Marks every lease of the caller's namespace past its expiry as expired (they already stopped
/// counting). Returns `{expired: n}`. Raises `42501`.
#[pg_extern]
fn expire_stale_leases() -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        leases::expire_stale(client, ns)
    }))
}
