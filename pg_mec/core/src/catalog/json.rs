//! Readers for JSON values that record a [`Problem`](super::Problem) instead of failing.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::problem::{key_path, Problems};

/// How a value's JSON type reads in a message: "a string", "null", …
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The object `v`, or a problem saying `v` should be one.
pub(crate) fn object<'a>(
    v: &'a Value,
    path: &str,
    probs: &mut Problems,
) -> Option<&'a Map<String, Value>> {
    let obj = v.as_object();
    if obj.is_none() {
        probs.push(path, format!("must be an object, not {}", type_name(v)));
    }
    obj
}

/// Records a problem for every key of `obj` not in `allowed`, suggesting the closest allowed key.
pub(crate) fn check_keys(
    obj: &Map<String, Value>,
    allowed: &[&str],
    path: &str,
    probs: &mut Problems,
) {
    for key in obj.keys().filter(|k| !allowed.contains(&k.as_str())) {
        let hint = match suggest(key, allowed) {
            Some(s) => format!(" (did you mean '{s}'?)"),
            None => format!(" (expected one of: {})", allowed.join(", ")),
        };
        probs.push(&key_path(path, key), format!("unknown key '{key}'{hint}"));
    }
}

/// Records a problem when `obj` lacks `key`; returns the value when present.
pub(crate) fn required<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
    probs: &mut Problems,
) -> Option<&'a Value> {
    let v = obj.get(key);
    if v.is_none() {
        probs.push(path, format!("missing required key '{key}'"));
    }
    v
}

/// The non-empty string at `obj[key]` when present; a problem when it is not a non-empty string.
pub(crate) fn opt_string(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    probs: &mut Problems,
) -> Option<String> {
    let v = obj.get(key)?;
    string(v, &key_path(path, key), probs)
}

/// `v` as a non-empty string, or a problem.
pub(crate) fn string(v: &Value, path: &str, probs: &mut Problems) -> Option<String> {
    match v.as_str() {
        Some(s) if !s.is_empty() => Some(s.to_owned()),
        Some(_) => {
            probs.push(path, "must not be empty");
            None
        }
        None => {
            probs.push(path, format!("must be a string, not {}", type_name(v)));
            None
        }
    }
}

/// `v` as a string parsed with `FromStr`, or a problem quoting the parse error.
pub(crate) fn parsed<T>(v: &Value, path: &str, probs: &mut Problems) -> Option<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let Some(s) = v.as_str() else {
        probs.push(path, format!("must be a string, not {}", type_name(v)));
        return None;
    };
    match s.parse() {
        Ok(t) => Some(t),
        Err(e) => {
            probs.push(path, e.to_string());
            None
        }
    }
}

/// `v` as a boolean, or a problem.
pub(crate) fn boolean(v: &Value, path: &str, probs: &mut Problems) -> Option<bool> {
    let b = v.as_bool();
    if b.is_none() {
        probs.push(path, format!("must be true or false, not {}", type_name(v)));
    }
    b
}

/// Whether `s` is a plain decimal literal: `-?[0-9]+(\.[0-9]+)?`.
fn is_decimal_literal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    all_digits(int) && frac.is_none_or(all_digits)
}

/// `v` as a decimal: a JSON number or a decimal string such as `"29.00"`; otherwise a problem.
pub(crate) fn decimal(v: &Value, path: &str, probs: &mut Problems) -> Option<Decimal> {
    let parsed = match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Decimal::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(Decimal::from(u))
            } else {
                let s = n.to_string();
                Decimal::from_str(&s).or_else(|_| Decimal::from_scientific(&s))
            }
        }
        Value::String(s) if is_decimal_literal(s) => Decimal::from_str(s),
        Value::String(s) => {
            probs.push(
                path,
                format!("must be a number or a decimal string like \"29.00\", not \"{s}\""),
            );
            return None;
        }
        other => {
            probs.push(
                path,
                format!(
                    "must be a number or a decimal string, not {}",
                    type_name(other)
                ),
            );
            return None;
        }
    };
    match parsed {
        Ok(d) => Some(d),
        Err(_) => {
            probs.push(path, format!("number {v} is out of range"));
            None
        }
    }
}

/// Like [`decimal`], and also a problem when the value is negative (or a string with a sign).
pub(crate) fn non_negative(v: &Value, path: &str, probs: &mut Problems) -> Option<Decimal> {
    let d = decimal(v, path, probs)?;
    // "-0" as a string is refused like any other signed string; a JSON number -0 is just zero.
    let signed_string = v.as_str().is_some_and(|s| s.starts_with('-'));
    if signed_string || (d.is_sign_negative() && !d.is_zero()) {
        probs.push(path, format!("must be >= 0, not {d}"));
        return None;
    }
    Some(d)
}

/// Whether `s` is a valid resource type: `^[a-z][a-z0-9_]{0,62}$`.
pub(crate) fn is_resource_type(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Whether `s` is a valid plan id: `^[a-z0-9][a-z0-9_.-]{0,62}$`.
pub(crate) fn is_plan_id(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
}

/// The entry of `candidates` closest to `word` by edit distance, if it is close enough to be a typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(&word.to_lowercase(), c), *c))
        .filter(|(dist, c)| *dist <= 2.max(c.len() / 4))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = above;
        }
    }
    row[b.len()]
}

/// Most values one list of names (dimension values, tasks) may hold.
pub(crate) const MAX_NAMES: usize = 256;

/// A list of 1 to [`MAX_NAMES`] distinct non-empty strings, or problems.
pub(crate) fn string_list(v: &Value, path: &str, probs: &mut Problems) -> Option<Vec<String>> {
    let Some(items) = v.as_array() else {
        probs.push(
            path,
            format!("must be an array of strings, not {}", type_name(v)),
        );
        return None;
    };
    if items.is_empty() || items.len() > MAX_NAMES {
        probs.push(path, format!("must list 1 to {MAX_NAMES} values"));
        return None;
    }
    let before = probs.len();
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = super::problem::index_path(path, i);
        if let Some(s) = string(item, &at, probs) {
            if out.contains(&s) {
                probs.push(&at, format!("'{s}' is listed twice"));
            } else {
                out.push(s);
            }
        }
    }
    (probs.len() == before).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run<T>(f: impl FnOnce(&mut Problems) -> T) -> (T, Vec<String>) {
        let mut p = Problems::default();
        let t = f(&mut p);
        (t, p.into_vec().into_iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn decimals() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        for (v, want) in [
            (json!(29), "29"),
            (json!("29.00"), "29.00"),
            (json!(0.1), "0.1"),
            (json!(-3), "-3"),
            (json!("-3.5"), "-3.5"),
            (json!(1e20), "100000000000000000000"),
            (json!(1.5e-7), "0.00000015"),
            (json!(u64::MAX), "18446744073709551615"),
        ] {
            let (got, probs) = run(|p| decimal(&v, "$.x", p));
            assert_eq!(got, Some(d(want)), "{v}");
            assert!(probs.is_empty());
        }
        for v in [
            json!("1e3"),
            json!("abc"),
            json!(" 1"),
            json!("1."),
            json!(".5"),
            json!(""),
            json!(true),
            json!(null),
            json!([1]),
            json!(1e40),
            json!("123456789012345678901234567890123"),
        ] {
            let (got, probs) = run(|p| decimal(&v, "$.x", p));
            assert_eq!(got, None, "{v}");
            assert_eq!(probs.len(), 1, "{v}");
            assert!(probs[0].starts_with("$.x: "));
        }
        let (got, probs) = run(|p| non_negative(&json!(-1), "$.x", p));
        assert_eq!(got, None);
        assert_eq!(probs, vec!["$.x: must be >= 0, not -1"]);
        let (got, _) = run(|p| non_negative(&json!("-0.0"), "$.x", p));
        assert!(got.is_none());
        let (got, probs) = run(|p| non_negative(&json!(-0.0), "$.x", p));
        assert!(got.is_some() && probs.is_empty());
    }

    #[test]
    fn identifiers() {
        assert!(is_resource_type("api_requests"));
        assert!(is_resource_type("a"));
        assert!(is_resource_type(&"a".repeat(63)));
        assert!(!is_resource_type(&"a".repeat(64)));
        for bad in ["", "1abc", "_x", "Api", "a-b", "a.b", "a b", "é"] {
            assert!(!is_resource_type(bad), "{bad}");
        }
        assert!(is_plan_id("free"));
        assert!(is_plan_id("2026.pro-v2_x"));
        assert!(!is_plan_id(&"a".repeat(64)));
        for bad in ["", "-x", ".x", "_x", "Pro", "a b", "a/b"] {
            assert!(!is_plan_id(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_with_suggestions() {
        let obj = json!({"limt": 1, "limit": 2, "zzzzzz": 3});
        let (_, probs) =
            run(|p| check_keys(obj.as_object().unwrap(), &["limit", "period"], "$.e", p));
        assert_eq!(
            probs,
            vec![
                "$.e.limt: unknown key 'limt' (did you mean 'limit'?)",
                "$.e.zzzzzz: unknown key 'zzzzzz' (expected one of: limit, period)",
            ]
        );
        assert_eq!(
            suggest("enforcment", &["enforcement", "grace"]),
            Some("enforcement")
        );
        assert_eq!(suggest("Period", &["period"]), Some("period"));
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn strings_and_booleans() {
        let obj = json!({"a": "x", "b": "", "c": 3});
        let o = obj.as_object().unwrap();
        let (v, probs) = run(|p| {
            (
                opt_string(o, "a", "$", p),
                opt_string(o, "b", "$", p),
                opt_string(o, "c", "$", p),
                opt_string(o, "d", "$", p),
            )
        });
        assert_eq!(v, (Some("x".to_owned()), None, None, None));
        assert_eq!(
            probs,
            vec![
                "$.b: must not be empty",
                "$.c: must be a string, not a number"
            ]
        );
        let (b, probs) = run(|p| boolean(&json!("yes"), "$.d", p));
        assert_eq!(b, None);
        assert_eq!(probs, vec!["$.d: must be true or false, not a string"]);
        let (r, probs) = run(|p| required(o, "zz", "$", p));
        assert!(r.is_none());
        assert_eq!(probs, vec!["$: missing required key 'zz'"]);
        let (e, probs) = run(|p| parsed::<crate::Period>(&json!("weekly"), "$.p", p));
        assert!(e.is_none());
        assert!(probs[0].contains("weekly"));
        let one = json!(1);
        let (_, probs) = run(|p| object(&one, "$.o", p).is_some());
        assert_eq!(probs, vec!["$.o: must be an object, not a number"]);
    }
}
