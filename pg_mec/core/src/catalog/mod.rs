//! The catalog: one JSON document per namespace declaring resource types and plans (CONTRACT §5).
//!
//! [`validate`] checks a document and returns either the typed [`Catalog`] or **every** problem
//! found, each with the JSONPath of the offending value. `sql/catalog.schema.json` describes the same
//! shape; the few rules a JSON Schema cannot express are checked only here:
//!
//! * entitlement keys must name a resource declared under `resources`;
//! * the shape of an entitlement depends on the resource's kind (`true`/`false` only for features,
//!   `period` only for metered, whole-number limits for concurrency);
//! * `resource_type`, `plan_id` and `stripe_price_id` are unique;
//! * numbers must fit a decimal (28 significant digits).
//!
//! Choices where the contract leaves room:
//!
//! * `plans` is required but may be empty; a plan's `entitlements` may be left out (no entitlements);
//! * a plan without `name` is named by its `plan_id`;
//! * `grace` is accepted only with hard enforcement (with soft or capped it would be ignored);
//! * `alerts.thresholds` are JSON numbers (not strings) in (0, 1000], returned sorted without
//!   duplicates; no `alerts` means no thresholds;
//! * a top-level `"$schema"` string is accepted and ignored, so editors can find the schema.

mod digest;
mod entitlement;
mod json;
mod kind;
mod plans;
pub mod policy;
mod problem;
mod resources;
mod statuses;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;

pub use digest::{canonical_json, digest};
pub use entitlement::{PlanEntitlement, ScopedLimit};
pub use kind::Kind;
pub use plans::{Plan, PRICE_INTERVALS};
pub use policy::AccessPolicy;
pub use problem::Problem;
pub use resources::{Dimensions, Resource, MAX_DIMENSIONS, MAX_WINDOW_SECONDS};

use crate::billing::{default_billable, StatusClass};
use json::{check_keys, object, opt_string, required, type_name};
use problem::{index_path, key_path, Problems};
use statuses::status_list;

const TOP_KEYS: &[&str] = &[
    "$schema",
    "version",
    "currency",
    "billable_statuses",
    "resources",
    "plans",
    "alerts",
    "apply",
];
const ALERT_KEYS: &[&str] = &["thresholds"];
/// Largest accepted alert threshold, in percent of the limit.
const MAX_THRESHOLD: Decimal = Decimal::ONE_THOUSAND;

/// A validated catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Catalog {
    /// Free-form version label, e.g. `"2026-11-01"`.
    pub version: Option<String>,
    /// ISO 4217 code, three capital letters, e.g. `"USD"`.
    pub currency: Option<String>,
    /// Statuses that make an event billable; `["2xx", 422]` when not given.
    pub billable_statuses: Vec<StatusClass>,
    /// Declared resource types, in document order.
    pub resources: Vec<Resource>,
    /// Plans, in document order.
    pub plans: Vec<Plan>,
    /// Usage alert thresholds in percent, ascending, without duplicates.
    pub alert_thresholds: Vec<Decimal>,
    /// `"apply": "now"`: apply plan changes to every account on the plan at once.
    pub apply_now: bool,
}

impl Catalog {
    /// The resource named `resource_type`.
    pub fn resource(&self, resource_type: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.resource_type == resource_type)
    }

    /// The plan with `plan_id`.
    pub fn plan(&self, plan_id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.plan_id == plan_id)
    }

    /// The version of `plan`: its own `version`, else the catalog's, else `"1"`.
    pub fn plan_version<'a>(&'a self, plan: &'a Plan) -> &'a str {
        plan.version
            .as_deref()
            .or(self.version.as_deref())
            .unwrap_or("1")
    }

    /// The plan marked `"default": true`, if any.
    pub fn default_plan(&self) -> Option<&Plan> {
        self.plans.iter().find(|p| p.is_default)
    }

    /// The plan whose `stripe_price_id` is `price_id`.
    pub fn plan_by_stripe_price(&self, price_id: &str) -> Option<&Plan> {
        self.plans
            .iter()
            .find(|p| p.stripe_price_id.as_deref() == Some(price_id))
    }

    /// Billable statuses for `resource_type`: the resource's own list, else the catalog's.
    pub fn billable_statuses_for(&self, resource_type: &str) -> &[StatusClass] {
        self.resource(resource_type)
            .and_then(|r| r.billable_statuses.as_deref())
            .unwrap_or(&self.billable_statuses)
    }
}

/// Validates a catalog document, returning the typed catalog or every problem found (in document
/// order; never an empty list).
pub fn validate(doc: &Value) -> Result<Catalog, Vec<Problem>> {
    let mut probs = Problems::default();
    let root = "$";
    let Some(obj) = object(doc, root, &mut probs) else {
        return Err(probs.into_vec());
    };
    check_keys(obj, TOP_KEYS, root, &mut probs);

    if let Some(s) = obj.get("$schema") {
        if !s.is_string() {
            probs.push(
                &key_path(root, "$schema"),
                format!("must be a string, not {}", type_name(s)),
            );
        }
    }
    let version = opt_string(obj, "version", root, &mut probs);
    let currency = opt_string(obj, "currency", root, &mut probs).filter(|c| {
        let ok = c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase());
        if !ok {
            probs.push(
                &key_path(root, "currency"),
                format!("'{c}' is not an ISO 4217 currency code such as \"USD\""),
            );
        }
        ok
    });
    let billable_statuses = obj
        .get("billable_statuses")
        .and_then(|b| status_list(b, &key_path(root, "billable_statuses"), &mut probs))
        .unwrap_or_else(default_billable);

    let (resources, declared) = match required(obj, "resources", root, &mut probs) {
        Some(r) => resources::validate(r, &key_path(root, "resources"), &mut probs),
        None => Default::default(),
    };
    let plans = match required(obj, "plans", root, &mut probs) {
        Some(p) => {
            let dims = resources
                .iter()
                .map(|r| (r.resource_type.clone(), r.dimensions.clone()))
                .collect();
            plans::validate(p, &declared, &dims, &key_path(root, "plans"), &mut probs)
        }
        None => Vec::new(),
    };
    let alert_thresholds = obj
        .get("alerts")
        .map(|a| alerts(a, &key_path(root, "alerts"), &mut probs))
        .unwrap_or_default();
    let apply_now = match obj.get("apply") {
        None => false,
        Some(Value::String(s)) if s == "now" => true,
        Some(other) => {
            probs.push(
                &key_path(root, "apply"),
                format!("must be \"now\" (or left out), not {other}"),
            );
            false
        }
    };

    if !probs.is_empty() {
        return Err(probs.into_vec());
    }
    Ok(Catalog {
        version,
        currency,
        billable_statuses,
        resources,
        plans,
        alert_thresholds,
        apply_now,
    })
}

fn alerts(v: &Value, path: &str, probs: &mut Problems) -> Vec<Decimal> {
    let Some(obj) = object(v, path, probs) else {
        return Vec::new();
    };
    check_keys(obj, ALERT_KEYS, path, probs);
    let t_path = key_path(path, "thresholds");
    let Some(t) = required(obj, "thresholds", path, probs) else {
        return Vec::new();
    };
    let Some(items) = t.as_array() else {
        probs.push(
            &t_path,
            "must be an array of percentages such as [50, 80, 100]",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = index_path(&t_path, i);
        if !item.is_number() {
            probs.push(&at, format!("must be a number, not {}", type_name(item)));
            continue;
        }
        let Some(d) = json::decimal(item, &at, probs) else {
            continue;
        };
        if d <= Decimal::ZERO || d > MAX_THRESHOLD {
            probs.push(
                &at,
                format!("must be above 0 and at most 1000 (percent), not {d}"),
            );
            continue;
        }
        out.push(d.normalize());
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforcement::Enforcement;
    use crate::period::Period;
    use serde_json::json;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn contract_example() -> Value {
        json!({
          "version": "2026-11-01",
          "currency": "USD",
          "billable_statuses": ["2xx", 422],
          "resources": [
            {"resource_type": "benchmark_runs", "kind": "metered", "unit": "run"},
            {"resource_type": "storage_gb", "kind": "gauge", "unit": "GB"},
            {"resource_type": "concurrent_jobs", "kind": "concurrency"},
            {"resource_type": "api_requests", "kind": "rate", "window_seconds": 60},
            {"resource_type": "code_generation", "kind": "feature"}
          ],
          "plans": [
            {"plan_id": "starter", "name": "Starter", "price": {"amount": "29.00", "interval": "month"},
             "stripe_price_id": "price_123",
             "entitlements": {
               "benchmark_runs": {"limit": 100, "period": "month", "enforcement": "capped", "overage_cap": 50},
               "storage_gb": {"limit": 5},
               "concurrent_jobs": {"limit": 2},
               "api_requests": {"limit": 600},
               "code_generation": true
             }}
          ],
          "alerts": {"thresholds": [50, 80, 100]}
        })
    }

    #[test]
    fn contract_example_is_valid() {
        let c = validate(&contract_example()).unwrap();
        assert_eq!(c.version.as_deref(), Some("2026-11-01"));
        assert_eq!(c.currency.as_deref(), Some("USD"));
        assert_eq!(c.billable_statuses, default_billable());
        assert_eq!(c.resources.len(), 5);
        assert_eq!(c.alert_thresholds, vec![d("50"), d("80"), d("100")]);
        assert!(!c.apply_now);
        let starter = c.plan("starter").unwrap();
        assert_eq!(starter.price_amount, Some(d("29.00")));
        let runs = starter.entitlement("benchmark_runs").unwrap();
        assert_eq!(runs.enforcement, Enforcement::Capped);
        assert_eq!(runs.period, Some(Period::Month));
        // limit 100 + overage_cap 50 + the default grace, 1
        assert_eq!(runs.policy().ceiling(), Some(d("151")));
        assert_eq!(c.resource("api_requests").unwrap().window_seconds, Some(60));
        assert_eq!(
            c.plan_by_stripe_price("price_123").unwrap().plan_id,
            "starter"
        );
        assert!(c.default_plan().is_none());
        assert_eq!(
            c.billable_statuses_for("api_requests"),
            &default_billable()[..]
        );
    }

    #[test]
    fn minimal_catalog_and_defaults() {
        let c = validate(&json!({
            "resources": [{"resource_type": "x", "kind": "metered",
                           "billable_statuses": ["2xx"]}],
            "plans": [],
            "apply": "now"
        }))
        .unwrap();
        assert!(c.apply_now);
        assert_eq!(c.billable_statuses, default_billable());
        assert_eq!(c.billable_statuses_for("x"), &[StatusClass::Class(2)]);
        assert_eq!(c.billable_statuses_for("nope"), &default_billable()[..]);
        assert!(c.alert_thresholds.is_empty());
        assert!(c.version.is_none());
    }

    #[test]
    fn not_an_object() {
        assert_eq!(
            validate(&json!([1])).unwrap_err(),
            vec![Problem {
                path: "$".into(),
                message: "must be an object, not an array".into()
            }]
        );
    }

    #[test]
    fn top_level_problems_are_all_reported() {
        let errs = validate(&json!({
            "$schema": 1,
            "version": 2,
            "currency": "usd",
            "billable_statuses": ["2xx", "9xx"],
            "alerts": {"thresholds": [0, 50, "80", 1001, 100, 50], "email": true},
            "apply": "later",
            "plan": []
        }))
        .unwrap_err();
        let got: Vec<String> = errs.iter().map(|p| p.to_string()).collect();
        let want = [
            "$.plan: unknown key 'plan' (did you mean 'plans'?)",
            "$['$schema']: must be a string, not a number",
            "$.version: must be a string, not a number",
            "$.currency: 'usd' is not an ISO 4217 currency code",
            "$.billable_statuses[1]: invalid HTTP status class",
            "$: missing required key 'resources'",
            "$: missing required key 'plans'",
            "$.alerts.email: unknown key 'email'",
            "$.alerts.thresholds[0]: must be above 0 and at most 1000",
            "$.alerts.thresholds[2]: must be a number, not a string",
            "$.alerts.thresholds[3]: must be above 0 and at most 1000",
            "$.apply: must be \"now\" (or left out), not \"later\"",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{g}\n  wanted {w}");
        }
    }

    #[test]
    fn thresholds_sorted_and_deduplicated() {
        let mut doc = contract_example();
        doc["alerts"] = json!({"thresholds": [100, 50, 80, 50.0, 0.5, 1000]});
        let c = validate(&doc).unwrap();
        assert_eq!(
            c.alert_thresholds,
            vec![d("0.5"), d("50"), d("80"), d("100"), d("1000")]
        );
    }

    #[test]
    fn problems_across_sections_are_all_reported() {
        let mut doc = contract_example();
        doc["resources"][1]["kind"] = json!("guage");
        doc["plans"][0]["entitlements"]["storage_gb"] = json!({"limit": -5});
        doc["plans"][0]["entitlements"]["api_requests"] = json!({"limit": 600, "period": "day"});
        doc["plans"][0]["entitlements"]["seats"] = json!({"limit": 3});
        let errs = validate(&doc).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"$.resources[1].kind"), "{paths:?}");
        assert!(paths.contains(&"$.plans[0].entitlements.api_requests.period"));
        assert!(paths.contains(&"$.plans[0].entitlements.seats"));
        // storage_gb's declaration is broken, so its entitlement is not judged again
        assert!(!paths.iter().any(|p| p.contains("storage_gb")));
        assert_eq!(errs.len(), 3, "{errs:#?}");
    }

    #[test]
    fn serializes_for_the_extension() {
        let c = validate(&contract_example()).unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["billable_statuses"], json!(["2xx", 422]));
        assert_eq!(v["plans"][0]["price_amount"], json!("29.00"));
        assert_eq!(v["resources"][0]["kind"], json!("metered"));
        assert_eq!(
            v["plans"][0]["entitlements"][0]["enforcement"],
            json!("hard")
        );
    }
}
