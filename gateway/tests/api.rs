//! The gateway against a real Postgres with the fixture schema (`tests/fixtures/mec_fixture.sql`).
//!
//! Set `MEC_TEST_DATABASE_URL` to a superuser URL of any cluster. The tests create a database
//! of their own there (`mec_gateway_fixture`, rebuilt on every run) and never touch the
//! database the URL names. Without the variable they fail. The gateway connects with `MEC_TEST_AUTHENTICATOR_URL` or
//! `MEC_AUTHENTICATOR_URL` (their database replaced by the fixture's), else as a NOINHERIT
//! login role made by the tests (`mec_gateway_test_login`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use mec_gateway::infra::auth::{mint, TokenSpec};
use mec_gateway::{app, AppState, Config};
use serde_json::{json, Value};
use tower::ServiceExt;

const SECRET: &str = "gateway-test-secret-0123456789abcdef";
const NS1: &str = "11111111-1111-1111-1111-111111111111";
const NS2: &str = "22222222-2222-2222-2222-222222222222";
const ALICE: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const BOB: &str = "aaaaaaaa-0000-0000-0000-000000000002";
const CAROL: &str = "aaaaaaaa-0000-0000-0000-000000000003";
const MALLORY: &str = "bbbbbbbb-0000-0000-0000-000000000001";

/// The fixture lives in a database of its own, created next to the one named by
/// `MEC_TEST_DATABASE_URL`: `scripts/mec test` points that variable at the real `mec`
/// database, which these tests must never touch.
const FIXTURE_DB: &str = "mec_gateway_fixture";
/// A login role like `mec_authenticator` (NOINHERIT, granted the three API roles), made by
/// the tests so they know its password.
const TEST_LOGIN: &str = "mec_gateway_test_login";

/// (superuser URL, gateway URL) of the fixture database, set up once per test process.
static FIXTURE: tokio::sync::OnceCell<(String, String)> = tokio::sync::OnceCell::const_new();

/// The superuser URL the tests run against. Unset, they fail: a test that passes without its
/// database would say nothing about the gateway.
fn admin_url() -> String {
    std::env::var("MEC_TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "MEC_TEST_DATABASE_URL is unset: these tests run against a real PostgreSQL. \
                 Run them with scripts/mec test, or: set -a; . .mec/env; set +a; cargo test -p mec_gateway"
            )
        })
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A key=value connection string for `base` with another database and, optionally,
/// another user and password.
fn conninfo(base: &str, dbname: &str, login: Option<(&str, &str)>) -> String {
    let cfg: tokio_postgres::Config = base.parse().expect("a valid database URL");
    let mut parts = Vec::new();
    if let Some(h) = cfg.get_hosts().first() {
        let host = match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        parts.push(format!("host={}", quote(&host)));
    }
    if let Some(p) = cfg.get_ports().first() {
        parts.push(format!("port={p}"));
    }
    let (user, password) = match login {
        Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
        None => (
            cfg.get_user().map(str::to_string),
            cfg.get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        ),
    };
    if let Some(u) = user {
        parts.push(format!("user={}", quote(&u)));
    }
    if let Some(p) = password {
        parts.push(format!("password={}", quote(&p)));
    }
    parts.push(format!("dbname={}", quote(dbname)));
    parts.push("application_name='mec_gateway tests'".into());
    parts.join(" ")
}

async fn superuser(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to MEC_TEST_DATABASE_URL");
    tokio::spawn(conn);
    client
}

/// Create the fixture database and login role and apply the fixture, once per process.
async fn fixture(url: &str) -> (String, String) {
    FIXTURE
        .get_or_init(|| async {
            let admin = superuser(url).await;
            let exists = admin
                .query_opt(
                    "select 1 from pg_database where datname = $1",
                    &[&FIXTURE_DB],
                )
                .await
                .expect("query pg_database");
            if exists.is_none() {
                admin
                    .batch_execute(&format!("create database {FIXTURE_DB}"))
                    .await
                    .expect("create the fixture database");
            }
            let fixture_url = conninfo(url, FIXTURE_DB, None);
            let client = superuser(&fixture_url).await;
            client
                .batch_execute(include_str!("fixtures/mec_fixture.sql"))
                .await
                .expect("apply fixture");
            let authenticator = ["MEC_TEST_AUTHENTICATOR_URL", "MEC_AUTHENTICATOR_URL"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
            if authenticator.is_none() {
                // Without an authenticator URL the tests log in as a role of their own.
                client
                    .batch_execute(&format!(
                        "do $$ begin
                           if not exists (select 1 from pg_roles where rolname = '{TEST_LOGIN}') then
                             create role {TEST_LOGIN} login noinherit password '{TEST_LOGIN}';
                           end if;
                         end $$;
                         grant mec_user, mec_service, mec_admin to {TEST_LOGIN};"
                    ))
                    .await
                    .expect("create the test login role");
            }
            let gateway_url = match authenticator {
                Some(u) => conninfo(&u, FIXTURE_DB, None),
                None => conninfo(url, FIXTURE_DB, Some((TEST_LOGIN, TEST_LOGIN))),
            };
            (fixture_url, gateway_url)
        })
        .await
        .clone()
}

fn config(db: &str, extra: &[(&str, &str)]) -> Config {
    let mut m: HashMap<String, String> = HashMap::new();
    m.insert("MEC_DATABASE_URL".into(), db.into());
    m.insert("MEC_JWT_SECRET".into(), SECRET.into());
    m.insert("MEC_POOL_SIZE".into(), "4".into());
    m.insert("MEC_POOL_TIMEOUT_MS".into(), "2000".into());
    m.insert("MEC_CONNECT_TIMEOUT_MS".into(), "2000".into());
    for (k, v) in extra {
        m.insert(k.to_string(), v.to_string());
    }
    Config::from_lookup(|k| m.get(k).cloned()).expect("config")
}

async fn setup_with(extra: &[(&str, &str)]) -> (Router, AppState) {
    let (_, gateway_url) = fixture(&admin_url()).await;
    let state = AppState::new(config(&gateway_url, extra)).expect("state");
    state.reload_schema().await.expect("load schema cache");
    (app(state.clone()), state)
}

macro_rules! setup {
    () => {
        setup!(&[])
    };
    ($extra:expr) => {
        setup_with($extra).await
    };
}

fn token(role: &str, ns: &str, account: Option<&str>) -> String {
    mint(
        SECRET,
        &TokenSpec {
            role: role.into(),
            namespace_id: ns.into(),
            account_id: account.map(str::to_string),
            sub: Some("test".into()),
            ttl_seconds: 600,
            audience: None,
        },
    )
    .unwrap()
}

fn service() -> String {
    token("mec_service", NS1, None)
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
    /// A PostgREST error body: an object with exactly code, message, details, hint.
    fn error_code(&self) -> String {
        let v = self.json();
        for k in ["code", "message", "details", "hint"] {
            assert!(v.get(k).is_some(), "error body lacks {k}: {v}");
        }
        v["code"].as_str().unwrap_or_default().to_string()
    }
}

async fn send(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn request(method: &str, uri: &str, token: Option<&str>, body: Option<String>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    match body {
        Some(body) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

async fn post(app: &Router, path: &str, token: &str, body: Value) -> Resp {
    send(
        app,
        request("POST", path, Some(token), Some(body.to_string())),
    )
    .await
}

async fn get(app: &Router, path: &str, token: &str) -> Resp {
    send(app, request("GET", path, Some(token), None)).await
}

#[tokio::test]
async fn rpc_check_entitlement() {
    let (app, _) = setup!();
    let r = post(
        &app,
        "/api/rpc/check_entitlement",
        &service(),
        json!({"p_account_id": ALICE, "p_resource_type": "benchmark_runs"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["decision"], "allow");
    assert_eq!(r.json()["quantity_allowed"], 100);
    assert_eq!(r.header("content-range"), "0-0/*");
    assert!(r.header("content-type").starts_with("application/json"));
    // With a count asked for, Content-Range carries a number.
    let req = Request::builder()
        .method("POST")
        .uri("/api/rpc/check_entitlement")
        .header(header::AUTHORIZATION, format!("Bearer {}", service()))
        .header("prefer", "count=exact")
        .body(Body::from(
            json!({"p_account_id": ALICE, "p_resource_type": "benchmark_runs"}).to_string(),
        ))
        .unwrap();
    let r2 = send(&app, req).await;
    assert_eq!(r2.header("content-range"), "0-0/1");
    assert!(!r.header("x-request-id").is_empty());
}

#[tokio::test]
async fn rpc_get_and_head_for_read_only_functions() {
    let (app, _) = setup!();
    let t = service();
    let uri = format!("/api/rpc/check_entitlement?p_account_id={ALICE}&p_resource_type=benchmark_runs&p_requested_qty=1000");
    let r = get(&app, &uri, &t).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["decision"], "deny");
    let r = send(&app, request("HEAD", &uri, Some(&t), None)).await;
    assert_eq!(r.status, 200);
    assert!(r.text.is_empty());
    // A `{}` body on GET is ignored.
    let r = send(&app, request("GET", &uri, Some(&t), Some("{}".into()))).await;
    assert_eq!(r.status, 200);
    // Read-only functions run READ ONLY, on POST as well.
    for r in [
        get(&app, "/api/rpc/fixture_request", &t).await,
        post(&app, "/api/rpc/fixture_request", &t, json!({})).await,
    ] {
        assert_eq!(r.json()["read_only"], "on", "{}", r.text);
    }
    // Volatile functions refuse GET.
    let r = get(
        &app,
        &format!("/api/rpc/meter_consumption?p_idempotency_key=x&p_account_id={ALICE}&p_resource_type=benchmark_runs&p_quantity=1"),
        &t,
    )
    .await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST101");
}

#[tokio::test]
async fn per_request_settings() {
    let (app, _) = setup!();
    let t = token("mec_user", NS1, Some(BOB));
    let req = Request::builder()
        .method("POST")
        .uri("/api/rpc/fixture_request")
        .header(header::AUTHORIZATION, format!("Bearer {t}"))
        .header("x-custom", "hello")
        .header(header::COOKIE, "secret=1")
        .body(Body::from("{}"))
        .unwrap();
    let r = send(&app, req).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["current_user"], "mec_user");
    assert_eq!(v["claims"]["role"], "mec_user");
    assert_eq!(v["claims"]["namespace_id"], NS1);
    assert_eq!(v["claims"]["account_id"], BOB);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/api/rpc/fixture_request");
    assert_eq!(v["headers"]["x-custom"], "hello");
    assert!(v["headers"].get("cookie").is_none());
    // Nothing leaks into the next transaction on the same connection.
    let r = post(&app, "/api/rpc/fixture_request", &service(), json!({})).await;
    assert_eq!(r.json()["current_user"], "mec_service");
    assert!(r.json()["headers"].get("x-custom").is_none());
}

#[tokio::test]
async fn argument_types_are_cast_in_sql() {
    let (app, _) = setup!();
    let body = r#"{"p_text": "it's \"quoted\"", "p_num": 12345678901234567890.123456789,
        "p_ts": "2026-03-04T05:06:07Z", "p_json": {"a": [1, {"b": null}]},
        "p_uuid": "aaaaaaaa-0000-0000-0000-000000000009", "p_tags": ["x", "y,z"]}"#;
    let r = send(
        &app,
        request(
            "POST",
            "/api/rpc/fixture_types",
            Some(&service()),
            Some(body.into()),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["text"], "it's \"quoted\"");
    assert_eq!(v["num"], "12345678901234567890.123456789");
    assert_eq!(v["ts"], "2026-03-04T05:06:07");
    assert_eq!(v["json"], json!({"a": [1, {"b": null}]}));
    assert_eq!(v["int"], 7);
    assert_eq!(v["tags"], json!(["x", "y,z"]));
    // GET values arrive as text and are cast the same way.
    let r = get(
        &app,
        "/api/rpc/fixture_types?p_text=a+b&p_num=1.5&p_ts=2026-03-04T05:06:07Z&p_json=%7B%22k%22%3A1%7D&p_uuid=aaaaaaaa-0000-0000-0000-000000000009&p_int=3",
        &service(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["text"], "a b");
    assert_eq!(r.json()["json"], json!({"k": 1}));
    assert_eq!(r.json()["int"], 3);
    // A wrong type is Postgres' error: 22P02 → 400.
    let r = post(
        &app,
        "/api/rpc/check_entitlement",
        &service(),
        json!({"p_account_id": "not-a-uuid", "p_resource_type": "benchmark_runs"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), "22P02");
}

#[tokio::test]
async fn unknown_functions_and_arguments_are_pgrst202() {
    let (app, _) = setup!();
    let t = service();
    let r = post(&app, "/api/rpc/no_such_function", &t, json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "PGRST202");
    let r = post(
        &app,
        "/api/rpc/check_entitlemnt",
        &t,
        json!({"p_account_id": ALICE, "p_resource_type": "x"}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.json()["hint"]
        .as_str()
        .unwrap()
        .contains("check_entitlement"));
    let r = post(
        &app,
        "/api/rpc/check_entitlement",
        &t,
        json!({"p_account_id": ALICE, "p_resource_type": "x", "p_bogus": 1}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST202");
    assert!(r.json()["message"].as_str().unwrap().contains("p_bogus"));
    let r = post(
        &app,
        "/api/rpc/check_entitlement",
        &t,
        json!({"p_account_id": ALICE}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "PGRST202");
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let (app, _) = setup!(&[("MEC_MAX_BODY_BYTES", "1024")]);
    let t = service();
    for body in ["{not json", "{\"p_account_id\": ", "[1,2]", "\"text\""] {
        let r = send(
            &app,
            request(
                "POST",
                "/api/rpc/check_entitlement",
                Some(&t),
                Some(body.into()),
            ),
        )
        .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert_eq!(r.error_code(), "PGRST102");
    }
    let big = json!({"p_account_id": ALICE, "p_resource_type": "x".repeat(2000)}).to_string();
    let r = send(
        &app,
        request("POST", "/api/rpc/check_entitlement", Some(&t), Some(big)),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.error_code(), "ME413");
    // Still serving.
    let r = post(
        &app,
        "/api/rpc/check_entitlement",
        &t,
        json!({"p_account_id": ALICE, "p_resource_type": "benchmark_runs"}),
    )
    .await;
    assert_eq!(r.status, 200);
}

fn meter_body(key: &str, account: &str, resource: &str, qty: f64) -> Value {
    json!({"p_idempotency_key": key, "p_account_id": account, "p_resource_type": resource,
           "p_quantity": qty, "p_metadata": {"source": "test"}})
}

#[tokio::test]
async fn metering_idempotency_and_limit_problem_details() {
    let (app, _) = setup!();
    let t = service();
    let run = uuid::Uuid::new_v4();
    for i in 0..5 {
        let r = post(
            &app,
            "/api/rpc/meter_consumption",
            &t,
            meter_body(&format!("{run}-{i}"), CAROL, "benchmark_runs", 1.0),
        )
        .await;
        if r.status == 429 {
            // Another run of this test already used CAROL's quota: fine, check the 429 below.
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["duplicate"], false);
        assert_eq!(r.json()["metadata"], json!({"source": "test"}));
    }
    // Replay: same result, duplicate.
    let first = format!("{run}-0");
    let r = post(
        &app,
        "/api/rpc/meter_consumption",
        &t,
        meter_body(&first, CAROL, "benchmark_runs", 1.0),
    )
    .await;
    if r.status == 200 {
        assert_eq!(r.json()["duplicate"], true);
        // Same key, another payload: ME409 → 409.
        let r = post(
            &app,
            "/api/rpc/meter_consumption",
            &t,
            meter_body(&first, CAROL, "benchmark_runs", 2.0),
        )
        .await;
        assert_eq!(r.status, 409, "{}", r.text);
        assert_eq!(r.error_code(), "ME409");
    }
    // Over the limit: 429 problem+json with the RateLimit headers.
    let r = post(
        &app,
        "/api/rpc/meter_consumption",
        &t,
        meter_body(&format!("{run}-over"), CAROL, "benchmark_runs", 1.0),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.header("content-type"), "application/problem+json");
    let v = r.json();
    assert_eq!(v["status"], 429);
    assert_eq!(v["code"], "ME429");
    assert_eq!(v["title"], "Limit reached");
    assert_eq!(v["instance"], "/api/rpc/meter_consumption");
    assert!(v["type"].is_string() && v["detail"].is_string() && v["hint"].is_string());
    assert!(v["message"].as_str().unwrap().contains("benchmark_runs"));
    let vp = v["violated-policies"].as_array().unwrap();
    assert_eq!(vp.len(), 1);
    assert_eq!(vp[0]["limit"], 5);
    assert!(v["details"].as_str().unwrap().contains("violated_policies"));
    assert_eq!(r.header("ratelimit-policy"), "\"benchmark_runs/month\";q=5");
    assert!(r
        .header("ratelimit")
        .starts_with("\"benchmark_runs/month\";r=0;t="));
    let retry: i64 = r.header("retry-after").parse().unwrap();
    assert!((1..=32 * 86_400).contains(&retry), "{retry}");
}

#[tokio::test]
async fn rate_window_headers() {
    let (app, _) = setup!();
    let t = service();
    let run = uuid::Uuid::new_v4();
    let mut limited = None;
    for i in 0..10 {
        let r = post(
            &app,
            "/api/rpc/meter_consumption",
            &t,
            meter_body(&format!("{run}-{i}"), ALICE, "api_requests", 1.0),
        )
        .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = limited.expect("the fourth call within a minute is refused");
    assert_eq!(r.header("ratelimit-policy"), "\"rpm\";q=3;w=60");
    let retry: i64 = r.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.header("ratelimit").ends_with(&format!(";t={retry}")));
}

#[tokio::test]
async fn roles_are_enforced_by_postgres() {
    let (app, _) = setup!();
    let user = token("mec_user", NS1, Some(ALICE));
    let r = post(
        &app,
        "/api/rpc/meter_consumption",
        &user,
        meter_body("user-try", ALICE, "benchmark_runs", 1.0),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.error_code(), "42501");
    let body = json!({"p_account_id": CAROL, "p_plan_id": "starter"});
    let r = post(&app, "/api/rpc/provision_plan", &service(), body.clone()).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = post(
        &app,
        "/api/rpc/provision_plan",
        &token("mec_admin", NS1, None),
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["plan_id"], "starter");
    // A token without namespace: the database says 42501.
    let no_ns = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"role": "mec_service"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let r = post(
        &app,
        "/api/rpc/check_entitlement",
        &no_ns,
        json!({"p_account_id": ALICE, "p_resource_type": "benchmark_runs"}),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.error_code(), "42501");
}

#[tokio::test]
async fn tokens_are_checked() {
    let (app, _) = setup!();
    let path = "/api/rpc/fixture_request";
    let r = send(&app, request("POST", path, None, Some("{}".into()))).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "PGRST302");
    assert_eq!(r.header("www-authenticate"), "Bearer");

    let now = chrono::Utc::now().timestamp();
    let sign = |claims: Value, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        (
            sign(
                json!({"role": "mec_service", "namespace_id": NS1}),
                "the-wrong-secret-the-wrong-secret",
            ),
            "invalid",
        ),
        (
            sign(
                json!({"role": "mec_service", "namespace_id": NS1, "exp": now - 120}),
                SECRET,
            ),
            "expired",
        ),
        (
            sign(json!({"role": "postgres", "namespace_id": NS1}), SECRET),
            "role",
        ),
        (
            sign(
                json!({"role": "mec_authenticator", "namespace_id": NS1}),
                SECRET,
            ),
            "role",
        ),
        (sign(json!({"namespace_id": NS1}), SECRET), "role"),
        ("not-a-jwt".to_string(), "malformed"),
    ];
    for (t, why) in cases {
        let r = send(&app, request("POST", path, Some(&t), Some("{}".into()))).await;
        assert_eq!(r.status, 401, "{why}: {}", r.text);
        let code = r.error_code();
        assert!(code == "PGRST301" || code == "PGRST302", "{why}: {code}");
        let www = r.header("www-authenticate");
        assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
        assert!(
            www.to_lowercase().contains(why) || why == "invalid",
            "{why}: {www}"
        );
    }
    // Within the 30 s leeway.
    let t = sign(
        json!({"role": "mec_service", "namespace_id": NS1, "exp": now - 10}),
        SECRET,
    );
    let r = send(&app, request("POST", path, Some(&t), Some("{}".into()))).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn namespaces_are_isolated() {
    let (app, _) = setup!();
    let other = token("mec_service", NS2, None);
    // NS2 cannot see or meter NS1's account.
    let r = post(
        &app,
        "/api/rpc/check_entitlement",
        &other,
        json!({"p_account_id": ALICE, "p_resource_type": "benchmark_runs"}),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.error_code(), "ME404");
    let key = format!("cross-{}", uuid::Uuid::new_v4());
    let r = post(
        &app,
        "/api/rpc/meter_consumption",
        &other,
        meter_body(&key, ALICE, "benchmark_runs", 1.0),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = get(
        &app,
        &format!("/api/consumption?idempotency_key=eq.{key}"),
        &service(),
    )
    .await;
    assert_eq!(r.json(), json!([]));
    let r = get(&app, "/api/accounts?select=account_id", &other).await;
    assert_eq!(r.json(), json!([{"account_id": MALLORY}]));
    let r = get(
        &app,
        &format!("/api/accounts?account_id=eq.{ALICE}"),
        &other,
    )
    .await;
    assert_eq!(r.json(), json!([]));
    // mec_user sees its own account only.
    let r = get(
        &app,
        "/api/accounts?select=account_id",
        &token("mec_user", NS1, Some(BOB)),
    )
    .await;
    assert_eq!(r.json(), json!([{"account_id": BOB}]));
}

fn quantities(r: &Resp) -> Vec<i64> {
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["quantity"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn view_filters_order_and_counts() {
    let (app, _) = setup!();
    let t = service();
    let base = format!("/api/consumption?account_id=eq.{BOB}&select=quantity,http_status");
    let count = |uri: String| {
        let t = t.clone();
        let app = app.clone();
        async move {
            let req = Request::builder()
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .header("prefer", "count=exact")
                .body(Body::empty())
                .unwrap();
            send(&app, req).await
        }
    };
    let r = count(format!("{base}&order=quantity.desc&limit=5")).await;
    assert_eq!(r.status, 206, "{}", r.text);
    assert_eq!(r.header("content-range"), "0-4/30");
    assert_eq!(quantities(&r), vec![30, 29, 28, 27, 26]);
    let r = count(format!("{base}&order=quantity&limit=5&offset=10")).await;
    assert_eq!(r.header("content-range"), "10-14/30");
    assert_eq!(quantities(&r), vec![11, 12, 13, 14, 15]);
    let r = count(base.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-range"), "0-29/30");
    let r = get(&app, &format!("{base}&limit=2"), &t).await;
    assert_eq!(r.header("content-range"), "0-1/*");
    let r = count(format!("{base}&offset=100")).await;
    assert_eq!(r.status, 416, "{}", r.text);
    assert_eq!(r.error_code(), "PGRST103");

    let cases: Vec<(&str, usize)> = vec![
        ("quantity=gt.25", 5),
        ("quantity=gte.25", 6),
        ("quantity=lt.3", 2),
        ("quantity=lte.3", 3),
        ("quantity=eq.7", 1),
        ("quantity=neq.7", 29),
        ("quantity=not.eq.7", 29),
        ("quantity=in.(1,2,3,99)", 3),
        ("quantity=not.in.(1,2,3)", 27),
        ("http_status=is.null", 3),
        ("http_status=not.is.null", 27),
        ("idempotency_key=like.seed-1*", 11),
        ("idempotency_key=ilike.SEED-2*", 11),
        ("quantity=gt.5&quantity=lt.9", 3),
        ("or=(quantity.lt.3,quantity.gt.28)", 4),
        ("or=(quantity.eq.1,and(quantity.gt.10,quantity.lt.13))", 3),
        ("not.or=(quantity.lt.3,quantity.gt.28)", 26),
        ("and=(quantity.gt.3,quantity.lt.6)", 2),
        ("idempotency_key=in.(seed-1,%22seed-2%22)", 2),
        ("idempotency_key=in.(%22seed-1%22,%22a%2Cb%22)", 1),
        (
            "occurred_at=gte.2026-01-01T10:00:00Z&occurred_at=lt.2026-01-01T12:00:00%2B00:00",
            2,
        ),
    ];
    for (filter, n) in cases {
        let r = get(&app, &format!("{base}&{filter}"), &t).await;
        assert_eq!(r.status, 200, "{filter}: {}", r.text);
        assert_eq!(
            r.json().as_array().unwrap().len(),
            n,
            "{filter}: {}",
            r.text
        );
    }
    let r = get(
        &app,
        &format!("{base}&order=http_status.desc.nullsfirst,quantity.desc&limit=1"),
        &t,
    )
    .await;
    assert_eq!(r.json(), json!([{"quantity": 30, "http_status": null}]));
    let r = get(
        &app,
        &format!("{base}&order=http_status.desc.nullslast,quantity.desc&limit=1"),
        &t,
    )
    .await;
    assert_eq!(r.json(), json!([{"quantity": 29, "http_status": 200}]));
    let r = get(
        &app,
        &format!("/api/consumption?account_id=eq.{BOB}&select=q:quantity&quantity=eq.3"),
        &t,
    )
    .await;
    assert_eq!(r.json(), json!([{"q": 3}]));
    // Range header, intersected with limit.
    let req = Request::builder()
        .uri(format!("{base}&order=quantity"))
        .header(header::AUTHORIZATION, format!("Bearer {t}"))
        .header("prefer", "count=exact")
        .header(header::RANGE, "0-9")
        .body(Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), "0-9/30");
    // Injection attempts stay values.
    let r = get(
        &app,
        &format!("{base}&idempotency_key=eq.x%27%3B%20drop%20table%20mec_data.consumption%3B--"),
        &t,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([]));
}

#[tokio::test]
async fn view_errors_and_single_object() {
    let (app, _) = setup!();
    let t = service();
    let r = get(&app, "/api/accounts?select=nope", &t).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "42703");
    let r = get(&app, "/api/accounts?nope=eq.1", &t).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "42703");
    let r = get(&app, "/api/accounts?account_id=eq.not-a-uuid", &t).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "22P02");
    let r = get(&app, "/api/accounts?account_id=zz.1", &t).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "PGRST100");
    let r = get(&app, "/api/accounts?order=account_id.sideways", &t).await;
    assert_eq!(r.status, 400);
    let r = get(&app, "/api/acounts", &t).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "42P01");
    assert!(r.json()["hint"].as_str().unwrap().contains("accounts"));
    let r = get(&app, "/api/mec_data", &t).await;
    assert_eq!(r.status, 404);
    let r = send(
        &app,
        request("POST", "/api/accounts", Some(&t), Some("{}".into())),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.error_code(), "PGRST101");
    let r = get(&app, "/nowhere", &t).await;
    assert_eq!(r.status, 404);
    r.error_code();

    let single = |uri: String| {
        let t = t.clone();
        let app = app.clone();
        async move {
            let req = Request::builder()
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {t}"))
                .header(header::ACCEPT, "application/vnd.pgrst.object+json")
                .body(Body::empty())
                .unwrap();
            send(&app, req).await
        }
    };
    let r = single(format!("/api/accounts?account_id=eq.{ALICE}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["external_id"], "alice");
    assert!(r
        .header("content-type")
        .starts_with("application/vnd.pgrst.object+json"));
    for (q, n) in [
        ("account_id=eq.aaaaaaaa-0000-0000-0000-00000000ffff", 0),
        ("", 3),
    ] {
        let r = single(format!("/api/accounts?{q}")).await;
        assert_eq!(r.status, 406, "{}", r.text);
        assert_eq!(r.error_code(), "PGRST116");
        assert_eq!(
            r.json()["message"],
            "JSON object requested, multiple (or no) rows returned"
        );
        assert_eq!(r.json()["details"], format!("The result contains {n} rows"));
    }
}

#[tokio::test]
async fn profiles() {
    let (app, _) = setup!();
    let t = service();
    for (h, v, want) in [
        ("accept-profile", "public", 200),
        ("accept-profile", "mec", 200),
        ("accept-profile", "mec_data", 406),
        ("content-profile", "private", 406),
    ] {
        let req = Request::builder()
            .uri("/api/plans")
            .header(header::AUTHORIZATION, format!("Bearer {t}"))
            .header(h, v)
            .body(Body::empty())
            .unwrap();
        let r = send(&app, req).await;
        assert_eq!(r.status, want, "{h}: {v}: {}", r.text);
        if want == 406 {
            assert_eq!(r.error_code(), "PGRST106");
        }
    }
}

#[tokio::test]
async fn error_mapping_and_generic_5xx() {
    let (app, _) = setup!();
    let t = service();
    for (code, status) in [
        ("P0001", 400),
        ("23505", 409),
        ("22023", 400),
        ("P0002", 404),
        ("ME422", 422),
        ("ME410", 410),
        ("PT402", 402),
        ("XX000", 500),
        ("53300", 503),
    ] {
        let r = post(&app, "/api/rpc/fixture_raise", &t, json!({"p_code": code})).await;
        assert_eq!(r.status, status, "{code}: {}", r.text);
        assert_eq!(r.error_code(), code);
        if status >= 500 {
            assert!(!r.text.contains("fixture error"), "{}", r.text);
            assert!(!r.text.contains("some detail"), "{}", r.text);
        } else {
            assert_eq!(r.json()["message"], format!("fixture error {code}"));
            assert_eq!(r.json()["details"], "some detail");
        }
    }
    // ME429 with a DETAIL that is not JSON is still a 429 problem.
    let r = post(
        &app,
        "/api/rpc/fixture_raise",
        &t,
        json!({"p_code": "ME429", "p_detail": "not json"}),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["violated-policies"], json!([]));
}

#[tokio::test]
async fn sets_void_and_whole_body() {
    let (app, _) = setup!();
    let t = service();
    let r = post(&app, "/api/rpc/fixture_series", &t, json!({"p_n": 3})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    assert_eq!(r.json()[0], json!({"n": 1, "label": "row 1"}));
    assert_eq!(r.header("content-range"), "0-2/*");
    let r = post(&app, "/api/rpc/fixture_noop", &t, json!({})).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = post(
        &app,
        "/api/rpc/fixture_body",
        &t,
        json!({"anything": [1, 2]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"anything": [1, 2]}));
}

#[tokio::test]
async fn openapi_document() {
    let (app, _) = setup!();
    let r = send(&app, request("GET", "/api/", None, None)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["openapi"], "3.0.3");
    assert!(v["paths"]["/rpc/check_entitlement"]["post"].is_object());
    assert!(v["paths"]["/rpc/check_entitlement"]["get"].is_object());
    assert!(v["paths"]["/rpc/meter_consumption"]["get"].is_null());
    assert!(v["paths"]["/accounts"]["get"].is_object());
    let req = v["paths"]["/rpc/meter_consumption"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]
        .clone();
    assert_eq!(req["properties"]["p_account_id"]["format"], "uuid");
    assert!(req["required"]
        .as_array()
        .unwrap()
        .contains(&json!("p_quantity")));
    assert!(!req["required"]
        .as_array()
        .unwrap()
        .contains(&json!("p_metadata")));
    // Filtered by the caller's role.
    let r = get(&app, "/api/", &token("mec_user", NS1, Some(ALICE))).await;
    assert!(r.json()["paths"]["/rpc/meter_consumption"].is_null());
    assert!(r.json()["paths"]["/rpc/check_entitlement"].is_object());
    let r = get(&app, "/api", &service()).await;
    assert!(r.json()["paths"]["/rpc/meter_consumption"].is_object());
    assert!(r.json()["paths"]["/rpc/provision_plan"].is_null());
}

#[tokio::test]
async fn health_ready_metrics_request_id_cors() {
    let (app, _) = setup!();
    let r = send(&app, request("GET", "/health", None, None)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["services"]["postgres"], "up");
    assert!(r.json()["timestamp"].is_string());
    let r = send(&app, request("GET", "/ready", None, None)).await;
    assert_eq!(r.status, 200);
    let req = Request::builder()
        .uri("/api/plans")
        .header(header::AUTHORIZATION, format!("Bearer {}", service()))
        .header("x-request-id", "my-request-42")
        .header(header::ORIGIN, "https://app.example")
        .body(Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    assert_eq!(r.header("x-request-id"), "my-request-42");
    assert_eq!(r.header("access-control-allow-origin"), "*");
    let exposed = r.header("access-control-expose-headers").to_lowercase();
    assert!(exposed.contains("content-range") && exposed.contains("x-request-id"));
    let req = Request::builder()
        .method("OPTIONS")
        .uri("/api/rpc/check_entitlement")
        .header(header::ORIGIN, "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,prefer",
        )
        .body(Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    assert!(r.status.is_success(), "{}", r.status);
    assert!(!r.header("x-request-id").is_empty());
    let r = send(&app, request("GET", "/metrics", None, None)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text.contains(
            "mec_gateway_http_requests_total{route=\"/api/{view}\",method=\"GET\",status=\"200\"}"
        ),
        "{}",
        r.text
    );
    assert!(r
        .text
        .contains("mec_gateway_http_request_duration_seconds_bucket{route=\"/health\""));
    // MEC_POOL_SIZE is per role (one pool each): mec_user, mec_service, mec_admin, mec_webhook,
    // mec_worker.
    assert!(r.text.contains("mec_gateway_db_pool_max_connections 20"));
}

#[tokio::test]
async fn request_timeout_is_504_and_the_gateway_recovers() {
    let (app, state) = setup!(&[("MEC_REQUEST_TIMEOUT_MS", "500")]);
    let t = service();
    let r = post(&app, "/api/rpc/fixture_sleep", &t, json!({"p_seconds": 3})).await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.error_code(), "ME504");
    for _ in 0..6 {
        let r = post(&app, "/api/rpc/fixture_sleep", &t, json!({"p_seconds": 0})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert!(state.pools.status().size <= 4);
}

#[tokio::test]
async fn database_down_is_503_json() {
    // Nothing listens on port 1: no database needed.
    let state = AppState::new(config(
        "postgres://mec_authenticator@127.0.0.1:1/mec",
        &[("MEC_CONNECT_TIMEOUT_MS", "500")],
    ))
    .unwrap();
    let app = app(state);
    let r = send(&app, request("GET", "/health", None, None)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["services"]["postgres"], "down");
    let r = send(&app, request("GET", "/ready", None, None)).await;
    assert_eq!(r.status, 503);
    let r = post(&app, "/api/rpc/check_entitlement", &service(), json!({})).await;
    assert_eq!(r.status, 503, "{}", r.text);
    r.error_code();
    let r = get(&app, "/api/accounts", &service()).await;
    assert_eq!(r.status, 503);
    // Token errors still come first.
    let r = send(&app, request("GET", "/api/accounts", None, None)).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn schema_reload_on_notify() {
    let (app, state) = setup!();
    let (url, _) = fixture(&admin_url()).await;
    let listener = state.spawn_schema_listener();
    // Let the listener connect and load before the function exists.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let su = superuser(&url).await;
    let name = format!("fixture_added_{}", uuid::Uuid::new_v4().simple());
    su.batch_execute(&format!(
        "create function mec.{name}(p_x int) returns jsonb language sql as $$ select jsonb_build_object('x', p_x) $$;
         grant execute on function mec.{name}(int) to mec_service;"
    ))
    .await
    .unwrap();
    let path = format!("/api/rpc/{name}");
    let r = post(&app, &path, &service(), json!({"p_x": 1})).await;
    assert_eq!(r.status, 404, "not yet in the cache: {}", r.text);
    su.batch_execute("notify mec_gateway, 'reload schema'")
        .await
        .unwrap();
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = post(&app, &path, &service(), json!({"p_x": 1})).await;
        if r.status == 200 {
            assert_eq!(r.json(), json!({"x": 1}));
            ok = true;
            break;
        }
    }
    su.batch_execute(&format!("drop function mec.{name}(int)"))
        .await
        .unwrap();
    listener.abort();
    assert!(ok, "the function appeared after NOTIFY");
}
