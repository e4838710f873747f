//! Webhooks in: `POST /webhooks/stripe/{namespace_id}`, `POST /webhooks/stripe` (the namespace
//! `MEC_DEFAULT_NAMESPACE_ID`) and `POST /webhooks/auth0/{namespace_id}`. The raw body and the
//! header that authenticates it (`Stripe-Signature`, `Authorization`) go to pg_mec as they arrived,
//! on a connection of the webhook role: pg_mec checks them against the namespace's own secret and
//! applies the delivery in the same transaction. The gateway decides nothing.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::db;
use crate::error::ApiError;
use crate::request::body::read_body;
use crate::AppState;

const RECEIVE_STRIPE: &str =
    "SELECT mec.receive_stripe_event($1::text::uuid, $2::text, $3::text)::text";
const RECEIVE_AUTH0: &str =
    "SELECT mec.receive_auth0_events($1::text::uuid, $2::text, $3::text)::text";

pub async fn stripe_in_namespace(
    State(state): State<AppState>,
    namespace: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let namespace = namespace.map(|Path(n)| n).unwrap_or_default();
    let ns = namespace
        .parse::<uuid::Uuid>()
        .map_err(|_| unknown_namespace(&namespace))?;
    stripe(&state, ns, &uri, &headers, body).await
}

pub async fn stripe_default(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ns = state.config.default_namespace.ok_or_else(|| {
        ApiError::api(
            StatusCode::NOT_FOUND,
            "ME404",
            "This gateway has no default namespace for Stripe webhooks",
        )
        .with_hint("Post to /webhooks/stripe/<namespace_id>, or set MEC_DEFAULT_NAMESPACE_ID.")
    })?;
    stripe(&state, ns, &uri, &headers, body).await
}

fn unknown_namespace(given: &str) -> ApiError {
    ApiError::api(
        StatusCode::NOT_FOUND,
        "ME404",
        format!("\"{given}\" is not a namespace id"),
    )
    .with_hint("Post to /webhooks/<stripe|auth0>/<namespace_id> with the namespace's uuid.")
}

pub async fn auth0(
    State(state): State<AppState>,
    namespace: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let namespace = namespace.map(|Path(n)| n).unwrap_or_default();
    let ns = namespace
        .parse::<uuid::Uuid>()
        .map_err(|_| unknown_namespace(&namespace))?;
    deliver(
        &state,
        RECEIVE_AUTH0,
        ns,
        &uri,
        &headers,
        "authorization",
        body,
    )
    .await
}

async fn stripe(
    state: &AppState,
    ns: uuid::Uuid,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    deliver(
        state,
        RECEIVE_STRIPE,
        ns,
        uri,
        headers,
        "stripe-signature",
        body,
    )
    .await
}

/// Hands the body and the authenticating header to `select`; answers with its JSON.
async fn deliver(
    state: &AppState,
    select: &str,
    ns: uuid::Uuid,
    uri: &Uri,
    headers: &HeaderMap,
    auth_header: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, state.config.max_body_bytes).await?;
    let payload = String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::api(
            StatusCode::BAD_REQUEST,
            "ME400",
            "The webhook body is not UTF-8 text",
        )
    })?;
    // A header that is not visible ASCII cannot carry a valid secret: pass none.
    let credential = headers
        .get(auth_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let rows = db::deliver(
        &state.pools,
        uri.path(),
        select,
        &[Some(ns.to_string()), Some(payload), credential],
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| ApiError::Internal("the webhook function returned no row".into()))?;
    let result: String = db::column(row, 0)?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, super::respond::JSON)],
        result,
    )
        .into_response())
}
