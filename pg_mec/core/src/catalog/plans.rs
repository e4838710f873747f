//! `$.plans`: the plans of a catalog.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};

use super::entitlement::{self, PlanEntitlement};
use super::json::{
    boolean, check_keys, is_plan_id, non_negative, object, opt_string, required, string, suggest,
};
use super::policy::{self, AccessPolicy};
use super::problem::{index_path, key_path, Problems};
use super::resources::{Declared, DeclaredDimensions};

const KEYS: &[&str] = &[
    "plan_id",
    "name",
    "price",
    "stripe_price_id",
    "default",
    "entitlements",
    "version",
    "policy",
];
const PRICE_KEYS: &[&str] = &["amount", "interval"];
/// Accepted `price.interval` values.
pub const PRICE_INTERVALS: &[&str] = &["month", "year"];

/// A plan of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Its id, `^[a-z0-9][a-z0-9_.-]{0,62}$`, unique in the catalog.
    pub plan_id: String,
    /// Display name; the `plan_id` when the catalog gives none.
    pub name: String,
    /// `price.amount` (>= 0).
    pub price_amount: Option<Decimal>,
    /// `price.interval`: `"month"` or `"year"`.
    pub price_interval: Option<String>,
    /// Stripe price that provisions this plan from a subscription; unique in the catalog.
    pub stripe_price_id: Option<String>,
    /// `"default": true` — the plan new accounts get (at most one plan).
    pub is_default: bool,
    /// Its entitlements, ordered by resource type.
    pub entitlements: Vec<PlanEntitlement>,
    /// The version the catalog names for this plan (see [`super::Catalog::plan_version`]).
    pub version: Option<String>,
    /// Its access policy (`mec.check_policy`).
    pub policy: Option<AccessPolicy>,
}

impl Plan {
    /// The entitlement to `resource_type`, if the plan has one.
    pub fn entitlement(&self, resource_type: &str) -> Option<&PlanEntitlement> {
        self.entitlements
            .iter()
            .find(|e| e.resource_type == resource_type)
    }
}

/// Validates the `plans` array at `path` against the declared resources.
pub(crate) fn validate(
    v: &Value,
    declared: &Declared,
    dims: &DeclaredDimensions,
    path: &str,
    probs: &mut Problems,
) -> Vec<Plan> {
    let mut out = Vec::new();
    let Some(items) = v.as_array() else {
        probs.push(path, "must be an array of plan objects");
        return out;
    };
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut prices: BTreeMap<String, String> = BTreeMap::new();
    let mut default_at: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let at = index_path(path, i);
        let before = probs.len();
        let Some(obj) = object(item, &at, probs) else {
            continue;
        };
        check_keys(obj, KEYS, &at, probs);

        let id_path = key_path(&at, "plan_id");
        let plan_id = required(obj, "plan_id", &at, probs)
            .and_then(|p| string(p, &id_path, probs))
            .filter(|p| {
                let ok = is_plan_id(p);
                if !ok {
                    probs.push(
                        &id_path,
                        format!(
                            "'{p}' is not a valid plan_id: use lowercase letters, digits, '_', '.' \
                             and '-', starting with a letter or digit, at most 63 characters"
                        ),
                    );
                }
                ok
            });
        if let Some(id) = &plan_id {
            if let Some(first) = ids.get(id) {
                probs.push(
                    &id_path,
                    format!("duplicate plan_id '{id}' (first declared at {first})"),
                );
            } else {
                ids.insert(id.clone(), at.clone());
            }
        }

        let name = opt_string(obj, "name", &at, probs);
        let (price_amount, price_interval) = match obj.get("price") {
            Some(p) => price(p, &key_path(&at, "price"), probs),
            None => (None, None),
        };
        let stripe_price_id = opt_string(obj, "stripe_price_id", &at, probs);
        if let Some(sp) = &stripe_price_id {
            if let Some(first) = prices.get(sp) {
                probs.push(
                    &key_path(&at, "stripe_price_id"),
                    format!("stripe_price_id '{sp}' is already used by the plan at {first}"),
                );
            } else {
                prices.insert(sp.clone(), at.clone());
            }
        }

        let d_path = key_path(&at, "default");
        let is_default = obj
            .get("default")
            .and_then(|d| boolean(d, &d_path, probs))
            .unwrap_or(false);
        if is_default {
            match &default_at {
                Some(first) => probs.push(
                    &d_path,
                    format!("only one plan may be the default; the plan at {first} already is"),
                ),
                None => default_at = Some(at.clone()),
            }
        }

        let entitlements = match obj.get("entitlements") {
            Some(e) => entitlements(e, declared, dims, &key_path(&at, "entitlements"), probs),
            None => Vec::new(),
        };
        let version = opt_string(obj, "version", &at, probs);
        let policy = obj
            .get("policy")
            .and_then(|p| policy::validate(p, declared, &key_path(&at, "policy"), probs));

        if let (Some(plan_id), true) = (plan_id, probs.len() == before) {
            out.push(Plan {
                name: name.unwrap_or_else(|| plan_id.clone()),
                plan_id,
                price_amount,
                price_interval,
                stripe_price_id,
                is_default,
                entitlements,
                version,
                policy,
            });
        }
    }
    out
}

fn price(v: &Value, path: &str, probs: &mut Problems) -> (Option<Decimal>, Option<String>) {
    let Some(obj) = object(v, path, probs) else {
        return (None, None);
    };
    check_keys(obj, PRICE_KEYS, path, probs);
    let amount = required(obj, "amount", path, probs)
        .and_then(|a| non_negative(a, &key_path(path, "amount"), probs));
    let i_path = key_path(path, "interval");
    let interval = required(obj, "interval", path, probs)
        .and_then(|i| string(i, &i_path, probs))
        .filter(|i| {
            let ok = PRICE_INTERVALS.contains(&i.as_str());
            if !ok {
                probs.push(
                    &i_path,
                    format!("invalid interval '{i}': expected one of month, year"),
                );
            }
            ok
        });
    (amount, interval)
}

fn entitlements(
    v: &Value,
    declared: &Declared,
    dims: &DeclaredDimensions,
    path: &str,
    probs: &mut Problems,
) -> Vec<PlanEntitlement> {
    let Some(obj): Option<&Map<String, Value>> = v.as_object() else {
        probs.push(
            path,
            "must be an object keyed by resource_type, e.g. {\"api_requests\": {\"limit\": 600}}",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (resource_type, value) in obj {
        let at = key_path(path, resource_type);
        match declared.get(resource_type) {
            None => {
                let names: Vec<&str> = declared.keys().map(String::as_str).collect();
                let hint = suggest(resource_type, &names)
                    .map(|s| format!(" (did you mean '{s}'?)"))
                    .unwrap_or_default();
                probs.push(
                    &at,
                    format!(
                        "unknown resource type '{resource_type}'{hint}: declare it under $.resources"
                    ),
                );
            }
            // Declared but broken: its declaration already has a problem.
            Some(None) => {}
            Some(Some(kind)) => {
                let none = Default::default();
                let d = dims.get(resource_type).unwrap_or(&none);
                if let Some(e) = entitlement::validate(resource_type, *kind, d, value, &at, probs) {
                    out.push(e);
                }
            }
        }
    }
    out.sort_by(|a, b| a.resource_type.cmp(&b.resource_type));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::kind::Kind;
    use serde_json::json;
    use std::str::FromStr;

    fn declared() -> Declared {
        let mut d = Declared::new();
        d.insert("benchmark_runs".into(), Some(Kind::Metered));
        d.insert("code_generation".into(), Some(Kind::Feature));
        d.insert("broken".into(), None);
        d
    }

    fn run(v: Value) -> (Vec<Plan>, Vec<String>) {
        let mut p = Problems::default();
        let plans = validate(
            &v,
            &declared(),
            &DeclaredDimensions::new(),
            "$.plans",
            &mut p,
        );
        (
            plans,
            p.into_vec().into_iter().map(|p| p.to_string()).collect(),
        )
    }

    #[test]
    fn good_plans() {
        let (plans, p) = run(json!([
            {"plan_id": "free", "default": true,
             "entitlements": {"benchmark_runs": {"limit": 10}, "code_generation": false}},
            {"plan_id": "starter", "name": "Starter", "price": {"amount": "29.00", "interval": "month"},
             "stripe_price_id": "price_starter_monthly", "entitlements": {"code_generation": true}},
            {"plan_id": "empty"}
        ]));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(plans.len(), 3);
        assert_eq!(plans[0].name, "free");
        assert!(plans[0].is_default);
        assert_eq!(plans[0].entitlements.len(), 2);
        assert_eq!(plans[0].entitlements[0].resource_type, "benchmark_runs");
        assert!(!plans[0].entitlement("code_generation").unwrap().enabled);
        assert_eq!(plans[1].name, "Starter");
        assert_eq!(
            plans[1].price_amount,
            Some(Decimal::from_str("29.00").unwrap())
        );
        assert_eq!(plans[1].price_interval.as_deref(), Some("month"));
        assert!(!plans[1].is_default);
        assert!(plans[2].entitlements.is_empty());
        assert!(plans[2].entitlement("benchmark_runs").is_none());
    }

    #[test]
    fn every_problem_is_reported() {
        let (plans, p) = run(json!([
            {"plan_id": "Free", "default": true, "name": ""},
            {"plan_id": "a", "default": true, "stripe_price_id": "p1",
             "price": {"amount": -1, "interval": "week", "currency": "USD"}},
            {"plan_id": "a", "default": "yes", "stripe_price_id": "p1"},
            {"plan_id": "b", "entitlements": {"benchmark_run": {"limit": 1}, "broken": {"x": 1},
                                               "code_generation": {"limit": 1}}},
            {"plan_id": "c", "entitlements": [], "price": "29"},
            {"name": "No id", "entitlments": {}}
        ]));
        assert!(plans.is_empty());
        let want = [
            "$.plans[0].plan_id: 'Free' is not a valid plan_id",
            "$.plans[0].name: must not be empty",
            "$.plans[1].price.currency: unknown key 'currency'",
            "$.plans[1].price.amount: must be >= 0, not -1",
            "$.plans[1].price.interval: invalid interval 'week': expected one of month, year",
            "$.plans[1].default: only one plan may be the default; the plan at $.plans[0] already is",
            "$.plans[2].plan_id: duplicate plan_id 'a' (first declared at $.plans[1])",
            "$.plans[2].stripe_price_id: stripe_price_id 'p1' is already used by the plan at $.plans[1]",
            "$.plans[2].default: must be true or false, not a string",
            "$.plans[3].entitlements.benchmark_run: unknown resource type 'benchmark_run' (did you mean 'benchmark_runs'?): declare it under $.resources",
            "$.plans[3].entitlements.code_generation.limit: unknown key 'limit'",
            "$.plans[3].entitlements.code_generation: missing required key 'enabled'",
            "$.plans[4].price: must be an object, not a string",
            "$.plans[4].entitlements: must be an object keyed by resource_type",
            "$.plans[5].entitlments: unknown key 'entitlments' (did you mean 'entitlements'?)",
            "$.plans[5]: missing required key 'plan_id'",
        ];
        assert_eq!(p.len(), want.len(), "{p:#?}");
        for (g, w) in p.iter().zip(want) {
            assert!(g.starts_with(w), "{g}\n  wanted {w}");
        }
    }

    #[test]
    fn not_an_array() {
        let (_, p) = run(json!({}));
        assert_eq!(p, vec!["$.plans: must be an array of plan objects"]);
        let (_, p) = run(json!([3]));
        assert_eq!(p, vec!["$.plans[0]: must be an object, not a number"]);
    }
}
