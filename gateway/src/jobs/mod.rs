//! Work the gateway does on its own: sending usage to Stripe (`stripe_usage.rs`), on demand
//! (`POST /admin/sync-usage-to-stripe`) and, when `MEC_STRIPE_SYNC_INTERVAL_MS` is set, in the
//! background for every namespace whose `stripe_usage_sync` setting is on.

pub mod stripe_usage;

use std::time::Duration;

use crate::AppState;

/// Namespaces that asked for background usage sync.
const SYNC_NAMESPACES: &str =
    "SELECT namespace_id::text FROM mec_data.worker_namespaces WHERE stripe_usage_sync";

/// Runs the background sync every `interval` until the process stops.
pub fn spawn(state: &AppState) -> Option<tokio::task::JoinHandle<()>> {
    let interval = state.config.stripe_sync_interval?;
    let state = state.clone();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sync_all(&state, interval.max(Duration::from_secs(5))).await;
        }
    }))
}

async fn sync_all(state: &AppState, budget: Duration) {
    let namespaces = match state.pools.worker().get().await {
        Ok(client) => match client.query(SYNC_NAMESPACES, &[]).await {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| r.try_get::<_, String>(0).ok())
                .filter_map(|s| s.parse::<uuid::Uuid>().ok())
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(error = %e, "stripe usage sync: cannot list namespaces");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "stripe usage sync: no database connection");
            return;
        }
    };
    for ns in namespaces {
        match stripe_usage::run(state, stripe_usage::Who::Worker(ns), budget).await {
            Ok(summary) => tracing::info!(namespace = %ns, summary = %summary, "stripe usage sync"),
            Err(e) => tracing::warn!(namespace = %ns, error = %e, "stripe usage sync failed"),
        }
    }
}
