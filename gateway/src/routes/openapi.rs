//! `GET /api/`: an OpenAPI 3.0 document of the functions and views of schema `mec`, and of the
//! gateway's own routes outside `/api` (`openapi_gateway.rs`). With a token, only what its role
//! may execute or select; without one, everything.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::db::schema::not_loaded;
use crate::db::schema::{Function, SchemaCache, View, SCHEMA};
use crate::error::ApiError;
use crate::infra::auth::{claims_from_headers, Role};
use crate::request::headers::check_profile;
use crate::AppState;

/// JSON Schema for a Postgres type name (`format_type` output).
pub fn type_schema(t: &str) -> Value {
    if let Some(inner) = t.strip_suffix("[]") {
        return json!({"type": "array", "items": type_schema(inner)});
    }
    match t {
        "uuid" => json!({"type": "string", "format": "uuid"}),
        "text" | "character varying" | "character" | "name" | "citext" => json!({"type": "string"}),
        "smallint" | "integer" => json!({"type": "integer", "format": "int32"}),
        "bigint" => json!({"type": "integer", "format": "int64"}),
        "numeric" | "real" | "double precision" => json!({"type": "number"}),
        "boolean" => json!({"type": "boolean"}),
        "timestamp with time zone" | "timestamp without time zone" => {
            json!({"type": "string", "format": "date-time"})
        }
        "date" => json!({"type": "string", "format": "date"}),
        "interval" => json!({"type": "string"}),
        "json" | "jsonb" => json!({}),
        other => json!({"type": "string", "description": format!("PostgreSQL type {other}")}),
    }
}

/// `schema` that also admits null (OpenAPI 3.0's `nullable`).
fn nullable(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema {
        o.insert("nullable".into(), Value::Bool(true));
    }
    schema
}

fn error_ref() -> Value {
    json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn function_paths(f: &Function) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for a in &f.args {
        let mut s = type_schema(&a.type_name);
        if let Value::Object(o) = &mut s {
            o.insert("x-pg-type".into(), a.type_name.clone().into());
        }
        props.insert(a.name.clone(), s);
        if !a.has_default {
            required.push(Value::String(a.name.clone()));
        }
    }
    // A function may return NULL (current_account without an account).
    let result = if f.returns_set {
        json!({"type": "array", "items": nullable(type_schema(&f.return_type))})
    } else {
        nullable(type_schema(&f.return_type))
    };
    let problem = |what: &str| {
        json!({"description": format!("{what} (RFC 9457 problem details)"),
               "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
    };
    let responses = json!({
        "200": {"description": "Result", "content": {"application/json": {"schema": result}}},
        "400": error_ref(), "401": error_ref(), "403": error_ref(), "404": error_ref(),
        "405": error_ref(), "409": error_ref(), "410": error_ref(), "413": error_ref(), "422": error_ref(),
        "402": problem("Payment overdue"),
        "429": problem("Limit reached"),
        "503": error_ref(), "504": error_ref(),
    });
    let summary = f
        .description
        .clone()
        .unwrap_or_else(|| format!("Call {SCHEMA}.{}", f.name));
    let mut item = Map::new();
    item.insert(
        "post".into(),
        json!({
            "summary": summary,
            "operationId": format!("rpc_{}", f.name),
            "tags": ["rpc"],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "properties": props, "required": required, "additionalProperties": false}}}},
            "responses": responses,
        }),
    );
    if f.volatility.read_only() {
        let params: Vec<Value> = f
            .args
            .iter()
            .map(|a| {
                json!({"name": a.name, "in": "query", "required": !a.has_default,
                       "schema": type_schema(&a.type_name)})
            })
            .collect();
        item.insert(
            "get".into(),
            json!({
                "summary": summary,
                "operationId": format!("rpc_{}_get", f.name),
                "tags": ["rpc"],
                "parameters": params,
                "responses": responses,
            }),
        );
    }
    Value::Object(item)
}

fn view_schema(v: &View) -> Value {
    let props: Map<String, Value> = v
        .columns
        .iter()
        .map(|c| {
            // A view promises no NOT NULL: any column may be null.
            let mut s = nullable(type_schema(&c.type_name));
            if let Value::Object(o) = &mut s {
                o.insert("x-pg-type".into(), c.type_name.clone().into());
            }
            (c.name.clone(), s)
        })
        .collect();
    json!({"type": "object", "properties": props})
}

fn view_path(v: &View) -> Value {
    let mut params = vec![
        json!({"$ref": "#/components/parameters/select"}),
        json!({"$ref": "#/components/parameters/order"}),
        json!({"$ref": "#/components/parameters/limit"}),
        json!({"$ref": "#/components/parameters/offset"}),
        json!({"$ref": "#/components/parameters/range"}),
        json!({"$ref": "#/components/parameters/prefer"}),
    ];
    for c in &v.columns {
        params.push(json!({
            "name": c.name, "in": "query", "required": false,
            "description": "Filter: [not.]op.value with op in eq, neq, gt, gte, lt, lte, like, ilike, is, in",
            "schema": {"type": "string"},
        }));
    }
    json!({"get": {
        "summary": v.description.clone().unwrap_or_else(|| format!("Read {SCHEMA}.{}", v.name)),
        "operationId": format!("read_{}", v.name),
        "tags": ["views"],
        "parameters": params,
        "responses": {
            "200": {"description": "Rows", "content": {
                "application/json": {"schema": {"type": "array", "items": {"$ref": format!("#/components/schemas/{}", v.name)}}},
                "application/vnd.pgrst.object+json": {"schema": {"$ref": format!("#/components/schemas/{}", v.name)}}}},
            "206": {"description": "Partial content (with Prefer: count=exact)"},
            "400": error_ref(), "401": error_ref(), "403": error_ref(), "404": error_ref(), "406": error_ref(),
            "416": error_ref(), "503": error_ref(), "504": error_ref(),
        },
    }})
}

/// The document for `role` (or everything when `None`).
pub fn document(cache: &SchemaCache, role: Option<Role>) -> Value {
    let visible = |roles: &[Role]| role.is_none_or(|r| roles.contains(&r));
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "details": {"type": "string", "nullable": true}, "hint": {"type": "string", "nullable": true}}}),
    );
    schemas.insert(
        "Problem".into(),
        json!({"type": "object", "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
            "detail": {"type": "string"}, "instance": {"type": "string"},
            "violated-policies": {"type": "array", "items": {"type": "object", "properties": {
                "policy": {"type": "string"}, "kind": {"type": "string"},
                "limit": {"type": "number", "nullable": true}, "ceiling": {"type": "number", "nullable": true},
                "current": {"type": "number"},
                "window": {"nullable": true, "description": "the period (month, day, hour, lifetime) or a rate's seconds"},
                "window_seconds": {"type": "integer", "nullable": true},
                "reset_at": {"type": "string", "format": "date-time", "nullable": true},
                "enforcement": {"type": "string"}}}},
            "code": {"type": "string"}, "message": {"type": "string"},
            "details": {"type": "string", "nullable": true}, "hint": {"type": "string", "nullable": true}}}),
    );
    for overloads in cache.functions.values() {
        // One path per name: the first visible overload.
        if let Some(f) = overloads.iter().find(|f| visible(&f.roles)) {
            paths.insert(format!("/rpc/{}", f.name), function_paths(f));
        }
    }
    for v in cache.views.values().filter(|v| visible(&v.roles)) {
        paths.insert(format!("/{}", v.name), view_path(v));
        schemas.insert(v.name.clone(), view_schema(v));
    }
    // The webhooks, admin endpoints and probes, each with its own server (`/`, not `/api`).
    paths.extend(super::openapi_gateway::paths(role));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "pg_mec API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Metering, entitlements and controls. PostgREST-compatible: functions under /rpc, views as tables.",
        },
        "servers": [{"url": "/api"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": schemas,
            "parameters": {
                "select": {"name": "select", "in": "query", "schema": {"type": "string"}, "description": "Columns: a,b or alias:col"},
                "order": {"name": "order", "in": "query", "schema": {"type": "string"}, "description": "a.desc.nullslast,b"},
                "limit": {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                "offset": {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                "range": {"name": "Range", "in": "header", "schema": {"type": "string"}, "description": "0-24"},
                "prefer": {"name": "Prefer", "in": "header", "schema": {"type": "string", "enum": ["count=exact", "count=planned", "count=estimated"]}},
            },
        },
    })
}

pub async fn openapi(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = claims_from_headers(&state.jwt, &headers)?;
    check_profile(&headers)?;
    let cache = state.schema.get().ok_or_else(not_loaded)?;
    let doc = document(&cache, claims.map(|c| c.role));
    let mut r = (StatusCode::OK, doc.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openapi+json; charset=utf-8"),
    );
    Ok(r)
}
