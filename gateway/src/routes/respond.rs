//! How answers are written: JSON bodies with their `Content-Range`, single objects.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

pub const JSON: &str = "application/json; charset=utf-8";
pub const OBJECT: &str = "application/vnd.pgrst.object+json; charset=utf-8";

/// `Content-Range` and status of an answer of `rows` rows from `offset` (PostgREST's
/// RangeQuery): `first-last/total`, the total `*` unless it was counted; `*/total` when empty;
/// 206 when counted and partial, 416 when the offset is past the total. Reads and calls alike.
pub fn content_range(offset: u64, rows: u64, total: Option<u64>) -> (StatusCode, String) {
    let total_s = total.map_or("*".to_string(), |t| t.to_string());
    let range = if rows == 0 {
        format!("*/{total_s}")
    } else {
        format!("{}-{}/{}", offset, offset.saturating_add(rows - 1), total_s)
    };
    let status = match total {
        None => StatusCode::OK,
        Some(t) if offset > t => StatusCode::RANGE_NOT_SATISFIABLE,
        Some(t) if rows < t => StatusCode::PARTIAL_CONTENT,
        Some(_) => StatusCode::OK,
    };
    (status, range)
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

/// 406 PGRST116 for `single()` with anything but one row.
pub fn single_object_error(n: i64) -> ApiError {
    ApiError::api(
        StatusCode::NOT_ACCEPTABLE,
        "PGRST116",
        "JSON object requested, multiple (or no) rows returned",
    )
    .with_details(format!("The result contains {n} rows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            content_range(0, 25, Some(137)),
            (StatusCode::PARTIAL_CONTENT, "0-24/137".into())
        );
        assert_eq!(
            content_range(0, 3, Some(3)),
            (StatusCode::OK, "0-2/3".into())
        );
        assert_eq!(content_range(0, 0, Some(0)), (StatusCode::OK, "*/0".into()));
        assert_eq!(content_range(0, 0, None), (StatusCode::OK, "*/*".into()));
        assert_eq!(content_range(0, 1, None), (StatusCode::OK, "0-0/*".into()));
        assert_eq!(
            content_range(10, 0, Some(3)).0,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
    }

    #[test]
    fn first_element_keeps_number_text() {
        assert_eq!(
            first_element(r#"[{"q": 12345678901234567890.123456789}, 2]"#).unwrap(),
            r#"{"q": 12345678901234567890.123456789}"#
        );
        assert!(first_element("[]").is_err());
    }
}
