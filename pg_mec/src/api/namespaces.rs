//! Namespaces: who is calling, creating tenants, their settings.

use pgrx::prelude::*;
use pgrx::Uuid;

use crate::api;
use crate::ops::bindings::{self, Bind};
use crate::ops::namespaces;
use crate::pg::jsonb::{Jsonb, JsonbArg};
use crate::pg::raise::finish;
use crate::pg::values::new_uuid;
use crate::pg::{args, context};

/// The caller's namespace. For the gateway's authenticator, superusers and the database owner:
/// the `namespace_id` claim of `request.jwt.claims`, else the GUC `mec.namespace_id`. For any other
/// login role: the namespace the database owner bound it to (`mec.bind_role`). Raises `42501`
/// when there is none, or when a bound role names another namespace.
#[pg_extern(stable, parallel_safe)]
fn current_namespace() -> Uuid {
    finish(context::namespace())
}

/// The caller's account: the `account_id` claim, else the GUC `mec.account_id`, else NULL; for a
/// login role bound as `mec_user`, its bound account. Raises `42501` as `current_namespace` does.
#[pg_extern(stable, parallel_safe)]
fn current_account() -> Option<Uuid> {
    finish(context::account())
}

/// Creates a namespace (tenant). Database owner only. Idempotent: the same id and name again
/// returns `created: false`. Returns `{namespace_id, name, created}`.
/// Raises `23505` (the id exists with another name), `22023` (empty name, bad settings).
#[pg_extern]
fn create_namespace(
    p_name: Option<&str>,
    p_namespace_id: default!(Option<Uuid>, "NULL"),
    p_settings: default!(Option<JsonbArg>, "'{}'"),
) -> Jsonb {
    Jsonb(api::operator(|client| {
        let name = args::text(p_name, "p_name")?;
        let id = p_namespace_id.unwrap_or_else(new_uuid);
        let settings = p_settings.map(|j| j.parse("p_settings")).transpose()?;
        namespaces::create(client, &name, id, settings)
    }))
}

/// Merges `p_settings` into the caller's namespace settings (`null` removes a key):
/// `default_plan_id`, `stripe_webhook_secret`, `stripe_webhook_tolerance_seconds` (300),
/// `auth0_secret`, `key_retention_days` (≥ 45), `late_event_days`, `billing_anchor` (1–31),
/// `overdue_action` (`flag`, `default_plan` or `block`). Returns the settings with secrets masked.
/// Raises `22023` (unknown key or bad value), `ME404` (unknown default plan), `42501`.
#[pg_extern]
fn update_namespace_settings(p_settings: Option<JsonbArg>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let settings = Some(args::required(p_settings, "p_settings")?.parse("p_settings")?);
        namespaces::update_settings(client, ns, settings)
    }))
}

/// Binds the login role `p_role` to namespace `p_namespace_id` as the API role `p_api_role`
/// (`mec_user`, `mec_service` or `mec_admin`; for `mec_user` also to the account
/// `p_account_id`), and grants it that API role. Its sessions then act only there, whatever
/// `mec.namespace_id` or `request.jwt.claims` they set. Database owner only; binding again is
/// idempotent. Returns `{role, namespace_id, api_role, account_id, created, changed, granted}`.
/// Raises `ME404` (unknown role, namespace or account), `22023` (not an API role; a superuser,
/// the database owner, an authenticator or one of pg_mec's roles; a missing or needless account).
#[pg_extern]
fn bind_role(
    p_role: Option<&str>,
    p_namespace_id: Option<Uuid>,
    p_api_role: default!(Option<&str>, "'mec_service'"),
    p_account_id: default!(Option<Uuid>, "NULL"),
) -> Jsonb {
    Jsonb(api::operator(|client| {
        let req = Bind {
            role: args::text(p_role, "p_role")?,
            namespace_id: args::required(p_namespace_id, "p_namespace_id")?,
            api_role: args::text(p_api_role, "p_api_role")?,
            account_id: p_account_id,
        };
        bindings::bind(client, &req)
    }))
}

/// Removes the binding of `p_role` to `p_namespace_id` (to every namespace when NULL); the role
/// can no longer use pg_mec there. Database owner only. Returns `{role, unbound, namespaces}`.
/// Raises `22023` (NULL role).
#[pg_extern]
fn unbind_role(p_role: Option<&str>, p_namespace_id: default!(Option<Uuid>, "NULL")) -> Jsonb {
    Jsonb(api::operator(|client| {
        let role = args::text(p_role, "p_role")?;
        bindings::unbind(client, &role, p_namespace_id)
    }))
}
