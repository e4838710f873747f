//! `GET|HEAD /api/<view>`: PostgREST reads of the views of schema `mec`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

use super::rpc::{schema_not_loaded, single_object_error};
use super::{check_profile, first_element, json_response, negotiate, Accept, JSON, OBJECT};
use crate::auth::Claims;
use crate::db::{self, RequestCtx};
use crate::error::ApiError;
use crate::query::{
    build_read, content_range, effective_range, parse_range_header, parse_read, prefers_count,
    query_pairs,
};
use crate::schema_cache::{closest, SCHEMA};
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
    check_profile(&headers)?;
    let accept = negotiate(&headers)?;
    let cache = state.schema.get().ok_or_else(schema_not_loaded)?;
    let Some(view) = cache.views.get(&name) else {
        let hint = closest(&name, cache.views.keys())
            .map(|n| format!("Perhaps you meant the view {SCHEMA}.{n}"));
        return Err(ApiError::sqlstate(
            "42P01",
            format!("relation \"{SCHEMA}.{name}\" does not exist"),
            hint,
        ));
    };
    let req = parse_read(&query_pairs(uri.query()))?;
    let range_header = if method == Method::GET {
        parse_range_header(&headers)
    } else {
        None
    };
    let (offset, limit) = effective_range(req.limit, req.offset, range_header);
    let count = prefers_count(&headers);
    let sql = build_read(view, &req, offset, limit, count)?;
    let ctx = RequestCtx {
        claims: &claims,
        method: method.as_str(),
        path: uri.path(),
        headers: &headers,
        read_only: true,
    };
    let rows = db::run(&state.pools, &ctx, &sql.text, &sql.params).await?;
    let row = rows
        .first()
        .ok_or_else(|| ApiError::Internal("read returned no row".into()))?;
    let body: String = row.get(0);
    let n: i64 = row.get(1);
    let total: Option<i64> = row.get(2);
    let (status, range) = content_range(offset, n as u64, total.map(|t| t as u64));
    if status == StatusCode::RANGE_NOT_SATISFIABLE {
        let mut e = ApiError::api(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "PGRST103",
            "Requested range not satisfiable",
        );
        if let Some(t) = total {
            e = e.with_details(format!(
                "An offset of {offset} was requested, but there are only {t} rows."
            ));
        }
        let mut resp = axum::response::IntoResponse::into_response(e);
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
