//! The HTTP handlers. Each reads as PostgREST's stages: parse the request (`request`), plan it
//! against the schema cache (`plan`), build its SQL (`sql`), run it (`db`), write the answer
//! (`respond`).

pub mod admin;
pub mod health;
pub mod openapi;
pub mod openapi_gateway;
pub mod respond;
pub mod rpc;
pub mod views;
pub mod webhooks;

use axum::http::{Method, StatusCode, Uri};

use crate::error::ApiError;

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::api(
        StatusCode::NOT_FOUND,
        "PGRST125",
        format!("Invalid path specified in request URL: {}", uri.path()),
    )
}

pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::api(
        StatusCode::METHOD_NOT_ALLOWED,
        "PGRST101",
        format!("Unsupported HTTP method: {method}"),
    )
    .with_hint(
        "Views are read with GET or HEAD; functions are called with POST (or GET when read-only)",
    )
}
