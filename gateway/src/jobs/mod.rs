//! Work the gateway does on its own: sending usage to Stripe (`stripe_usage.rs`), on demand
//! (`POST /admin/sync-usage-to-stripe`) and, when `MEC_STRIPE_SYNC_INTERVAL_MS` is set, in the
//! background for every namespace whose `stripe_usage_sync` setting is on; and delivering
//! outbound webhooks (`webhooks.rs`) every `MEC_WEBHOOK_INTERVAL_MS` for every namespace with
//! deliveries due; and purging what retention lets go (`purge.rs`) every `MEC_PURGE_INTERVAL_MS` for
//! every namespace. Each run holds its namespace's lock for its job (`lock.rs`).

pub mod lock;
pub mod purge;
pub mod signature;
pub mod stripe_usage;
pub mod webhooks;

use std::time::Duration;

use crate::AppState;

/// Namespaces that asked for background usage sync.
const SYNC_NAMESPACES: &str =
    "SELECT namespace_id::text FROM mec_data.worker_namespaces WHERE stripe_usage_sync";
/// Every namespace (retention applies to all).
const ALL_NAMESPACES: &str = "SELECT namespace_id::text FROM mec_data.worker_namespaces";
/// Namespaces with webhook deliveries due.
const WEBHOOK_NAMESPACES: &str =
    "SELECT namespace_id::text FROM mec_data.worker_namespaces WHERE webhooks_due";

/// Starts the background loops that are configured.
pub fn spawn(state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(interval) = state.config.stripe_sync_interval {
        tasks.push(every(state, interval, |state, budget| async move {
            for ns in namespaces(&state, SYNC_NAMESPACES, "stripe usage sync").await {
                match stripe_usage::run(&state, stripe_usage::Who::Worker(ns), budget).await {
                    Ok(summary) => {
                        tracing::info!(namespace = %ns, summary = %summary, "stripe usage sync")
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %ns, error = %e, "stripe usage sync failed")
                    }
                }
            }
        }));
    }
    if let Some(interval) = state.config.webhook_interval {
        tasks.push(every(state, interval, |state, budget| async move {
            for ns in namespaces(&state, WEBHOOK_NAMESPACES, "webhook delivery").await {
                match webhooks::run(&state, ns, budget).await {
                    Ok(Some(summary)) => {
                        tracing::info!(namespace = %ns, summary = %summary, "webhook delivery")
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(namespace = %ns, error = %e, "webhook delivery failed")
                    }
                }
            }
        }));
    }
    if let Some(interval) = state.config.purge_interval {
        // Not at start-up: a restart should not purge every namespace at once.
        tasks.push(every_after(
            state,
            interval,
            interval,
            |state, budget| async move {
                for ns in namespaces(&state, ALL_NAMESPACES, "purge").await {
                    match purge::run(&state, ns, budget).await {
                        Ok(Some(summary)) => {
                            tracing::info!(namespace = %ns, summary = %summary, "purge")
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(namespace = %ns, error = %e, "purge failed"),
                    }
                }
            },
        ));
    }
    tasks
}

/// Runs `job` every `interval` until the process stops, each run with a time budget.
fn every<F, Fut>(state: &AppState, interval: Duration, job: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(AppState, Duration) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    every_after(state, Duration::ZERO, interval, job)
}

/// [`every`], the first run `delay` after start-up.
fn every_after<F, Fut>(
    state: &AppState,
    delay: Duration,
    interval: Duration,
    job: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(AppState, Duration) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + delay, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            job(state.clone(), interval.max(Duration::from_secs(5))).await;
        }
    })
}

async fn namespaces(state: &AppState, query: &str, job: &str) -> Vec<uuid::Uuid> {
    match state.pools.worker().get().await {
        Ok(client) => match client.query(query, &[]).await {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| r.try_get::<_, String>(0).ok())
                .filter_map(|s| s.parse::<uuid::Uuid>().ok())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, job, "cannot list namespaces");
                Vec::new()
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, job, "no database connection");
            Vec::new()
        }
    }
}
