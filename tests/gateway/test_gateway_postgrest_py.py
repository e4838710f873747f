"""postgrest-py (PyPI `postgrest`), used unchanged against the gateway: its default schema
header (`public`), its query encoding, count and single-object handling and its errors."""

from __future__ import annotations

import uuid

import pytest
from postgrest import APIError, SyncPostgrestClient

from gateway_helpers import make_token


@pytest.fixture()
def client_for(api_url, secret):
    clients = []

    def _client(role: str, namespace: str, account: str | None = None) -> SyncPostgrestClient:
        c = SyncPostgrestClient(api_url)  # default schema "public", as applications use it
        c.auth(make_token(secret, role, namespace, account))
        clients.append(c)
        return c

    yield _client
    for c in clients:
        c.session.close()


def test_rpc_check_entitlement(client_for, demo_ns, demo_account):
    client = client_for("mec_service", demo_ns)
    res = client.rpc("check_entitlement", {"p_account_id": demo_account,
                                           "p_resource_type": "benchmark_runs"}).execute()
    assert res.data["decision"] in ("allow", "deny")
    # The read-only GET form.
    res = client.rpc("check_entitlement", {"p_account_id": demo_account,
                                           "p_resource_type": "benchmark_runs",
                                           "p_requested_qty": 2}, get=True).execute()
    assert res.data["decision"] in ("allow", "deny")


def test_select_eq_with_exact_count(client_for, demo_ns, demo_account):
    client = client_for("mec_service", demo_ns)
    res = client.from_("accounts").select("*", count="exact").eq("account_id", demo_account).execute()
    assert res.count == 1
    assert len(res.data) == 1 and res.data[0]["account_id"] == demo_account
    res = client.from_("accounts").select("account_id").eq("account_id", demo_account).single().execute()
    assert res.data == {"account_id": demo_account}
    res = client.from_("plans").select("*", count="exact").limit(1).execute()
    assert res.count is not None and res.count >= len(res.data)


def test_filters_and_order(client_for, demo_ns, demo_account):
    client = client_for("mec_service", demo_ns)
    res = (client.from_("entitlements").select("account_id,resource_type")
           .eq("account_id", demo_account).in_("resource_type", ["benchmark_runs", "api_requests"])
           .order("resource_type", desc=True).execute())
    kinds = [r["resource_type"] for r in res.data]
    assert kinds == sorted(kinds, reverse=True)
    assert set(kinds) <= {"benchmark_runs", "api_requests"}
    res = client.from_("accounts").select("account_id").neq("account_id", demo_account).execute()
    assert all(r["account_id"] != demo_account for r in res.data)
    res = client.from_("accounts").select("account_id").is_("account_id", "null").execute()
    assert res.data == []


def test_errors_surface_code_and_message(client_for, demo_ns, demo_account):
    client = client_for("mec_service", demo_ns)
    with pytest.raises(APIError) as e:
        client.rpc("check_entitlement", {"p_account_id": demo_account, "p_nope": 1}).execute()
    assert e.value.code == "PGRST202"
    with pytest.raises(APIError) as e:
        client.rpc("check_entitlement", {"p_account_id": "not-a-uuid",
                                         "p_resource_type": "benchmark_runs"}).execute()
    assert e.value.code == "22P02"
    with pytest.raises(APIError) as e:
        client.from_("accounts").select("*").eq("account_id", str(uuid.uuid4())).single().execute()
    assert e.value.code == "PGRST116"
    user = client_for("mec_user", demo_ns, demo_account)
    with pytest.raises(APIError) as e:
        user.rpc("meter_consumption", {"p_idempotency_key": f"e2e-{uuid.uuid4()}",
                                       "p_account_id": demo_account,
                                       "p_resource_type": "benchmark_runs",
                                       "p_quantity": 1}).execute()
    assert e.value.code == "42501"


def test_limit_reached_is_an_api_error_with_code(client_for, http, tenant):
    account = tenant.new_account(http)
    client = client_for("mec_service", tenant.namespace_id)
    run = uuid.uuid4().hex
    for i in range(3):
        res = client.rpc("meter_consumption", {"p_idempotency_key": f"{run}-{i}",
                                               "p_account_id": account,
                                               "p_resource_type": "benchmark_runs",
                                               "p_quantity": 1}).execute()
        assert res.data["duplicate"] is False
    with pytest.raises(APIError) as e:
        client.rpc("meter_consumption", {"p_idempotency_key": f"{run}-over",
                                         "p_account_id": account,
                                         "p_resource_type": "benchmark_runs",
                                         "p_quantity": 1}).execute()
    assert e.value.code == "ME429"
    assert e.value.message
