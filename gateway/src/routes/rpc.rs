//! `POST /api/rpc/<fn>` (JSON object of named arguments) and `GET|HEAD /api/rpc/<fn>?arg=…`
//! (read-only functions only).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;

use super::respond::{
    content_range, first_element, json_response, single_object_error, JSON, OBJECT,
};
use crate::db::group::Outcome;
use crate::db::schema::not_loaded;
use crate::db::{self, Caller, RequestCtx};
use crate::error::ApiError;
use crate::infra::auth::Claims;
use crate::plan::call::CallPlan;
use crate::request::body::{classify, invalid_json, read_body, Given};
use crate::request::headers::{check_profile, negotiate, prefers_count, Accept};
use crate::request::query::{query_pairs, RESERVED};
use crate::sql;
use crate::AppState;

fn function_name(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(f)| f).map_err(|e| {
        ApiError::api(
            StatusCode::NOT_FOUND,
            "PGRST125",
            format!("Invalid path specified in request URL: {e}"),
        )
    })
}

struct Call<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    claims: &'a Claims,
}

/// Plan, build, run and answer a call of `name` with `args` (or the whole body).
async fn call(
    state: &AppState,
    c: Call<'_>,
    name: &str,
    args: HashMap<String, Given>,
    whole_body: Option<&str>,
) -> Result<Response, ApiError> {
    let accept = negotiate(c.headers)?;
    let cache = state.schema.get().ok_or_else(not_loaded)?;
    let plan = CallPlan::new(&cache, name, args, whole_body, c.method)?;
    let f = plan.function;
    let sql = sql::call::build(&plan);
    let ctx = RequestCtx {
        caller: Caller::Token(c.claims),
        method: c.method.as_str(),
        path: c.uri.path(),
        headers: c.headers,
        read_only: plan.read_only(),
    };
    let rows = if plan.needs_transaction() {
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
    let body: Option<String> = db::column(row, 0)?;
    let n: i64 = db::column(row, 1)?;
    let body = body.unwrap_or_else(|| "null".into());
    // When a count is asked for, Content-Range always carries a number.
    let total = prefers_count(c.headers).then_some(n as u64);
    let (_, range) = content_range(0, n as u64, total);
    if f.returns_set && accept == Accept::Object {
        if n != 1 {
            return Err(single_object_error(n));
        }
        let first = first_element(&body)?;
        return Ok(json_response(StatusCode::OK, first, &range, OBJECT));
    }
    Ok(json_response(StatusCode::OK, body, &range, JSON))
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
    // Concurrent meter_consumption calls of one caller share a transaction (db/group.rs); the
    // ticket counts this call in flight until it is answered, grouped or alone.
    let mut _ticket = None;
    let grouping = name == "meter_consumption" && state.schema.get().is_some();
    if let (Some(group), true) = (state.group_commit.as_ref(), grouping) {
        if let Some(event) = grouped_event(&method, &uri, &headers, text) {
            let ticket = group.enter(&claims);
            match group
                .submit(&ticket, &state.pools, &claims, &headers, event)
                .await
            {
                Outcome::Recorded(v) => {
                    let (_, range) = content_range(0, 1, None);
                    return Ok(json_response(StatusCode::OK, v.to_string(), &range, JSON));
                }
                Outcome::Rejected(err) => {
                    return Err(ApiError::Db {
                        err,
                        instance: Some(uri.path().to_string()),
                    })
                }
                Outcome::Unavailable(e) => return Err(e),
                Outcome::Alone => _ticket = Some(ticket),
            }
        }
    }
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

/// The batch event of a `meter_consumption` call that may be grouped: a plain JSON POST (no query
/// string, no `Prefer`, JSON accepted) whose arguments are the function's (no `p_occurred_at`), typed
/// as both the batch and Postgres read them alike. Values are passed as sent (numbers keep every
/// digit). `None`: the call runs alone.
fn grouped_event(method: &Method, uri: &Uri, headers: &HeaderMap, body: &str) -> Option<String> {
    // No p_occurred_at: Postgres reads more instants than the batch's RFC 3339 (and rounds what
    // the batch would truncate), so a dated call runs alone.
    const FIELDS: [&str; 7] = [
        "idempotency_key",
        "account_id",
        "resource_type",
        "quantity",
        "metadata",
        "http_status",
        "dimensions",
    ];
    if method != Method::POST
        || uri.query().is_some()
        || headers.contains_key("prefer")
        || !matches!(negotiate(headers), Ok(Accept::Json))
    {
        return None;
    }
    let raw: HashMap<String, Box<RawValue>> = serde_json::from_str(body).ok()?;
    let mut fields = Vec::with_capacity(raw.len());
    for (name, v) in &raw {
        let field = name.strip_prefix("p_").filter(|f| FIELDS.contains(f))?;
        let typed = match serde_json::from_str::<serde_json::Value>(v.get()).ok()? {
            serde_json::Value::String(s) => match field {
                // blank strings are a call's own 22023
                "idempotency_key" | "resource_type" => !s.trim().is_empty(),
                // the hyphenated form only, as Postgres reads a uuid
                "account_id" => s.len() == 36 && uuid::Uuid::parse_str(&s).is_ok(),
                _ => false,
            },
            serde_json::Value::Number(n) => match field {
                "quantity" => true,
                "http_status" => n.is_i64(),
                _ => false,
            },
            serde_json::Value::Object(_) => matches!(field, "metadata" | "dimensions"),
            _ => false,
        };
        if !typed {
            return None;
        }
        fields.push(format!("{}:{}", serde_json::Value::from(field), v.get()));
    }
    let required = [
        "p_idempotency_key",
        "p_account_id",
        "p_resource_type",
        "p_quantity",
    ];
    if !required.iter().all(|k| raw.contains_key(*k)) {
        return None;
    }
    Some(format!("{{{}}}", fields.join(",")))
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
