//! One error type for every handler, rendered the way PostgREST renders errors.
//!
//! The body is always a JSON object `{code, message, details, hint}`. `ME429` (limit
//! reached) is additionally an RFC 9457 problem document with the IETF RateLimit
//! headers. 5xx bodies never carry the cause: the cause travels in a response
//! extension ([`ErrorCause`]) and is logged by the metrics middleware.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The cause of a 5xx answer, attached to the response for the logging middleware.
#[derive(Clone, Debug)]
pub struct ErrorCause(pub String);

/// A Postgres error reduced to what the HTTP layer needs.
#[derive(Clone, Debug)]
pub struct PgErrorInfo {
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A gateway-generated error with PostgREST's shape (PGRSTxxx and friends).
    #[error("{code}: {message}")]
    Api {
        status: StatusCode,
        code: &'static str,
        message: String,
        details: Option<String>,
        hint: Option<String>,
    },
    /// Missing, malformed, expired or otherwise unacceptable JWT.
    #[error("{code}: {message}")]
    Unauthorized {
        code: &'static str,
        message: String,
        /// `None` → plain `WWW-Authenticate: Bearer` (no token sent).
        description: Option<String>,
    },
    /// An error raised by Postgres while serving the request.
    #[error("database error {}: {}", .err.code, .err.message)]
    Db {
        err: PgErrorInfo,
        /// Request path, used as the RFC 9457 `instance`.
        instance: Option<String>,
    },
    /// The database cannot be reached (connection refused, closed, pool exhausted).
    #[error("database unavailable: {cause}")]
    Unavailable {
        status: StatusCode,
        code: &'static str,
        message: &'static str,
        cause: String,
    },
    /// Anything else: a bug or an unexpected state. Logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn api(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Api {
            status,
            code,
            message: message.into(),
            details: None,
            hint: None,
        }
    }

    pub fn with_details(mut self, d: impl Into<String>) -> Self {
        if let ApiError::Api { details, .. } = &mut self {
            *details = Some(d.into());
        }
        self
    }

    pub fn with_hint(mut self, h: impl Into<String>) -> Self {
        if let ApiError::Api { hint, .. } = &mut self {
            *hint = Some(h.into());
        }
        self
    }

    /// Attach the request path as the problem `instance` of a database error.
    pub fn with_instance(mut self, path: &str) -> Self {
        if let ApiError::Db { instance, .. } = &mut self {
            *instance = Some(path.to_string());
        }
        self
    }

    /// 400 PGRST100: the query string could not be parsed.
    pub fn bad_query(message: impl Into<String>) -> Self {
        Self::api(StatusCode::BAD_REQUEST, "PGRST100", message)
    }

    /// A gateway-side error that has a SQLSTATE of its own (e.g. 42703 for an unknown column).
    pub fn sqlstate(code: &str, message: impl Into<String>, hint: Option<String>) -> Self {
        ApiError::Db {
            err: PgErrorInfo {
                code: code.to_string(),
                message: message.into(),
                details: None,
                hint,
            },
            instance: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Api { status, .. } => *status,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Db { err, .. } => status_for_sqlstate(&err.code),
            ApiError::Unavailable { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => ApiError::Db {
                err: PgErrorInfo {
                    code: db.code().code().to_string(),
                    message: db.message().to_string(),
                    details: db.detail().map(str::to_string),
                    hint: db.hint().map(str::to_string),
                },
                instance: None,
            },
            None => ApiError::Unavailable {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "PGRST001",
                message: "Database client error. Retrying the connection.",
                cause: e.to_string(),
            },
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match e {
            PoolError::Backend(pg) => match pg.as_db_error() {
                // e.g. 28P01 / 3D000 / 57P03 while connecting: still "unavailable" to the caller.
                Some(_) | None => ApiError::Unavailable {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "PGRST000",
                    message: "Database connection error. Retrying the connection.",
                    cause: pg.to_string(),
                },
            },
            PoolError::Timeout(t) => ApiError::Unavailable {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "PGRST003",
                message: "Timed out acquiring connection from connection pool.",
                cause: format!("pool timeout: {t:?}"),
            },
            other => ApiError::Unavailable {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "PGRST000",
                message: "Database connection error. Retrying the connection.",
                cause: other.to_string(),
            },
        }
    }
}

/// SQLSTATE → HTTP status, PostgREST v12's table (`../shared/docs/POSTGREST.md` §4) plus our
/// extension `MEnnn` → `nnn` and the contract's `P0002` → 404.
///
/// Every request that reaches the database carries a JWT role, so `42501` is 403.
pub fn status_for_sqlstate(code: &str) -> StatusCode {
    let s = |n: u16| StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let class = code.get(..2).unwrap_or("");
    // PTnnn and MEnnn carry their status in the digits.
    if (class == "PT" || class == "ME") && code.len() == 5 {
        if let Ok(n) = code[2..].parse::<u16>() {
            if (100..=599).contains(&n) {
                return s(n);
            }
        }
        return s(500);
    }
    match code {
        "21000" | "42P17" | "53400" => return s(500),
        "23503" | "23505" => return s(409),
        "25006" => return s(405),
        "42883" | "42P01" => return s(404),
        "42501" => return s(403),
        "57P01" => return s(503),
        "P0001" => return s(400),
        "P0002" => return s(404),
        _ => {}
    }
    match class {
        "08" | "53" => s(503),
        "09" => s(500),
        "0L" | "0P" | "28" => s(403),
        "25" | "2D" | "38" | "39" | "3B" | "40" => s(500),
        "54" | "55" | "57" | "58" | "F0" | "HV" | "XX" | "P0" => s(500),
        _ => s(400),
    }
}

fn json_response(status: StatusCode, content_type: &'static str, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn pgrst_body(
    code: Option<&str>,
    message: &str,
    details: Option<&str>,
    hint: Option<&str>,
) -> Value {
    json!({"code": code, "message": message, "details": details, "hint": hint})
}

const JSON: &str = "application/json; charset=utf-8";
const PROBLEM: &str = "application/problem+json";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            ApiError::Api {
                code,
                message,
                details,
                hint,
                ..
            } => json_response(
                status,
                JSON,
                &pgrst_body(Some(code), &message, details.as_deref(), hint.as_deref()),
            ),
            ApiError::Unauthorized {
                code,
                message,
                description,
            } => {
                let mut resp =
                    json_response(status, JSON, &pgrst_body(Some(code), &message, None, None));
                let www = match description {
                    None => "Bearer".to_string(),
                    Some(d) => format!(
                        "Bearer error=\"invalid_token\", error_description=\"{}\"",
                        d.replace(['"', '\\'], "'")
                    ),
                };
                if let Ok(v) = HeaderValue::from_str(&www) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                resp
            }
            ApiError::Db { err, instance } => {
                if err.code == "ME429" {
                    return rate_limited(&err, instance.as_deref());
                }
                if status.is_server_error() {
                    let message = if status == StatusCode::SERVICE_UNAVAILABLE {
                        "Database unavailable"
                    } else {
                        "Internal server error"
                    };
                    let mut resp = json_response(
                        status,
                        JSON,
                        &pgrst_body(Some(&err.code), message, None, None),
                    );
                    resp.extensions_mut().insert(ErrorCause(format!(
                        "{}: {} (detail: {:?}, hint: {:?})",
                        err.code, err.message, err.details, err.hint
                    )));
                    return resp;
                }
                json_response(
                    status,
                    JSON,
                    &pgrst_body(
                        Some(&err.code),
                        &err.message,
                        err.details.as_deref(),
                        err.hint.as_deref(),
                    ),
                )
            }
            ApiError::Unavailable {
                code,
                message,
                cause,
                ..
            } => {
                let mut resp =
                    json_response(status, JSON, &pgrst_body(Some(code), message, None, None));
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp.extensions_mut().insert(ErrorCause(cause));
                resp
            }
            ApiError::Internal(cause) => {
                let mut resp = json_response(
                    status,
                    JSON,
                    &pgrst_body(None, "Internal server error", None, None),
                );
                resp.extensions_mut().insert(ErrorCause(cause));
                resp
            }
        }
    }
}

/// One violated policy from the `ME429` DETAIL JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub policy: String,
    pub limit: Option<f64>,
    pub current: Option<f64>,
    pub window: Option<f64>,
    pub reset_at: Option<chrono::DateTime<chrono::FixedOffset>>,
}

fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parse a timestamp as Postgres writes it to JSON (`2026-12-01T00:00:00+00:00`) or as
/// text (`2026-12-01 00:00:00+00`).
pub fn parse_timestamp(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t);
    }
    let t = s.replacen(' ', "T", 1);
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&t) {
        return Some(t);
    }
    // "+00" offsets without minutes.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(&t, fmt) {
            return Some(t);
        }
    }
    None
}

/// Parse `{"violated_policies":[{policy, limit, current, window, reset_at}]}`.
/// Returns the raw array too so the problem document can echo it unchanged.
pub fn parse_violations(detail: Option<&str>) -> (Vec<Violation>, Value) {
    let Some(v) = detail.and_then(|d| serde_json::from_str::<Value>(d).ok()) else {
        return (Vec::new(), json!([]));
    };
    let raw = v
        .get("violated_policies")
        .cloned()
        .filter(Value::is_array)
        .unwrap_or_else(|| json!([]));
    let list = raw
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let policy = match p.get("policy") {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) if !other.is_null() => other.to_string(),
                        _ => "default".to_string(),
                    };
                    p.is_object().then(|| Violation {
                        policy,
                        limit: num(p.get("limit")),
                        current: num(p.get("current")),
                        window: num(p.get("window")),
                        reset_at: p
                            .get("reset_at")
                            .and_then(Value::as_str)
                            .and_then(parse_timestamp),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    (list, raw)
}

/// A structured-field string (RFC 8941 §3.3.3): printable ASCII, `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// Build the `RateLimit-Policy`, `RateLimit` and `Retry-After` values for the violations,
/// relative to `now`. Retry-After is the latest reset among the violations, at least 1 s.
pub fn rate_limit_headers(
    violations: &[Violation],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(HeaderName, String)> {
    let mut policies = Vec::new();
    let mut states = Vec::new();
    let mut retry: Option<i64> = None;
    for v in violations {
        let name = sf_string(&v.policy);
        let reset = v.reset_at.map(|r| {
            let secs = (r.with_timezone(&chrono::Utc) - now).num_milliseconds();
            ((secs + 999) / 1000).max(1)
        });
        let mut p = name.clone();
        if let Some(q) = v.limit {
            p.push_str(&format!(";q={}", q.max(0.0).floor() as u64));
        }
        if let Some(w) = v.window.filter(|w| *w > 0.0) {
            p.push_str(&format!(";w={}", w.ceil() as u64));
        }
        policies.push(p);
        let mut st = name;
        if let Some(q) = v.limit {
            let r = (q - v.current.unwrap_or(0.0)).max(0.0).floor() as u64;
            st.push_str(&format!(";r={r}"));
        }
        if let Some(t) = reset {
            st.push_str(&format!(";t={t}"));
            retry = Some(retry.map_or(t, |x: i64| x.max(t)));
        }
        states.push(st);
    }
    let mut out = Vec::new();
    if !policies.is_empty() {
        out.push((
            HeaderName::from_static("ratelimit-policy"),
            policies.join(", "),
        ));
        out.push((HeaderName::from_static("ratelimit"), states.join(", ")));
    }
    if let Some(r) = retry {
        out.push((header::RETRY_AFTER, r.to_string()));
    }
    out
}

fn rate_limited(err: &PgErrorInfo, instance: Option<&str>) -> Response {
    let (violations, raw) = parse_violations(err.details.as_deref());
    let body = json!({
        "type": "urn:pg-mec:problem:limit-reached",
        "title": "Limit reached",
        "status": 429,
        "detail": err.message,
        "instance": instance,
        "violated-policies": raw,
        "code": err.code,
        "message": err.message,
        "details": err.details,
        "hint": err.hint,
    });
    let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, PROBLEM, &body);
    let headers: &mut HeaderMap = resp.headers_mut();
    for (name, value) in rate_limit_headers(&violations, chrono::Utc::now()) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_table() {
        let cases = [
            ("08006", 503),
            ("09000", 500),
            ("0L000", 403),
            ("0P000", 403),
            ("28000", 403),
            ("21000", 500),
            ("23503", 409),
            ("23505", 409),
            ("23502", 400),
            ("25006", 405),
            ("25001", 500),
            ("2D000", 500),
            ("38000", 500),
            ("39000", 500),
            ("3B000", 500),
            ("40001", 500),
            ("42883", 404),
            ("42P01", 404),
            ("42P17", 500),
            ("42501", 403),
            ("42703", 400),
            ("53400", 500),
            ("53300", 503),
            ("54000", 500),
            ("55P03", 500),
            ("57P01", 503),
            ("57014", 500),
            ("58030", 500),
            ("F0000", 500),
            ("HV000", 500),
            ("XX000", 500),
            ("P0001", 400),
            ("P0002", 404),
            ("P0003", 500),
            ("PT402", 402),
            ("ME429", 429),
            ("ME404", 404),
            ("ME409", 409),
            ("ME410", 410),
            ("ME422", 422),
            ("22P02", 400),
            ("22023", 400),
            ("3D000", 400),
            ("3F000", 400),
        ];
        for (code, want) in cases {
            assert_eq!(status_for_sqlstate(code).as_u16(), want, "{code}");
        }
    }

    #[test]
    fn violations_and_headers() {
        let detail = r#"{"violated_policies":[{"policy":"rpm","limit":600,"current":600,"window":60,"reset_at":"2026-01-01T00:00:17+00:00"},{"policy":"benchmark_runs/month","limit":100,"current":98.5,"window":null,"reset_at":"2026-01-01 00:00:05+00"}]}"#;
        let (v, raw) = parse_violations(Some(detail));
        assert_eq!(raw.as_array().unwrap().len(), 2);
        assert_eq!(v.len(), 2);
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let h = rate_limit_headers(&v, now);
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("ratelimit-policy").unwrap(),
            "\"rpm\";q=600;w=60, \"benchmark_runs/month\";q=100"
        );
        assert_eq!(
            get("ratelimit").unwrap(),
            "\"rpm\";r=0;t=17, \"benchmark_runs/month\";r=1;t=5"
        );
        assert_eq!(get("retry-after").unwrap(), "17");
    }

    #[test]
    fn retry_after_at_least_one() {
        let v = vec![Violation {
            policy: "x\"y".into(),
            limit: Some(1.0),
            current: Some(1.0),
            window: None,
            reset_at: parse_timestamp("2000-01-01T00:00:00Z"),
        }];
        let h = rate_limit_headers(&v, chrono::Utc::now());
        assert!(h.iter().any(|(k, v)| k == header::RETRY_AFTER && v == "1"));
        assert!(h.iter().any(|(_, v)| v.starts_with("\"x\\\"y\"")));
    }

    #[test]
    fn bad_detail_is_harmless() {
        let (v, raw) = parse_violations(Some("not json"));
        assert!(v.is_empty());
        assert_eq!(raw, json!([]));
        assert!(rate_limit_headers(&v, chrono::Utc::now()).is_empty());
    }
}
