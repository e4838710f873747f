//! `$.resources`: the resource types of a catalog.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::json::{
    check_keys, is_resource_type, object, opt_string, parsed, required, string, string_list,
};
use super::kind::Kind;
use super::problem::{index_path, key_path, Problems};
use super::statuses::status_list;
use crate::billing::StatusClass;

/// Longest allowed rate window: one day.
pub const MAX_WINDOW_SECONDS: u32 = 86_400;

const KEYS: &[&str] = &[
    "resource_type",
    "kind",
    "unit",
    "window_seconds",
    "description",
    "billable_statuses",
    "stripe_meter_event",
    "dimensions",
];
/// Names a dimension may not take (keys of results and requests that carry dimensions).
const RESERVED_DIMENSIONS: &[&str] = &["task", "dimensions", "resource_type", "quantity"];
/// Most dimensions one resource declares.
pub const MAX_DIMENSIONS: usize = 16;

/// Longest Stripe meter event name.
pub const MAX_STRIPE_EVENT_NAME: usize = 100;

/// A resource type declared in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// Its name, `^[a-z][a-z0-9_]{0,62}$`, unique in the catalog.
    pub resource_type: String,
    /// How it is counted.
    pub kind: Kind,
    /// Unit for people, e.g. `"run"` or `"GB"`.
    pub unit: Option<String>,
    /// The sliding window of a `rate` resource, 1..=86400 seconds; `None` for other kinds.
    pub window_seconds: Option<u32>,
    /// Free text.
    pub description: Option<String>,
    /// Billable statuses for this resource, overriding the catalog's; `None` = the catalog's.
    pub billable_statuses: Option<Vec<StatusClass>>,
    /// The `event_name` of the Stripe meter its billable usage is sent to (metered and rate
    /// resources only); `None`: not sent to Stripe.
    pub stripe_meter_event: Option<String>,
    /// Each dimension an event may carry (e.g. `model_class`) with its allowed values; empty: none.
    pub dimensions: Dimensions,
}

/// A resource's dimensions: name → allowed values (in the catalog's order).
pub type Dimensions = BTreeMap<String, Vec<String>>;

/// Each declared resource's dimensions, by resource type.
pub(crate) type DeclaredDimensions = BTreeMap<String, Dimensions>;

/// What plan validation needs to know about declared resource types: each declared name with its
/// kind, or `None` when the declaration itself is broken (its entitlements are then not checked
/// further, to avoid follow-on noise).
pub(crate) type Declared = BTreeMap<String, Option<Kind>>;

/// `$.resources[i].dimensions`: `{"model_class": ["BASE_S", "PRO_M"], ...}`, for metered, rate and
/// gauge resources (the ones events are metered on).
fn dimensions(v: &Value, kind: Option<Kind>, path: &str, probs: &mut Problems) -> Dimensions {
    let mut out = Dimensions::new();
    let Some(obj) = object(v, path, probs) else {
        return out;
    };
    if let Some(k @ (Kind::Feature | Kind::Concurrency)) = kind {
        probs.push(
            path,
            format!("only metered, rate and gauge resources are metered with dimensions, not {k}"),
        );
        return out;
    }
    if obj.len() > MAX_DIMENSIONS {
        probs.push(path, format!("at most {MAX_DIMENSIONS} dimensions"));
    }
    for (name, values) in obj {
        let at = key_path(path, name);
        if !is_resource_type(name) || RESERVED_DIMENSIONS.contains(&name.as_str()) {
            probs.push(
                &at,
                format!(
                    "'{name}' is not a dimension name: use lowercase letters, digits and '_', \
                     starting with a letter (not {})",
                    RESERVED_DIMENSIONS.join(", ")
                ),
            );
            continue;
        }
        if let Some(list) = string_list(values, &at, probs) {
            out.insert(name.clone(), list);
        }
    }
    out
}

/// Validates the `resources` array at `path`.
pub(crate) fn validate(v: &Value, path: &str, probs: &mut Problems) -> (Vec<Resource>, Declared) {
    let mut out = Vec::new();
    let mut declared = Declared::new();
    let mut first_at: BTreeMap<String, String> = BTreeMap::new();
    let Some(items) = v.as_array() else {
        probs.push(path, "must be an array of resource objects");
        return (out, declared);
    };
    if items.is_empty() {
        probs.push(path, "must declare at least one resource");
    }
    for (i, item) in items.iter().enumerate() {
        let at = index_path(path, i);
        let before = probs.len();
        let Some(obj) = object(item, &at, probs) else {
            continue;
        };
        check_keys(obj, KEYS, &at, probs);

        let name = required(obj, "resource_type", &at, probs)
            .and_then(|n| string(n, &key_path(&at, "resource_type"), probs))
            .filter(|n| {
                let ok = is_resource_type(n);
                if !ok {
                    probs.push(
                        &key_path(&at, "resource_type"),
                        format!(
                            "'{n}' is not a valid resource_type: use lowercase letters, digits and \
                             '_', starting with a letter, at most 63 characters"
                        ),
                    );
                }
                ok
            });
        let kind: Option<Kind> = required(obj, "kind", &at, probs)
            .and_then(|k| parsed(k, &key_path(&at, "kind"), probs));
        let unit = opt_string(obj, "unit", &at, probs);
        let description = opt_string(obj, "description", &at, probs);
        let window_seconds = window(obj.get("window_seconds"), kind, &at, probs);
        let billable_statuses = obj
            .get("billable_statuses")
            .and_then(|b| status_list(b, &key_path(&at, "billable_statuses"), probs));
        let stripe_meter_event = opt_string(obj, "stripe_meter_event", &at, probs).filter(|e| {
            let path = key_path(&at, "stripe_meter_event");
            if e.chars().count() > MAX_STRIPE_EVENT_NAME {
                probs.push(
                    &path,
                    format!(
                        "a Stripe meter event name has at most {MAX_STRIPE_EVENT_NAME} characters"
                    ),
                );
                return false;
            }
            match kind {
                Some(Kind::Metered | Kind::Rate) | None => true,
                Some(k) => {
                    probs.push(
                        &path,
                        format!("only metered and rate usage is sent to Stripe meters, not {k}"),
                    );
                    false
                }
            }
        });
        let dimensions = obj
            .get("dimensions")
            .map(|d| dimensions(d, kind, &key_path(&at, "dimensions"), probs))
            .unwrap_or_default();

        let Some(name) = name else { continue };
        if let Some(first) = first_at.get(&name) {
            probs.push(
                &key_path(&at, "resource_type"),
                format!("duplicate resource_type '{name}' (first declared at {first})"),
            );
            continue;
        }
        first_at.insert(name.clone(), at.clone());
        let ok = probs.len() == before;
        declared.insert(name.clone(), kind.filter(|_| ok));
        if let (true, Some(kind)) = (ok, kind) {
            out.push(Resource {
                resource_type: name,
                kind,
                unit,
                window_seconds,
                description,
                billable_statuses,
                stripe_meter_event,
                dimensions,
            });
        }
    }
    (out, declared)
}

/// Checks `window_seconds`: required for `rate` (1..=86400), forbidden for other kinds.
fn window(v: Option<&Value>, kind: Option<Kind>, at: &str, probs: &mut Problems) -> Option<u32> {
    let path = key_path(at, "window_seconds");
    match (v, kind) {
        (None, Some(Kind::Rate)) => {
            probs.push(at, "a rate resource needs 'window_seconds' (1..=86400)");
            None
        }
        (None, _) => None,
        (Some(_), Some(k)) if k != Kind::Rate => {
            probs.push(
                &path,
                format!("window_seconds applies only to rate resources, not to {k}"),
            );
            None
        }
        (Some(w), _) => {
            let secs = w
                .as_u64()
                .or_else(|| {
                    w.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .and_then(|s| u32::try_from(s).ok())
                .filter(|s| (1..=MAX_WINDOW_SECONDS).contains(s));
            if secs.is_none() {
                probs.push(
                    &path,
                    format!("must be a whole number of seconds from 1 to 86400, not {w}"),
                );
            }
            secs
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(v: Value) -> (Vec<Resource>, Declared, Vec<String>) {
        let mut p = Problems::default();
        let (r, d) = validate(&v, "$.resources", &mut p);
        (
            r,
            d,
            p.into_vec().into_iter().map(|p| p.to_string()).collect(),
        )
    }

    #[test]
    fn good_resources() {
        let (r, d, probs) = run(json!([
            {"resource_type": "api_requests", "kind": "rate", "window_seconds": 60},
            {"resource_type": "benchmark_runs", "kind": "metered", "unit": "run",
             "description": "Benchmark runs", "billable_statuses": ["2xx"],
             "stripe_meter_event": "benchmark_runs"},
            {"resource_type": "code_generation", "kind": "feature"}
        ]));
        assert!(probs.is_empty(), "{probs:?}");
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].window_seconds, Some(60));
        assert_eq!(r[1].unit.as_deref(), Some("run"));
        assert_eq!(r[1].billable_statuses, Some(vec![StatusClass::Class(2)]));
        assert_eq!(r[1].stripe_meter_event.as_deref(), Some("benchmark_runs"));
        assert_eq!(r[2].window_seconds, None);
        assert_eq!(d.get("code_generation"), Some(&Some(Kind::Feature)));
    }

    #[test]
    fn every_problem_is_reported() {
        let long_name = "t".repeat(101);
        let (r, d, probs) = run(json!([
            {"resource_type": "Bad-Name", "kind": "metered"},
            {"resource_type": "x", "kind": "meterd", "unit": 3},
            {"resource_type": "r", "kind": "rate"},
            {"resource_type": "r2", "kind": "rate", "window_seconds": 0},
            {"resource_type": "r3", "kind": "rate", "window_seconds": 86401},
            {"resource_type": "g", "kind": "gauge", "window_seconds": 60, "unti": "GB"},
            {"resource_type": "x", "kind": "gauge"},
            {"kind": "gauge"},
            "storage",
            {"resource_type": "f", "kind": "feature", "billable_statuses": ["6xx"]},
            {"resource_type": "s", "kind": "gauge", "stripe_meter_event": "storage"},
            {"resource_type": "t", "kind": "metered", "stripe_meter_event": long_name}
        ]));
        assert!(r.is_empty());
        let want = [
            "$.resources[0].resource_type: 'Bad-Name' is not a valid resource_type",
            "$.resources[1].kind: invalid kind 'meterd'",
            "$.resources[1].unit: must be a string",
            "$.resources[2]: a rate resource needs 'window_seconds'",
            "$.resources[3].window_seconds: must be a whole number of seconds from 1 to 86400, not 0",
            "$.resources[4].window_seconds: must be a whole number",
            "$.resources[5].unti: unknown key 'unti' (did you mean 'unit'?)",
            "$.resources[5].window_seconds: window_seconds applies only to rate resources, not to gauge",
            "$.resources[6].resource_type: duplicate resource_type 'x' (first declared at $.resources[1])",
            "$.resources[7]: missing required key 'resource_type'",
            "$.resources[8]: must be an object, not a string",
            "$.resources[9].billable_statuses[0]: invalid HTTP status class",
            "$.resources[10].stripe_meter_event: only metered and rate usage is sent to Stripe meters, not gauge",
            "$.resources[11].stripe_meter_event: a Stripe meter event name has at most 100 characters",
        ];
        assert_eq!(probs.len(), want.len(), "{probs:#?}");
        for (got, want) in probs.iter().zip(want) {
            assert!(got.starts_with(want), "{got} / {want}");
        }
        // broken declarations are known by name but without a kind
        assert_eq!(d.get("x"), Some(&None));
        assert_eq!(d.get("g"), Some(&None));
        assert!(!d.contains_key("Bad-Name"));
    }

    #[test]
    fn shape_problems() {
        let (_, _, probs) = run(json!([]));
        assert_eq!(
            probs,
            vec!["$.resources: must declare at least one resource"]
        );
        let (_, _, probs) = run(json!({"a": 1}));
        assert_eq!(
            probs,
            vec!["$.resources: must be an array of resource objects"]
        );
        let (r, _, probs) =
            run(json!([{"resource_type": "r", "kind": "rate", "window_seconds": 60.0}]));
        assert!(probs.is_empty());
        assert_eq!(r[0].window_seconds, Some(60));
        let (_, _, probs) =
            run(json!([{"resource_type": "r", "kind": "rate", "window_seconds": "60"}]));
        assert_eq!(probs.len(), 1);
    }
}
