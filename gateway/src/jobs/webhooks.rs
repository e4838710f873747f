//! Outbound webhooks: delivers one namespace's due deliveries (`mec.webhook_deliveries_due`),
//! each signed per the Standard Webhooks spec (`signature.rs`) and sent with its `webhook-id`
//! (the same on every retry, so a receiver deduplicates by it), then records the endpoint's answer
//! (`mec.webhook_delivery_result`), which retries a failure after the next pause of the namespace's
//! `webhook_retry_schedule` (or the endpoint's `Retry-After`, if longer) — every replica follows
//! the same schedule — and past its end marks the delivery dead, for an admin to see (`GET
//! /admin/deliveries`) and requeue (`mec.retry_webhook_delivery`). One run per namespace at a time, in every replica (`lock.rs`).

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::db::{self, RequestCtx};
use crate::error::ApiError;
use crate::jobs::lock::{Job, RunLock};
use crate::jobs::signature;
use crate::AppState;

const DUE: &str = "SELECT mec.webhook_deliveries_due($1::text::int4)::text";
const RESULT: &str = "SELECT mec.webhook_delivery_result($1::text::uuid, $2::text::int4, $3::text, $4::text::int4)::text";
/// Deliveries fetched per round, and sent at once.
const BATCH: i32 = 100;
const PARALLEL: usize = 8;
/// How much of an endpoint's answer is kept.
const MAX_ERROR: usize = 500;

async fn call(
    state: &AppState,
    ns: uuid::Uuid,
    select: &str,
    params: &[Option<String>],
) -> Result<Value, ApiError> {
    let empty = HeaderMap::new();
    let ctx = RequestCtx::worker(ns, "/jobs/webhooks", &empty);
    db::call_json(&state.pools, &ctx, select, params, "a webhook function").await
}

/// What one attempt got: the HTTP status (0: none), the error, the endpoint's `Retry-After`.
struct Attempt {
    status: i32,
    error: Option<String>,
    retry_after: Option<u64>,
}

async fn send(state: &AppState, d: &Value) -> Attempt {
    let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default();
    let (id, body) = (s("webhook_id"), s("body"));
    let timestamp = chrono::Utc::now().timestamp();
    let signature = match signature::sign(s("secret"), id, timestamp, body) {
        Ok(sig) => sig,
        Err(e) => {
            return Attempt {
                status: 0,
                error: Some(e.to_string()),
                retry_after: None,
            }
        }
    };
    let sent = state
        .webhook_http
        .post(s("url"))
        .timeout(state.config.webhook_timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_string())
        .send()
        .await;
    match sent {
        Err(e) => Attempt {
            status: 0,
            error: Some(format!("no answer: {e}")),
            retry_after: None,
        },
        Ok(resp) => {
            let status = i32::from(resp.status().as_u16());
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let ok = resp.status().is_success();
            let error = if ok {
                None
            } else {
                let text = resp.text().await.unwrap_or_default();
                Some(format!(
                    "HTTP {status}: {}",
                    text.chars().take(MAX_ERROR).collect::<String>()
                ))
            };
            Attempt {
                status,
                error,
                retry_after,
            }
        }
    }
}

/// Sends one delivery and records the answer; returns the delivery's state.
async fn deliver_one(state: AppState, ns: uuid::Uuid, d: Value) -> Result<Value, ApiError> {
    let attempt = send(&state, &d).await;
    let id = d
        .get("delivery_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    call(
        &state,
        ns,
        RESULT,
        &[
            id,
            Some(attempt.status.to_string()),
            attempt.error,
            attempt.retry_after.map(|r| r.min(86_400).to_string()),
        ],
    )
    .await
}

/// Delivers what is due in `ns` until nothing is or `budget` is spent. Returns `{delivered,
/// retrying, dead, pending, finished}`, or `None` when another run holds the namespace.
pub async fn run(
    state: &AppState,
    ns: uuid::Uuid,
    budget: Duration,
) -> Result<Option<Value>, ApiError> {
    let Some(lock) = RunLock::acquire(state, Job::Webhooks, ns).await? else {
        return Ok(None);
    };
    let started = Instant::now();
    let outcome = async {
        let (mut delivered, mut retrying, mut dead) = (0u64, 0u64, 0u64);
        let mut finished = true;
        let mut pending;
        loop {
            let due = call(state, ns, DUE, &[Some(BATCH.to_string())]).await?;
            pending = due.get("pending").and_then(Value::as_i64).unwrap_or(0);
            let batch = due
                .get("deliveries")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            if started.elapsed() >= budget {
                finished = false;
                break;
            }
            let results: Vec<Result<Value, ApiError>> = stream::iter(batch)
                .map(|d| deliver_one(state.clone(), ns, d))
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
            for r in results {
                match r?.get("state").and_then(Value::as_str) {
                    Some("delivered") => delivered += 1,
                    Some("dead") => dead += 1,
                    _ => retrying += 1,
                }
            }
        }
        Ok::<_, ApiError>(json!({
            "delivered": delivered, "retrying": retrying, "dead": dead,
            "pending": pending, "finished": finished,
        }))
    }
    .await;
    lock.release().await;
    outcome.map(Some)
}
