//! `billable_statuses` lists, at the top level and per resource.

use serde_json::Value;

use super::problem::{index_path, Problems};
use crate::billing::StatusClass;

/// Parses an array of status classes (`"2xx"`, `422`, `"422"`); a problem for each bad entry.
///
/// An empty array is valid: no event that carries an HTTP status is billable.
pub(crate) fn status_list(v: &Value, path: &str, probs: &mut Problems) -> Option<Vec<StatusClass>> {
    let Some(items) = v.as_array() else {
        probs.push(
            path,
            "must be an array of HTTP status classes such as [\"2xx\", 422]",
        );
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match StatusClass::from_json(item) {
            Ok(c) => {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
            Err(e) => {
                probs.push(&index_path(path, i), e.to_string());
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists() {
        let mut p = Problems::default();
        assert_eq!(
            status_list(&json!(["2xx", 422, "422"]), "$.b", &mut p),
            Some(vec![StatusClass::Class(2), StatusClass::Exact(422)])
        );
        assert_eq!(status_list(&json!([]), "$.b", &mut p), Some(vec![]));
        assert!(p.is_empty());
        assert_eq!(status_list(&json!(["2xx", "7xx", 99]), "$.b", &mut p), None);
        assert_eq!(status_list(&json!("2xx"), "$.b", &mut p), None);
        let v = p.into_vec();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].path, "$.b[1]");
        assert_eq!(v[1].path, "$.b[2]");
        assert_eq!(v[2].path, "$.b");
    }
}
