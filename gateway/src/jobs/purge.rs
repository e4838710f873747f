//! Retention on a schedule: every `MEC_PURGE_INTERVAL_MS` (default one hour; 0 turns it off) the
//! worker calls `mec.purge_expired()` in each namespace, one bounded batch after another while it
//! answers `more`, within the run's time budget. One run per namespace at a time, in every replica
//! (`lock.rs`).

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::{json, Value};

use crate::db::{self, RequestCtx};
use crate::error::ApiError;
use crate::jobs::lock::{Job, RunLock};
use crate::AppState;

const PURGE: &str = "SELECT mec.purge_expired()::text";

/// Purges `ns` until nothing is left to purge or `budget` is spent. Returns `{keys_deleted,
/// ledger_rows_rolled_up, batches, finished}`, or `None` when another run holds the namespace.
pub async fn run(
    state: &AppState,
    ns: uuid::Uuid,
    budget: Duration,
) -> Result<Option<Value>, ApiError> {
    let Some(lock) = RunLock::acquire(state, Job::Purge, ns).await? else {
        return Ok(None);
    };
    let started = Instant::now();
    let outcome = async {
        let empty = HeaderMap::new();
        let ctx = RequestCtx::worker(ns, "/jobs/purge", &empty);
        let (mut keys, mut rows, mut batches) = (0i64, 0i64, 0u64);
        let mut finished = false;
        while started.elapsed() < budget {
            let r = db::call_json(&state.pools, &ctx, PURGE, &[], "mec.purge_expired").await?;
            batches += 1;
            keys += r.get("keys_deleted").and_then(Value::as_i64).unwrap_or(0);
            rows += r
                .get("ledger_rows_rolled_up")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if r.get("more").and_then(Value::as_bool) != Some(true) {
                finished = true;
                break;
            }
        }
        Ok::<_, ApiError>(json!({
            "keys_deleted": keys, "ledger_rows_rolled_up": rows, "batches": batches,
            "finished": finished,
        }))
    }
    .await;
    lock.release().await;
    outcome.map(Some)
}
