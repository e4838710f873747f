//! Which HTTP statuses make a metered event billable (`billable_statuses` in the catalog).
//!
//! A status class is written `"2xx"` (every status from 200 to 299) or as an exact status such as
//! `422` or `"422"`. The default is `["2xx", 422]`.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use serde_json::Value;
use thiserror::Error;

/// A set of HTTP statuses: one exact status, or a whole class such as `2xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// One status, 100..=599.
    Exact(u16),
    /// Every status whose first digit is this (1..=5), written `"Nxx"`.
    Class(u8),
}

/// A value that is not a valid status class.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid HTTP status class {0}: expected a status 100..=599 (422 or \"422\") or a class \"1xx\"..\"5xx\"")]
pub struct StatusClassError(pub String);

impl StatusClass {
    /// Whether `status` belongs to this class.
    pub fn matches(&self, status: i32) -> bool {
        match *self {
            StatusClass::Exact(s) => i32::from(s) == status,
            StatusClass::Class(c) => (100..=599).contains(&status) && status / 100 == i32::from(c),
        }
    }

    /// Parses a JSON value: an integer 100..=599 (`200.0` counts), or a string `"422"` / `"2xx"`
    /// (`X` also accepted).
    pub fn from_json(value: &Value) -> Result<Self, StatusClassError> {
        match value {
            Value::Number(n) => n
                .as_u64()
                // 200.0 is an integer to JSON Schema too
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && (0.0..1000.0).contains(f))
                        .map(|f| f as u64)
                })
                .and_then(|v| u16::try_from(v).ok())
                .filter(|v| (100..=599).contains(v))
                .map(StatusClass::Exact)
                .ok_or_else(|| StatusClassError(n.to_string())),
            Value::String(s) => s.parse(),
            other => Err(StatusClassError(other.to_string())),
        }
    }

    /// The JSON form: `"2xx"` for a class, the number for an exact status.
    pub fn to_json(&self) -> Value {
        match *self {
            StatusClass::Exact(s) => Value::from(s),
            StatusClass::Class(c) => Value::from(format!("{c}xx")),
        }
    }
}

impl FromStr for StatusClass {
    type Err = StatusClassError;

    /// Parses `"422"` (exact, 100..=599) or `"2xx"` / `"2XX"` (class 1..=5).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || StatusClassError(format!("\"{s}\""));
        let b = s.as_bytes();
        if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
            return Err(err());
        }
        let first = b[0] - b'0';
        if b[1..].iter().all(|c| *c == b'x' || *c == b'X') {
            return Ok(StatusClass::Class(first));
        }
        if b[1..].iter().all(u8::is_ascii_digit) {
            let v = u16::from(first) * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
            return Ok(StatusClass::Exact(v));
        }
        Err(err())
    }
}

impl fmt::Display for StatusClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusClass::Exact(s) => write!(f, "{s}"),
            StatusClass::Class(c) => write!(f, "{c}xx"),
        }
    }
}

impl Serialize for StatusClass {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            StatusClass::Exact(s) => serializer.serialize_u16(s),
            StatusClass::Class(c) => serializer.collect_str(&format_args!("{c}xx")),
        }
    }
}

/// The default billable statuses: `["2xx", 422]`.
pub fn default_billable() -> Vec<StatusClass> {
    vec![StatusClass::Class(2), StatusClass::Exact(422)]
}

/// Whether an event with `http_status` is billable under `classes`.
///
/// No status (`None`) is always billable; with a status, it must match one of `classes` (an empty
/// list makes every event that carries a status non-billable).
pub fn is_billable(classes: &[StatusClass], http_status: Option<i32>) -> bool {
    match http_status {
        None => true,
        Some(status) => classes.iter().any(|c| c.matches(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_json_values() {
        assert_eq!(
            StatusClass::from_json(&json!("2xx")),
            Ok(StatusClass::Class(2))
        );
        assert_eq!(
            StatusClass::from_json(&json!("5XX")),
            Ok(StatusClass::Class(5))
        );
        assert_eq!(
            StatusClass::from_json(&json!(422)),
            Ok(StatusClass::Exact(422))
        );
        assert_eq!(
            StatusClass::from_json(&json!("422")),
            Ok(StatusClass::Exact(422))
        );
        assert_eq!(
            StatusClass::from_json(&json!(200.0)),
            Ok(StatusClass::Exact(200))
        );
        for bad in [
            json!("6xx"),
            json!("0xx"),
            json!("2x"),
            json!("2x2"),
            json!("099"),
            json!(99),
            json!(600),
            json!(-200),
            json!(200.5),
            json!(true),
            json!(null),
            json!(""),
            json!("abc"),
            json!("２xx"),
        ] {
            assert!(StatusClass::from_json(&bad).is_err(), "{bad}");
        }
        let msg = StatusClass::from_json(&json!("6xx"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"6xx\""), "{msg}");
    }

    #[test]
    fn print_and_serialize() {
        assert_eq!(StatusClass::Class(2).to_string(), "2xx");
        assert_eq!(StatusClass::Exact(422).to_string(), "422");
        assert_eq!(
            serde_json::to_value(default_billable()).unwrap(),
            json!(["2xx", 422])
        );
        assert_eq!(StatusClass::Class(4).to_json(), json!("4xx"));
        assert_eq!(StatusClass::Exact(201).to_json(), json!(201));
    }

    #[test]
    fn matching() {
        let classes = default_billable();
        assert!(is_billable(&classes, None));
        assert!(is_billable(&classes, Some(200)));
        assert!(is_billable(&classes, Some(299)));
        assert!(is_billable(&classes, Some(422)));
        assert!(!is_billable(&classes, Some(300)));
        assert!(!is_billable(&classes, Some(404)));
        assert!(!is_billable(&classes, Some(500)));
        assert!(!is_billable(&classes, Some(-200)));
        assert!(!is_billable(&[], Some(200)));
        assert!(is_billable(&[], None));
        assert!(!StatusClass::Class(2).matches(2000));
    }
}
