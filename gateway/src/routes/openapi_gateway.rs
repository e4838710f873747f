//! The gateway's own routes in the OpenAPI document of `GET /api/`: the webhooks in, the admin
//! endpoints and the probes. They live outside `/api`, so each path item names its server (`/`);
//! the `/api` paths beside them keep PostgREST's shape.

use serde_json::{json, Map, Value};

use crate::infra::auth::Role;

fn error(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// Answers every route may give besides its own: the body too large, the database away.
fn common(mut responses: Map<String, Value>) -> Value {
    responses.insert("413".into(), error("Body larger than the gateway accepts"));
    responses.insert("503".into(), error("The database is unavailable; retry"));
    responses.insert(
        "504".into(),
        error("The database did not answer in time; retry"),
    );
    Value::Object(responses)
}

fn object(properties: Value) -> Value {
    json!({"type": "object", "properties": properties})
}

fn ok(schema: Value) -> Value {
    json!({"description": "Result", "content": {"application/json": {"schema": schema}}})
}

fn post(id: &str, summary: &str, body: Value, result: Value, errors: &[(&str, &str)]) -> Value {
    let mut responses = Map::new();
    responses.insert("200".into(), ok(result));
    for (code, what) in errors {
        responses.insert((*code).into(), error(what));
    }
    json!({
        "summary": summary,
        "operationId": id,
        "tags": ["gateway"],
        "requestBody": body,
        "responses": common(responses),
    })
}

fn path_item(operations: Value) -> Value {
    let mut item = match operations {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    item.insert("servers".into(), json!([{"url": "/"}]));
    Value::Object(item)
}

fn namespace_param() -> Value {
    json!({"name": "namespace_id", "in": "path", "required": true,
           "schema": {"type": "string", "format": "uuid"},
           "description": "The namespace whose secret signs the delivery"})
}

fn webhook_result() -> Value {
    object(json!({
        "outcome": {"type": "string", "description": "applied, duplicate, stale, ignored, …"},
        "detail": {"type": "string", "nullable": true},
    }))
}

fn stripe_operation(id: &str, with_namespace: bool) -> Value {
    let mut op = post(
        id,
        "A Stripe event, verified by its Stripe-Signature and applied once",
        json!({"required": true, "content": {"application/json": {"schema": {"type": "object"}}}}),
        webhook_result(),
        &[
            (
                "400",
                "Bad or missing signature, stale timestamp, or not a Stripe event",
            ),
            ("404", "Not a namespace id, or no default namespace"),
            ("405", "Only POST"),
        ],
    );
    let mut params = vec![
        json!({"name": "Stripe-Signature", "in": "header", "required": false,
                                 "schema": {"type": "string"}}),
    ];
    if with_namespace {
        params.insert(0, namespace_param());
    }
    if let Value::Object(o) = &mut op {
        o.insert("parameters".into(), Value::Array(params));
        o.insert("security".into(), json!([]));
    }
    json!({"post": op})
}

fn auth0_operation() -> Value {
    let mut op = post(
        "webhook_auth0",
        "Auth0 log-stream events (an array) or an Action's object, authenticated by the namespace's bearer secret",
        json!({"required": true, "content": {"application/json": {"schema": {}}}}),
        webhook_result(),
        &[
            ("400", "Not Auth0's body"),
            ("401", "Missing or wrong bearer secret"),
            ("404", "Not a namespace id"),
            ("405", "Only POST"),
        ],
    );
    if let Value::Object(o) = &mut op {
        o.insert("parameters".into(), json!([namespace_param()]));
        o.insert("security".into(), json!([]));
    }
    json!({"post": op})
}

fn admin_errors() -> [(&'static str, &'static str); 5] {
    [
        ("400", "Bad input"),
        ("401", "No or bad token"),
        ("403", "Not a mec_admin token"),
        ("405", "Wrong method"),
        ("409", "Idempotency key reused with another body"),
    ]
}

fn admin_paths(paths: &mut Map<String, Value>) {
    let row = object(json!({
        "account_id": {"type": "string", "format": "uuid"},
        "external_id": {"type": "string"},
        "plan_id": {"type": "string"},
    }));
    let mut bulk = post(
        "admin_bulk_provision",
        "Provision accounts in bulk, all or nothing",
        json!({"required": true, "content": {"application/json": {"schema": {"type": "array", "items": row}}}}),
        object(json!({"results": {"type": "array", "items": {"type": "object"}}})),
        &admin_errors(),
    );
    if let Value::Object(o) = &mut bulk {
        o.insert(
            "parameters".into(),
            json!([{"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string"}}]),
        );
    }
    paths.insert(
        "/admin/bulk-provision".into(),
        path_item(json!({"post": bulk})),
    );
    let no_body = json!({"required": false, "content": {"application/json": {"schema": {}}}});
    paths.insert(
        "/admin/expire-stale-leases".into(),
        path_item(json!({"post": post(
            "admin_expire_stale_leases",
            "Mark the namespace's leases past their expiry as expired",
            no_body.clone(),
            object(json!({"expired": {"type": "integer"}})),
            &admin_errors(),
        )})),
    );
    let count = json!({"type": "integer"});
    paths.insert(
        "/admin/sync-usage-to-stripe".into(),
        path_item(json!({"post": post(
            "admin_sync_usage_to_stripe",
            "Send the namespace's unsent usage to Stripe now",
            no_body,
            object(json!({"prepared": count, "sent": count, "retrying": count, "parked": count,
                          "pending": count, "finished": {"type": "boolean"}})),
            &admin_errors(),
        )})),
    );
    paths.insert(
        "/admin/deliveries".into(),
        path_item(json!({"get": {
            "summary": "The outbound webhook delivery log (a read of webhook_deliveries, newest first)",
            "operationId": "admin_deliveries",
            "tags": ["gateway"],
            "parameters": [
                {"$ref": "#/components/parameters/select"},
                {"$ref": "#/components/parameters/order"},
                {"$ref": "#/components/parameters/limit"},
                {"$ref": "#/components/parameters/offset"},
            ],
            "responses": common({
                let mut r = Map::new();
                r.insert("200".into(), ok(json!({"type": "array", "items": {"type": "object"}})));
                r.insert("206".into(), json!({"description": "Partial content"}));
                for (code, what) in [("400", "Bad filter"), ("401", "No or bad token"),
                                     ("403", "Not a mec_admin token"), ("404", "No such column"),
                                     ("405", "Only GET"), ("406", "Not acceptable"),
                                     ("416", "Range not satisfiable")] {
                    r.insert(code.into(), error(what));
                }
                r
            }),
        }})),
    );
}

fn probe_paths(paths: &mut Map<String, Value>) {
    let probe = |id: &str, summary: &str| {
        json!({"get": {
            "summary": summary, "operationId": id, "tags": ["gateway"], "security": [],
            "responses": {
                "200": ok(json!({"type": "object"})),
                "503": {"description": "Not ready or degraded", "content": {"application/json": {"schema": {"type": "object"}}}},
            },
        }})
    };
    paths.insert(
        "/health".into(),
        path_item(probe("health", "Liveness: 200 when Postgres answers")),
    );
    paths.insert(
        "/ready".into(),
        path_item(probe(
            "ready",
            "Readiness: the schema cache is loaded and Postgres answers",
        )),
    );
    paths.insert(
        "/metrics".into(),
        path_item(json!({"get": {
            "summary": "Prometheus metrics", "operationId": "metrics", "tags": ["gateway"], "security": [],
            "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }})),
    );
}

/// The gateway's routes `role` may reach (every one when `None`): webhooks and probes need no
/// token; the admin endpoints are for `mec_admin`.
pub fn paths(role: Option<Role>) -> Map<String, Value> {
    let mut paths = Map::new();
    paths.insert(
        "/webhooks/stripe".into(),
        path_item(stripe_operation("webhook_stripe_default", false)),
    );
    paths.insert(
        "/webhooks/stripe/{namespace_id}".into(),
        path_item(stripe_operation("webhook_stripe", true)),
    );
    paths.insert(
        "/webhooks/auth0/{namespace_id}".into(),
        path_item(auth0_operation()),
    );
    if role.is_none_or(|r| r == Role::Admin) {
        admin_paths(&mut paths);
    }
    probe_paths(&mut paths);
    paths
}
