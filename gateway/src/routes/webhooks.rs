//! Webhooks in: `POST /webhooks/stripe/{namespace_id}` and `POST /webhooks/stripe` (the namespace
//! `MEC_DEFAULT_NAMESPACE_ID`). The raw body and the `Stripe-Signature` header go to
//! `mec.receive_stripe_event` as they arrived, on a connection of the webhook role: pg_mec verifies
//! the signature against the namespace's own secret and applies the event in the same transaction.
//! The gateway decides nothing.

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
    .with_hint("Post to /webhooks/stripe/<namespace_id> with the namespace's uuid.")
}

async fn stripe(
    state: &AppState,
    ns: uuid::Uuid,
    uri: &Uri,
    headers: &HeaderMap,
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
    // A header that is not visible ASCII cannot be a valid signature: pass none.
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let rows = db::deliver(
        &state.pools,
        uri.path(),
        RECEIVE_STRIPE,
        &[Some(ns.to_string()), Some(payload), signature],
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| ApiError::Internal("receive_stripe_event returned no row".into()))?;
    let result: String = db::column(row, 0)?;
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, super::respond::JSON)],
        result,
    )
        .into_response())
}
