//! `check_policy`'s decision: a plan's [`AccessPolicy`] applied to one request, given what is left
//! of the quotas it names. Pure: the extension reads the policy and the quotas, this decides.
//!
//! Every reason is collected (a deny lists all of them); `fallback` and `max_output_tokens_reduced`
//! are notes on an allowed request, the other codes deny.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::catalog::policy::{AccessPolicy, TaskRule};

/// A request as `check_policy` receives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub task: Option<String>,
    pub dimensions: BTreeMap<String, String>,
    pub input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
}

/// Most tokens a request may name (2^53: every JSON reader holds it exactly).
const MAX_TOKENS: u64 = 1 << 53;

impl Request {
    /// Parses `{task, dimensions: {name: value}, input_tokens, max_output_tokens}`; other keys are
    /// refused so that a misspelt cap is not silently ignored.
    pub fn parse(v: &Value) -> Result<Request, String> {
        let obj = v.as_object().ok_or(
            "p_request must be a JSON object such as {\"task\": \"…\", \"input_tokens\": 1200}",
        )?;
        let mut req = Request::default();
        for (key, value) in obj {
            match key.as_str() {
                "task" => match value {
                    Value::Null => {}
                    Value::String(s) if !s.is_empty() => req.task = Some(s.clone()),
                    _ => return Err("p_request.task must be a non-empty string".into()),
                },
                "dimensions" => {
                    let Some(dims) = value.as_object() else {
                        return Err("p_request.dimensions must be an object of strings, e.g. {\"model_class\": \"PRO_M\"}".into());
                    };
                    for (name, v) in dims {
                        match v {
                            Value::String(s) if !s.is_empty() => {
                                req.dimensions.insert(name.clone(), s.clone());
                            }
                            Value::Null => {}
                            _ => {
                                return Err(format!(
                                    "p_request.dimensions.{name} must be a non-empty string"
                                ))
                            }
                        }
                    }
                }
                "input_tokens" => req.input_tokens = tokens(value, "input_tokens")?,
                "max_output_tokens" => req.max_output_tokens = tokens(value, "max_output_tokens")?,
                other => {
                    return Err(format!(
                        "p_request has an unknown key '{other}' (expected task, dimensions, input_tokens, max_output_tokens)"
                    ))
                }
            }
        }
        Ok(req)
    }
}

fn tokens(v: &Value, key: &str) -> Result<Option<u64>, String> {
    if v.is_null() {
        return Ok(None);
    }
    // A whole number, also when written 1.0 (as some JSON writers do).
    let whole = match v {
        Value::Number(n) => n
            .to_string()
            .parse::<Decimal>()
            .ok()
            .filter(|d| d.fract().is_zero() && !d.is_sign_negative())
            .and_then(|d| u64::try_from(d).ok())
            .filter(|n| *n <= MAX_TOKENS),
        _ => None,
    };
    match whole {
        Some(n) => Ok(Some(n)),
        None => Err(format!(
            "p_request.{key} must be a whole number of tokens from 0 to 2^53, not {v}"
        )),
    }
}

/// What is left of each quota the policy names: `None` when the policy names none or it is
/// unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remaining {
    pub input_tokens: Option<Decimal>,
    pub output_tokens: Option<Decimal>,
    pub requests: Option<Decimal>,
    /// What is left under the quota resources' dimension limits, by (dimension, value): the usage
    /// carrying that value is limited on its own too (tokens of `PRO_L` ≤ 1 M a month).
    pub scoped: BTreeMap<(String, String), Left>,
}

/// What is left of the three quotas under one dimension value's limits (`None`: no limit there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Left {
    pub input_tokens: Option<Decimal>,
    pub output_tokens: Option<Decimal>,
    pub requests: Option<Decimal>,
}

impl Left {
    /// The lesser of each quota here and in `other`.
    fn min(self, other: Left) -> Left {
        let m = |a: Option<Decimal>, b: Option<Decimal>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Left {
            input_tokens: m(self.input_tokens, other.input_tokens),
            output_tokens: m(self.output_tokens, other.output_tokens),
            requests: m(self.requests, other.requests),
        }
    }

    /// Whether a request of `input` tokens cannot run here at all.
    fn exhausted(&self, input: u64) -> bool {
        self.requests.is_some_and(|r| r < Decimal::ONE)
            || self.output_tokens.is_some_and(|r| whole(r) == 0)
            || self
                .input_tokens
                .is_some_and(|r| whole(r) == 0 || input > whole(r))
    }
}

/// The answer: allowed or not, every reason, and the request as it may run.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub reasons: Vec<Value>,
    pub shaped: Map<String, Value>,
}

fn reason(code: &str, message: String, extra: Value) -> Value {
    let mut r = json!({"code": code, "message": message});
    if let (Some(obj), Value::Object(more)) = (r.as_object_mut(), extra) {
        obj.extend(more);
    }
    r
}

/// Whole tokens of a remaining quota (never below zero).
fn whole(d: Decimal) -> u64 {
    let f = d.floor();
    if f <= Decimal::ZERO {
        0
    } else {
        u64::try_from(f).unwrap_or(u64::MAX)
    }
}

/// Applies `policy` (none: allow as asked) to `req`.
pub fn decide(policy: Option<&AccessPolicy>, req: &Request, left: &Remaining) -> Decision {
    let mut reasons = Vec::new();
    let mut denied = false;
    let mut deny = |r: Value, reasons: &mut Vec<Value>| {
        denied = true;
        reasons.push(r);
    };
    let mut shaped = Map::new();
    let Some(policy) = policy else {
        for (k, v) in &req.dimensions {
            shaped.insert(k.clone(), json!(v));
        }
        shaped.insert("input_tokens".into(), json!(req.input_tokens));
        shaped.insert("max_output_tokens".into(), json!(req.max_output_tokens));
        return Decision {
            allowed: true,
            reasons,
            shaped,
        };
    };

    // The task and its rule.
    let rule: Option<&TaskRule> = match (&policy.tasks, &req.task) {
        (None, _) => None,
        (Some(tasks), Some(task)) => match tasks.get(task) {
            Some(r) => Some(r),
            None => {
                let known: Vec<&str> = tasks.keys().map(String::as_str).collect();
                deny(
                    reason(
                        "task_not_allowed",
                        format!("this plan may not run task '{task}'"),
                        json!({"task": task, "allowed": known}),
                    ),
                    &mut reasons,
                );
                None
            }
        },
        (Some(tasks), None) => {
            let known: Vec<&str> = tasks.keys().map(String::as_str).collect();
            deny(
                reason(
                    "task_not_allowed",
                    "the request names no task; this plan's policy admits only its tasks".into(),
                    json!({"task": null, "allowed": known}),
                ),
                &mut reasons,
            );
            None
        }
    };

    // Dimensions the policy does not know.
    for (name, value) in &req.dimensions {
        match policy.dimensions.get(name) {
            None => deny(
                reason(
                    "unknown_dimension",
                    format!("this plan's policy has no dimension '{name}'"),
                    json!({"dimension": name}),
                ),
                &mut reasons,
            ),
            Some(order) if !order.contains(value) => deny(
                reason(
                    "dimension_value_not_allowed",
                    format!("'{value}' is not a value of dimension '{name}'"),
                    json!({"dimension": name, "value": value, "allowed": order}),
                ),
                &mut reasons,
            ),
            Some(_) => {}
        }
    }

    // Each dimension's value: the request's, the task's default, or a fallback after it — past the
    // values the task does not allow and those whose own quota cannot take the request.
    let input = req.input_tokens.unwrap_or(0);
    let mut left_here = Left {
        input_tokens: left.input_tokens,
        output_tokens: left.output_tokens,
        requests: left.requests,
    };
    for (name, order) in &policy.dimensions {
        // Every policy dimension has its key in `shaped`: null when no value may be used.
        shaped.insert(name.clone(), Value::Null);
        let asked = req.dimensions.get(name).filter(|v| order.contains(v));
        if req.dimensions.contains_key(name) && asked.is_none() {
            continue; // already a reason above
        }
        let dim_rule = rule.and_then(|r| r.dimensions.get(name));
        let allowed = |v: &String| dim_rule.is_none_or(|d| d.allowed.contains(v));
        let wanted = asked
            .or(dim_rule.and_then(|d| d.default.as_ref()))
            .or(dim_rule.and_then(|d| d.allowed.first()));
        let Some(wanted) = wanted else {
            continue;
        };
        let scoped = |v: &String| {
            left.scoped
                .get(&(name.clone(), v.clone()))
                .copied()
                .unwrap_or_default()
        };
        let start = order.iter().position(|v| v == wanted).unwrap_or(0);
        let pick = order[start..]
            .iter()
            .find(|v| allowed(v) && !scoped(v).exhausted(input));
        match pick {
            Some(to) => {
                if to != wanted {
                    let why = if allowed(wanted) {
                        format!("'{wanted}' has no quota left for this request; using '{to}'")
                    } else {
                        format!("'{wanted}' is not allowed for this task; using '{to}'")
                    };
                    reasons.push(reason(
                        "fallback",
                        why,
                        json!({"dimension": name, "requested": wanted, "value": to,
                               "quota_exhausted": allowed(wanted)}),
                    ));
                }
                left_here = left_here.min(scoped(to));
                shaped.insert(name.clone(), json!(to));
            }
            None if order[start..].iter().any(allowed) => deny(
                reason(
                    "dimension_quota_exhausted",
                    format!("no quota is left for '{wanted}' nor for any allowed value after it"),
                    json!({"dimension": name, "value": wanted}),
                ),
                &mut reasons,
            ),
            None => deny(
                reason(
                    "dimension_value_not_allowed",
                    format!(
                        "'{wanted}' is not allowed for this task and no allowed value comes after it"
                    ),
                    json!({"dimension": name, "value": wanted,
                           "allowed": dim_rule.map(|d| d.allowed.clone()).unwrap_or_default()}),
                ),
                &mut reasons,
            ),
        }
    }
    let left = &left_here;

    // Caps per request (the task's replace the plan's).
    let input_cap = rule
        .and_then(|r| r.max_input_tokens)
        .or(policy.max_input_tokens);
    let output_cap = rule
        .and_then(|r| r.max_output_tokens)
        .or(policy.max_output_tokens);
    if let (Some(n), Some(cap)) = (req.input_tokens, input_cap) {
        if n > cap {
            deny(
                reason(
                    "input_tokens_over_cap",
                    format!("{n} input tokens; at most {cap} per request"),
                    json!({"input_tokens": n, "limit": cap}),
                ),
                &mut reasons,
            );
        }
    }

    // Quotas.
    if let Some(r) = left.requests {
        if r < Decimal::ONE {
            deny(
                reason(
                    "request_quota_exhausted",
                    format!(
                        "no request left of the '{}' quota",
                        policy.quota.requests.as_deref().unwrap_or("")
                    ),
                    json!({"resource_type": policy.quota.requests, "remaining": whole(r)}),
                ),
                &mut reasons,
            );
        }
    }
    if let Some(r) = left.input_tokens {
        let have = whole(r);
        let need = req.input_tokens.unwrap_or(0);
        if have == 0 || need > have {
            deny(
                reason(
                    "input_quota_exhausted",
                    format!("{need} input tokens asked, {have} left"),
                    json!({"resource_type": policy.quota.input_tokens, "remaining": have}),
                ),
                &mut reasons,
            );
        }
    }
    let mut max_out = req.max_output_tokens;
    for bound in [output_cap, left.output_tokens.map(whole)]
        .into_iter()
        .flatten()
    {
        max_out = Some(max_out.map_or(bound, |m| m.min(bound)));
    }
    if left.output_tokens.map(whole) == Some(0) {
        deny(
            reason(
                "output_quota_exhausted",
                "no output tokens left".into(),
                json!({"resource_type": policy.quota.output_tokens, "remaining": 0}),
            ),
            &mut reasons,
        );
    } else if let (Some(asked), Some(got)) = (req.max_output_tokens, max_out) {
        if got < asked {
            reasons.push(reason(
                "max_output_tokens_reduced",
                format!("{asked} output tokens asked; at most {got} allowed"),
                json!({"requested": asked, "value": got}),
            ));
        }
    }
    shaped.insert("input_tokens".into(), json!(req.input_tokens));
    shaped.insert("max_output_tokens".into(), json!(max_out));
    Decision {
        allowed: !denied,
        reasons,
        shaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;

    fn policy() -> AccessPolicy {
        let doc = json!({
            "resources": [{"resource_type": "in", "kind": "metered"},
                          {"resource_type": "out", "kind": "metered"},
                          {"resource_type": "req", "kind": "metered"}],
            "plans": [{"plan_id": "pro", "policy": {
                "dimensions": {"model_class": ["ADVANCED", "PRO_L", "PRO_M", "BASE_S"]},
                "tasks": {
                    "PRIOR_ART": {"model_class": {"allowed": ["BASE_S", "PRO_M"], "default": "PRO_M"}},
                    "DIAGRAM": {"model_class": {"allowed": ["PRO_L"]}, "max_output_tokens": 2000}
                },
                "max_input_tokens": 10000, "max_output_tokens": 8000,
                "quota": {"input_tokens": "in", "output_tokens": "out", "requests": "req"}
            }}]
        });
        let cat = catalog::validate(&doc).unwrap();
        cat.plans[0].policy.clone().unwrap()
    }

    fn req(v: Value) -> Request {
        Request::parse(&v).unwrap()
    }

    fn codes(d: &Decision) -> Vec<&str> {
        d.reasons
            .iter()
            .filter_map(|r| r["code"].as_str())
            .collect()
    }

    #[test]
    fn default_fallback_and_caps() {
        let p = policy();
        let none = Remaining::default();
        let d = decide(
            Some(&p),
            &req(json!({"task": "PRIOR_ART", "input_tokens": 5})),
            &none,
        );
        assert!(d.allowed);
        assert_eq!(d.shaped["model_class"], "PRO_M");
        assert_eq!(d.shaped["max_output_tokens"], 8000);

        let d = decide(
            Some(&p),
            &req(
                json!({"task": "PRIOR_ART", "dimensions": {"model_class": "ADVANCED"},
                        "max_output_tokens": 9000}),
            ),
            &none,
        );
        assert!(d.allowed);
        assert_eq!(d.shaped["model_class"], "PRO_M");
        assert_eq!(d.shaped["max_output_tokens"], 8000);
        assert_eq!(codes(&d), ["fallback", "max_output_tokens_reduced"]);

        let d = decide(
            Some(&p),
            &req(json!({"task": "DIAGRAM", "dimensions": {"model_class": "BASE_S"}})),
            &none,
        );
        assert!(!d.allowed);
        assert_eq!(codes(&d), ["dimension_value_not_allowed"]);
        let d = decide(Some(&p), &req(json!({"task": "DIAGRAM"})), &none);
        assert_eq!(d.shaped["model_class"], "PRO_L");
        assert_eq!(d.shaped["max_output_tokens"], 2000);
    }

    #[test]
    fn every_deny_reason_is_listed() {
        let p = policy();
        let left = Remaining {
            input_tokens: Some(Decimal::from(100)),
            output_tokens: Some(Decimal::new(5, 1)),
            requests: Some(Decimal::ZERO),
            ..Remaining::default()
        };
        let d = decide(
            Some(&p),
            &req(
                json!({"task": "NOPE", "dimensions": {"colour": "red", "model_class": "X"},
                        "input_tokens": 20000}),
            ),
            &left,
        );
        assert!(!d.allowed);
        assert_eq!(
            codes(&d),
            [
                "task_not_allowed",
                "unknown_dimension",
                "dimension_value_not_allowed",
                "input_tokens_over_cap",
                "request_quota_exhausted",
                "input_quota_exhausted",
                "output_quota_exhausted"
            ]
        );
    }

    #[test]
    fn quota_shapes_output_near_the_end() {
        let p = policy();
        let left = Remaining {
            output_tokens: Some(Decimal::new(3009, 1)),
            ..Remaining::default()
        };
        let d = decide(
            Some(&p),
            &req(json!({"task": "PRIOR_ART", "max_output_tokens": 2000})),
            &left,
        );
        assert!(d.allowed);
        assert_eq!(d.shaped["max_output_tokens"], 300);
        assert_eq!(codes(&d), ["max_output_tokens_reduced"]);
    }

    #[test]
    fn a_class_without_quota_left_falls_back_and_shapes_by_its_own() {
        let p = policy();
        let scoped = |dim: &str, v: &str| (dim.to_string(), v.to_string());
        let mut left = Remaining {
            output_tokens: Some(Decimal::from(5000)),
            ..Remaining::default()
        };
        left.scoped.insert(
            scoped("model_class", "PRO_M"),
            Left {
                output_tokens: Some(Decimal::ZERO),
                ..Left::default()
            },
        );
        left.scoped.insert(
            scoped("model_class", "BASE_S"),
            Left {
                output_tokens: Some(Decimal::from(700)),
                ..Left::default()
            },
        );
        // PRO_M (the default) has nothing left: BASE_S, the next allowed, with its own 700
        let d = decide(
            Some(&p),
            &req(json!({"task": "PRIOR_ART", "max_output_tokens": 2000})),
            &left,
        );
        assert!(d.allowed, "{:?}", d.reasons);
        assert_eq!(d.shaped["model_class"], "BASE_S");
        assert_eq!(d.shaped["max_output_tokens"], 700);
        assert_eq!(codes(&d), ["fallback", "max_output_tokens_reduced"]);
        assert_eq!(d.reasons[0]["quota_exhausted"], true);
        // nothing left after BASE_S either: denied for the quota, not the class
        left.scoped.insert(
            scoped("model_class", "BASE_S"),
            Left {
                output_tokens: Some(Decimal::ZERO),
                ..Left::default()
            },
        );
        let d = decide(Some(&p), &req(json!({"task": "PRIOR_ART"})), &left);
        assert!(!d.allowed);
        assert_eq!(codes(&d), ["dimension_quota_exhausted"]);
    }

    #[test]
    fn no_policy_allows_as_asked_and_bad_requests_are_refused() {
        let d = decide(
            None,
            &req(json!({"task": "x", "input_tokens": 7})),
            &Remaining::default(),
        );
        assert!(d.allowed && d.reasons.is_empty());
        assert_eq!(d.shaped["input_tokens"], 7);
        assert_eq!(req(json!({"input_tokens": 3.0})).input_tokens, Some(3));
        for bad in [
            json!([]),
            json!({"input_tokens": -1}),
            json!({"input_tokens": 1.5}),
            json!({"input_tokens": "3"}),
            json!({"task": ""}),
            json!({"dimensions": {"m": 1}}),
            json!({"max_tokens": 1}),
        ] {
            assert!(Request::parse(&bad).is_err(), "{bad}");
        }
    }
}
