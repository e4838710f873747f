//! `/health`, `/ready`, `/metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::infra::metrics::Gauges;
use crate::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(super::respond::JSON),
    );
    r
}

/// `{status, timestamp, services: {postgres}}`: 200 when Postgres answers, else 503.
pub async fn health(State(state): State<AppState>) -> Response {
    let pg = crate::db::ping(state.pools.any(), PROBE_TIMEOUT).await;
    let up = pg.is_ok();
    if let Err(e) = &pg {
        tracing::warn!(error = %e, "health: postgres unreachable");
    }
    json(
        if up {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if up { "ok" } else { "degraded" },
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "version": env!("CARGO_PKG_VERSION"),
            "services": {"postgres": if up { "up" } else { "down" }},
        }),
    )
}

/// Ready to serve: the schema cache is loaded and Postgres answers.
pub async fn ready(State(state): State<AppState>) -> Response {
    let schema = state.schema.get().is_some();
    let pg = crate::db::ping(state.pools.any(), PROBE_TIMEOUT)
        .await
        .is_ok();
    let ok = schema && pg;
    json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if ok { "ready" } else { "not ready" },
            "checks": {"schema_cache": schema, "postgres": pg},
        }),
    )
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let status = state.pools.status();
    let cache = state.schema.get();
    let text = state.metrics.render(&Gauges {
        pool_max: status.max_size,
        pool_size: status.size,
        pool_available: status.available,
        pool_waiting: status.waiting,
        schema_loaded: cache.is_some(),
        functions: cache
            .as_ref()
            .map_or(0, |c| c.functions.values().map(Vec::len).sum()),
        views: cache.as_ref().map_or(0, |c| c.views.len()),
        group_commits: state.group_commit.as_ref().map_or(0, |g| g.stats().0),
        grouped_calls: state.group_commit.as_ref().map_or(0, |g| g.stats().1),
    });
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
