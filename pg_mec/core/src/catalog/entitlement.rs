//! One plan entitlement: `$.plans[i].entitlements.<resource_type>`.
//!
//! A feature takes `true` / `false` or `{"enabled": bool}`. Every other kind takes an object with a
//! required `limit` (a number >= 0, or `null` for unlimited) and optional `period` (metered only),
//! `enforcement` (default `hard`), `grace` (hard only) and `overage_cap` (capped only, and required
//! there).

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};

use super::json::{boolean, check_keys, non_negative, parsed, required, type_name};
use super::kind::Kind;
use super::problem::{key_path, Problems};
use super::resources::Dimensions;
use crate::enforcement::{check_fields, Enforcement, Field, Policy};
use crate::period::Period;

const LIMIT_KEYS: &[&str] = &[
    "limit",
    "period",
    "enforcement",
    "grace",
    "overage_cap",
    "dimension_limits",
];
const SCOPED_KEYS: &[&str] = &["limit", "enforcement", "grace", "overage_cap"];
const FEATURE_KEYS: &[&str] = &["enabled"];

/// A plan's entitlement to one resource type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanEntitlement {
    /// The resource type (a key of the plan's `entitlements`).
    pub resource_type: String,
    /// The limit; `None` = unlimited. Always `None` for features (see `enabled`).
    pub limit: Option<Decimal>,
    /// The counting period: metered → given or `Month`; gauge and concurrency → `Lifetime`;
    /// rate → `None` (the resource's `window_seconds` applies); feature → `None`.
    pub period: Option<Period>,
    /// How the limit is enforced (`Hard` when not given, and for features).
    pub enforcement: Enforcement,
    /// Configured grace (hard only); `None` = the default `min(1% of limit, 100)`.
    pub grace: Option<Decimal>,
    /// Configured overage cap (capped only).
    pub overage_cap: Option<Decimal>,
    /// For features: whether the feature is on. `true` for every other kind.
    pub enabled: bool,
    /// Limits on the usage that carries one dimension value (metered only), decided together with
    /// this one and counted over the same period; ordered by dimension, then value.
    pub dimension_limits: Vec<ScopedLimit>,
}

/// A limit on the usage of a resource that carries one value of one dimension (e.g. tokens of
/// `model_class` `PRO_L`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopedLimit {
    pub dimension: String,
    pub value: String,
    pub limit: Option<Decimal>,
    pub enforcement: Enforcement,
    pub grace: Option<Decimal>,
    pub overage_cap: Option<Decimal>,
}

impl PlanEntitlement {
    /// The enforcement policy of this entitlement.
    pub fn policy(&self) -> Policy {
        Policy {
            limit: self.limit,
            enforcement: self.enforcement,
            grace: self.grace,
            overage_cap: self.overage_cap,
        }
    }
}

/// Validates the entitlement `v` at `path` for `resource_type` of `kind`, whose declared dimensions
/// are `dims`.
pub(crate) fn validate(
    resource_type: &str,
    kind: Kind,
    dims: &Dimensions,
    v: &Value,
    path: &str,
    probs: &mut Problems,
) -> Option<PlanEntitlement> {
    let before = probs.len();
    let ent = if kind == Kind::Feature {
        feature(resource_type, v, path, probs)
    } else {
        limited(resource_type, kind, dims, v, path, probs)
    };
    ent.filter(|_| probs.len() == before)
}

fn feature(
    resource_type: &str,
    v: &Value,
    path: &str,
    probs: &mut Problems,
) -> Option<PlanEntitlement> {
    let enabled = match v {
        Value::Bool(b) => Some(*b),
        Value::Object(obj) => {
            check_keys(obj, FEATURE_KEYS, path, probs);
            required(obj, "enabled", path, probs)
                .and_then(|e| boolean(e, &key_path(path, "enabled"), probs))
        }
        other => {
            probs.push(
                path,
                format!(
                    "'{resource_type}' is a feature: its entitlement is true, false or \
                     {{\"enabled\": true|false}}, not {}",
                    type_name(other)
                ),
            );
            None
        }
    }?;
    Some(PlanEntitlement {
        resource_type: resource_type.to_owned(),
        limit: None,
        period: None,
        enforcement: Enforcement::Hard,
        grace: None,
        overage_cap: None,
        enabled,
        dimension_limits: Vec::new(),
    })
}

fn limited(
    resource_type: &str,
    kind: Kind,
    dims: &Dimensions,
    v: &Value,
    path: &str,
    probs: &mut Problems,
) -> Option<PlanEntitlement> {
    let Some(obj) = v.as_object() else {
        probs.push(
            path,
            format!(
                "'{resource_type}' is a {kind} resource: its entitlement is an object with a \
                 'limit' (a number, or null for unlimited), not {}",
                type_name(v)
            ),
        );
        return None;
    };
    check_keys(obj, LIMIT_KEYS, path, probs);

    let limit_path = key_path(path, "limit");
    let limit = limit_value(obj, path, probs);
    if let (Kind::Concurrency, Some(Some(l))) = (kind, limit) {
        if !l.fract().is_zero() {
            probs.push(
                &limit_path,
                format!("a concurrency limit counts leases and must be a whole number, not {l}"),
            );
        }
    }

    let mut period = kind.default_period();
    if let Some(p) = obj.get("period") {
        let p_path = key_path(path, "period");
        if kind == Kind::Metered {
            period = parsed::<Period>(p, &p_path, probs).or(period);
        } else {
            let why = match kind {
                Kind::Rate => "a rate resource counts per its window_seconds",
                _ => "only metered resources reset per period",
            };
            probs.push(
                &p_path,
                format!(
                    "period applies only to metered resources ({why}; '{resource_type}' is {kind})"
                ),
            );
        }
    }

    let (enforcement, grace, overage_cap) = enforcement_fields(obj, path, probs);

    let dimension_limits = match obj.get("dimension_limits") {
        None => Vec::new(),
        Some(d) => scoped_limits(
            resource_type,
            kind,
            dims,
            d,
            &key_path(path, "dimension_limits"),
            probs,
        ),
    };

    Some(PlanEntitlement {
        resource_type: resource_type.to_owned(),
        limit: limit?,
        period,
        enforcement: enforcement?,
        grace,
        overage_cap,
        enabled: true,
        dimension_limits,
    })
}

/// A limit object's required `limit`: `Some(None)` for unlimited (`null`), `None` when refused.
fn limit_value(
    obj: &Map<String, Value>,
    path: &str,
    probs: &mut Problems,
) -> Option<Option<Decimal>> {
    match required(obj, "limit", path, probs) {
        None => None,
        Some(Value::Null) => Some(None),
        Some(l) => non_negative(l, &key_path(path, "limit"), probs).map(Some),
    }
}

/// A limit object's `enforcement` (default hard), `grace` and `overage_cap`, checked together
/// (`enforcement::check_fields`): each `None` where refused or absent.
fn enforcement_fields(
    obj: &Map<String, Value>,
    path: &str,
    probs: &mut Problems,
) -> (Option<Enforcement>, Option<Decimal>, Option<Decimal>) {
    let enforcement: Option<Enforcement> = match obj.get("enforcement") {
        None => Some(Enforcement::Hard),
        Some(e) => parsed(e, &key_path(path, "enforcement"), probs),
    };
    let grace = obj
        .get("grace")
        .and_then(|g| non_negative(g, &key_path(path, "grace"), probs));
    let overage_cap = obj
        .get("overage_cap")
        .and_then(|c| non_negative(c, &key_path(path, "overage_cap"), probs));
    if let Some(e) = enforcement {
        // The presence of overage_cap counts, even when its value was refused above.
        let cap = obj
            .get("overage_cap")
            .map(|_| overage_cap.unwrap_or_default());
        for (field, message) in check_fields(e, cap, grace) {
            let at = match field {
                Field::Entitlement => path.to_string(),
                Field::Grace => key_path(path, "grace"),
                Field::OverageCap => key_path(path, "overage_cap"),
            };
            probs.push(&at, message);
        }
    }
    (enforcement, grace, overage_cap)
}

/// `dimension_limits`: `{"<dimension>": {"<value>": {"limit": …, "enforcement": …}}}` of a metered or rate
/// entitlement, naming the resource's declared dimensions and values.
fn scoped_limits(
    resource_type: &str,
    kind: Kind,
    dims: &Dimensions,
    v: &Value,
    path: &str,
    probs: &mut Problems,
) -> Vec<ScopedLimit> {
    let mut out = Vec::new();
    if !matches!(kind, Kind::Metered | Kind::Rate) {
        probs.push(
            path,
            format!(
                "dimension limits apply only to metered and rate resources ('{resource_type}' is {kind})"
            ),
        );
        return out;
    }
    let Some(obj) = v.as_object() else {
        probs.push(
            path,
            format!("must be an object keyed by dimension, not {}", type_name(v)),
        );
        return out;
    };
    for (dimension, by_value) in obj {
        let d_path = key_path(path, dimension);
        let Some(values) = dims.get(dimension) else {
            probs.push(
                &d_path,
                format!("'{resource_type}' declares no dimension '{dimension}' (see $.resources[].dimensions)"),
            );
            continue;
        };
        let Some(by_value) = by_value.as_object() else {
            probs.push(
                &d_path,
                format!(
                    "must be an object keyed by value, not {}",
                    type_name(by_value)
                ),
            );
            continue;
        };
        for (value, limit) in by_value {
            let at = key_path(&d_path, value);
            if !values.contains(value) {
                probs.push(
                    &at,
                    format!(
                        "'{value}' is not a value of dimension '{dimension}' ({})",
                        values.join(", ")
                    ),
                );
                continue;
            }
            let Some(l) = limit.as_object() else {
                probs.push(
                    &at,
                    format!("must be an object with a 'limit', not {}", type_name(limit)),
                );
                continue;
            };
            check_keys(l, SCOPED_KEYS, &at, probs);
            let quantity = limit_value(l, &at, probs);
            let (enforcement, grace, overage_cap) = enforcement_fields(l, &at, probs);
            if let (Some(limit), Some(enforcement)) = (quantity, enforcement) {
                out.push(ScopedLimit {
                    dimension: dimension.clone(),
                    value: value.clone(),
                    limit,
                    enforcement,
                    grace,
                    overage_cap,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::str::FromStr;

    fn run(kind: Kind, v: Value) -> (Option<PlanEntitlement>, Vec<String>) {
        let mut p = Problems::default();
        let e = validate("res", kind, &Dimensions::new(), &v, "$.e.res", &mut p);
        (e, p.into_vec().into_iter().map(|p| p.to_string()).collect())
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn features() {
        let (e, p) = run(Kind::Feature, json!(true));
        assert!(p.is_empty());
        let e = e.unwrap();
        assert!(e.enabled);
        assert_eq!((e.limit, e.period), (None, None));
        let (e, _) = run(Kind::Feature, json!({"enabled": false}));
        assert!(!e.unwrap().enabled);
        let (e, p) = run(Kind::Feature, json!({"limit": 1}));
        assert!(e.is_none());
        assert_eq!(p.len(), 2, "{p:?}");
        let (_, p) = run(Kind::Feature, json!("yes"));
        assert!(p[0].contains("is a feature"), "{p:?}");
        let (_, p) = run(Kind::Feature, json!({"enabled": "yes"}));
        assert_eq!(
            p,
            vec!["$.e.res.enabled: must be true or false, not a string"]
        );
    }

    #[test]
    fn metered_defaults_and_values() {
        let (e, p) = run(Kind::Metered, json!({"limit": 100}));
        assert!(p.is_empty());
        let e = e.unwrap();
        assert_eq!(e.limit, Some(d("100")));
        assert_eq!(e.period, Some(Period::Month));
        assert_eq!(e.enforcement, Enforcement::Hard);
        assert!(e.enabled);
        assert_eq!(e.policy().ceiling(), Some(d("101")));

        let (e, p) = run(
            Kind::Metered,
            json!({"limit": "1000.5", "period": "day", "enforcement": "capped", "overage_cap": 50}),
        );
        assert!(p.is_empty(), "{p:?}");
        let e = e.unwrap();
        assert_eq!(e.period, Some(Period::Day));
        assert_eq!(e.overage_cap, Some(d("50")));
        assert_eq!(e.limit, Some(d("1000.5")));

        let (e, p) = run(Kind::Metered, json!({"limit": null, "enforcement": "soft"}));
        assert!(p.is_empty());
        assert_eq!(e.unwrap().limit, None);

        let (e, _) = run(Kind::Metered, json!({"limit": 5, "grace": 0}));
        assert_eq!(e.unwrap().grace, Some(Decimal::ZERO));
    }

    #[test]
    fn periods_of_other_kinds() {
        assert_eq!(
            run(Kind::Gauge, json!({"limit": 5})).0.unwrap().period,
            Some(Period::Lifetime)
        );
        assert_eq!(
            run(Kind::Concurrency, json!({"limit": 2}))
                .0
                .unwrap()
                .period,
            Some(Period::Lifetime)
        );
        assert_eq!(
            run(Kind::Rate, json!({"limit": 600})).0.unwrap().period,
            None
        );
        let (_, p) = run(Kind::Gauge, json!({"limit": 5, "period": "month"}));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("$.e.res.period: period applies only to metered"),
            "{p:?}"
        );
        let (_, p) = run(Kind::Rate, json!({"limit": 5, "period": "hour"}));
        assert!(p[0].contains("window_seconds"));
    }

    #[test]
    fn every_problem_of_one_entitlement() {
        let (e, p) = run(
            Kind::Metered,
            json!({"limt": 5, "period": "weekly", "enforcement": "strict", "grace": -1}),
        );
        assert!(e.is_none());
        let want = [
            "$.e.res.limt: unknown key 'limt' (did you mean 'limit'?)",
            "$.e.res: missing required key 'limit'",
            "$.e.res.period: invalid period 'weekly'",
            "$.e.res.enforcement: invalid enforcement 'strict'",
            "$.e.res.grace: must be >= 0, not -1",
        ];
        assert_eq!(p.len(), want.len(), "{p:#?}");
        for (g, w) in p.iter().zip(want) {
            assert!(g.starts_with(w), "{g} / {w}");
        }
    }

    #[test]
    fn enforcement_combinations() {
        let (_, p) = run(Kind::Metered, json!({"limit": 5, "enforcement": "capped"}));
        assert_eq!(
            p,
            vec![
                "$.e.res: capped enforcement needs 'overage_cap' (units allowed beyond the limit)"
            ]
        );
        let (_, p) = run(Kind::Metered, json!({"limit": 5, "overage_cap": 5}));
        assert!(p[0].starts_with("$.e.res.overage_cap: overage_cap applies only to capped"));
        let (_, p) = run(
            Kind::Metered,
            json!({"limit": 5, "enforcement": "soft", "grace": 1}),
        );
        assert_eq!(
            p,
            vec!["$.e.res.grace: grace applies only to hard and capped enforcement, not to soft"]
        );
        let (e, p) = run(
            Kind::Metered,
            json!({"limit": 5, "enforcement": "capped", "overage_cap": 1, "grace": 1}),
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(e.unwrap().grace, Some(d("1")));
        let (_, p) = run(
            Kind::Metered,
            json!({"limit": 5, "enforcement": "soft", "grace": 0}),
        );
        assert!(
            p.is_empty(),
            "an explicit grace of 0 is never an error: {p:?}"
        );
        let (_, p) = run(
            Kind::Metered,
            json!({"limit": 5, "enforcement": "capped", "overage_cap": -1}),
        );
        assert_eq!(p, vec!["$.e.res.overage_cap: must be >= 0, not -1"]);
    }

    #[test]
    fn limits() {
        let (_, p) = run(Kind::Concurrency, json!({"limit": 2.5}));
        assert!(p[0].contains("whole number"), "{p:?}");
        let (e, p) = run(Kind::Concurrency, json!({"limit": "3"}));
        assert!(p.is_empty());
        assert_eq!(e.unwrap().limit, Some(d("3")));
        let (_, p) = run(Kind::Gauge, json!({"limit": -1}));
        assert_eq!(p, vec!["$.e.res.limit: must be >= 0, not -1"]);
        let (_, p) = run(Kind::Gauge, json!({"limit": true}));
        assert_eq!(p.len(), 1);
        let (_, p) = run(Kind::Gauge, json!(true));
        assert!(p[0].contains("is a gauge resource"), "{p:?}");
        let (e, p) = run(Kind::Gauge, json!({"limit": 0}));
        assert!(p.is_empty());
        assert_eq!(e.unwrap().limit, Some(Decimal::ZERO));
    }
}
