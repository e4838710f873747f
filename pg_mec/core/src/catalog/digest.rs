//! A stable digest of a catalog document, to notice that the same catalog is loaded again.

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The canonical JSON text of `doc`: no whitespace, object keys sorted by their UTF-8 bytes,
/// strings and numbers as `serde_json` writes them.
///
/// Independent of key order in the input (and of serde_json's `preserve_order` feature); numbers
/// are kept as written, so `1` and `1.0` stay different.
pub fn canonical_json(doc: &Value) -> String {
    let mut out = String::new();
    write_canonical(doc, &mut out);
    out
}

/// Lowercase hex SHA-256 (64 characters) of [`canonical_json`]`(doc)`.
pub fn digest(doc: &Value) -> String {
    let hash = Sha256::digest(canonical_json(doc).as_bytes());
    let mut hex = String::with_capacity(64);
    for b in hash {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(val, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_keys_recursively() {
        let a: Value = serde_json::from_str(r#"{"b": [ {"y":1,"x":"é\n"} ], "a": null}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":null,"b":[{"x":"é\n","y":1}]}"#);
    }

    #[test]
    fn digest_is_stable_and_order_independent() {
        let a: Value = serde_json::from_str(
            r#"{"plans": [], "resources": [{"kind":"gauge","resource_type":"x"}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"resources":[{"resource_type":"x","kind":"gauge"}],"plans":[]}"#,
        )
        .unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(digest(&a).len(), 64);
        assert!(digest(&a)
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(digest(&a), digest(&json!({"plans": []})));
        // array order matters
        assert_ne!(digest(&json!([1, 2])), digest(&json!([2, 1])));
        // known value: sha256("{}")
        assert_eq!(
            digest(&json!({})),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
