//! One error type for every handler, rendered the way PostgREST renders errors.
//!
//! The body is always a JSON object `{code, message, details, hint}`. `ME429` (limit
//! reached) and `ME402` (payment overdue) are additionally RFC 9457 problem documents, `ME429` with the IETF RateLimit
//! headers. 5xx bodies never carry the cause: the cause travels in a response
//! extension ([`ErrorCause`]) and is logged by the metrics middleware.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub mod problem;

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

pub(crate) fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: &Value,
) -> Response {
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
                    return problem::rate_limited(&err, instance.as_deref());
                }
                if err.code == "ME402" {
                    return problem::payment_required(&err, instance.as_deref());
                }
                if status.is_server_error() {
                    // A timeout, a lock not granted, a serialization failure or a deadlock says
                    // nothing internal and is worth retrying: say so. Other server errors stay masked.
                    let retryable =
                        matches!(err.code.as_str(), "57014" | "55P03" | "40001" | "40P01");
                    let message = if status == StatusCode::SERVICE_UNAVAILABLE {
                        "Database unavailable"
                    } else if retryable {
                        err.message.as_str()
                    } else {
                        "Internal server error"
                    };
                    let hint = retryable.then_some(
                        "Retry the request; with the same idempotency key it is recorded once.",
                    );
                    let mut resp = json_response(
                        status,
                        JSON,
                        &pgrst_body(Some(&err.code), message, None, hint),
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
}
