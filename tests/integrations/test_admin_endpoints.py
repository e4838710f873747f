"""The operator's endpoints over real HTTP with real JWTs: /admin/bulk-provision (all or nothing,
idempotent, per-row results, thousands of rows) and /admin/expire-stale-leases. Postgres, not the
gateway, refuses other roles."""

from __future__ import annotations

import json
import time
import uuid
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.gateway


@pytest.fixture
def admin(http, gateway_url, make_token):
    def _admin(ns, path: str, json=None, role: str = "mec_admin", headers: dict | None = None):
        token = make_token(role=role, namespace_id=ns.namespace_id)
        h = {"Authorization": f"Bearer {token}", **(headers or {})}
        return http.post(gateway_url + path, json=json, headers=h, timeout=60)

    return _admin


def _count_accounts(ns):
    return ns.sql("SELECT count(*) FROM mec.accounts WHERE namespace_id = %s::uuid", ns.namespace_id)


def test_bulk_provision_of_5000_rows_with_one_bad_row_changes_nothing(stripe_ns, admin):
    ns = stripe_ns()
    rows = [{"external_id": f"user-{i}", "plan_id": "starter" if i % 2 else "growth"} for i in range(5000)]
    rows[3217] = {"external_id": "user-3217", "plan_id": "platinum"}
    r = admin(ns, "/admin/bulk-provision", json=rows)
    assert r.status_code == 400 and r.json()["code"] == "22023", r.text
    body = r.json()
    assert "unknown plan" in body["details"] and '"index":3217' in body["details"], body
    assert _count_accounts(ns) == 0
    rows[3217]["plan_id"] = "growth"
    r = admin(ns, "/admin/bulk-provision", json=rows)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rows"] == 5000 and body["created"] == 5000 and len(body["results"]) == 5000
    assert body["results"][3217]["plan_id"] == "growth" and body["results"][3217]["created"] is True
    assert _count_accounts(ns) == 5000
    # The same rows again: found by external id, nothing changes.
    again = admin(ns, "/admin/bulk-provision", json=rows).json()
    assert again["created"] == 0 and again["changed"] == 0 and again["unchanged"] == 5000, again["rows"]
    assert [x["account_id"] for x in again["results"]] == [x["account_id"] for x in body["results"]]


def test_bulk_provision_checks_every_row_and_moves_plans(stripe_ns, admin):
    ns = stripe_ns()
    known = str(uuid.uuid4())
    assert admin(ns, "/admin/bulk-provision", json=[{"account_id": known, "external_id": "ext-known",
                                                     "plan_id": "starter"}]).status_code == 200
    bad = [
        {"account_id": "nope", "plan_id": "starter"},
        {"plan_id": "starter"},
        {"external_id": "ext-known", "account_id": str(uuid.uuid4()), "plan_id": "starter"},
        {"external_id": "dup", "plan_id": "starter"},
        {"external_id": "dup", "plan_id": "starter"},
        {"external_id": "x", "plan": "starter"},
        "not an object",
    ]
    r = admin(ns, "/admin/bulk-provision", json=bad)
    assert r.status_code == 400, r.text
    problems = json.loads(r.json()["details"])["problems"]
    assert [p["index"] for p in problems] == [0, 1, 2, 4, 5, 5, 6], problems
    assert "row 3" in problems[3]["message"] and "belongs to account" in problems[2]["message"], problems
    moved = admin(ns, "/admin/bulk-provision", json=[{"external_id": "ext-known", "plan_id": "growth"}]).json()
    assert moved["results"][0] == {"index": 0, "account_id": known, "external_id": "ext-known",
                                   "plan_id": "growth", "created": False, "changed": True}
    assert admin(ns, "/admin/bulk-provision", json={"rows": []}).status_code == 400
    assert admin(ns, "/admin/bulk-provision", json=[]).status_code == 400


def test_bulk_provision_idempotency_key(stripe_ns, admin):
    ns = stripe_ns()
    rows = [{"external_id": "k-1", "plan_id": "starter"}]
    key = {"Idempotency-Key": "bulk-" + uuid.uuid4().hex}
    first = admin(ns, "/admin/bulk-provision", json=rows, headers=key).json()
    second = admin(ns, "/admin/bulk-provision", json=rows, headers=key).json()
    assert first["duplicate"] is False and second["duplicate"] is True
    assert second["results"] == first["results"]
    other = admin(ns, "/admin/bulk-provision", json=[{"external_id": "k-2", "plan_id": "starter"}], headers=key)
    assert other.status_code == 409 and other.json()["code"] == "ME409", other.text


@pytest.mark.parametrize("path", ["/admin/bulk-provision", "/admin/expire-stale-leases"])
def test_only_admins(stripe_ns, admin, http, gateway_url, path):
    ns = stripe_ns()
    body = [{"external_id": "x", "plan_id": "starter"}]
    r = admin(ns, path, json=body, role="mec_service")
    assert r.status_code == 403 and r.json()["code"] == "42501", r.text
    r = http.post(gateway_url + path, json=body, timeout=30)
    assert r.status_code == 401, r.text
    assert _count_accounts(ns) == 0


def test_expire_stale_leases(stripe_ns, admin):
    ns = stripe_ns()
    r = admin(ns, "/admin/expire-stale-leases")
    assert r.status_code == 200 and r.json() == {"expired": 0}, r.text


LEASE_CATALOG = {"resources": [{"resource_type": "jobs", "kind": "concurrency"}],
                 "plans": [{"plan_id": "p", "default": True, "entitlements": {"jobs": {"limit": 2}}}]}


def test_expire_stale_leases_marks_the_expired_ones_only(new_namespace, connect, admin, http, gateway_url,
                                                       make_token):
    ns = SimpleNamespace(namespace_id=new_namespace(catalog=LEASE_CATALOG))
    service = {"Authorization": f"Bearer {make_token(role='mec_service', namespace_id=ns.namespace_id)}"}
    account = str(uuid.uuid4())

    def acquire(ttl):
        r = http.post(f"{gateway_url}/api/rpc/acquire_lease", headers=service, timeout=30,
                      json={"p_account_id": account, "p_resource_type": "jobs", "p_ttl_seconds": ttl})
        assert r.status_code == 200, r.text
        return r.json()["lease_id"]

    admin_token = {"Authorization": f"Bearer {make_token(role='mec_admin', namespace_id=ns.namespace_id)}"}
    r = http.post(f"{gateway_url}/api/rpc/provision_plan", headers=admin_token, timeout=30,
                  json={"p_account_id": account, "p_plan_id": "p"})
    assert r.status_code == 200, r.text
    short, long = acquire(1), acquire(600)
    time.sleep(1.5)  # the short lease's TTL passes; it already stopped counting
    r = admin(ns, "/admin/expire-stale-leases")
    assert r.status_code == 200 and r.json() == {"expired": 1}, r.text
    rows = dict(connect(namespace_id=ns.namespace_id).execute(
        "SELECT lease_id::text, release_reason FROM mec_data.leases WHERE namespace_id = %s", (ns.namespace_id,)
    ).fetchall())
    assert rows == {short: "expired", long: None}, rows
    again = admin(ns, "/admin/expire-stale-leases")
    assert again.status_code == 200 and again.json() == {"expired": 0}, again.text
    # Only a mec_admin may sweep: Postgres refuses the service role.
    refused = admin(ns, "/admin/expire-stale-leases", role="mec_service")
    assert refused.status_code == 403, refused.text
