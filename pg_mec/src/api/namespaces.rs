//! Namespaces: who is calling, creating tenants, their settings.

use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};

use crate::errors::finish;
use crate::jsonb::Jsonb;
use crate::{args, context, namespaces};

/// The caller's namespace: the `namespace_id` claim of `request.jwt.claims`, else the GUC
/// `mec.namespace_id`. Raises `42501` when neither is set (or the claim is not a uuid).
#[pg_extern(stable, parallel_safe)]
fn current_namespace() -> Uuid {
    finish(context::namespace())
}

/// The caller's account: the `account_id` claim, else the GUC `mec.account_id`, else NULL.
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
    p_settings: default!(Option<JsonB>, "'{}'"),
) -> Jsonb {
    let result = (|| {
        let name = args::text(p_name, "p_name")?;
        let id =
            p_namespace_id.unwrap_or_else(|| Uuid::from_bytes(*uuid::Uuid::new_v4().as_bytes()));
        let settings = p_settings.map(|j| j.0);
        Spi::connect_mut(|client| namespaces::create(client, &name, id, settings))
    })();
    Jsonb(finish(result))
}

/// Merges `p_settings` into the caller's namespace settings (`null` removes a key):
/// `default_plan_id`, `stripe_webhook_secret`, `auth0_secret`, `key_retention_days` (≥ 45),
/// `late_event_days`, `billing_anchor` (1–31). Returns the settings with secrets masked.
/// Raises `22023` (unknown key or bad value), `ME404` (unknown default plan), `42501`.
#[pg_extern]
fn update_namespace_settings(p_settings: Option<JsonB>) -> Jsonb {
    let result = (|| {
        let ns = context::namespace()?;
        let settings = Some(args::required(p_settings, "p_settings")?.0);
        Spi::connect_mut(|client| namespaces::update_settings(client, ns, settings))
    })();
    Jsonb(finish(result))
}
