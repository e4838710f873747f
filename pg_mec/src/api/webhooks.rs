//! Outbound webhooks: endpoints (mec_admin), and the delivery steps of the gateway's worker
//! (mec_worker; mec_admin too, to deliver by hand). See docs/integrations.md.

use pgrx::prelude::*;
use pgrx::Uuid;

use crate::api;
use crate::ops::webhooks::{self, Endpoint};
use crate::pg::args;
use crate::pg::jsonb::Jsonb;

fn texts(v: Option<Vec<Option<String>>>) -> Option<Vec<String>> {
    v.map(|items| items.into_iter().flatten().collect())
}

/// Registers an endpoint that receives the namespace's events, signed per the Standard Webhooks
/// spec: `p_event_types` (`usage.threshold_crossed`, `usage.limit_reached`, `account.plan_changed`,
/// `account.payment_overdue`, `account.payment_recovered`; NULL or empty: all), `p_secret`
/// (`whsec_…`; NULL: generated). Returns `{endpoint_id, url, event_types, description, enabled,
/// created_at, updated_at, secret}` — the only time the secret is shown. Raises `22023`, `ME400`
/// (50 endpoints already), `42501`.
#[pg_extern]
fn create_webhook_endpoint(
    p_url: Option<&str>,
    p_event_types: default!(Option<Vec<Option<String>>>, "NULL"),
    p_description: default!(Option<&str>, "NULL"),
    p_secret: default!(Option<&str>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let url = args::text(p_url, "p_url")?;
        webhooks::create(
            client,
            caller.namespace,
            &Endpoint {
                url: Some(url),
                event_types: texts(p_event_types),
                description: p_description.map(str::to_string),
                enabled: None,
                secret: p_secret.map(str::to_string),
            },
        )
    }))
}

/// Changes an endpoint: each argument given replaces its value (NULL keeps it); `p_enabled =>
/// false` pauses deliveries (they wait, they are not dropped); `p_rotate_secret => true` replaces
/// the secret and returns the new one. Returns the endpoint. Raises `ME404`, `22023`, `42501`.
#[pg_extern]
fn update_webhook_endpoint(
    p_endpoint_id: Option<Uuid>,
    p_url: default!(Option<&str>, "NULL"),
    p_event_types: default!(Option<Vec<Option<String>>>, "NULL"),
    p_description: default!(Option<&str>, "NULL"),
    p_enabled: default!(Option<bool>, "NULL"),
    p_rotate_secret: default!(Option<bool>, "false"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let endpoint = args::required(p_endpoint_id, "p_endpoint_id")?;
        webhooks::update(
            client,
            caller.namespace,
            endpoint,
            &Endpoint {
                url: p_url.map(str::to_string),
                event_types: texts(p_event_types),
                description: p_description.map(str::to_string),
                enabled: p_enabled,
                secret: None,
            },
            p_rotate_secret.unwrap_or(false),
        )
    }))
}

/// Deletes an endpoint and its deliveries. Returns `{endpoint_id, deleted}`. Raises `ME404`,
/// `42501`.
#[pg_extern]
fn delete_webhook_endpoint(p_endpoint_id: Option<Uuid>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let endpoint = args::required(p_endpoint_id, "p_endpoint_id")?;
        webhooks::delete(client, caller.namespace, endpoint)
    }))
}

/// Sends dead deliveries again (`p_delivery_id`, or every dead one with NULL), their retry
/// schedule from the start. Returns `{requeued, delivery_ids}`. Raises `42501`.
#[pg_extern]
fn retry_webhook_delivery(p_delivery_id: default!(Option<Uuid>, "NULL")) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        webhooks::retry(client, caller.namespace, p_delivery_id)
    }))
}

/// Webhook delivery, step 1: the deliveries due now (at most `p_limit`, oldest first) with their
/// endpoint's URL and secret and the exact body to sign. Returns `{pending, deliveries:
/// [{delivery_id, webhook_id, event_type, url, secret, body, attempts}]}`. Raises `22023`, `42501`.
#[pg_extern]
fn webhook_deliveries_due(p_limit: default!(Option<i32>, "100")) -> Jsonb {
    Jsonb(api::read(|caller, client| {
        webhooks::due(client, caller.namespace, i64::from(p_limit.unwrap_or(100)))
    }))
}

/// Webhook delivery, step 2: the endpoint's answer to one attempt — `p_status` its HTTP status (0:
/// none), `p_error` its body or the failure, `p_retry_after` its `Retry-After` seconds. 2xx
/// delivers; anything else is retried after the next pause of the namespace's
/// `webhook_retry_schedule` (or `Retry-After`, if longer) and dead-lettered past its end.
/// Returns `{delivery_id, state, attempts, next_attempt_at, changed}`. Raises `ME404`, `22023`,
/// `42501`.
#[pg_extern]
fn webhook_delivery_result(
    p_delivery_id: Option<Uuid>,
    p_status: Option<i32>,
    p_error: default!(Option<&str>, "NULL"),
    p_retry_after: default!(Option<i32>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let delivery = args::required(p_delivery_id, "p_delivery_id")?;
        let status = args::required(p_status, "p_status")?;
        webhooks::result(
            client,
            caller.namespace,
            delivery,
            status,
            p_error,
            p_retry_after,
        )
    }))
}
