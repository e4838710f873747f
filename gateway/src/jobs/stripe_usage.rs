//! Usage to Stripe: one run for one namespace. pg_mec decides what to send and records every
//! answer (`mec.stripe_usage_prepare`, `_due`, `_result`: pg_mec/src/ops/stripe_usage.rs); this
//! module only speaks Stripe's wire format. Each event is sent with its pg_mec identifier as the
//! meter event's `identifier` and as the request's `Idempotency-Key`, so sending it again after a
//! crash is recognised by Stripe. One run per namespace at a time, in every replica
//! (`lock.rs`).

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::db::{self, Caller, RequestCtx};
use crate::error::ApiError;
use crate::infra::auth::Claims;
use crate::jobs::lock::{Job, RunLock};
use crate::AppState;

const PREPARE: &str = "SELECT mec.stripe_usage_prepare()::text";
const DUE: &str = "SELECT mec.stripe_usage_due($1::text::int4)::text";
const RESULT: &str =
    "SELECT mec.stripe_usage_result($1::text, $2::text::int4, $3::text, $4::text::int4)::text";
/// Events fetched per round.
const BATCH: i32 = 100;
/// How much of a Stripe error body is kept.
const MAX_ERROR: usize = 2000;

/// Who runs the sync: an admin's request, or the background worker.
pub enum Who<'a> {
    Admin {
        claims: &'a Claims,
        headers: &'a HeaderMap,
        path: &'a str,
    },
    Worker(uuid::Uuid),
}

impl Who<'_> {
    fn namespace(&self) -> Result<uuid::Uuid, ApiError> {
        match self {
            Who::Worker(ns) => Ok(*ns),
            Who::Admin { claims, .. } => claims
                .all
                .get("namespace_id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    ApiError::api(
                        StatusCode::FORBIDDEN,
                        "42501",
                        "The token names no namespace (namespace_id claim)",
                    )
                }),
        }
    }
}

async fn call(
    state: &AppState,
    who: &Who<'_>,
    ns: uuid::Uuid,
    select: &str,
    params: &[Option<String>],
) -> Result<Value, ApiError> {
    let empty = HeaderMap::new();
    let ctx = match who {
        Who::Admin {
            claims,
            headers,
            path,
        } => RequestCtx {
            caller: Caller::Token(claims),
            method: "POST",
            path,
            headers,
            read_only: false,
        },
        Who::Worker(_) => RequestCtx::worker(ns, "/jobs/stripe-usage", &empty),
    };
    db::call_json(&state.pools, &ctx, select, params, "a usage function").await
}

/// The form and path of one outbox row, as Stripe's API takes them.
fn request(ev: &Value) -> Result<(&'static str, String), ApiError> {
    let s = |k: &str| ev.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut form = form_urlencoded::Serializer::new(String::new());
    match s("kind") {
        "meter_event" => {
            form.append_pair("event_name", s("event_name"))
                .append_pair("payload[stripe_customer_id]", s("stripe_customer_id"))
                .append_pair("payload[value]", s("value"))
                .append_pair("identifier", s("identifier"))
                .append_pair(
                    "timestamp",
                    &ev.get("timestamp")
                        .and_then(Value::as_i64)
                        .unwrap_or_default()
                        .to_string(),
                );
            Ok(("/v1/billing/meter_events", form.finish()))
        }
        "cancel" => {
            form.append_pair("event_name", s("event_name"))
                .append_pair("type", "cancel")
                .append_pair("cancel[identifier]", s("cancels"));
            Ok(("/v1/billing/meter_event_adjustments", form.finish()))
        }
        other => Err(ApiError::Internal(format!(
            "unknown usage event kind {other:?}"
        ))),
    }
}

/// Sends one row: (HTTP status or 0, error text, Retry-After seconds).
async fn send(state: &AppState, api_key: &str, ev: &Value) -> (i32, Option<String>, Option<i32>) {
    let (path, body) = match request(ev) {
        Ok(r) => r,
        Err(e) => return (0, Some(e.to_string()), None),
    };
    let identifier = ev
        .get("identifier")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sent = state
        .http
        .post(format!("{}{path}", state.config.stripe_api_base))
        .bearer_auth(api_key)
        .header("Idempotency-Key", identifier)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await;
    match sent {
        Err(e) => (0, Some(format!("no answer from Stripe: {e}")), None),
        Ok(resp) => {
            let status = i32::from(resp.status().as_u16());
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i32>().ok());
            let ok = resp.status().is_success();
            let text = resp.text().await.unwrap_or_default();
            let error = (!ok).then(|| text.chars().take(MAX_ERROR).collect());
            (status, error, retry_after)
        }
    }
}

/// Prepares and sends the namespace's usage until nothing is due or `budget` is spent. Returns
/// `{prepared, sent, retrying, parked, pending, finished}`; 503 when another run holds the
/// namespace.
pub async fn run(state: &AppState, who: Who<'_>, budget: Duration) -> Result<Value, ApiError> {
    let ns = who.namespace()?;
    let Some(lock) = RunLock::acquire(state, Job::StripeUsage, ns).await? else {
        return Err(ApiError::Unavailable {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "ME503",
            message: "A usage sync of this namespace is running; retry shortly",
            cause: format!("stripe usage sync of {ns} already running"),
        });
    };
    let started = Instant::now();
    let outcome = async {
        let prepared = call(state, &who, ns, PREPARE, &[]).await?;
        let (mut sent, mut retrying, mut parked) = (0u64, 0u64, 0u64);
        let mut finished = true;
        let mut pending;
        'rounds: loop {
            let due = call(state, &who, ns, DUE, &[Some(BATCH.to_string())]).await?;
            pending = due.get("pending").and_then(Value::as_i64).unwrap_or(0);
            let events = due
                .get("events")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if events.is_empty() {
                break;
            }
            let key = due
                .get("api_key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            for ev in &events {
                if started.elapsed() >= budget {
                    finished = false;
                    break 'rounds;
                }
                let (status, error, retry_after) = send(state, &key, ev).await;
                let identifier = ev
                    .get("identifier")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let result = call(
                    state,
                    &who,
                    ns,
                    RESULT,
                    &[
                        identifier,
                        Some(status.to_string()),
                        error,
                        retry_after.map(|r| r.to_string()),
                    ],
                )
                .await?;
                match result.get("state").and_then(Value::as_str) {
                    Some("sent") => sent += 1,
                    Some("parked") => parked += 1,
                    _ => retrying += 1,
                }
            }
        }
        if !finished {
            pending = call(state, &who, ns, DUE, &[Some("1".into())])
                .await?
                .get("pending")
                .and_then(Value::as_i64)
                .unwrap_or(pending);
        }
        Ok::<_, ApiError>(json!({
            "prepared": prepared,
            "sent": sent,
            "retrying": retrying,
            "parked": parked,
            "pending": pending,
            "finished": finished,
        }))
    }
    .await;
    lock.release().await;
    outcome
}
