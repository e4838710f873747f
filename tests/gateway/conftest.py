"""End-to-end tests of the gateway: real HTTP, real JWTs, a running gateway and database.

Environment (written to .mec/env by `scripts/mec up`):
  MEC_GATEWAY_URL        e.g. http://127.0.0.1:8000 (the tests skip when it is unset)
  MEC_JWT_SECRET         the HS256 secret the gateway verifies with
  MEC_DEMO_NAMESPACE_ID  the demo namespace
  MEC_DEMO_ACCOUNT_ID    an account of the demo namespace
  MEC_DATABASE_URL       a superuser URL, used only to create a second namespace with
                         mec.create_namespace (tests needing it skip without psql or the URL)
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from gateway_helpers import Tenant, bearer, env, make_token, psql, E2E_CATALOG


@pytest.fixture(scope="session")
def gateway_url() -> str:
    return env("MEC_GATEWAY_URL").rstrip("/")


@pytest.fixture(scope="session")
def api_url(gateway_url: str) -> str:
    return gateway_url + "/api"


@pytest.fixture(scope="session")
def secret() -> str:
    return env("MEC_JWT_SECRET")


@pytest.fixture(scope="session")
def demo_ns() -> str:
    return env("MEC_DEMO_NAMESPACE_ID")


@pytest.fixture(scope="session")
def demo_account() -> str:
    return env("MEC_DEMO_ACCOUNT_ID")


@pytest.fixture(scope="session")
def token(secret: str):
    def _token(role: str | None, namespace: str | None, account: str | None = None, **kw) -> str:
        return make_token(secret, role, namespace, account, **kw)

    return _token


@pytest.fixture(scope="session")
def http(gateway_url: str):
    with httpx.Client(base_url=gateway_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="session")
def tenant(http: httpx.Client, secret: str) -> Tenant:
    """A second namespace: created with mec.create_namespace (platform operator, psql), then
    set up over HTTP with an admin token of that namespace."""
    name = f"gateway-e2e-{uuid.uuid4().hex[:8]}"
    raw = psql(f"select mec.create_namespace(p_name => '{name}')::text")
    ns = json.loads(raw)["namespace_id"]
    admin = make_token(secret, "mec_admin", ns)
    r = http.post("/api/rpc/load_catalog", headers=bearer(admin), json={"p_catalog": E2E_CATALOG})
    assert r.status_code == 200, f"load_catalog: {r.status_code} {r.text}"
    t = Tenant(ns, "", secret)
    t.account_id = t.new_account(http)
    return t
