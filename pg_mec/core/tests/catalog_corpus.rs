//! The JSON Schema (`sql/catalog.schema.json`) and `catalog::validate` agree on every sample.
//!
//! Samples come from `tests/catalogs/cases.json` (see the README beside it) and `sql/demo/*.json`.
//! Cases marked `semantic` break a rule no JSON Schema can state (declared-resource references,
//! kind-dependent entitlement shapes, uniqueness by key, decimal range): there the validator must
//! reject and the schema must accept, so the marking itself is checked too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use pg_mec_core::catalog::{self, Problem};
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema() -> jsonschema::Validator {
    let schema = read_json(&repo_root().join("sql/catalog.schema.json"));
    jsonschema::validator_for(&schema).expect("catalog.schema.json compiles")
}

fn schema_errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn base_resources() -> Value {
    json!([
        {"resource_type": "m", "kind": "metered"},
        {"resource_type": "g", "kind": "gauge"},
        {"resource_type": "c", "kind": "concurrency"},
        {"resource_type": "r", "kind": "rate", "window_seconds": 60},
        {"resource_type": "f", "kind": "feature"}
    ])
}

fn case_doc(case: &Value) -> Value {
    if let Some(doc) = case.get("catalog") {
        return doc.clone();
    }
    let mut doc = json!({
        "resources": base_resources(),
        "plans": case.get("plans").cloned().unwrap_or_else(|| json!([])),
    });
    if let Some(extra) = case.get("extra").and_then(Value::as_object) {
        for (k, v) in extra {
            doc[k] = v.clone();
        }
    }
    doc
}

fn sorted_paths(problems: &[Problem]) -> Vec<String> {
    let mut paths: Vec<String> = problems.iter().map(|p| p.path.clone()).collect();
    paths.sort();
    paths
}

#[test]
fn schema_and_validator_agree_on_the_corpus() {
    let validator = schema();
    let cases = read_json(&repo_root().join("pg_mec/core/tests/catalogs/cases.json"));
    let cases = cases.as_array().expect("cases.json is an array");
    assert!(cases.len() >= 50, "the corpus shrank to {}", cases.len());
    let mut names = BTreeSet::new();
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("case has a name");
        assert!(names.insert(name), "duplicate case name {name}");
        let expect = case["expect"].as_str().expect("case has expect");
        let doc = case_doc(case);
        let ours = catalog::validate(&doc);
        let schema_errs = schema_errors(&validator, &doc);
        let (want_ours, want_schema) = match expect {
            "valid" => (true, true),
            "invalid" => (false, false),
            "semantic" => (false, true),
            other => panic!("{name}: unknown expect {other}"),
        };
        if ours.is_ok() != want_ours || schema_errs.is_empty() != want_schema {
            failures.push(format!(
                "{name} ({expect}): validate {:?}; schema {:?}",
                ours.as_ref()
                    .map(|_| "ok")
                    .map_err(|p| p.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
                schema_errs
            ));
            continue;
        }
        if let (Err(problems), Some(want)) = (&ours, case.get("problems")) {
            let mut want: Vec<String> =
                serde_json::from_value(want.clone()).expect("problems are paths");
            want.sort();
            let got = sorted_paths(problems);
            if got != want {
                failures.push(format!(
                    "{name}: problem paths {got:?}, wanted {want:?}: {problems:#?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn demo_files() -> Vec<PathBuf> {
    let dir = repo_root().join("sql/demo");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("catalog"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn demo_catalogs_are_valid_under_both() {
    let validator = schema();
    let files = demo_files();
    assert!(files.iter().any(|f| f.ends_with("catalog.json")));
    for file in files
        .iter()
        .filter(|f| !f.ends_with("catalog_invalid.json"))
    {
        let doc = read_json(file);
        if let Err(problems) = catalog::validate(&doc) {
            panic!("{}: {problems:#?}", file.display());
        }
        let errs = schema_errors(&validator, &doc);
        assert!(errs.is_empty(), "{}: {errs:#?}", file.display());
    }
}

#[test]
fn demo_catalog_content() {
    use pg_mec_core::{Decimal, Enforcement, Kind, Period};
    let doc = read_json(&repo_root().join("sql/demo/catalog.json"));
    let c = catalog::validate(&doc).expect("demo catalog is valid");
    let kinds: Vec<(&str, Kind)> = c
        .resources
        .iter()
        .map(|r| (r.resource_type.as_str(), r.kind))
        .collect();
    for want in [
        ("api_requests", Kind::Rate),
        ("benchmark_runs", Kind::Metered),
        ("storage_gb", Kind::Gauge),
        ("concurrent_jobs", Kind::Concurrency),
        ("code_generation", Kind::Feature),
        ("seats", Kind::Gauge),
    ] {
        assert!(kinds.contains(&want), "{want:?} in {kinds:?}");
    }
    assert_eq!(
        c.resource("api_requests").and_then(|r| r.window_seconds),
        Some(60)
    );
    assert_eq!(
        c.resource("benchmark_runs").and_then(|r| r.unit.as_deref()),
        Some("run")
    );
    assert_eq!(c.default_plan().map(|p| p.plan_id.as_str()), Some("free"));
    let starter = c.plan("starter").expect("starter");
    assert_eq!(starter.price_amount, Some(Decimal::new(2900, 2)));
    assert_eq!(
        starter.stripe_price_id.as_deref(),
        Some("price_starter_monthly")
    );
    assert_eq!(
        c.plan("growth").and_then(|p| p.price_amount),
        Some(Decimal::new(9900, 2))
    );
    let enterprise = c.plan("enterprise").expect("enterprise");
    assert_eq!(
        enterprise.entitlement("benchmark_runs").map(|e| e.limit),
        Some(None)
    );
    let enforcements: BTreeSet<&str> = c
        .plans
        .iter()
        .flat_map(|p| p.entitlements.iter().map(|e| e.enforcement.as_str()))
        .collect();
    assert_eq!(enforcements.len(), 3, "{enforcements:?}");
    let runs = starter.entitlement("benchmark_runs").expect("runs");
    assert_eq!(runs.enforcement, Enforcement::Capped);
    let free_runs = c.plan("free").and_then(|p| p.entitlement("benchmark_runs"));
    assert_eq!(free_runs.and_then(|e| e.period), Some(Period::Day));
    assert!(
        !c.plan("free")
            .and_then(|p| p.entitlement("code_generation"))
            .expect("cg")
            .enabled
    );
}

#[test]
fn demo_invalid_catalog_reports_every_problem() {
    let doc = read_json(&repo_root().join("sql/demo/catalog_invalid.json"));
    let problems = catalog::validate(&doc).expect_err("catalog_invalid.json is invalid");
    let mut want = vec![
        "$.currency",
        "$.billable_statuses[1]",
        "$.resources[0]",
        "$.resources[1].kind",
        "$.resources[2].window_seconds",
        "$.resources[3].resource_type",
        "$.plans[0].entitlements.concurrent_jobs.limit",
        "$.plans[0].entitlements.code_generation.limit",
        "$.plans[0].entitlements.code_generation",
        "$.plans[0].entitlements.gpu_hours",
        "$.plans[1].plan_id",
        "$.plans[1].price.amount",
        "$.plans[1].price.interval",
        "$.plans[1].default",
        "$.plans[1].entitlements.concurrent_jobs.enforcment",
        "$.plans[1].entitlements.concurrent_jobs.limit",
        "$.plans[1].entitlements.code_generation",
        "$.plans[2].entitlements.concurrent_jobs",
        "$.alerts.thresholds[0]",
        "$.apply",
    ];
    want.sort_unstable();
    assert_eq!(sorted_paths(&problems), want, "{problems:#?}");
    assert!(!schema_errors(&schema(), &doc).is_empty());
    // what the extension puts in the ME422 DETAIL
    let detail = serde_json::to_value(&problems).expect("problems serialize");
    assert!(detail[0]["path"].is_string() && detail[0]["message"].is_string());
}

#[test]
fn digest_ignores_formatting_and_key_order() {
    let path = repo_root().join("sql/demo/catalog.json");
    let doc = read_json(&path);
    let compact: Value =
        serde_json::from_str(&serde_json::to_string(&doc).expect("ser")).expect("de");
    assert_eq!(catalog::digest(&doc), catalog::digest(&compact));
    let mut changed = doc.clone();
    changed["plans"][1]["entitlements"]["seats"]["limit"] = json!(4);
    assert_ne!(catalog::digest(&doc), catalog::digest(&changed));
}
