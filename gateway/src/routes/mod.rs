//! HTTP handlers and what they share: profile and Accept negotiation, body reading.

pub mod health;
pub mod openapi;
pub mod rpc;
pub mod views;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::error::ApiError;

pub const JSON: &str = "application/json; charset=utf-8";
pub const OBJECT: &str = "application/vnd.pgrst.object+json; charset=utf-8";

/// Schemas a client may name in `Accept-Profile` / `Content-Profile`: both mean `mec`.
pub const PROFILES: [&str; 2] = ["mec", "public"];

/// 406 PGRST106 for a schema other than `mec` or `public`.
pub fn check_profile(headers: &HeaderMap) -> Result<(), ApiError> {
    for name in ["accept-profile", "content-profile"] {
        if let Some(v) = headers.get(name) {
            let v = v.to_str().unwrap_or("").trim();
            if !PROFILES.contains(&v) {
                return Err(ApiError::api(
                    StatusCode::NOT_ACCEPTABLE,
                    "PGRST106",
                    "The schema must be one of the following: mec, public",
                ));
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    Json,
    /// `application/vnd.pgrst.object+json`: exactly one row, as an object.
    Object,
}

/// The first media type of `Accept` we can produce; 406 PGRST107 if none.
pub fn negotiate(headers: &HeaderMap) -> Result<Accept, ApiError> {
    let Some(v) = headers.get(header::ACCEPT) else {
        return Ok(Accept::Json);
    };
    let v = v.to_str().unwrap_or("");
    if v.trim().is_empty() {
        return Ok(Accept::Json);
    }
    for item in v.split(',') {
        let media = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/vnd.pgrst.object+json" | "application/vnd.pgrst.object" => {
                return Ok(Accept::Object)
            }
            "application/json"
            | "application/vnd.pgrst.array+json"
            | "application/openapi+json"
            | "application/*"
            | "*/*" => return Ok(Accept::Json),
            _ => {}
        }
    }
    Err(ApiError::api(
        StatusCode::NOT_ACCEPTABLE,
        "PGRST107",
        format!("None of these media types are available: {v}"),
    ))
}

/// Read the body, at most `limit` bytes. A larger body is drained (so the client gets to
/// read our answer) and refused with 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::api(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ME413",
            format!("The request body is larger than {limit} bytes"),
        )
    };
    let mut body = body;
    let mut buf = Vec::new();
    let mut over = false;
    let mut drained = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::api(
                StatusCode::BAD_REQUEST,
                "PGRST102",
                format!("Could not read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if over {
                drained += data.len();
                // Give up draining a hostile stream; the connection will be closed.
                if drained > limit.saturating_mul(16) {
                    return Err(too_large());
                }
                continue;
            }
            if buf.len() + data.len() > limit {
                over = true;
                buf = Vec::new();
                continue;
            }
            buf.extend_from_slice(&data);
        }
    }
    if over {
        return Err(too_large());
    }
    Ok(Bytes::from(buf))
}

/// The first element of a JSON array, as its exact text (no number is re-encoded).
pub fn first_element(array: &str) -> Result<String, ApiError> {
    let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(array)
        .map_err(|e| ApiError::Internal(format!("result is not a JSON array: {e}")))?;
    items
        .first()
        .map(|v| v.get().to_string())
        .ok_or_else(|| ApiError::Internal("empty result".into()))
}

/// A 200/206 JSON answer with `Content-Range`.
pub fn json_response(
    status: StatusCode,
    body: String,
    range: &str,
    content_type: &'static str,
) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(range) {
        h.insert("content-range", v);
    }
    resp
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_accept() {
        let mut h = HeaderMap::new();
        assert!(check_profile(&h).is_ok());
        h.insert("accept-profile", "public".parse().unwrap());
        h.insert("content-profile", "mec".parse().unwrap());
        assert!(check_profile(&h).is_ok());
        h.insert("accept-profile", "mec_data".parse().unwrap());
        assert_eq!(
            check_profile(&h).unwrap_err().status(),
            StatusCode::NOT_ACCEPTABLE
        );

        let mut h = HeaderMap::new();
        assert_eq!(negotiate(&h).unwrap(), Accept::Json);
        h.insert(
            header::ACCEPT,
            "application/vnd.pgrst.object+json".parse().unwrap(),
        );
        assert_eq!(negotiate(&h).unwrap(), Accept::Object);
        h.insert(header::ACCEPT, "text/csv".parse().unwrap());
        assert!(negotiate(&h).is_err());
        h.insert(header::ACCEPT, "text/html, */*;q=0.8".parse().unwrap());
        assert_eq!(negotiate(&h).unwrap(), Accept::Json);
    }

    #[test]
    fn first_element_keeps_number_text() {
        assert_eq!(
            first_element(r#"[{"q": 12345678901234567890.123456789}, 2]"#).unwrap(),
            r#"{"q": 12345678901234567890.123456789}"#
        );
        assert!(first_element("[]").is_err());
    }

    #[tokio::test]
    async fn body_limit() {
        let b = read_body(Body::from(vec![b'x'; 10]), 10).await.unwrap();
        assert_eq!(b.len(), 10);
        let e = read_body(Body::from(vec![b'x'; 11]), 10).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
