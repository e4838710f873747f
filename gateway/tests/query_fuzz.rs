//! Property tests of the query-string parsers (`select`, filters, `and`/`or` trees, `order`,
//! `limit`/`offset`, `in` lists) and the SQL built from them.
//!
//! Whatever the query string, a read ends as SQL with bind parameters or as a 400 in PostgREST's
//! shape: never a panic, and never a recursion deep enough to overflow a stack. Every case runs
//! on a thread with a 256 KiB stack, an eighth of a tokio worker's, so a parser that recursed once
//! per nesting level without a bound fails here on the nested inputs the strategies make (up to
//! thousands of levels), long before a request could abort the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure

use std::thread;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use mec_gateway::db::schema::{Column, View};
use mec_gateway::error::ApiError;
use mec_gateway::plan::read::ReadPlan;
use mec_gateway::request::query::{parse_read, query_pairs, MAX_LOGIC_DEPTH};
use mec_gateway::sql;
use proptest::prelude::*;

const SMALL_STACK: usize = 256 * 1024;

fn view() -> View {
    let col = |name: &str, ty: &str| Column {
        name: name.into(),
        type_name: ty.into(),
    };
    View {
        name: "consumption".into(),
        columns: vec![
            col("resource_type", "text"),
            col("quantity", "numeric"),
            col("account_id", "uuid"),
            col("billable", "boolean"),
        ],
        roles: vec![],
        description: None,
    }
}

/// Parses and builds the read of `query` on a small stack: Ok, or the status of the error.
fn read_outcome(query: String) -> Result<(), StatusCode> {
    thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(move || {
            let pairs = query_pairs(Some(&query));
            let view = view();
            let built = parse_read(&pairs).and_then(|r| {
                ReadPlan::new(&view, &r, None, true).and_then(|p| sql::read::build(&p))
            });
            built
                .map(drop)
                .map_err(|e: ApiError| e.into_response().status())
        })
        .expect("spawn a parser thread")
        .join()
        .expect("the parser thread panicked or overflowed its stack")
}

/// A logic tree `levels` deep: `and(and(…(resource_type.eq.x)…))`, each level `prefix(` … `)`.
fn nested(prefixes: &[&str], levels: usize, leaf: &str) -> String {
    let mut s = String::new();
    for i in 0..levels {
        s.push_str(prefixes[i % prefixes.len()]);
    }
    s.push_str(leaf);
    s.push_str(&")".repeat(levels));
    s
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn the_reported_request_is_a_400() {
    // The query of the security report: or=(and(and(… 4000 levels …(resource_type.eq.x)…)))
    let q = format!(
        "or={}",
        enc(&format!(
            "({})",
            nested(&["and("], 4000, "resource_type.eq.x")
        ))
    );
    assert_eq!(read_outcome(q), Err(StatusCode::BAD_REQUEST));
}

#[test]
fn depth_up_to_the_bound_is_served_one_more_is_a_400() {
    // or=(…) is level 1; each and( adds one.
    let at = |levels: usize| {
        format!(
            "or={}",
            enc(&format!(
                "({})",
                nested(&["and("], levels - 1, "quantity.gt.1")
            ))
        )
    };
    assert_eq!(read_outcome(at(MAX_LOGIC_DEPTH)), Ok(()));
    assert_eq!(
        read_outcome(at(MAX_LOGIC_DEPTH + 1)),
        Err(StatusCode::BAD_REQUEST)
    );
    // The same bound for not.and / not.or and for the and= / not.or= parameters.
    let mixed = format!(
        "not.and={}",
        enc(&format!(
            "({})",
            nested(
                &["not.or(", "and(", "not.and(", "or("],
                MAX_LOGIC_DEPTH,
                "billable.is.true"
            )
        ))
    );
    assert_eq!(read_outcome(mixed), Err(StatusCode::BAD_REQUEST));
}

/// One query-string value: bits of PostgREST's grammar, junk, and deep nesting.
fn value() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("(".to_string()),
        Just(")".to_string()),
        Just(",".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just(".".to_string()),
        Just("*".to_string()),
        Just(":".to_string()),
        Just("::".to_string()),
        Just("->".to_string()),
        Just("and(".to_string()),
        Just("or(".to_string()),
        Just("not.".to_string()),
        Just("not.and(".to_string()),
        Just("eq.".to_string()),
        Just("in.(".to_string()),
        Just("is.null".to_string()),
        Just("desc.nullslast".to_string()),
        Just("resource_type".to_string()),
        Just("quantity".to_string()),
        "[a-z0-9_]{1,8}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    let flat = prop::collection::vec(token, 0..40).prop_map(|t| t.concat());
    let deep = (
        prop::sample::select(vec!["and(", "or(", "not.or(", "not.and(", "(", "in.("]),
        1usize..5000,
        prop::sample::select(vec!["quantity.eq.1", "x", "", "\"a,b\"", ")"]),
    )
        .prop_map(|(p, n, leaf)| format!("({})", nested(&[p], n, leaf)));
    prop_oneof![3 => flat, 1 => deep]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("select"),
        Just("order"),
        Just("limit"),
        Just("offset"),
        Just("or"),
        Just("and"),
        Just("not.or"),
        Just("not.and"),
        Just("resource_type"),
        Just("quantity"),
        Just("account_id"),
        Just("nope"),
    ];
    prop::collection::vec((key, value()), 0..6).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any query string: SQL, or a 400 (a malformed query), never anything else.
    #[test]
    fn any_query_string_is_sql_or_a_400(q in query()) {
        let outcome = read_outcome(q.clone());
        prop_assert!(
            matches!(outcome, Ok(()) | Err(StatusCode::BAD_REQUEST)),
            "{q}: {outcome:?}"
        );
    }

    /// Raw bytes as a query string (form decoding included).
    #[test]
    fn any_bytes_are_sql_or_a_400(raw in "\\PC{0,300}") {
        let outcome = read_outcome(raw.clone());
        prop_assert!(
            matches!(outcome, Ok(()) | Err(StatusCode::BAD_REQUEST)),
            "{raw}: {outcome:?}"
        );
    }
}
