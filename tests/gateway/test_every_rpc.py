"""Every function of the contract over real HTTP with real JWTs, each with the role that may call
it — and refused (403, SQLSTATE 42501) for a role that may not."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from gateway_helpers import bearer, psql

CATALOG = {
    "version": "every-rpc-1",
    "resources": [
        {"resource_type": "runs", "kind": "metered"},
        {"resource_type": "jobs", "kind": "concurrency"},
        {"resource_type": "reports", "kind": "feature"},
    ],
    "plans": [
        {"plan_id": "basic", "default": True,
         "entitlements": {"runs": {"limit": 100, "grace": 0}, "jobs": {"limit": 1}, "reports": True}},
        {"plan_id": "pro", "entitlements": {"runs": {"limit": 1000}, "jobs": {"limit": 4}, "reports": True}},
    ],
}


@pytest.fixture(scope="module")
def ns() -> str:
    name = f"every-rpc-{uuid.uuid4().hex[:8]}"
    return json.loads(psql(f"select mec.create_namespace(p_name => '{name}')::text"))["namespace_id"]


def rpc(http: httpx.Client, token: str, fn: str, expect: int = 200, **args) -> dict:
    r = http.post(f"/api/rpc/{fn}", headers=bearer(token), json={f"p_{k}": v for k, v in args.items()})
    assert r.status_code == expect, f"{fn}: {r.status_code} {r.text}"
    return r.json()


def test_every_rpc_of_the_contract(http: httpx.Client, token, ns: str) -> None:
    admin, service = token("mec_admin", ns), token("mec_service", ns)
    account, other = str(uuid.uuid4()), str(uuid.uuid4())
    user = token("mec_user", ns, account)

    # create_namespace belongs to the database owner: no API role may call it.
    assert rpc(http, admin, "create_namespace", 403, name="nope")["code"] == "42501"

    # catalog, settings, provisioning (mec_admin)
    loaded = rpc(http, admin, "load_catalog", catalog=CATALOG)
    assert (loaded["plans_created"], loaded["resources"]) == (2, 3)
    assert rpc(http, admin, "load_catalog", catalog=CATALOG)["unchanged"] is True
    settings = rpc(http, admin, "update_namespace_settings",
                   settings={"late_event_days": 3, "stripe_webhook_secret": "whsec_every_rpc_1234"})
    assert settings["late_event_days"] == 3 and settings["stripe_webhook_secret"] == "****1234"
    assert rpc(http, admin, "provision_plan", account_id=account, plan_id="basic")["created"] is True
    assert rpc(http, admin, "provision_plan", account_id=other, plan_id="basic")["plan_id"] == "basic"
    # ... and not for mec_service
    assert rpc(http, service, "provision_plan", 403, account_id=account, plan_id="pro")["code"] == "42501"

    # check (read-only: GET works too), metering, batches (mec_service)
    r = http.get("/api/rpc/check_entitlement", headers=bearer(service),
                 params={"p_account_id": account, "p_resource_type": "runs", "p_requested_qty": 5})
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text
    first = rpc(http, service, "meter_consumption", idempotency_key="e-1", account_id=account,
                resource_type="runs", quantity=2)
    again = rpc(http, service, "meter_consumption", idempotency_key="e-1", account_id=account,
                resource_type="runs", quantity=2)
    assert (first["duplicate"], again["duplicate"], first["consumption_id"]) == (False, True, again["consumption_id"])
    batch = rpc(http, service, "meter_consumption_batch", events=[
        {"idempotency_key": "b-1", "account_id": account, "resource_type": "runs", "quantity": 1},
        {"idempotency_key": "b-2", "account_id": account, "resource_type": "nope", "quantity": 1},
    ])
    assert (batch["accepted"], batch["rejected"], batch["results"][1]["error"]["code"]) == (1, 1, "ME404")

    # leases
    lease = rpc(http, service, "acquire_lease", account_id=account, resource_type="jobs", holder="w1")
    denied = http.post("/api/rpc/acquire_lease", headers=bearer(service),
                       json={"p_account_id": account, "p_resource_type": "jobs"})
    assert denied.status_code == 429 and denied.headers["content-type"].startswith("application/problem+json")
    assert rpc(http, service, "renew_lease", lease_id=lease["lease_id"], ttl_seconds=60)["renewed"] is True
    assert rpc(http, service, "release_lease", lease_id=lease["lease_id"])["released"] is True
    assert rpc(http, service, "release_lease", lease_id=lease["lease_id"])["already_released"] is True
    assert "expired" in rpc(http, admin, "expire_stale_leases")
    assert rpc(http, service, "expire_stale_leases", 403)["code"] == "42501"

    # reservations
    held = rpc(http, service, "reserve_consumption", idempotency_key="r-1", account_id=account,
               resource_type="runs", quantity=10)
    committed = rpc(http, service, "commit_reservation", reservation_id=held["reservation_id"], actual_quantity=4)
    assert committed["quantity"] == 4
    dropped = rpc(http, service, "reserve_consumption", idempotency_key="r-2", account_id=account,
                  resource_type="runs", quantity=10)
    assert rpc(http, service, "cancel_reservation", reservation_id=dropped["reservation_id"])["quantity_released"] == 10

    # corrections (mec_admin)
    assert rpc(http, admin, "set_override", account_id=account, resource_type="runs", limit=500)["quantity_limit"] == 500
    assert rpc(http, admin, "grant_credits", account_id=account, resource_type="runs", quantity=25)["source"] == "grant"
    adjusted = rpc(http, admin, "adjust_consumption", idempotency_key="fix-1", account_id=account,
                   resource_type="runs", quantity=-1, reason="refund")
    assert adjusted["entry_type"] == "adjustment"
    assert rpc(http, service, "adjust_consumption", 403, idempotency_key="fix-2", account_id=account,
               resource_type="runs", quantity=-1, reason="x")["code"] == "42501"

    # the end user sees its own account only
    summary = rpc(http, user, "usage_summary", account_id=account)
    assert summary["features"]["runs"]["current"] == 2 + 1 + 4 - 1
    assert summary["features"]["runs"]["limit"] == 525
    assert rpc(http, user, "usage_summary", 403, account_id=other)["code"] == "42501"
    assert rpc(http, user, "meter_consumption", 403, idempotency_key="u-1", account_id=account,
               resource_type="runs", quantity=1)["code"] == "42501"

    # forgetting an account (mec_admin), safe to repeat
    assert rpc(http, admin, "forget_account", account_id=other)["existed"] is True
    assert rpc(http, admin, "forget_account", account_id=other)["existed"] is False
    r = http.get("/api/accounts", headers=bearer(admin), params={"account_id": f"eq.{other}"})
    assert r.status_code == 200 and r.json() == []
