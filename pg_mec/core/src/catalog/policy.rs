//! `$.plans[i].policy`: a plan's access policy, which `mec.check_policy` applies to one request
//! (see [`crate::access`] for the decision and docs/CONTRACT.md for the shape).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json::{check_keys, object, string, string_list, suggest, MAX_NAMES};
use super::kind::Kind;
use super::problem::{index_path, key_path, Problems};
use super::resources::Declared;

const KEYS: &[&str] = &[
    "dimensions",
    "tasks",
    "max_input_tokens",
    "max_output_tokens",
    "quota",
];
const QUOTA_KEYS: &[&str] = &["input_tokens", "output_tokens", "requests"];
const RULE_KEYS: &[&str] = &["allowed", "default"];
/// Keys of a task that are caps, not dimensions (so no dimension may be named so).
const TASK_CAPS: &[&str] = &["max_input_tokens", "max_output_tokens"];
/// Names a dimension may not take: they are keys of `shaped` or of the request.
const RESERVED: &[&str] = &[
    "task",
    "dimensions",
    "input_tokens",
    "max_input_tokens",
    "max_output_tokens",
];

/// A plan's access policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPolicy {
    /// Each dimension's values, best first: the fallback order.
    pub dimensions: BTreeMap<String, Vec<String>>,
    /// The tasks the plan may run; `None`: any task, no per-task rules.
    pub tasks: Option<BTreeMap<String, TaskRule>>,
    /// Most input tokens per request.
    pub max_input_tokens: Option<u64>,
    /// Most output tokens per request.
    pub max_output_tokens: Option<u64>,
    /// Resources whose remaining quota shapes a request.
    pub quota: Quota,
}

/// What one task may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRule {
    /// Per dimension: the values allowed and the default.
    pub dimensions: BTreeMap<String, DimensionRule>,
    /// Replaces the plan-wide cap for this task.
    pub max_input_tokens: Option<u64>,
    /// Replaces the plan-wide cap for this task.
    pub max_output_tokens: Option<u64>,
}

/// The values of one dimension a task allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimensionRule {
    /// Allowed values, in the dimension's order.
    pub allowed: Vec<String>,
    /// Used when the request names none; `None`: the best allowed value.
    pub default: Option<String>,
}

/// The resources that meter a request's tokens and the request itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub input_tokens: Option<String>,
    pub output_tokens: Option<String>,
    pub requests: Option<String>,
}

/// Validates the policy at `path` against the declared resources.
pub(crate) fn validate(
    v: &Value,
    declared: &Declared,
    path: &str,
    probs: &mut Problems,
) -> Option<AccessPolicy> {
    let obj = object(v, path, probs)?;
    let before = probs.len();
    check_keys(obj, KEYS, path, probs);
    let mut policy = AccessPolicy::default();

    if let Some(d) = obj.get("dimensions") {
        let d_path = key_path(path, "dimensions");
        if let Some(dims) = object(d, &d_path, probs) {
            for (name, values) in dims {
                let at = key_path(&d_path, name);
                if RESERVED.contains(&name.as_str()) {
                    probs.push(
                        &at,
                        format!("'{name}' is reserved; name the dimension otherwise"),
                    );
                    continue;
                }
                if let Some(list) = string_list(values, &at, probs) {
                    policy.dimensions.insert(name.clone(), list);
                }
            }
        }
    }
    policy.max_input_tokens = cap(obj, "max_input_tokens", path, probs);
    policy.max_output_tokens = cap(obj, "max_output_tokens", path, probs);

    if let Some(t) = obj.get("tasks") {
        let t_path = key_path(path, "tasks");
        if let Some(tasks) = object(t, &t_path, probs) {
            if tasks.len() > MAX_NAMES {
                probs.push(&t_path, format!("at most {MAX_NAMES} tasks"));
            }
            let mut out = BTreeMap::new();
            for (name, rule) in tasks {
                let at = key_path(&t_path, name);
                if name.is_empty() {
                    probs.push(&at, "a task name must not be empty");
                    continue;
                }
                if let Some(r) = task_rule(rule, &policy.dimensions, &at, probs) {
                    out.insert(name.clone(), r);
                }
            }
            policy.tasks = Some(out);
        }
    }

    if let Some(q) = obj.get("quota") {
        let q_path = key_path(path, "quota");
        if let Some(quota) = object(q, &q_path, probs) {
            check_keys(quota, QUOTA_KEYS, &q_path, probs);
            let mut resource = |key: &str| -> Option<String> {
                let v = quota.get(key)?;
                let at = key_path(&q_path, key);
                let name = string(v, &at, probs)?;
                match declared.get(&name) {
                    None => {
                        let names: Vec<&str> = declared.keys().map(String::as_str).collect();
                        let hint = suggest(&name, &names)
                            .map(|s| format!(" (did you mean '{s}'?)"))
                            .unwrap_or_default();
                        probs.push(
                            &at,
                            format!("unknown resource type '{name}'{hint}: declare it under $.resources"),
                        );
                        None
                    }
                    Some(Some(Kind::Metered | Kind::Rate)) => Some(name),
                    Some(Some(kind)) => {
                        probs.push(
                            &at,
                            format!(
                                "'{name}' is a {} resource; a quota must be metered or rate",
                                kind.as_str()
                            ),
                        );
                        None
                    }
                    // Declared but broken: its declaration already has a problem.
                    Some(None) => None,
                }
            };
            policy.quota = Quota {
                input_tokens: resource("input_tokens"),
                output_tokens: resource("output_tokens"),
                requests: resource("requests"),
            };
        }
    }
    (probs.len() == before).then_some(policy)
}

fn task_rule(
    v: &Value,
    dimensions: &BTreeMap<String, Vec<String>>,
    path: &str,
    probs: &mut Problems,
) -> Option<TaskRule> {
    let obj = object(v, path, probs)?;
    let mut rule = TaskRule {
        max_input_tokens: cap(obj, "max_input_tokens", path, probs),
        max_output_tokens: cap(obj, "max_output_tokens", path, probs),
        ..TaskRule::default()
    };
    for (name, value) in obj {
        if TASK_CAPS.contains(&name.as_str()) {
            continue;
        }
        let at = key_path(path, name);
        let Some(order) = dimensions.get(name) else {
            let mut names: Vec<&str> = dimensions.keys().map(String::as_str).collect();
            names.extend(TASK_CAPS);
            let hint = suggest(name, &names)
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            probs.push(
                &at,
                format!("unknown key '{name}'{hint}: a task lists caps and the dimensions declared under policy.dimensions"),
            );
            continue;
        };
        let Some(r) = object(value, &at, probs) else {
            continue;
        };
        check_keys(r, RULE_KEYS, &at, probs);
        let a_path = key_path(&at, "allowed");
        let Some(allowed) = r
            .get("allowed")
            .and_then(|a| string_list(a, &a_path, probs))
        else {
            if !r.contains_key("allowed") {
                probs.push(&at, "missing required key 'allowed'");
            }
            continue;
        };
        let mut ok = true;
        for (i, value) in allowed.iter().enumerate() {
            if !order.contains(value) {
                probs.push(
                    &index_path(&a_path, i),
                    format!(
                        "'{value}' is not a value of dimension '{name}' ({})",
                        order.join(", ")
                    ),
                );
                ok = false;
            }
        }
        let default = match r.get("default") {
            None => None,
            Some(d) => {
                let d_path = key_path(&at, "default");
                let d = string(d, &d_path, probs);
                if let Some(d) = &d {
                    if !allowed.contains(d) {
                        probs.push(&d_path, format!("'{d}' is not among the allowed values"));
                        ok = false;
                    }
                }
                d
            }
        };
        if ok {
            // Kept in the dimension's order, whatever order the catalog listed them in.
            let allowed = order
                .iter()
                .filter(|v| allowed.contains(v))
                .cloned()
                .collect();
            rule.dimensions
                .insert(name.clone(), DimensionRule { allowed, default });
        }
    }
    Some(rule)
}

/// A whole number of tokens at `obj[key]`, when present.
fn cap(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
    probs: &mut Problems,
) -> Option<u64> {
    let v = obj.get(key)?;
    let n = v.as_u64().filter(|_| v.is_number());
    if n.is_none() {
        probs.push(
            &key_path(path, key),
            format!("must be a whole number of tokens (0 or more), not {v}"),
        );
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared() -> Declared {
        let mut d = Declared::new();
        d.insert("input_tokens".into(), Some(Kind::Metered));
        d.insert("output_tokens".into(), Some(Kind::Metered));
        d.insert("llm_requests".into(), Some(Kind::Rate));
        d.insert("seats".into(), Some(Kind::Gauge));
        d
    }

    fn run(v: Value) -> (Option<AccessPolicy>, Vec<String>) {
        let mut p = Problems::default();
        let policy = validate(&v, &declared(), "$.p", &mut p);
        (
            policy,
            p.into_vec().into_iter().map(|p| p.to_string()).collect(),
        )
    }

    #[test]
    fn good_policy_keeps_the_dimension_order() {
        let (p, probs) = run(json!({
            "dimensions": {"model_class": ["ADVANCED", "PRO_L", "PRO_M", "BASE_S"]},
            "tasks": {"DRAFT": {"model_class": {"allowed": ["BASE_S", "PRO_L"], "default": "BASE_S"},
                                "max_output_tokens": 10}},
            "max_input_tokens": 100, "max_output_tokens": 20,
            "quota": {"input_tokens": "input_tokens", "requests": "llm_requests"}
        }));
        assert!(probs.is_empty(), "{probs:?}");
        let p = p.unwrap();
        let draft = &p.tasks.as_ref().unwrap()["DRAFT"];
        assert_eq!(draft.dimensions["model_class"].allowed, ["PRO_L", "BASE_S"]);
        assert_eq!(draft.max_output_tokens, Some(10));
        assert_eq!(p.quota.requests.as_deref(), Some("llm_requests"));
        assert_eq!(p.quota.output_tokens, None);
        let back: AccessPolicy = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn every_problem_has_its_path() {
        let (p, probs) = run(json!({
            "dimensions": {"model_class": ["A", "B"], "size": ["s", "s"], "task": ["x"], "region": []},
            "tasks": {"T": {"model_class": {"allowed": ["C"], "default": "B"}, "colour": {},
                            "max_input_tokens": -1},
                      "U": {"model_class": {"default": "B", "best": "A"}}},
            "max_output_tokens": 1.5,
            "quota": {"input_tokens": "input_token", "output_tokens": "seats", "other": "x"},
            "extra": 1
        }));
        assert!(p.is_none());
        let want = [
            "$.p.extra: unknown key 'extra'",
            "$.p.dimensions.size[1]: 's' is listed twice",
            "$.p.dimensions.region: must list 1 to 256 values",
            "$.p.dimensions.task: 'task' is reserved",
            "$.p.max_output_tokens: must be a whole number",
            "$.p.tasks.T.max_input_tokens: must be a whole number",
            "$.p.tasks.T.colour: unknown key 'colour'",
            "$.p.tasks.T.model_class.allowed[0]: 'C' is not a value of dimension 'model_class'",
            "$.p.tasks.T.model_class.default: 'B' is not among the allowed values",
            "$.p.tasks.U.model_class.best: unknown key 'best'",
            "$.p.tasks.U.model_class: missing required key 'allowed'",
            "$.p.quota.other: unknown key 'other'",
            "$.p.quota.input_tokens: unknown resource type 'input_token' (did you mean 'input_tokens'?)",
            "$.p.quota.output_tokens: 'seats' is a gauge resource",
        ];
        for w in want {
            assert!(
                probs.iter().any(|g| g.starts_with(w)),
                "wanted {w}\n got {probs:#?}"
            );
        }
    }
}
