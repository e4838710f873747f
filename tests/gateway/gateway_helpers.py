"""Helpers shared by the gateway end-to-end tests (a module of its own so that other
test folders' conftest.py files cannot shadow it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import httpx
import jwt
import pytest

ROLES = ("mec_user", "mec_service", "mec_admin")

# A small catalog loaded into a namespace of the tests' own, so limits are known and tiny.
E2E_CATALOG = {
    "version": "e2e-1",
    "currency": "USD",
    "resources": [
        {"resource_type": "benchmark_runs", "kind": "metered", "unit": "run"},
        {"resource_type": "api_requests", "kind": "rate", "window_seconds": 60},
        {"resource_type": "code_generation", "kind": "feature"},
    ],
    "plans": [
        {
            "plan_id": "e2e",
            "name": "E2E",
            "default": True,
            "entitlements": {
                "benchmark_runs": {"limit": 3, "period": "month", "enforcement": "hard", "grace": 0},
                "api_requests": {"limit": 2, "grace": 0},
                "code_generation": True,
            },
        }
    ],
}


def env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.skip(f"{name} is not set (run `scripts/mec up` and source .mec/env)")
    return value


def make_token(secret: str, role: str | None, namespace: str | None, account: str | None = None,
               ttl: int = 600, **extra) -> str:
    now = int(time.time())
    claims: dict = {"iat": now, "exp": now + ttl, "sub": "gateway-e2e"}
    if role is not None:
        claims["role"] = role
    if namespace is not None:
        claims["namespace_id"] = namespace
    if account is not None:
        claims["account_id"] = account
    claims.update(extra)
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


def assert_pgrst_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    """Every error body is a JSON object with PostgREST's four keys."""
    assert r.status_code == status, f"{r.status_code}: {r.text}"
    body = r.json()
    assert isinstance(body, dict), r.text
    for key in ("code", "message", "details", "hint"):
        assert key in body, f"{key} missing from {body}"
    if code is not None:
        assert body["code"] == code, body
    return body


def psql(sql: str) -> str:
    """Run SQL as the superuser (MEC_DATABASE_URL) and return the single value."""
    url = os.environ.get("MEC_DATABASE_URL", "")
    exe = shutil.which("psql")
    if not url or not exe:
        pytest.skip("MEC_DATABASE_URL or psql is not available")
    out = subprocess.run([exe, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    return out.stdout.strip()


class Tenant:
    """A namespace of the tests' own, with the E2E catalog and a fresh account."""

    def __init__(self, namespace_id: str, account_id: str, secret: str):
        self.namespace_id = namespace_id
        self.account_id = account_id
        self.secret = secret

    def token(self, role: str, account: str | None = None) -> str:
        return make_token(self.secret, role, self.namespace_id, account)

    def new_account(self, http: httpx.Client) -> str:
        account = str(uuid.uuid4())
        r = http.post("/api/rpc/provision_plan", headers=bearer(self.token("mec_admin")),
                      json={"p_account_id": account, "p_plan_id": "e2e",
                            "p_idempotency_key": f"e2e-provision-{account}"})
        assert r.status_code == 200, r.text
        return account
