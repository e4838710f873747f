//! RFC 9457 problem documents for limit denials (`ME429`, with the IETF RateLimit headers of
//! draft-ietf-httpapi-ratelimit-headers derived from the violated policies) and payment denials
//! (`ME402`).

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::{json_response, PgErrorInfo};

const PROBLEM: &str = "application/problem+json";

/// One violated policy from the `ME429` DETAIL JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub policy: String,
    pub limit: Option<f64>,
    /// Where the caller is refused: the limit plus grace or overage cap (pg_mec's `ceiling`).
    pub ceiling: Option<f64>,
    pub current: Option<f64>,
    /// The window's length in seconds: `window_seconds`, else a numeric `window` (rates).
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
                        ceiling: num(p.get("ceiling")),
                        current: num(p.get("current")),
                        window: num(p.get("window_seconds")).or_else(|| num(p.get("window"))),
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
/// relative to `now`: `q` is the quota the caller is actually refused at (the ceiling: limit plus
/// grace or overage cap; the limit when there is none), `r` what is left of it, `w` the window's
/// length in seconds, `t` the seconds to its reset. Retry-After is the latest reset among the
/// violations, at least 1 s.
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
        let quota = v.ceiling.or(v.limit);
        let mut p = name.clone();
        if let Some(q) = quota {
            p.push_str(&format!(";q={}", q.max(0.0).floor() as u64));
        }
        if let Some(w) = v.window.filter(|w| *w > 0.0) {
            p.push_str(&format!(";w={}", w.ceil() as u64));
        }
        policies.push(p);
        let mut st = name;
        if let Some(q) = quota {
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

pub(super) fn rate_limited(err: &PgErrorInfo, instance: Option<&str>) -> Response {
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

/// `ME402`: the account is overdue and its namespace blocks overdue accounts.
pub(super) fn payment_required(err: &PgErrorInfo, instance: Option<&str>) -> Response {
    let details: Value = err
        .details
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    let body = json!({
        "type": "urn:pg-mec:problem:payment-overdue",
        "title": "Payment required",
        "status": 402,
        "detail": err.message,
        "instance": instance,
        "account_id": details.get("account_id"),
        "code": err.code,
        "message": err.message,
        "details": err.details,
        "hint": err.hint,
    });
    json_response(StatusCode::PAYMENT_REQUIRED, PROBLEM, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_capped_monthly_quota_says_where_it_refuses() {
        // limit 100, overage cap 50: refused past 150, over a 30-day month.
        let detail = r#"{"violated_policies":[{"policy":"benchmark_runs","limit":100,"ceiling":150,"current":150,"window":"month","window_seconds":2592000,"reset_at":"2026-12-01T00:00:00Z"}]}"#;
        let (v, _) = parse_violations(Some(detail));
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-30T23:00:00Z")
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
            "\"benchmark_runs\";q=150;w=2592000"
        );
        assert_eq!(get("ratelimit").unwrap(), "\"benchmark_runs\";r=0;t=3600");
        assert_eq!(get("retry-after").unwrap(), "3600");
    }

    #[test]
    fn retry_after_at_least_one() {
        let v = vec![Violation {
            policy: "x\"y".into(),
            limit: Some(1.0),
            ceiling: None,
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
