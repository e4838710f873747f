//! The request body: read within its size limit, and a function call's JSON object of named
//! arguments taken apart without re-encoding a value.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body_util::BodyExt;
use serde_json::value::RawValue;

use crate::error::ApiError;

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

/// One argument value as the client sent it.
#[derive(Clone, Debug, PartialEq)]
pub enum Given {
    Null,
    /// A JSON string (POST), unescaped.
    Str(String),
    /// The JSON text of a number, boolean, object or array (POST).
    Raw(String),
    /// A query-string value (GET): passed as is.
    Query(String),
}

pub fn classify(raw: &RawValue) -> Result<Given, ApiError> {
    let text = raw.get().trim();
    Ok(match text.as_bytes().first() {
        Some(b'n') => Given::Null,
        Some(b'"') => Given::Str(serde_json::from_str(text).map_err(|_| invalid_json())?),
        _ => Given::Raw(text.to_string()),
    })
}

pub fn invalid_json() -> ApiError {
    ApiError::api(StatusCode::BAD_REQUEST, "PGRST102", "Empty or invalid json")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn classify_values() {
        let v: HashMap<String, Box<RawValue>> = serde_json::from_str(
            r#"{"a": null, "b": "s\"t", "c": 12345678901234567890.123456789, "d": {"x": [1]}}"#,
        )
        .unwrap();
        assert_eq!(classify(&v["a"]).unwrap(), Given::Null);
        assert_eq!(classify(&v["b"]).unwrap(), Given::Str("s\"t".into()));
        // Numbers keep their exact text (no f64 round trip).
        assert_eq!(
            classify(&v["c"]).unwrap(),
            Given::Raw("12345678901234567890.123456789".into())
        );
        assert_eq!(
            classify(&v["d"]).unwrap(),
            Given::Raw("{\"x\": [1]}".into())
        );
    }

    #[tokio::test]
    async fn body_limit() {
        let b = read_body(Body::from(vec![b'x'; 10]), 10).await.unwrap();
        assert_eq!(b.len(), 10);
        let e = read_body(Body::from(vec![b'x'; 11]), 10).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
