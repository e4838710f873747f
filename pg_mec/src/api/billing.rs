//! Billing state from outside: Stripe webhooks (`receive_stripe_event` for the gateway's webhook
//! role, `apply_stripe_event` for admins), and the admin's own levers on payment standing and
//! billing anchors. See `docs/integrations.md`.

use pgrx::prelude::*;
use pgrx::Uuid;

use crate::api;
use crate::ops::{stripe, stripe_usage};
use crate::pg::args;
use crate::pg::clock;
use crate::pg::jsonb::{Jsonb, JsonbArg};
use crate::pg::raise::finish;

/// Receives one Stripe webhook delivery for namespace `p_namespace_id`: `p_payload` is the raw
/// request body, `p_signature` the `Stripe-Signature` header. The signature must match the
/// namespace's `stripe_webhook_secret` (any `v1`, so a rolling secret works) within
/// `stripe_webhook_tolerance_seconds` (300); the event is then applied once, in this transaction,
/// and kept in `mec.stripe_events`. A redelivery returns the first outcome with `duplicate: true`.
///
/// Returns `{event_id, type, duplicate, outcome, account_id, detail}` with `outcome` one of
/// `applied`, `stale` (an older event than one already applied), `ignored`, `unmatched` (no account
/// yet: applied when a checkout links the customer). Raises `ME400` (no secret, bad or stale
/// signature, not a Stripe event; nothing is recorded), `22023`. Granted to `mec_webhook`.
#[pg_extern]
fn receive_stripe_event(
    p_namespace_id: Option<Uuid>,
    p_payload: Option<&str>,
    p_signature: Option<&str>,
) -> Jsonb {
    let ns = finish(args::required(p_namespace_id, "p_namespace_id"));
    Jsonb(api::acting_in(ns, |client| {
        let payload = args::required(p_payload, "p_payload")?;
        stripe::receive(client, ns, payload, p_signature, clock::now_us())
    }))
}

/// Applies one Stripe event object (as Stripe posts it) to the caller's namespace without a
/// signature: for an admin replaying an event, or a backend that verified the delivery itself.
/// Returns and raises as `receive_stripe_event` (less the signature checks).
#[pg_extern]
fn apply_stripe_event(p_event: Option<JsonbArg>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let event = args::required(p_event, "p_event")?.parse("p_event")?;
        stripe::apply(client, caller.namespace, &event)
    }))
}

/// Marks `p_account_id` overdue on payment (`p_overdue => true`) or paid up, now, as Stripe's
/// invoice events do; a Stripe payment event created before this call no longer changes it. What overdue does is the namespace's `overdue_action`: `flag` (reported
/// only), `default_plan` (the default plan's entitlements apply), `block` (every use raises
/// `ME402`). Returns `{account_id, payment_overdue, changed}`. Raises `ME404`, `22023`, `42501`.
#[pg_extern]
fn set_payment_overdue(p_account_id: Option<Uuid>, p_overdue: Option<bool>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let account = args::required(p_account_id, "p_account_id")?;
        let overdue = args::required(p_overdue, "p_overdue")?;
        stripe::set_payment_overdue(client, caller.namespace, account, overdue)
    }))
}

/// Sets the day of the month `p_account_id`'s monthly periods start on (1–31; a day past the end
/// of a month is its last day), or calendar months with `NULL`. The current period moves to the
/// new boundaries, as a change of billing cycle does in Stripe. Returns `{account_id,
/// billing_anchor_day, changed}`. Raises `ME404`, `22023`, `42501`.
#[pg_extern]
fn set_billing_anchor(p_account_id: Option<Uuid>, p_anchor_day: Option<i32>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let account = args::required(p_account_id, "p_account_id")?;
        stripe::set_billing_anchor(client, caller.namespace, account, p_anchor_day)
    }))
}

/// Usage to Stripe, step 1: turns every billable ledger row not yet sent — of resources with a
/// `stripe_meter_event`, of accounts with a Stripe customer, at most 34 days old — into outbox rows,
/// one meter event per account × resource × period; a refund cancels and replaces the period's last
/// event (within Stripe's 24 hours) or is parked. Safe to run at any time and concurrently: a ledger
/// row is carried by one event at most. Returns `{events, cancellations, nothing_to_send, parked,
/// deferred, ledger_rows, too_old}`. Raises `42501`. See docs/integrations.md.
#[pg_extern]
fn stripe_usage_prepare() -> Jsonb {
    Jsonb(api::write(|caller, client| {
        stripe_usage::prepare(client, caller.namespace, clock::now_us())
    }))
}

/// Usage to Stripe, step 2: what to send now (at most `p_limit` rows, oldest first; a replacement
/// only after its cancellation was sent), with the namespace's `stripe_api_key`. Returns
/// `{api_key, pending, events: [{identifier, kind, event_name, stripe_customer_id, value, timestamp,
/// cancels, attempts}]}`. Raises `ME400` (no API key), `22023`, `42501`.
#[pg_extern]
fn stripe_usage_due(p_limit: default!(Option<i32>, "100")) -> Jsonb {
    Jsonb(api::read(|caller, client| {
        stripe_usage::due(client, caller.namespace, i64::from(p_limit.unwrap_or(100)))
    }))
}

/// Usage to Stripe, step 3: records Stripe's answer to sending `p_identifier`: `p_status` its HTTP
/// status (0: none — a network error or timeout), `p_error` the body or failure, `p_retry_after` its
/// `Retry-After` seconds. 2xx marks it sent; 429, 409, 5xx and 0 retry it later (exponential
/// backoff, or after `Retry-After`; parked after 50 attempts); any other status parks it with the
/// error. Returns `{identifier, state, attempts, next_attempt_at, changed}`. Raises `P0002`,
/// `22023`, `42501`.
#[pg_extern]
fn stripe_usage_result(
    p_identifier: Option<&str>,
    p_status: Option<i32>,
    p_error: default!(Option<&str>, "NULL"),
    p_retry_after: default!(Option<i32>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let identifier = args::text(p_identifier, "p_identifier")?;
        let status = args::required(p_status, "p_status")?;
        stripe_usage::result(
            client,
            caller.namespace,
            &identifier,
            status,
            p_error,
            p_retry_after,
        )
    }))
}

/// Sends parked usage events again (`p_identifier`, or all with `NULL`), once the admin fixed what
/// Stripe refused (the API key, a meter). Refunds Stripe can no longer take stay parked. Returns
/// `{requeued, identifiers}`. Raises `42501`.
#[pg_extern]
fn stripe_usage_retry(p_identifier: default!(Option<&str>, "NULL")) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        stripe_usage::retry(client, caller.namespace, p_identifier)
    }))
}
