//! The operator's endpoints (a `mec_admin` token; Postgres refuses any other role with `42501`):
//! `POST /admin/bulk-provision` and `POST /admin/expire-stale-leases`, each one call of a pg_mec
//! function in the token's role, as `/api/rpc` calls are, and `POST /admin/sync-usage-to-stripe`,
//! a run of the usage job (`jobs/stripe_usage.rs`) in the token's role; `GET /admin/deliveries`,
//! the outbound webhook log (a read of `mec.webhook_deliveries`).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::db::{self, Caller, RequestCtx};
use crate::error::ApiError;
use crate::infra::auth::Claims;
use crate::jobs::stripe_usage::{self, Who};
use crate::request::body::{invalid_json, read_body};
use crate::AppState;

const BULK_PROVISION: &str =
    "SELECT mec.bulk_provision(p_rows => $1::text::jsonb, p_idempotency_key => $2::text)::text";
const EXPIRE_STALE_LEASES: &str = "SELECT mec.expire_stale_leases()::text";

/// `[{account_id | external_id, plan_id}]`, all or nothing; an `Idempotency-Key` header makes a
/// retry return the first result.
pub async fn bulk_provision(
    State(state): State<AppState>,
    claims: Claims,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, state.config.max_body_bytes).await?;
    let text = std::str::from_utf8(&bytes).map_err(|_| invalid_json())?;
    let rows: serde_json::Value = serde_json::from_str(text).map_err(|_| invalid_json())?;
    if !rows.is_array() {
        return Err(ApiError::api(
            StatusCode::BAD_REQUEST,
            "PGRST102",
            "Expected a JSON array of {account_id | external_id, plan_id}",
        ));
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ctx = ctx(&claims, &method, &uri, &headers);
    call(&state, &ctx, BULK_PROVISION, &[Some(text.to_string()), key]).await
}

pub async fn expire_stale_leases(
    State(state): State<AppState>,
    claims: Claims,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ctx = ctx(&claims, &method, &uri, &headers);
    call(&state, &ctx, EXPIRE_STALE_LEASES, &[]).await
}

fn ctx<'a>(
    claims: &'a Claims,
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> RequestCtx<'a> {
    RequestCtx {
        caller: Caller::Token(claims),
        method: method.as_str(),
        path: uri.path(),
        headers,
        read_only: false,
    }
}

async fn call(
    state: &AppState,
    ctx: &RequestCtx<'_>,
    select: &str,
    params: &[Option<String>],
) -> Result<Response, ApiError> {
    let rows = db::call(&state.pools, ctx, select, params).await?;
    let row = rows
        .first()
        .ok_or_else(|| ApiError::Internal("the admin function returned no row".into()))?;
    let body: String = db::column(row, 0)?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, super::respond::JSON)],
        body,
    )
        .into_response())
}

/// Sends the namespace's unsent usage to Stripe now, within the request's time (what is left is
/// sent by the next call or the background worker). `{prepared, sent, retrying, parked, pending,
/// finished}`.
pub async fn sync_usage_to_stripe(
    State(state): State<AppState>,
    claims: Claims,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let budget = state
        .config
        .request_timeout
        .saturating_sub(state.config.stripe_timeout + std::time::Duration::from_secs(1));
    let who = Who::Admin {
        claims: &claims,
        headers: &headers,
        path: uri.path(),
    };
    let summary = stripe_usage::run(&state, who, budget).await?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, super::respond::JSON)],
        summary.to_string(),
    )
        .into_response())
}

/// The outbound webhook delivery log: a PostgREST read of `mec.webhook_deliveries` (filters,
/// `select`, `order`, `limit`, `Range` as on `/api`), newest first unless `order` says otherwise.
pub async fn deliveries(
    State(state): State<AppState>,
    claims: Claims,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::views::read_view(
        &state,
        &claims,
        "webhook_deliveries",
        &method,
        &uri,
        &headers,
        Some("created_at.desc"),
    )
    .await
}
