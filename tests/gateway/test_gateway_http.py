"""The gateway's HTTP contract (CONTRACT.md §4) over real HTTP with real JWTs."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import jwt
import pytest

from gateway_helpers import assert_pgrst_error, bearer, make_token


# --- health, metrics, OpenAPI, request ids ---------------------------------------------

def test_health_ready_metrics(http):
    r = http.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert body["services"]["postgres"] == "up"
    assert "timestamp" in body
    assert http.get("/ready").status_code == 200
    r = http.get("/metrics")
    assert r.status_code == 200
    assert "mec_gateway_http_requests_total" in r.text
    assert "mec_gateway_http_request_duration_seconds_bucket" in r.text
    assert "mec_gateway_db_pool_max_connections" in r.text


def test_request_id_is_propagated_or_made(http):
    r = http.get("/health", headers={"x-request-id": "e2e-request-1"})
    assert r.headers["x-request-id"] == "e2e-request-1"
    r = http.get("/health")
    assert len(r.headers["x-request-id"]) >= 16


def test_openapi_lists_what_the_role_may_reach(http, token, demo_ns):
    r = http.get("/api/")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert "/rpc/check_entitlement" in doc["paths"]
    assert "/accounts" in doc["paths"]
    user = http.get("/api/", headers=bearer(token("mec_user", demo_ns))).json()
    admin = http.get("/api/", headers=bearer(token("mec_admin", demo_ns))).json()
    assert "/rpc/check_entitlement" in user["paths"]
    assert "/rpc/meter_consumption" not in user["paths"]
    assert "/rpc/load_catalog" in admin["paths"]
    # The gateway's own routes outside /api are described too, each with its server `/`.
    for path in ["/webhooks/stripe/{namespace_id}", "/webhooks/auth0/{namespace_id}", "/health"]:
        assert user["paths"][path]["servers"] == [{"url": "/"}], path
    for path in ["/admin/bulk-provision", "/admin/expire-stale-leases", "/admin/sync-usage-to-stripe",
                 "/admin/deliveries"]:
        assert path in admin["paths"] and path not in user["paths"], path


def test_cors_exposes_content_range(http, token, demo_ns):
    r = http.options("/api/rpc/check_entitlement", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code in (200, 204)
    r = http.get("/api/plans", headers={**bearer(token("mec_service", demo_ns)),
                                        "Origin": "https://app.example"})
    exposed = r.headers.get("access-control-expose-headers", "").lower()
    assert "content-range" in exposed and "x-request-id" in exposed


# --- 401 -----------------------------------------------------------------------------

def test_no_token_is_401(http, demo_account):
    r = http.post("/api/rpc/check_entitlement",
                  json={"p_account_id": demo_account, "p_resource_type": "benchmark_runs"})
    assert_pgrst_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert_pgrst_error(http.get("/api/accounts"), 401)


@pytest.mark.parametrize("case", ["bad_signature", "expired", "role_postgres",
                                  "role_authenticator", "role_anon", "no_role", "garbage",
                                  "alg_none", "not_yet_valid", "role_quoted", "role_injection",
                                  "role_owner", "alg_hs512", "alg_rs256_header"])
def test_bad_tokens_are_401(http, secret, demo_ns, demo_account, case):
    now = int(time.time())
    claims = {"role": "mec_service", "namespace_id": demo_ns, "exp": now + 600}
    if case == "bad_signature":
        t = jwt.encode(claims, secret + "-not-it", algorithm="HS256")
    elif case == "expired":
        t = jwt.encode({**claims, "exp": now - 120}, secret, algorithm="HS256")
    elif case == "role_postgres":
        t = jwt.encode({**claims, "role": "postgres"}, secret, algorithm="HS256")
    elif case == "role_authenticator":
        t = jwt.encode({**claims, "role": "mec_authenticator"}, secret, algorithm="HS256")
    elif case == "role_anon":
        t = jwt.encode({**claims, "role": "anon"}, secret, algorithm="HS256")
    elif case == "no_role":
        t = jwt.encode({k: v for k, v in claims.items() if k != "role"}, secret, algorithm="HS256")
    elif case == "alg_none":
        t = jwt.encode(claims, None, algorithm="none")
    elif case == "not_yet_valid":
        t = jwt.encode({**claims, "nbf": now + 600}, secret, algorithm="HS256")
    elif case == "role_quoted":
        t = jwt.encode({**claims, "role": '"mec_admin"'}, secret, algorithm="HS256")
    elif case == "role_injection":
        t = jwt.encode({**claims, "role": "mec_admin; RESET ROLE"}, secret, algorithm="HS256")
    elif case == "role_owner":
        t = jwt.encode({**claims, "role": "mec_owner"}, secret, algorithm="HS256")
    elif case == "alg_hs512":
        t = jwt.encode(claims, secret, algorithm="HS512")
    elif case == "alg_rs256_header":
        # key confusion: an RS256 header over an HMAC made with the shared secret
        import base64
        import hashlib
        import hmac
        import json as _json

        def b64(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

        head = b64(_json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        body = b64(_json.dumps(claims).encode())
        sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        t = f"{head}.{body}.{b64(sig)}"
    else:
        t = "not.a.jwt"
    r = http.post("/api/rpc/check_entitlement", headers=bearer(t),
                  json={"p_account_id": demo_account, "p_resource_type": "benchmark_runs"})
    assert_pgrst_error(r, 401)
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    if case == "expired":
        assert "expired" in r.headers["www-authenticate"].lower()


def test_exp_has_30_seconds_leeway(http, secret, demo_ns, demo_account):
    t = jwt.encode({"role": "mec_service", "namespace_id": demo_ns, "exp": int(time.time()) - 5},
                   secret, algorithm="HS256")
    r = http.post("/api/rpc/check_entitlement", headers=bearer(t),
                  json={"p_account_id": demo_account, "p_resource_type": "benchmark_runs"})
    assert r.status_code == 200, r.text


# --- RPC -----------------------------------------------------------------------------

def test_check_entitlement_post_get_head(http, token, demo_ns, demo_account):
    h = bearer(token("mec_service", demo_ns))
    args = {"p_account_id": demo_account, "p_resource_type": "benchmark_runs"}
    r = http.post("/api/rpc/check_entitlement", headers=h, json=args)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] in ("allow", "deny")
    for key in ("reason", "quantity_allowed", "quantity_used", "quantity_remaining",
                "percent_used", "period_start", "period_end", "enforcement"):
        assert key in body, key
    assert r.headers["content-range"] == "0-0/*"
    r = http.get("/api/rpc/check_entitlement", headers=h, params={**args, "p_requested_qty": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["decision"] in ("allow", "deny")
    r = http.head("/api/rpc/check_entitlement", headers=h, params=args)
    assert r.status_code == 200


def test_volatile_function_refuses_get(http, token, demo_ns, demo_account):
    r = http.get("/api/rpc/meter_consumption", headers=bearer(token("mec_service", demo_ns)),
                 params={"p_idempotency_key": "e2e-get", "p_account_id": demo_account,
                         "p_resource_type": "benchmark_runs", "p_quantity": "1"})
    assert_pgrst_error(r, 405)


def test_unknown_function_and_arguments_are_404(http, token, demo_ns, demo_account):
    h = bearer(token("mec_service", demo_ns))
    assert_pgrst_error(http.post("/api/rpc/no_such_function", headers=h, json={}), 404, "PGRST202")
    r = http.post("/api/rpc/check_entitlement", headers=h,
                  json={"p_account_id": demo_account, "p_resource_type": "benchmark_runs",
                        "p_unknown": 1})
    assert_pgrst_error(r, 404, "PGRST202")
    r = http.post("/api/rpc/check_entitlement", headers=h, json={"p_account_id": demo_account})
    assert_pgrst_error(r, 404, "PGRST202")


@pytest.mark.parametrize("body", [b"{not json", b'{"p_account_id": ', b"[1, 2]", b"\xff\xfe"])
def test_malformed_body_is_400(http, token, demo_ns, body):
    r = http.post("/api/rpc/check_entitlement", headers={**bearer(token("mec_service", demo_ns)),
                                                         "Content-Type": "application/json"},
                  content=body)
    assert_pgrst_error(r, 400, "PGRST102")


def test_wrong_type_is_400(http, token, demo_ns):
    r = http.post("/api/rpc/check_entitlement", headers=bearer(token("mec_service", demo_ns)),
                  json={"p_account_id": "not-a-uuid", "p_resource_type": "benchmark_runs"})
    assert_pgrst_error(r, 400, "22P02")


def test_oversized_body_is_413_and_the_gateway_keeps_serving(http, token, demo_ns, demo_account):
    h = bearer(token("mec_service", demo_ns))
    big = {"p_account_id": demo_account, "p_resource_type": "x" * (2 * 1024 * 1024)}
    r = http.post("/api/rpc/check_entitlement", headers=h, json=big)
    assert_pgrst_error(r, 413)
    r = http.post("/api/rpc/check_entitlement", headers=h,
                  json={"p_account_id": demo_account, "p_resource_type": "benchmark_runs"})
    assert r.status_code == 200, r.text
    assert http.get("/health").status_code == 200


def test_unknown_view_and_path_are_json_404(http, token, demo_ns):
    h = bearer(token("mec_service", demo_ns))
    assert_pgrst_error(http.get("/api/no_such_view", headers=h), 404, "42P01")
    assert_pgrst_error(http.get("/nowhere", headers=h), 404)


def test_other_schema_profile_is_406(http, token, demo_ns):
    h = bearer(token("mec_service", demo_ns))
    assert http.get("/api/plans", headers={**h, "Accept-Profile": "public"}).status_code == 200
    assert http.get("/api/plans", headers={**h, "Accept-Profile": "mec"}).status_code == 200
    assert_pgrst_error(http.get("/api/plans", headers={**h, "Accept-Profile": "mec_data"}),
                       406, "PGRST106")


# --- roles (403) ---------------------------------------------------------------------

def test_user_may_not_meter(http, token, demo_ns, demo_account):
    r = http.post("/api/rpc/meter_consumption",
                  headers=bearer(token("mec_user", demo_ns, demo_account)),
                  json={"p_idempotency_key": f"e2e-{uuid.uuid4()}", "p_account_id": demo_account,
                        "p_resource_type": "benchmark_runs", "p_quantity": 1})
    assert_pgrst_error(r, 403, "42501")


def test_service_may_not_load_catalogs(http, token, demo_ns):
    r = http.post("/api/rpc/load_catalog", headers=bearer(token("mec_service", demo_ns)),
                  json={"p_catalog": {"plans": []}})
    assert_pgrst_error(r, 403, "42501")


def test_user_sees_only_its_own_account(http, tenant):
    other = tenant.new_account(http)
    user = bearer(tenant.token("mec_user", tenant.account_id))
    r = http.get("/api/accounts", headers=user, params={"select": "account_id"})
    assert r.status_code == 200, r.text
    assert [row["account_id"] for row in r.json()] == [tenant.account_id]
    r = http.post("/api/rpc/check_entitlement", headers=user,
                  json={"p_account_id": other, "p_resource_type": "benchmark_runs"})
    assert_pgrst_error(r, 403, "42501")


def test_claims_never_outlive_their_request(http, tenant):
    """Each request's claims are set transaction-locally on a pooled connection: alternating
    end users of the same role, every request sees its own account claim and no other."""
    a = tenant.account_id
    b = tenant.new_account(http)
    user_a = bearer(tenant.token("mec_user", a))
    user_b = bearer(tenant.token("mec_user", b))
    for _ in range(20):  # enough to land on connections the other user just used
        for me, other, headers in ((a, b, user_a), (b, a, user_b)):
            mine = http.post("/api/rpc/usage_summary", headers=headers, json={"p_account_id": me})
            assert mine.status_code == 200, mine.text
            assert mine.json()["account_id"] == me
            theirs = http.post("/api/rpc/usage_summary", headers=headers, json={"p_account_id": other})
            assert_pgrst_error(theirs, 403, "42501")


def test_token_without_namespace_is_refused(http, secret, demo_account):
    t = make_token(secret, "mec_service", None)
    r = http.post("/api/rpc/check_entitlement", headers=bearer(t),
                  json={"p_account_id": demo_account, "p_resource_type": "benchmark_runs"})
    assert_pgrst_error(r, 403, "42501")


# --- namespaces ----------------------------------------------------------------------

def test_no_cross_namespace_read_or_write(http, token, tenant, demo_ns, demo_account):
    demo = bearer(token("mec_service", demo_ns))
    mine = bearer(tenant.token("mec_service"))
    # Reads: neither side sees the other's accounts.
    ids = {row["account_id"] for row in http.get("/api/accounts", headers=mine,
                                                 params={"select": "account_id"}).json()}
    assert tenant.account_id in ids and demo_account not in ids
    r = http.get("/api/accounts", headers=demo, params={"account_id": f"eq.{tenant.account_id}"})
    assert r.status_code == 200 and r.json() == []
    for view in ("entitlements", "active_entitlements", "consumption"):
        r = http.get(f"/api/{view}", headers=demo,
                     params={"account_id": f"eq.{tenant.account_id}"})
        assert r.status_code == 200 and r.json() == [], f"{view}: {r.text}"
    # Calls: the demo namespace cannot check or meter the tenant's account.
    r = http.post("/api/rpc/check_entitlement", headers=demo,
                  json={"p_account_id": tenant.account_id, "p_resource_type": "benchmark_runs"})
    assert r.status_code in (403, 404), r.text
    key = f"e2e-cross-{uuid.uuid4()}"
    r = http.post("/api/rpc/meter_consumption", headers=demo,
                  json={"p_idempotency_key": key, "p_account_id": tenant.account_id,
                        "p_resource_type": "benchmark_runs", "p_quantity": 1})
    assert r.status_code in (403, 404), r.text
    r = http.get("/api/consumption", headers=mine, params={"idempotency_key": f"eq.{key}"})
    assert r.json() == []
    # A namespace claim cannot be smuggled in an argument either.
    r = http.post("/api/rpc/check_entitlement", headers=demo,
                  json={"p_account_id": tenant.account_id, "p_resource_type": "benchmark_runs",
                        "p_namespace_id": tenant.namespace_id})
    assert r.status_code == 404, r.text


# --- metering, idempotency, 429 ------------------------------------------------------

def meter(http, t, account, key, qty=1, resource="benchmark_runs"):
    return http.post("/api/rpc/meter_consumption", headers=bearer(t),
                     json={"p_idempotency_key": key, "p_account_id": account,
                           "p_resource_type": resource, "p_quantity": qty,
                           "p_metadata": {"source": "gateway-e2e"}})


def assert_problem(r):
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    for key in ("type", "title", "status", "detail", "instance", "violated-policies",
                "code", "message", "details", "hint"):
        assert key in body, f"{key} missing: {body}"
    assert body["status"] == 429
    assert body["code"] == "ME429"
    assert body["instance"] == "/api/rpc/meter_consumption"
    policies = body["violated-policies"]
    assert isinstance(policies, list) and policies, body
    for p in policies:
        assert {"policy", "limit", "current", "window", "reset_at"} <= set(p), p
    retry = int(r.headers["retry-after"])
    assert retry >= 1
    assert re.match(r'^"[^"]+";q=\d+', r.headers["ratelimit-policy"]), r.headers["ratelimit-policy"]
    assert re.match(r'^"[^"]+";r=\d+;t=\d+', r.headers["ratelimit"]), r.headers["ratelimit"]
    return body


def test_meter_idempotency_and_limit(http, tenant):
    account = tenant.new_account(http)
    t = tenant.token("mec_service")
    run = uuid.uuid4().hex
    for i in range(3):
        r = meter(http, t, account, f"{run}-{i}")
        assert r.status_code == 200, r.text
        assert r.json()["duplicate"] is False
    first = meter(http, t, account, f"{run}-0")
    assert first.status_code == 200 and first.json()["duplicate"] is True
    r = meter(http, t, account, f"{run}-0", qty=2)
    assert_pgrst_error(r, 409, "ME409")
    body = assert_problem(meter(http, t, account, f"{run}-over"))
    assert "benchmark_runs" in body["message"]
    assert body["violated-policies"][0]["limit"] == 3
    # The refused call recorded nothing.
    r = http.get("/api/consumption", headers=bearer(t),
                 params={"account_id": f"eq.{account}", "select": "quantity"},
                 )
    assert len(r.json()) == 3


def test_rate_limit_headers(http, tenant):
    account = tenant.new_account(http)
    t = tenant.token("mec_service")
    run = uuid.uuid4().hex
    refused = None
    for i in range(6):
        r = meter(http, t, account, f"{run}-{i}", resource="api_requests")
        if r.status_code == 429:
            refused = r
            break
        assert r.status_code == 200, r.text
    assert refused is not None, "the third request within a minute is refused"
    assert_problem(refused)
    assert ";w=60" in refused.headers["ratelimit-policy"]
    # the window slides: the retry fits once the counted requests' weight has faded, at most two
    # windows on (a full current bucket fades through the next one) — and then it is allowed
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 120, retry_after
    at = (datetime.now(timezone.utc) + timedelta(seconds=retry_after)).isoformat()
    r = http.post("/api/rpc/meter_consumption", headers=bearer(t),
                  json={"p_idempotency_key": f"{run}-retry", "p_account_id": account,
                        "p_resource_type": "api_requests", "p_quantity": 1, "p_occurred_at": at})
    assert r.status_code == 200, r.text


# --- views ---------------------------------------------------------------------------

def test_view_filters_order_count_range(http, tenant):
    account = tenant.new_account(http)
    t = tenant.token("mec_service")
    for qty in (0.25, 0.5, 1):  # 1.75 in all: within the plan's limit of 3
        assert meter(http, t, account, f"{uuid.uuid4()}", qty=qty).status_code == 200
    h = bearer(t)
    base = {"account_id": f"eq.{account}", "select": "quantity,resource_type"}
    r = http.get("/api/consumption", headers={**h, "Prefer": "count=exact"},
                 params={**base, "order": "quantity.desc", "limit": "2"})
    assert r.status_code == 206, r.text
    assert r.headers["content-range"] == "0-1/3"
    assert [float(x["quantity"]) for x in r.json()] == [1, 0.5]
    r = http.get("/api/consumption", headers={**h, "Prefer": "count=exact", "Range": "1-2"},
                 params={**base, "order": "quantity"})
    assert r.headers["content-range"] == "1-2/3"
    assert [float(x["quantity"]) for x in r.json()] == [0.5, 1]
    r = http.get("/api/consumption", headers={**h, "Prefer": "count=exact"},
                 params={**base, "offset": "10"})
    assert_pgrst_error(r, 416, "PGRST103")
    r = http.get("/api/consumption", headers=h, params={**base, "quantity": "in.(0.25,1)"})
    assert sorted(float(x["quantity"]) for x in r.json()) == [0.25, 1]
    r = http.get("/api/consumption", headers=h, params={**base, "quantity": "not.gte.0.5"})
    assert [float(x["quantity"]) for x in r.json()] == [0.25]
    r = http.get("/api/consumption", headers=h, params={**base, "resource_type": "ilike.BENCH*"})
    assert len(r.json()) == 3
    r = http.get("/api/consumption", headers=h, params=[*base.items(), ("quantity", "gt.0.25"),
                                                        ("quantity", "lt.1")])
    assert [float(x["quantity"]) for x in r.json()] == [0.5]
    r = http.get("/api/consumption", headers=h,
                 params={**base, "or": "(quantity.eq.0.25,quantity.eq.1)"})
    assert len(r.json()) == 2
    r = http.get("/api/accounts", headers={**h, "Accept": "application/vnd.pgrst.object+json"},
                 params={"account_id": f"eq.{account}"})
    assert r.status_code == 200 and r.json()["account_id"] == account
    r = http.get("/api/accounts", headers={**h, "Accept": "application/vnd.pgrst.object+json"},
                 params={"account_id": f"eq.{uuid.uuid4()}"})
    body = assert_pgrst_error(r, 406, "PGRST116")
    assert body["details"] == "The result contains 0 rows"
    assert_pgrst_error(http.get("/api/accounts", headers=h, params={"select": "nope"}), 400, "42703")
    assert_pgrst_error(http.get("/api/accounts", headers=h, params={"account_id": "eq.nope"}),
                       400, "22P02")
