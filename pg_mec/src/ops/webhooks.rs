//! Outbound webhooks: the endpoints a namespace's admin registers, and the two steps the gateway's
//! worker delivers with — what is due (with each endpoint's secret, which only pg_mec's functions
//! read) and the endpoint's answer. Events are queued by `events/outbox.rs` in the transactions
//! that cause them; the worker signs and sends them (gateway `jobs/webhooks.rs`). Delivery is at
//! least once: a crash between sending and recording resends the same `webhook-id`.

use base64::Engine;
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::events::outbox::{webhook_id, EVENT_TYPES};
use crate::ledger::audit::audit;
use crate::pg::spi::{self, stmt};
use crate::pg::values::unix_us;
use crate::pg::{MecError, MecResult};

/// Bytes of a generated signing key (Standard Webhooks: 24 to 64).
const SECRET_BYTES: usize = 32;
/// Endpoints per namespace.
const MAX_ENDPOINTS: i64 = 50;
/// How much of an endpoint's answer is kept.
const MAX_ERROR: usize = 2000;

stmt! {
    static COUNT: read (ns: uuid) =
        "SELECT count(*) FROM mec_data.webhook_endpoints WHERE namespace_id = $1";
}

stmt! {
    static CREATE: write (ns: uuid, url: text, event_types: jsonb, description: text, secret: text) =
        "INSERT INTO mec_data.webhook_endpoints (namespace_id, url, event_types, description, secret)
              VALUES ($1, $2, ARRAY(SELECT jsonb_array_elements_text($3)), $4, $5)
              RETURNING endpoint_id, url, event_types::text[] AS event_types, description, enabled, created_at, updated_at";
}

stmt! {
    static UPDATE: write (ns: uuid, endpoint_id: uuid, url: text, event_types: jsonb, description: text, enabled: bool, secret: text) =
        "UPDATE mec_data.webhook_endpoints
            SET url = coalesce($3, url),
                event_types = CASE WHEN $4::jsonb IS NULL THEN event_types
                                   ELSE ARRAY(SELECT jsonb_array_elements_text($4)) END,
                description = coalesce($5, description),
                enabled = coalesce($6, enabled),
                secret = coalesce($7, secret),
                updated_at = now()
          WHERE namespace_id = $1 AND endpoint_id = $2
          RETURNING endpoint_id, url, event_types::text[] AS event_types, description, enabled, created_at, updated_at";
}

stmt! {
    static DELETE: write (ns: uuid, endpoint_id: uuid) =
        "DELETE FROM mec_data.webhook_endpoints WHERE namespace_id = $1 AND endpoint_id = $2 RETURNING url";
}

stmt! {
    /// Pending deliveries whose time has come, to enabled endpoints, oldest first.
    static DUE: read (ns: uuid, max: int8) =
        "SELECT d.delivery_id, d.event_id, d.attempts, e.event_type, e.payload::text AS body, p.url, p.secret
           FROM mec_data.webhook_deliveries d
           JOIN mec_data.webhook_events e ON e.namespace_id = d.namespace_id AND e.event_id = d.event_id
           JOIN mec_data.webhook_endpoints p ON p.namespace_id = d.namespace_id AND p.endpoint_id = d.endpoint_id
          WHERE d.namespace_id = $1 AND d.state = 'pending' AND d.next_attempt_at <= clock_timestamp() AND p.enabled
          ORDER BY d.next_attempt_at, d.created_at
          LIMIT $2";
}

stmt! {
    static PENDING: read (ns: uuid) =
        "SELECT count(*) FROM mec_data.webhook_deliveries WHERE namespace_id = $1 AND state = 'pending'";
}

stmt! {
    /// Records one attempt: 2xx delivers; otherwise retried after the pause the namespace's
    /// `webhook_retry_schedule` gives the attempt (or the endpoint's `Retry-After` `$5`, if longer,
    /// at most a day), or dead past the schedule's end.
    static RESULT: write (ns: uuid, delivery_id: uuid, status: int4, error: text, retry_after: int4) =
        "WITH s AS (
              SELECT coalesce(n.settings->'webhook_retry_schedule', $$[5, 300, 1800, 7200, 18000, 36000, 36000]$$)
                     AS schedule
                FROM mec_data.namespaces n WHERE n.namespace_id = $1),
         d AS (
              SELECT x.delivery_id, x.attempts + 1 AS attempts,
                     $3 BETWEEN 200 AND 299 AS ok,
                     greatest((s.schedule->>x.attempts)::int4, CASE WHEN $5 IS NULL THEN 0 ELSE least($5, 86400) END) AS pause,
                     (s.schedule->>x.attempts) IS NOT NULL AS again
                FROM mec_data.webhook_deliveries x, s
               WHERE x.namespace_id = $1 AND x.delivery_id = $2 AND x.state = 'pending'
                 FOR UPDATE OF x)
         UPDATE mec_data.webhook_deliveries w
            SET attempts = d.attempts,
                last_attempt_at = clock_timestamp(),
                last_status = nullif($3, 0),
                last_error = CASE WHEN d.ok THEN NULL ELSE $4 END,
                state = CASE WHEN d.ok THEN 'delivered' WHEN d.again THEN 'pending' ELSE 'dead' END,
                delivered_at = CASE WHEN d.ok THEN clock_timestamp() END,
                next_attempt_at = CASE WHEN NOT d.ok AND d.again
                                       THEN clock_timestamp() + d.pause * interval '1 second'
                                       ELSE w.next_attempt_at END
           FROM d
          WHERE w.namespace_id = $1 AND w.delivery_id = d.delivery_id
          RETURNING w.state, w.attempts, w.next_attempt_at";
}

stmt! {
    static STATE: read (ns: uuid, delivery_id: uuid) =
        "SELECT state, attempts, next_attempt_at FROM mec_data.webhook_deliveries
          WHERE namespace_id = $1 AND delivery_id = $2";
}

stmt! {
    /// Dead deliveries (one, or all with NULL) back to pending, their schedule from the start.
    static RETRY: write (ns: uuid, delivery_id: uuid) =
        "UPDATE mec_data.webhook_deliveries
            SET state = 'pending', attempts = 0, next_attempt_at = clock_timestamp(), last_error = NULL
          WHERE namespace_id = $1 AND state = 'dead' AND ($2::uuid IS NULL OR delivery_id = $2)
          RETURNING delivery_id";
}

/// What an admin asks of an endpoint; `None` keeps what is there.
pub struct Endpoint {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub secret: Option<String>,
}

fn check_url(url: &str) -> MecResult<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    let bad = url.len() > 2000
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
        || host.is_none_or(|h| h.is_empty() || h.contains('@'));
    if bad {
        return Err(MecError::invalid_hint(
            format!("p_url is not an http(s) URL pg_mec can deliver to: {url:?}"),
            "An absolute http:// or https:// URL with a host and no credentials, at most 2000 characters.",
        ));
    }
    Ok(())
}

fn check_event_types(types: &[String]) -> MecResult<()> {
    if let Some(bad) = types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        return Err(MecError::invalid_hint(
            format!("unknown event type {bad:?} in p_event_types"),
            format!(
                "Event types: {}; an empty list or NULL subscribes to all.",
                EVENT_TYPES.join(", ")
            ),
        ));
    }
    Ok(())
}

fn check_secret(secret: &str) -> MecResult<()> {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
    if !key.is_some_and(|k| (24..=64).contains(&k.len())) {
        return Err(MecError::invalid_hint(
            "p_secret is not a Standard Webhooks secret",
            "\"whsec_\" followed by the base64 of 24 to 64 random bytes; or leave it NULL and pg_mec generates one.",
        ));
    }
    Ok(())
}

fn check_description(d: &str) -> MecResult<()> {
    if d.chars().count() > 500 {
        return Err(MecError::invalid(
            "p_description is longer than 500 characters",
        ));
    }
    Ok(())
}

/// A new signing key: `whsec_` and the base64 of [`SECRET_BYTES`] strong random bytes.
fn new_secret() -> MecResult<String> {
    let mut buf = [0u8; SECRET_BYTES];
    // SAFETY: fills a buffer of the given length from the server's strong random source.
    let ok = unsafe { pg_sys::pg_strong_random(buf.as_mut_ptr().cast(), buf.len()) };
    if !ok {
        return Err(MecError::Internal("no strong random bytes".into()));
    }
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(buf)
    ))
}

fn endpoint_json(row: &spi::Row<'_>) -> MecResult<Value> {
    let ts = |name: &str| -> MecResult<Value> {
        Ok(row
            .get::<TimestampWithTimeZone>(name)?
            .and_then(|t| unix_us(t).ok())
            .map(|us| Value::from(crate::pg::values::iso8601(us)))
            .unwrap_or(Value::Null))
    };
    Ok(json!({
        "endpoint_id": row.get::<Uuid>("endpoint_id")?.map(|u| u.to_string()),
        "url": row.get::<String>("url")?,
        "event_types": row.get::<Vec<String>>("event_types")?.unwrap_or_default(),
        "description": row.get::<String>("description")?,
        "enabled": row.get::<bool>("enabled")?,
        "created_at": ts("created_at")?,
        "updated_at": ts("updated_at")?,
    }))
}

/// Registers an endpoint. Returns it with its `secret` (shown this once).
pub fn create(client: &mut SpiClient<'_>, ns: Uuid, req: &Endpoint) -> MecResult<Value> {
    let url = req
        .url
        .as_deref()
        .ok_or_else(|| MecError::invalid("p_url must not be null"))?;
    check_url(url)?;
    let types = req.event_types.clone().unwrap_or_default();
    check_event_types(&types)?;
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    let secret = match &req.secret {
        Some(s) => {
            check_secret(s)?;
            s.clone()
        }
        None => new_secret()?,
    };
    let count = spi::read(client, &COUNT, &[ns.into()])?
        .one::<i64>()?
        .unwrap_or(0);
    if count >= MAX_ENDPOINTS {
        return Err(MecError::bad_request(
            format!("the namespace has {count} webhook endpoints, the most it may have"),
            "Delete one with mec.delete_webhook_endpoint, or subscribe one endpoint to more event types.",
        ));
    }
    let row = spi::write(
        client,
        &CREATE,
        &[
            ns.into(),
            url.into(),
            pgrx::JsonB(json!(types)).into(),
            req.description.as_deref().into(),
            secret.as_str().into(),
        ],
    )?
    .first()
    .ok_or_else(|| MecError::Internal("endpoint insert returned no row".into()))?;
    let mut out = endpoint_json(&row)?;
    audit(
        client,
        ns,
        "create_webhook_endpoint",
        out["endpoint_id"].as_str().unwrap_or_default(),
        json!({"url": url, "event_types": types}),
    )?;
    out["secret"] = Value::from(secret);
    Ok(out)
}

/// Changes an endpoint; `rotate` replaces its secret (returned this once). Raises ME404.
pub fn update(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    endpoint: Uuid,
    req: &Endpoint,
    rotate: bool,
) -> MecResult<Value> {
    if let Some(u) = &req.url {
        check_url(u)?;
    }
    if let Some(t) = &req.event_types {
        check_event_types(t)?;
    }
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    let secret = match (&req.secret, rotate) {
        (Some(s), _) => {
            check_secret(s)?;
            Some(s.clone())
        }
        (None, true) => Some(new_secret()?),
        (None, false) => None,
    };
    let row = spi::write(
        client,
        &UPDATE,
        &[
            ns.into(),
            endpoint.into(),
            req.url.as_deref().into(),
            req.event_types
                .as_ref()
                .map(|t| pgrx::JsonB(json!(t)))
                .into(),
            req.description.as_deref().into(),
            req.enabled.into(),
            secret.as_deref().into(),
        ],
    )?
    .first()
    .ok_or_else(|| MecError::unknown("webhook endpoint", endpoint.to_string()))?;
    let mut out = endpoint_json(&row)?;
    audit(
        client,
        ns,
        "update_webhook_endpoint",
        &endpoint.to_string(),
        json!({"url": req.url, "event_types": req.event_types, "enabled": req.enabled,
               "secret_rotated": secret.is_some()}),
    )?;
    if let Some(s) = secret {
        out["secret"] = Value::from(s);
    }
    Ok(out)
}

/// Deletes an endpoint and its deliveries. Raises ME404.
pub fn delete(client: &mut SpiClient<'_>, ns: Uuid, endpoint: Uuid) -> MecResult<Value> {
    let url = spi::write(client, &DELETE, &[ns.into(), endpoint.into()])?
        .one::<String>()?
        .ok_or_else(|| MecError::unknown("webhook endpoint", endpoint.to_string()))?;
    audit(
        client,
        ns,
        "delete_webhook_endpoint",
        &endpoint.to_string(),
        json!({"url": url}),
    )?;
    Ok(json!({"endpoint_id": endpoint.to_string(), "deleted": true}))
}

/// What to deliver now: `{pending, deliveries: [{delivery_id, webhook_id, event_type, url, secret,
/// body, attempts}]}`.
pub fn due(client: &SpiClient<'_>, ns: Uuid, limit: i64) -> MecResult<Value> {
    if !(1..=1000).contains(&limit) {
        return Err(MecError::invalid(format!(
            "p_limit must be 1 to 1000, got {limit}"
        )));
    }
    let mut out = Vec::new();
    for row in spi::read(client, &DUE, &[ns.into(), limit.into()])? {
        let Some(event) = row.get::<Uuid>("event_id")? else {
            continue;
        };
        out.push(json!({
            "delivery_id": row.get::<Uuid>("delivery_id")?.map(|u| u.to_string()),
            "webhook_id": webhook_id(event),
            "event_type": row.get::<String>("event_type")?,
            "url": row.get::<String>("url")?,
            "secret": row.get::<String>("secret")?,
            "body": row.get::<String>("body")?,
            "attempts": row.get::<i32>("attempts")?,
        }));
    }
    let pending = spi::read(client, &PENDING, &[ns.into()])?
        .one::<i64>()?
        .unwrap_or(0);
    Ok(json!({"pending": pending, "deliveries": out}))
}

fn state_json(delivery: Uuid, row: &spi::Row<'_>, changed: bool) -> MecResult<Value> {
    Ok(json!({
        "delivery_id": delivery.to_string(),
        "state": row.get::<String>("state")?,
        "attempts": row.get::<i32>("attempts")?,
        "next_attempt_at": row
            .get::<TimestampWithTimeZone>("next_attempt_at")?
            .and_then(|t| unix_us(t).ok())
            .map(crate::pg::values::iso8601),
        "changed": changed,
    }))
}

/// Records one delivery attempt: `status` the endpoint's HTTP status (0: no answer), `retry_after`
/// its `Retry-After` seconds. A failure is retried on the namespace's schedule (dead past it). Returns
/// `{delivery_id, state, attempts, next_attempt_at, changed}`; a delivery no longer pending is
/// left as it is. Raises ME404.
pub fn result(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    delivery: Uuid,
    status: i32,
    error: Option<&str>,
    retry_after: Option<i32>,
) -> MecResult<Value> {
    if !(0..=999).contains(&status) {
        return Err(MecError::invalid(format!(
            "p_status must be an HTTP status or 0, got {status}"
        )));
    }
    if retry_after.is_some_and(|r| r < 0) {
        return Err(MecError::invalid("p_retry_after must not be negative"));
    }
    let error: Option<String> = error.map(|e| e.chars().take(MAX_ERROR).collect());
    let updated = spi::write(
        client,
        &RESULT,
        &[
            ns.into(),
            delivery.into(),
            status.into(),
            error.as_deref().into(),
            retry_after.into(),
        ],
    )?
    .first();
    if let Some(row) = updated {
        return state_json(delivery, &row, true);
    }
    let row = spi::read(client, &STATE, &[ns.into(), delivery.into()])?
        .first()
        .ok_or_else(|| MecError::unknown("webhook delivery", delivery.to_string()))?;
    state_json(delivery, &row, false)
}

/// Dead deliveries back to pending (one, or every dead one with `None`). Returns `{requeued,
/// delivery_ids}`.
pub fn retry(client: &mut SpiClient<'_>, ns: Uuid, delivery: Option<Uuid>) -> MecResult<Value> {
    let mut ids = Vec::new();
    for row in spi::write(client, &RETRY, &[ns.into(), delivery.into()])? {
        if let Some(id) = row.get::<Uuid>("delivery_id")? {
            ids.push(id.to_string());
        }
    }
    audit(
        client,
        ns,
        "retry_webhook_delivery",
        &delivery
            .map(|d| d.to_string())
            .unwrap_or_else(|| "*".into()),
        json!({"requeued": ids.len()}),
    )?;
    Ok(json!({"requeued": ids.len(), "delivery_ids": ids}))
}
