//! `POST /api/rpc/<fn>` (JSON object of named arguments) and `GET|HEAD /api/rpc/<fn>?arg=…`
//! (read-only functions only).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;

use super::{
    check_profile, first_element, json_response, negotiate, read_body, Accept, JSON, OBJECT,
};
use crate::auth::Claims;
use crate::db::{self, RequestCtx};
use crate::error::ApiError;
use crate::query::{prefers_count, query_pairs, quote_ident, Sql, RESERVED};
use crate::schema_cache::{closest, Function, SchemaCache, Volatility, SCHEMA};
use crate::AppState;

/// One argument value as the client sent it.
#[derive(Clone, Debug, PartialEq)]
pub enum Given {
    Null,
    /// A JSON string (POST), unescaped.
    Str(String),
    /// The JSON text of a number, boolean, object or array (POST).
    Raw(String),
    /// A query-string value (GET): passed as is.
    Query(String),
}

fn is_json_type(t: &str) -> bool {
    matches!(t, "json" | "jsonb")
}

/// The SQL expression for one argument, binding its value as text.
fn arg_expr(type_name: &str, given: &Given, sql: &mut Sql) -> String {
    match given {
        Given::Null => format!("{}::text::{type_name}", sql.bind(None)),
        Given::Query(v) => format!("{}::text::{type_name}", sql.bind(Some(v.clone()))),
        Given::Str(s) => {
            let v = if is_json_type(type_name) {
                serde_json::Value::String(s.clone()).to_string()
            } else {
                s.clone()
            };
            format!("{}::text::{type_name}", sql.bind(Some(v)))
        }
        Given::Raw(r) => {
            if type_name.ends_with("[]") && r.starts_with('[') {
                format!(
                    "ARRAY(SELECT jsonb_array_elements_text({}::text::jsonb))::{type_name}",
                    sql.bind(Some(r.clone()))
                )
            } else {
                format!("{}::text::{type_name}", sql.bind(Some(r.clone())))
            }
        }
    }
}

/// `SELECT <json text>, <row count> FROM mec."fn"("p_a" => $1::text::uuid, …)`.
/// Arguments are written in declared order so the statement text is stable for caching.
pub fn build_call(f: &Function, args: &HashMap<String, Given>, whole_body: Option<&str>) -> Sql {
    let mut sql = Sql::default();
    let call_args = if f.takes_whole_body() {
        let p = sql.bind(whole_body.map(str::to_string));
        format!("{p}::text::{}", f.args[0].type_name)
    } else {
        f.args
            .iter()
            .filter_map(|a| {
                args.get(&a.name).map(|g| {
                    format!(
                        "{} => {}",
                        quote_ident(&a.name),
                        arg_expr(&a.type_name, g, &mut sql)
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let call = format!(
        "{}.{}({call_args})",
        quote_ident(SCHEMA),
        quote_ident(&f.name)
    );
    sql.text = if f.returns_set {
        format!("SELECT coalesce(json_agg(_r), '[]')::text, count(*)::int8 FROM {call} _r")
    } else if f.return_type == "void" {
        format!("SELECT NULL::text, 0::int8 FROM {call} _r")
    } else if is_json_type(&f.return_type) {
        format!("SELECT ({call})::text, 1::int8")
    } else {
        format!("SELECT to_json({call})::text, 1::int8")
    };
    sql
}

fn signature(f: &Function) -> String {
    let mut names: Vec<&str> = f.args.iter().map(|a| a.name.as_str()).collect();
    names.sort_unstable();
    format!("{SCHEMA}.{}({})", f.name, names.join(", "))
}

/// 404 PGRST202 in PostgREST's words, with a hint naming what exists.
fn not_found(cache: &SchemaCache, name: &str, given: &[&str]) -> ApiError {
    let mut sorted: Vec<&str> = given.to_vec();
    sorted.sort_unstable();
    let list = sorted.join(", ");
    let hint = match cache.functions.get(name) {
        Some(overloads) => Some(format!(
            "Perhaps you meant to call the function {}",
            signature(&overloads[0])
        )),
        None => closest(name, cache.functions.keys()).map(|n| {
            format!(
                "Perhaps you meant to call the function {}",
                signature(&cache.functions[n][0])
            )
        }),
    };
    let e = ApiError::api(
        StatusCode::NOT_FOUND,
        "PGRST202",
        format!("Could not find the function {SCHEMA}.{name}({list}) in the schema cache"),
    )
    .with_details(format!(
        "Searched for the function {SCHEMA}.{name} with parameters {list} or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache."
    ));
    match hint {
        Some(h) => e.with_hint(h),
        None => e,
    }
}

pub(crate) fn schema_not_loaded() -> ApiError {
    ApiError::Unavailable {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "PGRST002",
        message: "Could not query the database for the schema cache. Retrying.",
        cause: "schema cache not loaded yet".into(),
    }
}

fn function_name(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(f)| f).map_err(|e| {
        ApiError::api(
            StatusCode::NOT_FOUND,
            "PGRST125",
            format!("Invalid path specified in request URL: {e}"),
        )
    })
}

fn classify(raw: &RawValue) -> Result<Given, ApiError> {
    let text = raw.get().trim();
    Ok(match text.as_bytes().first() {
        Some(b'n') => Given::Null,
        Some(b'"') => Given::Str(serde_json::from_str(text).map_err(|_| invalid_json())?),
        _ => Given::Raw(text.to_string()),
    })
}

fn invalid_json() -> ApiError {
    ApiError::api(StatusCode::BAD_REQUEST, "PGRST102", "Empty or invalid json")
}

struct Call<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    claims: &'a Claims,
}

async fn call(
    state: &AppState,
    c: Call<'_>,
    name: &str,
    args: HashMap<String, Given>,
    whole_body: Option<&str>,
) -> Result<Response, ApiError> {
    let accept = negotiate(c.headers)?;
    let cache = state.schema.get().ok_or_else(schema_not_loaded)?;
    let given: Vec<&str> = args.keys().map(String::as_str).collect();
    let f = cache
        .find_function(name, &given)
        .filter(|f| !f.takes_whole_body() || whole_body.is_some())
        .ok_or_else(|| not_found(&cache, name, &given))?;
    let is_get = *c.method == Method::GET || *c.method == Method::HEAD;
    if is_get && !f.volatility.read_only() {
        return Err(ApiError::api(
            StatusCode::METHOD_NOT_ALLOWED,
            "PGRST101",
            format!(
                "Cannot use the {} method on RPC to the volatile function {SCHEMA}.{name}",
                c.method
            ),
        )
        .with_hint("Use POST"));
    }
    let sql = build_call(f, &args, whole_body);
    let ctx = RequestCtx {
        claims: c.claims,
        method: c.method.as_str(),
        path: c.uri.path(),
        headers: c.headers,
        read_only: f.volatility.read_only(),
    };
    // One value: one statement (see db.rs). Sets and void keep their FROM clause, and an
    // IMMUTABLE function with constant arguments may be evaluated while planning, before the
    // settings are set: those run in an explicit transaction.
    let rows = if f.returns_set || f.return_type == "void" || f.volatility == Volatility::Immutable
    {
        db::run(&state.pools, &ctx, &sql.text, &sql.params).await?
    } else {
        db::call(&state.pools, &ctx, &sql.text, &sql.params).await?
    };
    if f.return_type == "void" && !f.returns_set {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let row = rows
        .first()
        .ok_or_else(|| ApiError::Internal("function call returned no row".into()))?;
    let body: Option<String> = row.get(0);
    let n: i64 = row.get(1);
    let body = body.unwrap_or_else(|| "null".into());
    // When a count is asked for, Content-Range always carries a number.
    let total = if prefers_count(c.headers) {
        n.to_string()
    } else {
        "*".to_string()
    };
    if f.returns_set {
        let range = if n == 0 {
            format!("*/{total}")
        } else {
            format!("0-{}/{total}", n - 1)
        };
        if accept == Accept::Object {
            if n != 1 {
                return Err(single_object_error(n));
            }
            let first = first_element(&body)?;
            return Ok(json_response(StatusCode::OK, first, &range, OBJECT));
        }
        return Ok(json_response(StatusCode::OK, body, &range, JSON));
    }
    Ok(json_response(
        StatusCode::OK,
        body,
        &format!("0-0/{total}"),
        JSON,
    ))
}

/// 406 PGRST116 for `single()` with anything but one row.
pub fn single_object_error(n: i64) -> ApiError {
    ApiError::api(
        StatusCode::NOT_ACCEPTABLE,
        "PGRST116",
        "JSON object requested, multiple (or no) rows returned",
    )
    .with_details(format!("The result contains {n} rows"))
}

pub async fn rpc_post(
    State(state): State<AppState>,
    claims: Claims,
    path: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = function_name(path)?;
    check_profile(&headers)?;
    let bytes = read_body(body, state.config.max_body_bytes).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| invalid_json())?
        .trim();
    let text = if text.is_empty() { "{}" } else { text };
    // Validate first, so any malformed body is PGRST102 whatever the function.
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| invalid_json())?;
    let c = Call {
        method: &method,
        uri: &uri,
        headers: &headers,
        claims: &claims,
    };
    // A function with a single unnamed json/jsonb argument takes the body whole.
    if let Some(cache) = state.schema.get() {
        if let Some(overloads) = cache.functions.get(&name) {
            if overloads.len() == 1 && overloads[0].takes_whole_body() {
                return call(&state, c, &name, HashMap::new(), Some(text)).await;
            }
        }
    }
    if !value.is_object() {
        return Err(ApiError::api(
            StatusCode::BAD_REQUEST,
            "PGRST102",
            "Expected a JSON object of named arguments",
        ));
    }
    let raw: HashMap<String, Box<RawValue>> =
        serde_json::from_str(text).map_err(|_| invalid_json())?;
    let args = raw
        .into_iter()
        .map(|(k, v)| classify(&v).map(|g| (k, g)))
        .collect::<Result<HashMap<_, _>, _>>()?;
    call(&state, c, &name, args, None).await
}

/// GET and HEAD. A body (py 1.x sends `{}`) is ignored.
pub async fn rpc_get(
    State(state): State<AppState>,
    claims: Claims,
    path: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = function_name(path)?;
    check_profile(&headers)?;
    let args: HashMap<String, Given> = query_pairs(uri.query())
        .into_iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
        .map(|(k, v)| (k, Given::Query(v)))
        .collect();
    let c = Call {
        method: &method,
        uri: &uri,
        headers: &headers,
        claims: &claims,
    };
    call(&state, c, &name, args, None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema_cache::{Arg, Volatility};

    fn meter() -> Function {
        let arg = |n: &str, t: &str, d: bool| Arg {
            name: n.into(),
            type_name: t.into(),
            has_default: d,
        };
        Function {
            name: "meter_consumption".into(),
            args: vec![
                arg("p_idempotency_key", "text", false),
                arg("p_account_id", "uuid", false),
                arg("p_quantity", "numeric", false),
                arg("p_occurred_at", "timestamp with time zone", true),
                arg("p_metadata", "jsonb", true),
                arg("p_tags", "text[]", true),
            ],
            return_type: "jsonb".into(),
            returns_set: false,
            volatility: Volatility::Volatile,
            roles: vec![],
            description: None,
        }
    }

    #[test]
    fn call_sql() {
        let mut args = HashMap::new();
        args.insert("p_quantity".to_string(), Given::Raw("1.50".into()));
        args.insert("p_account_id".to_string(), Given::Str("a'b".into()));
        args.insert("p_idempotency_key".to_string(), Given::Null);
        args.insert("p_metadata".to_string(), Given::Str("x".into()));
        args.insert("p_tags".to_string(), Given::Raw("[\"a\",\"b\"]".into()));
        let sql = build_call(&meter(), &args, None);
        assert_eq!(
            sql.text,
            "SELECT (\"mec\".\"meter_consumption\"(\"p_idempotency_key\" => $1::text::text, \
             \"p_account_id\" => $2::text::uuid, \"p_quantity\" => $3::text::numeric, \
             \"p_metadata\" => $4::text::jsonb, \
             \"p_tags\" => ARRAY(SELECT jsonb_array_elements_text($5::text::jsonb))::text[]))::text, 1::int8"
        );
        assert_eq!(
            sql.params,
            vec![
                None,
                Some("a'b".into()),
                Some("1.50".into()),
                Some("\"x\"".into()),
                Some("[\"a\",\"b\"]".into())
            ]
        );
    }

    #[test]
    fn classify_values() {
        let v: HashMap<String, Box<RawValue>> = serde_json::from_str(
            r#"{"a": null, "b": "s\"t", "c": 12345678901234567890.123456789, "d": {"x": [1]}}"#,
        )
        .unwrap();
        assert_eq!(classify(&v["a"]).unwrap(), Given::Null);
        assert_eq!(classify(&v["b"]).unwrap(), Given::Str("s\"t".into()));
        // Numbers keep their exact text (no f64 round trip).
        assert_eq!(
            classify(&v["c"]).unwrap(),
            Given::Raw("12345678901234567890.123456789".into())
        );
        assert_eq!(
            classify(&v["d"]).unwrap(),
            Given::Raw("{\"x\": [1]}".into())
        );
    }
}
