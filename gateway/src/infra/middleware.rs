//! Request-wide concerns: timeout, metrics, logging of 5xx causes, panics.

use std::any::Any;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Response, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;

use crate::error::{ApiError, ErrorCause};
use crate::AppState;

/// The metric label of a request: the route template axum matched (`/api/rpc/{function}`),
/// so labels stay bounded whatever paths clients send; `unmatched` for the fallback.
fn route_label(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string()
}

/// Apply the request timeout, record metrics and log the cause of 5xx answers.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let route = route_label(&req);
    let timeout = state.config.request_timeout;
    let resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::api(
            StatusCode::GATEWAY_TIMEOUT,
            "ME504",
            format!(
                "The request did not finish within {} ms",
                timeout.as_millis()
            ),
        )
        .into_response(),
    };
    let status = resp.status();
    if status.is_server_error() {
        match resp.extensions().get::<ErrorCause>() {
            Some(ErrorCause(cause)) => {
                tracing::error!(status = status.as_u16(), cause = %cause, "request failed")
            }
            None => tracing::error!(status = status.as_u16(), "request failed"),
        }
    }
    state
        .metrics
        .observe(route, method.as_str(), status.as_u16(), started.elapsed());
    resp
}

/// A panic in a handler becomes a generic 500 JSON answer; the panic is logged.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    ApiError::Internal(format!("handler panicked: {msg}")).into_response()
}
