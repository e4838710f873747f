//! Problems found in a catalog, each with the JSONPath of the offending value.

use std::fmt;

use serde::Serialize;

/// One thing wrong with a catalog document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// JSONPath of the offending value, e.g. `$.plans[1].entitlements.storage_gb.limit`.
    /// Keys that are not plain identifiers are written `['like this']`.
    pub path: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects problems in document order.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem at `path`.
    pub(crate) fn push(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// The problems recorded so far.
    pub(crate) fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    /// How many problems were recorded so far.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The path of member `key` of the object at `path`: `$.a.key`, or `$.a['odd key']`.
pub(crate) fn key_path(path: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!("{path}.{key}")
    } else {
        let escaped = key.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{path}['{escaped}']")
    }
}

/// The path of element `index` of the array at `path`: `$.a[3]`.
pub(crate) fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(key_path("$", "plans"), "$.plans");
        assert_eq!(index_path("$.plans", 1), "$.plans[1]");
        assert_eq!(
            key_path("$.plans[1].entitlements", "storage_gb"),
            "$.plans[1].entitlements.storage_gb"
        );
        assert_eq!(key_path("$", "$schema"), "$['$schema']");
        assert_eq!(key_path("$", "it's"), "$['it\\'s']");
        assert_eq!(key_path("$", "9lives"), "$['9lives']");
        assert_eq!(key_path("$", ""), "$['']");
    }

    #[test]
    fn collect_and_serialize() {
        let mut p = Problems::default();
        assert!(p.is_empty());
        p.push("$.a", "bad");
        let v = p.into_vec();
        assert_eq!(v[0].to_string(), "$.a: bad");
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!([{"path": "$.a", "message": "bad"}])
        );
    }
}
