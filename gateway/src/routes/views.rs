//! `GET|HEAD /api/<view>`: PostgREST reads of the views of schema `mec`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::respond::{
    content_range, first_element, json_response, single_object_error, JSON, OBJECT,
};
use crate::db::schema::{closest, not_loaded, SCHEMA};
use crate::db::{self, Caller, RequestCtx};
use crate::error::ApiError;
use crate::infra::auth::Claims;
use crate::plan::read::ReadPlan;
use crate::request::headers::{
    check_profile, negotiate, parse_range_header, prefers_count, Accept,
};
use crate::request::query::{parse_read, query_pairs};
use crate::sql;
use crate::AppState;

pub async fn read(
    State(state): State<AppState>,
    claims: Claims,
    path: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = path.map(|Path(v)| v).unwrap_or_default();
    read_view(&state, &claims, &name, &method, &uri, &headers, None).await
}

/// A PostgREST read of view `name` with the request's query, `default_order` when it names none.
pub async fn read_view(
    state: &AppState,
    claims: &Claims,
    name: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    default_order: Option<&str>,
) -> Result<Response, ApiError> {
    // Parse.
    check_profile(headers)?;
    let accept = negotiate(headers)?;
    let mut pairs = query_pairs(uri.query());
    if let Some(order) = default_order {
        if !pairs.iter().any(|(k, _)| k == "order") {
            pairs.push(("order".into(), order.into()));
        }
    }
    let req = parse_read(&pairs)?;
    let range = (method == Method::GET)
        .then(|| parse_range_header(headers))
        .flatten();
    // Plan.
    let cache = state.schema.get().ok_or_else(not_loaded)?;
    let Some(view) = cache.views.get(name) else {
        let hint = closest(name, cache.views.keys())
            .map(|n| format!("Perhaps you meant the view {SCHEMA}.{n}"));
        return Err(ApiError::sqlstate(
            "42P01",
            format!("relation \"{SCHEMA}.{name}\" does not exist"),
            hint,
        ));
    };
    let plan = ReadPlan::new(view, &req, range, prefers_count(headers))?;
    // SQL, run.
    let sql = sql::read::build(&plan)?;
    let ctx = RequestCtx {
        caller: Caller::Token(claims),
        method: method.as_str(),
        path: uri.path(),
        headers,
        read_only: true,
    };
    let rows = db::run(&state.pools, &ctx, &sql.text, &sql.params).await?;
    let row = rows
        .first()
        .ok_or_else(|| ApiError::Internal("read returned no row".into()))?;
    let body: String = db::column(row, "body")?;
    let n: i64 = db::column(row, "n")?;
    let total: Option<i64> = db::column(row, "total")?;
    // Answer.
    let (status, range) = content_range(plan.offset, n as u64, total.map(|t| t as u64));
    if status == StatusCode::RANGE_NOT_SATISFIABLE {
        let mut e = ApiError::api(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "PGRST103",
            "Requested range not satisfiable",
        );
        if let Some(t) = total {
            e = e.with_details(format!(
                "An offset of {} was requested, but there are only {t} rows.",
                plan.offset
            ));
        }
        let mut resp = e.into_response();
        if let Ok(v) = range.parse() {
            resp.headers_mut().insert("content-range", v);
        }
        return Ok(resp);
    }
    if accept == Accept::Object {
        if n != 1 {
            return Err(single_object_error(n));
        }
        let first = first_element(&body)?;
        return Ok(json_response(StatusCode::OK, first, &range, OBJECT));
    }
    Ok(json_response(status, body, &range, JSON))
}
