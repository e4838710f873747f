//! Stripe in: webhook events, verified against the namespace's signing secret, applied exactly
//! once, in the transaction that records them in the inbox (`mec_data.stripe_events`).
//!
//! * `checkout.session.completed` links the session's customer to the account its
//!   `client_reference_id` or `metadata.account_id` names (an account id, else an external id),
//!   creating the account on the default plan if needed; events of that customer that arrived
//!   before the link (kept as `unmatched`) are applied then.
//! * `customer.subscription.created|updated|paused|resumed|deleted` put the account on the plan
//!   whose `stripe_price_id` is one of the subscription's prices (`active`, `trialing`, `past_due`,
//!   `unpaid`), on the default plan when it ends (`canceled`, `incomplete_expired`, `paused`,
//!   deleted), or leave it (`incomplete`); the billing anchor follows `billing_cycle_anchor`, and
//!   `past_due` / `unpaid` mark it overdue. An event created before the last one applied to the
//!   same subscription is stale and changes nothing.
//! * `invoice.payment_failed` marks the account overdue, `invoice.paid` and
//!   `invoice.payment_succeeded` clear it, unless a newer payment event was applied.
//! * `customer.deleted` unlinks the customer. Every other type is stored and ignored.
//!
//! The account of an event: `metadata.account_id` of the subscription (of an invoice: of its
//! subscription details), else the subscription pg_mec already follows, else the account linked to
//! the customer. See `docs/integrations.md`.

use pg_mec_core::stripe_signature;
use pgrx::datum::{JsonB, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::events::outbox;
use crate::ledger::audit::audit;
use crate::ops::provisioning::{self, Provision};
use crate::pg::context::parse_uuid;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{new_uuid, timestamptz};
use crate::pg::{MecError, MecResult};

/// Stripe's own default, and the namespace setting's.
const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

stmt! {
    static WEBHOOK_SECRET: read (ns: uuid) =
        "SELECT s.stripe_webhook_secret,
                (n.settings->>'stripe_webhook_tolerance_seconds')::int4 AS tolerance
           FROM mec_data.namespaces n
           LEFT JOIN mec_data.namespace_secrets s ON s.namespace_id = n.namespace_id
          WHERE n.namespace_id = $1";
}

stmt! {
    static CLAIM_EVENT: write (ns: uuid, event_id: text, event_type: text, created: timestamptz, livemode: bool, customer_id: text, payload: jsonb) =
        "INSERT INTO mec_data.stripe_events
                (namespace_id, event_id, event_type, created, livemode, customer_id, outcome, payload)
         VALUES ($1, $2, $3, $4, $5, $6, 'ignored', $7)
         ON CONFLICT (namespace_id, event_id) DO NOTHING
         RETURNING true";
}

stmt! {
    static RECORDED_EVENT: read (ns: uuid, event_id: text) =
        "SELECT event_type, outcome, account_id, detail FROM mec_data.stripe_events
          WHERE namespace_id = $1 AND event_id = $2";
}

stmt! {
    static SET_OUTCOME: write (ns: uuid, event_id: text, outcome: text, account_id: uuid, detail: text) =
        "UPDATE mec_data.stripe_events
            SET outcome = $3, account_id = $4, detail = $5,
                applied_at = CASE WHEN $3 = 'applied' THEN now() ELSE applied_at END
          WHERE namespace_id = $1 AND event_id = $2";
}

stmt! {
    static UNMATCHED_EVENTS: read (ns: uuid, customer_id: text) =
        "SELECT event_id, payload FROM mec_data.stripe_events
          WHERE namespace_id = $1 AND customer_id = $2 AND outcome = 'unmatched'
          ORDER BY created, event_id";
}

stmt! {
    static ACCOUNT: read (ns: uuid, account_id: uuid) =
        "SELECT account_id, stripe_customer_id FROM mec_data.accounts
          WHERE namespace_id = $1 AND account_id = $2";
}

stmt! {
    static ACCOUNT_BY_EXTERNAL_ID: read (ns: uuid, external_id: text) =
        "SELECT account_id FROM mec_data.accounts WHERE namespace_id = $1 AND external_id = $2";
}

stmt! {
    static ACCOUNT_BY_CUSTOMER: read (ns: uuid, customer_id: text) =
        "SELECT account_id FROM mec_data.accounts WHERE namespace_id = $1 AND stripe_customer_id = $2";
}

stmt! {
    static ACCOUNT_BY_SUBSCRIPTION: read (ns: uuid, subscription_id: text) =
        "SELECT account_id FROM mec_data.stripe_subscriptions
          WHERE namespace_id = $1 AND subscription_id = $2";
}

stmt! {
    static LINK_CUSTOMER: write (ns: uuid, account_id: uuid, customer_id: text) =
        "UPDATE mec_data.accounts SET stripe_customer_id = $3, updated_at = now()
          WHERE namespace_id = $1 AND account_id = $2 AND stripe_customer_id IS DISTINCT FROM $3";
}

stmt! {
    static UNLINK_CUSTOMER: write (ns: uuid, customer_id: text) =
        "UPDATE mec_data.accounts SET stripe_customer_id = NULL, updated_at = now()
          WHERE namespace_id = $1 AND stripe_customer_id = $2
          RETURNING account_id";
}

stmt! {
    /// The active plans of the namespace with one of the prices `$2` (a JSON array of ids).
    static PLANS_BY_PRICE: read (ns: uuid, prices: jsonb) =
        "SELECT plan_id, stripe_price_id FROM mec_data.plans
          WHERE namespace_id = $1 AND active
            AND stripe_price_id IN (SELECT jsonb_array_elements_text($2))";
}

stmt! {
    /// Records the subscription's state unless a newer event was applied to it: no row back means
    /// the event is stale. The conflict's row lock orders concurrent events of one subscription.
    static UPSERT_SUBSCRIPTION: write (ns: uuid, subscription_id: text, account_id: uuid, customer_id: text, status: text, price_id: text, plan_id: text, anchor_day: int4, event_id: text, event_created: timestamptz) =
        "INSERT INTO mec_data.stripe_subscriptions AS s
                (namespace_id, subscription_id, account_id, customer_id, status, price_id, plan_id,
                 anchor_day, event_id, event_created)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::smallint, $9, $10)
         ON CONFLICT (namespace_id, subscription_id) DO UPDATE
            SET account_id = excluded.account_id, customer_id = excluded.customer_id,
                status = excluded.status, price_id = excluded.price_id, plan_id = excluded.plan_id,
                anchor_day = excluded.anchor_day, event_id = excluded.event_id,
                event_created = excluded.event_created, updated_at = now()
          WHERE s.event_created <= excluded.event_created
         RETURNING true";
}

stmt! {
    /// Sets the account's payment flag unless a newer payment event set it: no row back means
    /// stale (or no such account).
    static SET_PAYMENT: write (ns: uuid, account_id: uuid, overdue: bool, event_at: timestamptz) =
        "UPDATE mec_data.accounts a
            SET payment_overdue = $3, payment_event_at = $4, updated_at = now()
           FROM (SELECT payment_overdue AS before FROM mec_data.accounts
                  WHERE namespace_id = $1 AND account_id = $2 FOR UPDATE) o
          WHERE a.namespace_id = $1 AND a.account_id = $2
            AND (a.payment_event_at IS NULL OR a.payment_event_at <= $4)
         RETURNING o.before IS DISTINCT FROM $3 AS changed";
}

stmt! {
    /// An admin's decision, which no earlier payment event can undo: the flag's moment becomes now
    /// (or stays later, if a payment event is dated after now).
    static FORCE_PAYMENT: write (ns: uuid, account_id: uuid, overdue: bool) =
        "UPDATE mec_data.accounts a
            SET payment_overdue = $3, payment_event_at = greatest(a.payment_event_at, now()),
                updated_at = now()
           FROM (SELECT payment_overdue AS before FROM mec_data.accounts
                  WHERE namespace_id = $1 AND account_id = $2 FOR UPDATE) o
          WHERE a.namespace_id = $1 AND a.account_id = $2
         RETURNING o.before IS DISTINCT FROM $3 AS changed";
}

stmt! {
    static SET_ANCHOR: write (ns: uuid, account_id: uuid, anchor_day: int4) =
        "UPDATE mec_data.accounts SET billing_anchor_day = $3::smallint, updated_at = now()
          WHERE namespace_id = $1 AND account_id = $2 AND billing_anchor_day IS DISTINCT FROM $3::smallint
         RETURNING true";
}

/// One Stripe event, as much of it as pg_mec reads.
struct StripeEvent {
    id: String,
    event_type: String,
    created_s: i64,
    livemode: bool,
    object: Value,
}

impl StripeEvent {
    fn parse(v: &Value) -> MecResult<StripeEvent> {
        let bad = |what: &str| {
            MecError::bad_request(
                format!("not a Stripe event: {what}"),
                "Send the event object Stripe posts: {\"id\": \"evt_…\", \"type\": …, \"created\": …, \"data\": {\"object\": …}}.",
            )
        };
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .ok_or_else(|| bad("no id"))?;
        let event_type = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no type"))?;
        let created_s = v
            .get("created")
            .and_then(Value::as_i64)
            .filter(|c| (0..=253_402_300_799).contains(c))
            .ok_or_else(|| bad("no created timestamp"))?;
        let object = v
            .pointer("/data/object")
            .filter(|o| o.is_object())
            .cloned()
            .ok_or_else(|| bad("no data.object"))?;
        Ok(StripeEvent {
            id: id.to_string(),
            event_type: event_type.to_string(),
            created_s,
            livemode: v.get("livemode").and_then(Value::as_bool).unwrap_or(false),
            object,
        })
    }

    fn created(&self) -> TimestampWithTimeZone {
        timestamptz(self.created_s.saturating_mul(1_000_000))
    }

    /// The customer the event is about.
    fn customer(&self) -> Option<String> {
        if self.event_type.starts_with("customer.")
            && !self.event_type.starts_with("customer.subscription.")
        {
            return str_at(&self.object, "/id");
        }
        id_of(self.object.get("customer"))
    }
}

/// A string at a JSON pointer, if non-empty.
fn str_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An id field that Stripe sends as a string or, expanded, as an object with an `id`.
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// What applying an event did.
struct Outcome {
    outcome: &'static str,
    account: Option<Uuid>,
    detail: String,
}

impl Outcome {
    fn applied(account: Uuid, detail: impl Into<String>) -> Outcome {
        Outcome {
            outcome: "applied",
            account: Some(account),
            detail: detail.into(),
        }
    }
    fn ignored(account: Option<Uuid>, detail: impl Into<String>) -> Outcome {
        Outcome {
            outcome: "ignored",
            account,
            detail: detail.into(),
        }
    }
    fn stale(account: Uuid, detail: impl Into<String>) -> Outcome {
        Outcome {
            outcome: "stale",
            account: Some(account),
            detail: detail.into(),
        }
    }
    fn unmatched(detail: impl Into<String>) -> Outcome {
        Outcome {
            outcome: "unmatched",
            account: None,
            detail: detail.into(),
        }
    }
}

/// Verifies a delivery (`Stripe-Signature` against the namespace's `stripe_webhook_secret`, within
/// its tolerance) and applies it. `ME400` when the signature, the timestamp or the payload is
/// refused; nothing is recorded then.
pub fn receive(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    payload: &str,
    signature: Option<&str>,
    now_us: i64,
) -> MecResult<Value> {
    let (secret, tolerance) = spi::read(client, &WEBHOOK_SECRET, &[ns.into()])?
        .two::<String, i32>("stripe_webhook_secret", "tolerance")?;
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Err(MecError::bad_request(
            format!("namespace {ns} does not accept Stripe webhooks: it has no stripe_webhook_secret"),
            "Its admin sets it: SELECT mec.update_namespace_settings('{\"stripe_webhook_secret\": \"whsec_…\"}').",
        ));
    };
    let tolerance = tolerance.map_or(DEFAULT_TOLERANCE_SECONDS, i64::from);
    stripe_signature::verify(signature, payload.as_bytes(), &secret, now_us / 1_000_000, tolerance)
        .map_err(|e| {
            MecError::bad_request(
                format!("Stripe webhook refused: {e}"),
                "Sign with the endpoint's signing secret (whsec_…) the namespace has as stripe_webhook_secret, and send the raw body unchanged.",
            )
        })?;
    let event: Value = serde_json::from_str(payload).map_err(|e| {
        MecError::bad_request(
            format!("Stripe webhook refused: the body is not JSON ({e})"),
            "Send the event exactly as Stripe posts it.",
        )
    })?;
    apply(client, ns, &event)
}

/// Applies one event (already verified, or handed over by an admin): records it in the inbox and
/// does what it says, once. Returns `{event_id, type, duplicate, outcome, account_id, detail}`.
pub fn apply(client: &mut SpiClient<'_>, ns: Uuid, event: &Value) -> MecResult<Value> {
    let ev = StripeEvent::parse(event)?;
    let claimed = !spi::write(
        client,
        &CLAIM_EVENT,
        &[
            ns.into(),
            ev.id.as_str().into(),
            ev.event_type.as_str().into(),
            ev.created().into(),
            ev.livemode.into(),
            ev.customer().as_deref().into(),
            JsonB(event.clone()).into(),
        ],
    )?
    .is_empty();
    if !claimed {
        let row = spi::read(client, &RECORDED_EVENT, &[ns.into(), ev.id.as_str().into()])?
            .first()
            .ok_or_else(|| {
                MecError::Internal("Stripe event conflicted but is not visible".into())
            })?;
        return Ok(json!({
            "event_id": ev.id,
            "type": row.get::<String>("event_type")?,
            "duplicate": true,
            "outcome": row.get::<String>("outcome")?,
            "account_id": row.get::<Uuid>("account_id")?.map(|a| a.to_string()),
            "detail": row.get::<String>("detail")?,
        }));
    }
    let (outcome, replayed) = dispatch(client, ns, &ev, true)?;
    record_outcome(client, ns, &ev.id, &outcome)?;
    let mut result = json!({
        "event_id": ev.id,
        "type": ev.event_type,
        "duplicate": false,
        "outcome": outcome.outcome,
        "account_id": outcome.account.map(|a| a.to_string()),
        "detail": outcome.detail,
    });
    if replayed > 0 {
        result["replayed"] = Value::from(replayed);
    }
    Ok(result)
}

fn record_outcome(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    event_id: &str,
    o: &Outcome,
) -> MecResult<()> {
    spi::write(
        client,
        &SET_OUTCOME,
        &[
            ns.into(),
            event_id.into(),
            o.outcome.into(),
            o.account.into(),
            o.detail.as_str().into(),
        ],
    )?;
    Ok(())
}

/// Does what the event says. `replay`: a checkout that links a customer also applies the events of
/// that customer that waited as `unmatched` (returned: how many).
fn dispatch(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &StripeEvent,
    replay: bool,
) -> MecResult<(Outcome, usize)> {
    let now_us = crate::pg::clock::now_us();
    let outcome = match ev.event_type.as_str() {
        "checkout.session.completed" => {
            let (outcome, linked) = checkout(client, ns, ev, now_us)?;
            let replayed = match (&linked, replay) {
                (Some(customer), true) => replay_unmatched(client, ns, customer)?,
                _ => 0,
            };
            return Ok((outcome, replayed));
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.paused"
        | "customer.subscription.resumed"
        | "customer.subscription.deleted" => subscription(client, ns, ev, now_us)?,
        "invoice.payment_failed" => payment(client, ns, ev, true)?,
        "invoice.paid" | "invoice.payment_succeeded" => payment(client, ns, ev, false)?,
        "customer.deleted" => customer_deleted(client, ns, ev)?,
        _ => Outcome::ignored(None, "pg_mec does not act on this event type"),
    };
    Ok((outcome, 0))
}

/// Applies, oldest first, the events of `customer` that found no account when they arrived.
fn replay_unmatched(client: &mut SpiClient<'_>, ns: Uuid, customer: &str) -> MecResult<usize> {
    let waiting: Vec<(String, Value)> =
        spi::read(client, &UNMATCHED_EVENTS, &[ns.into(), customer.into()])?
            .into_iter()
            .map(|row| {
                Ok((
                    row.get::<String>("event_id")?.unwrap_or_default(),
                    row.get::<JsonB>("payload")?
                        .map(|j| j.0)
                        .unwrap_or(Value::Null),
                ))
            })
            .collect::<MecResult<_>>()?;
    let mut applied = 0;
    for (event_id, payload) in waiting {
        let ev = StripeEvent::parse(&payload)?;
        let (outcome, _) = dispatch(client, ns, &ev, false)?;
        if outcome.outcome != "unmatched" {
            applied += 1;
        }
        record_outcome(client, ns, &event_id, &outcome)?;
    }
    Ok(applied)
}

/// The account a reference names: an account id (whether or not the account exists yet), else
/// the account with that external id.
fn account_named(client: &SpiClient<'_>, ns: Uuid, reference: &str) -> MecResult<Option<Uuid>> {
    if let Some(id) = parse_uuid(reference) {
        return Ok(Some(id));
    }
    spi::read(
        client,
        &ACCOUNT_BY_EXTERNAL_ID,
        &[ns.into(), reference.into()],
    )?
    .one::<Uuid>()
}

fn account_exists(client: &SpiClient<'_>, ns: Uuid, account: Uuid) -> MecResult<bool> {
    Ok(!spi::read(client, &ACCOUNT, &[ns.into(), account.into()])?.is_empty())
}

fn account_of_customer(
    client: &SpiClient<'_>,
    ns: Uuid,
    customer: Option<&str>,
) -> MecResult<Option<Uuid>> {
    match customer {
        Some(c) => spi::read(client, &ACCOUNT_BY_CUSTOMER, &[ns.into(), c.into()])?.one::<Uuid>(),
        None => Ok(None),
    }
}

fn account_of_subscription(
    client: &SpiClient<'_>,
    ns: Uuid,
    subscription: Option<&str>,
) -> MecResult<Option<Uuid>> {
    match subscription {
        Some(s) => {
            spi::read(client, &ACCOUNT_BY_SUBSCRIPTION, &[ns.into(), s.into()])?.one::<Uuid>()
        }
        None => Ok(None),
    }
}

/// Links `customer` to `account` unless another account has it. Returns a conflict to report.
fn link_customer(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    customer: &str,
) -> MecResult<Option<String>> {
    if let Some(owner) = account_of_customer(client, ns, Some(customer))? {
        if owner != account {
            return Ok(Some(format!(
                "Stripe customer {customer} is already linked to account {owner}"
            )));
        }
        return Ok(None);
    }
    spi::write(
        client,
        &LINK_CUSTOMER,
        &[ns.into(), account.into(), customer.into()],
    )?;
    Ok(None)
}

/// Puts the account on `plan_id` now (creating it if needed), as `provision_plan` does.
fn put_on_plan(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    plan_id: &str,
    now_us: i64,
) -> MecResult<bool> {
    let result = provisioning::provision(
        client,
        ns,
        &Provision {
            account_id: account,
            plan_id: plan_id.to_string(),
            effective_us: now_us,
            external_id: None,
            key: None,
        },
    )?;
    Ok(result
        .get("changed")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || result
            .get("created")
            .and_then(Value::as_bool)
            .unwrap_or(false))
}

/// Puts the account on the default plan, or, without one, on no plan. Returns what happened.
fn put_on_default_plan(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    now_us: i64,
) -> MecResult<String> {
    match provisioning::default_plan(client, ns)? {
        Some(plan) => {
            let changed = put_on_plan(client, ns, account, &plan, now_us)?;
            Ok(if changed {
                format!("moved to the default plan \"{plan}\"")
            } else {
                format!("already on the default plan \"{plan}\"")
            })
        }
        None => {
            let had = provisioning::remove_plan(client, ns, account, now_us)?;
            Ok(if had {
                "the namespace has no default plan: the account is left with no plan".into()
            } else {
                "the account has no plan".into()
            })
        }
    }
}

fn checkout(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &StripeEvent,
    now_us: i64,
) -> MecResult<(Outcome, Option<String>)> {
    let obj = &ev.object;
    let customer = ev.customer();
    let reference =
        str_at(obj, "/client_reference_id").or_else(|| str_at(obj, "/metadata/account_id"));
    let Some(reference) = reference else {
        let known = account_of_customer(client, ns, customer.as_deref())?;
        return Ok((
            Outcome::ignored(
                known,
                "the session names no account (client_reference_id or metadata.account_id)",
            ),
            None,
        ));
    };
    let (account, created) = match account_named(client, ns, &reference)? {
        Some(id) if account_exists(client, ns, id)? => (id, false),
        named => {
            // A new customer of the vendor: the account, on the default plan if there is one.
            let (id, external_id) = match named {
                Some(id) => (id, None),
                None => (new_uuid(), Some(reference.as_str())),
            };
            match provisioning::default_plan(client, ns)? {
                Some(plan) => {
                    provisioning::provision(
                        client,
                        ns,
                        &Provision {
                            account_id: id,
                            plan_id: plan,
                            effective_us: now_us,
                            external_id: external_id.map(str::to_string),
                            key: None,
                        },
                    )?;
                }
                None => {
                    provisioning::create_account(client, ns, id, external_id)?;
                }
            }
            (id, true)
        }
    };
    let Some(customer) = customer else {
        return Ok((
            Outcome::ignored(Some(account), "the session has no customer to link"),
            None,
        ));
    };
    if let Some(conflict) = link_customer(client, ns, account, &customer)? {
        return Ok((Outcome::ignored(Some(account), conflict), None));
    }
    audit(
        client,
        ns,
        "stripe_link_customer",
        &account.to_string(),
        json!({"event_id": ev.id, "created_account": created}),
    )?;
    let detail = if created {
        format!("created the account and linked Stripe customer {customer}")
    } else {
        format!("linked Stripe customer {customer}")
    };
    Ok((Outcome::applied(account, detail), Some(customer)))
}

/// The prices of a subscription's items, in item order (legacy `plan` objects too).
fn prices(obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(items) = obj.pointer("/items/data").and_then(Value::as_array) {
        for item in items {
            for p in ["/price/id", "/plan/id"] {
                if let Some(id) = str_at(item, p) {
                    if !out.contains(&id) {
                        out.push(id);
                    }
                }
            }
        }
    }
    if let Some(id) = str_at(obj, "/plan/id") {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// The plan of the first price that has one, with that price.
fn plan_of(
    client: &SpiClient<'_>,
    ns: Uuid,
    prices: &[String],
) -> MecResult<Option<(String, String)>> {
    if prices.is_empty() {
        return Ok(None);
    }
    let rows = spi::read(
        client,
        &PLANS_BY_PRICE,
        &[ns.into(), JsonB(json!(prices)).into()],
    )?;
    let mut found = Vec::new();
    for row in rows {
        if let (Some(plan), Some(price)) = (
            row.get::<String>("plan_id")?,
            row.get::<String>("stripe_price_id")?,
        ) {
            found.push((plan, price));
        }
    }
    Ok(prices
        .iter()
        .find_map(|p| found.iter().find(|(_, price)| price == p).cloned()))
}

/// The day of the month (UTC) of a Unix timestamp.
fn day_of_month(unix_s: i64) -> Option<i32> {
    let (_, _, day) = pg_mec_core::civil::civil_from_days(unix_s.checked_div_euclid(86_400)?);
    i32::try_from(day).ok()
}

fn subscription(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &StripeEvent,
    now_us: i64,
) -> MecResult<Outcome> {
    let obj = &ev.object;
    let Some(subscription) = str_at(obj, "/id") else {
        return Ok(Outcome::ignored(None, "the subscription has no id"));
    };
    let customer = ev.customer();
    let account = match str_at(obj, "/metadata/account_id") {
        Some(reference) => account_named(client, ns, &reference)?,
        None => None,
    };
    let account = match account {
        Some(a) => Some(a),
        None => match account_of_subscription(client, ns, Some(&subscription))? {
            Some(a) => Some(a),
            None => account_of_customer(client, ns, customer.as_deref())?,
        },
    };
    let Some(account) = account else {
        return Ok(Outcome::unmatched(format!(
            "no account for subscription {subscription}: it has no metadata.account_id and its customer is linked to no account (a checkout.session.completed links it)"
        )));
    };
    let deleted = ev.event_type == "customer.subscription.deleted";
    let status = if deleted {
        "canceled".to_string()
    } else {
        str_at(obj, "/status").unwrap_or_default()
    };
    let prices = prices(obj);
    let plan = plan_of(client, ns, &prices)?;
    let anchor = obj
        .get("billing_cycle_anchor")
        .and_then(Value::as_i64)
        .and_then(day_of_month);
    let live = matches!(
        status.as_str(),
        "active" | "trialing" | "past_due" | "unpaid"
    );
    // The account must exist before the subscription row refers to it. A new one has no
    // subscription row yet, so this event cannot be stale.
    let mut created = false;
    if !account_exists(client, ns, account)? {
        match (&plan, live) {
            (Some((plan_id, _)), true) => {
                put_on_plan(client, ns, account, plan_id, now_us)?;
                created = true;
            }
            _ => {
                return Ok(Outcome::ignored(
                    Some(account),
                    format!("account {account} does not exist and subscription {subscription} ({status}) gives it no plan"),
                ))
            }
        }
    }
    let recorded = !spi::write(
        client,
        &UPSERT_SUBSCRIPTION,
        &[
            ns.into(),
            subscription.as_str().into(),
            account.into(),
            customer.as_deref().into(),
            status.as_str().into(),
            plan.as_ref()
                .map(|(_, price)| price.as_str())
                .or(prices.first().map(String::as_str))
                .into(),
            plan.as_ref().map(|(p, _)| p.as_str()).into(),
            anchor.into(),
            ev.id.as_str().into(),
            ev.created().into(),
        ],
    )?
    .is_empty();
    if !recorded {
        return Ok(Outcome::stale(
            account,
            format!("a newer event of subscription {subscription} was applied already"),
        ));
    }
    if let Some(c) = &customer {
        // Best effort: a customer another account holds stays with it (reported below).
        if let Some(conflict) = link_customer(client, ns, account, c)? {
            return Ok(Outcome::ignored(Some(account), conflict));
        }
    }
    let mut done = Vec::new();
    match status.as_str() {
        "active" | "trialing" | "past_due" | "unpaid" => {
            let Some((plan_id, price)) = plan else {
                return Ok(Outcome::ignored(
                    Some(account),
                    format!(
                        "no plan of the catalog has any of the subscription's prices ({}): set stripe_price_id on the plan",
                        prices.join(", ")
                    ),
                ));
            };
            let changed = put_on_plan(client, ns, account, &plan_id, now_us)? || created;
            done.push(if created {
                format!("created the account on plan \"{plan_id}\" (price {price})")
            } else if changed {
                format!("on plan \"{plan_id}\" (price {price})")
            } else {
                format!("stays on plan \"{plan_id}\"")
            });
            if let Some(day) = anchor {
                if !spi::write(
                    client,
                    &SET_ANCHOR,
                    &[ns.into(), account.into(), day.into()],
                )?
                .is_empty()
                {
                    // Periods move to the new anchor: no stripe keeps quota of the old period.
                    crate::counters::stripes::fold_account(client, ns, account)?;
                    done.push(format!("billing anchor day {day}"));
                }
            }
            let overdue = matches!(status.as_str(), "past_due" | "unpaid");
            if set_payment(client, ns, account, overdue, ev.created())? {
                done.push(format!("payment_overdue = {overdue}"));
            }
        }
        "canceled" | "incomplete_expired" | "paused" => {
            done.push(format!(
                "subscription {status}: {}",
                put_on_default_plan(client, ns, account, now_us)?
            ));
        }
        "incomplete" => done.push("waiting for the first payment: plan unchanged".into()),
        other => {
            return Ok(Outcome::ignored(
                Some(account),
                format!("subscription status \"{other}\" changes nothing"),
            ))
        }
    }
    Ok(Outcome::applied(account, done.join("; ")))
}

/// Sets the payment flag as of `event_at`; whether it changed.
fn set_payment(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    overdue: bool,
    event_at: TimestampWithTimeZone,
) -> MecResult<bool> {
    let changed = spi::write(
        client,
        &SET_PAYMENT,
        &[ns.into(), account.into(), overdue.into(), event_at.into()],
    )?
    .one::<bool>()?
    .unwrap_or(false);
    if changed {
        payment_changed(client, ns, account, overdue, "stripe")?;
    }
    Ok(changed)
}

/// Emits `account.payment_overdue` or `account.payment_recovered` for a flag that changed.
fn payment_changed(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    overdue: bool,
    source: &str,
) -> MecResult<()> {
    let event = if overdue {
        "account.payment_overdue"
    } else {
        "account.payment_recovered"
    };
    outbox::emit(
        client,
        ns,
        event,
        Some(account),
        json!({"account_id": account.to_string(), "payment_overdue": overdue, "source": source}),
    )?;
    Ok(())
}

fn payment(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &StripeEvent,
    overdue: bool,
) -> MecResult<Outcome> {
    let obj = &ev.object;
    let reference = str_at(obj, "/subscription_details/metadata/account_id")
        .or_else(|| str_at(obj, "/parent/subscription_details/metadata/account_id"))
        .or_else(|| str_at(obj, "/metadata/account_id"));
    let subscription = id_of(obj.get("subscription"))
        .or_else(|| id_of(obj.pointer("/parent/subscription_details/subscription")));
    let mut account = match reference {
        Some(r) => account_named(client, ns, &r)?,
        None => None,
    };
    if let Some(a) = account {
        if !account_exists(client, ns, a)? {
            account = None;
        }
    }
    let account = match account {
        Some(a) => Some(a),
        None => match account_of_subscription(client, ns, subscription.as_deref())? {
            Some(a) => Some(a),
            None => account_of_customer(client, ns, ev.customer().as_deref())?,
        },
    };
    let Some(account) = account else {
        return Ok(Outcome::unmatched(
            "no account for the invoice: its subscription and its customer are linked to no account",
        ));
    };
    let row = spi::write(
        client,
        &SET_PAYMENT,
        &[
            ns.into(),
            account.into(),
            overdue.into(),
            ev.created().into(),
        ],
    )?;
    let Some(changed) = row.first().map(|r| r.get::<bool>("changed")).transpose()? else {
        return Ok(Outcome::stale(
            account,
            "a newer payment event was applied already",
        ));
    };
    if changed == Some(true) {
        payment_changed(client, ns, account, overdue, "stripe")?;
    }
    Ok(Outcome::applied(
        account,
        format!("payment_overdue = {overdue}"),
    ))
}

fn customer_deleted(client: &mut SpiClient<'_>, ns: Uuid, ev: &StripeEvent) -> MecResult<Outcome> {
    let Some(customer) = ev.customer() else {
        return Ok(Outcome::ignored(None, "the customer has no id"));
    };
    match spi::write(
        client,
        &UNLINK_CUSTOMER,
        &[ns.into(), customer.as_str().into()],
    )?
    .one::<Uuid>()?
    {
        Some(account) => Ok(Outcome::applied(
            account,
            format!("unlinked Stripe customer {customer}"),
        )),
        None => Ok(Outcome::ignored(
            None,
            format!("Stripe customer {customer} is linked to no account"),
        )),
    }
}

/// `set_payment_overdue`: an admin marks the account overdue or paid up, now.
pub fn set_payment_overdue(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    overdue: bool,
) -> MecResult<Value> {
    if !account_exists(client, ns, account)? {
        return Err(MecError::unknown("account", account.to_string()));
    }
    let changed = spi::write(
        client,
        &FORCE_PAYMENT,
        &[ns.into(), account.into(), overdue.into()],
    )?
    .one::<bool>()?
    .unwrap_or(false);
    if changed {
        payment_changed(client, ns, account, overdue, "admin")?;
    }
    audit(
        client,
        ns,
        "set_payment_overdue",
        &account.to_string(),
        json!({"payment_overdue": overdue}),
    )?;
    Ok(json!({"account_id": account.to_string(), "payment_overdue": overdue, "changed": changed}))
}

/// `set_billing_anchor`: an admin sets the day monthly periods start on (`None`: calendar months).
pub fn set_billing_anchor(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    day: Option<i32>,
) -> MecResult<Value> {
    if let Some(d) = day {
        if !(1..=31).contains(&d) {
            return Err(MecError::invalid(format!(
                "p_anchor_day must be 1 to 31, got {d}"
            )));
        }
    }
    if !account_exists(client, ns, account)? {
        return Err(MecError::unknown("account", account.to_string()));
    }
    let changed = !spi::write(
        client,
        &SET_ANCHOR,
        &[ns.into(), account.into(), day.into()],
    )?
    .is_empty();
    if changed {
        crate::counters::stripes::fold_account(client, ns, account)?;
        audit(
            client,
            ns,
            "set_billing_anchor",
            &account.to_string(),
            json!({"anchor_day": day}),
        )?;
    }
    Ok(json!({"account_id": account.to_string(), "billing_anchor_day": day, "changed": changed}))
}
