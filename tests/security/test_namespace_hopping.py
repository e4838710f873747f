"""Namespace hopping through every view and every function over HTTP: an admin of namespace B,
holding ids of namespace A's account, lease, reservation, webhook endpoint and delivery, reads
every view of schema mec (found in the catalog: a new view is covered without a new test) and
calls every function that takes one of those ids. Nothing of A is shown, nothing of A changes."""

from __future__ import annotations

import uuid

import pytest

from security_helpers_hop import TABLES, fingerprint

pytestmark = [pytest.mark.gateway]

# What a call naming another namespace's object may answer: it does not exist here.
NOT_HERE = {"ME404", "P0002", "42501", "ME410"}


@pytest.fixture
def two_namespaces(security_namespace, connect, make_token):
    a, b = security_namespace(), security_namespace()
    ca = connect(namespace_id=a)
    one = lambda q, *args: ca.execute(q, args).fetchone()[0]  # noqa: E731
    account = str(uuid.uuid4())
    one("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'basic', p_external_id => 'ext-a')",
        account)
    one("SELECT mec.meter_consumption(p_idempotency_key => 'a-1', p_account_id => %s::uuid, "
        "p_resource_type => 'runs', p_quantity => 3)", account)
    ids = {
        "p_account_id": account,
        "p_lease_id": one("SELECT mec.acquire_lease(p_account_id => %s::uuid, p_resource_type => 'jobs', "
                          "p_holder => 'h', p_ttl_seconds => 600)", account)["lease_id"],
        "p_reservation_id": one("SELECT mec.reserve_consumption(p_idempotency_key => 'a-r', p_account_id => "
                                "%s::uuid, p_resource_type => 'runs', p_quantity => 1, p_ttl_seconds => 600)",
                                account)["reservation_id"],
        "p_endpoint_id": one("SELECT mec.create_webhook_endpoint(p_url => 'https://a.example/h')")["endpoint_id"],
    }
    one("SELECT mec.set_payment_overdue(p_account_id => %s::uuid, p_overdue => true)", account)
    ids["p_delivery_id"] = one("SELECT delivery_id::text FROM mec_data.webhook_deliveries WHERE namespace_id = %s "
                               "LIMIT 1", a)
    assert ids["p_delivery_id"], "the overdue event queued a delivery"
    # The gateway's worker would attempt it (and change A's rows) while the hops run: not before tomorrow.
    ca.execute("UPDATE mec_data.webhook_deliveries SET next_attempt_at = now() + interval '1 day' "
               "WHERE namespace_id = %s", (a,))
    return a, b, ids, ca, make_token(role="mec_admin", namespace_id=b)


VALID = {"p_resource_type": "runs", "p_quantity": 1, "p_plan_id": "basic", "p_holder": "h", "p_ttl_seconds": 60,
         "p_reason": "hop", "p_actual_quantity": 1, "p_anchor_day": 1, "p_overdue": False, "p_limit": 5,
         "p_requested_qty": 1, "p_from": "2026-01-01T00:00:00Z", "p_url": "https://b.example/h",
         "p_items": [{"resource_type": "runs", "quantity": 1}]}


def test_no_view_shows_another_namespace(two_namespaces, db, http, gateway_url):
    a, b, _, _, token = two_namespaces
    views = [r[0] for r in db.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                                      "c.relnamespace WHERE n.nspname = 'mec' AND c.relkind = 'v'").fetchall()]
    assert len(views) > 10
    for view in views:
        for query in ("", f"?namespace_id=eq.{a}", f"?or=(namespace_id.eq.{a},namespace_id.eq.{b})"):
            r = http.get(f"{gateway_url}/api/{view}{query}", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, (view, r.text)
            rows = r.json()
            assert all(row.get("namespace_id") in (None, b) for row in rows), (view, query)
            assert a not in r.text, (view, query)


def test_no_function_reaches_another_namespace(two_namespaces, db, http, gateway_url):
    a, b, ids, ca, token = two_namespaces
    functions = db.execute(
        "SELECT p.proname, p.proargnames, p.pronargdefaults FROM pg_proc p JOIN pg_namespace n "
        "ON n.oid = p.pronamespace WHERE n.nspname = 'mec' AND p.proargnames && %s ORDER BY 1",
        (list(ids),)).fetchall()
    assert len(functions) > 15, [f[0] for f in functions]
    before = fingerprint(ca, a)
    tried = 0
    for name, arg_names, n_defaults in functions:
        required = arg_names[:len(arg_names) - n_defaults]
        for hop in (set(arg_names) & set(ids)):
            body = {arg: VALID.get(arg) for arg in required}
            body.update({arg: ids[arg] for arg in arg_names if arg in ids})
            body[hop] = ids[hop]
            if "p_idempotency_key" in arg_names:
                body["p_idempotency_key"] = f"hop-{uuid.uuid4()}"
            r = http.post(f"{gateway_url}/api/rpc/{name}", json=body, headers={"Authorization": f"Bearer {token}"})
            tried += 1
            text = r.text
            assert r.status_code != 200 or a not in text, (name, hop, text)
            if r.status_code != 200:
                code = r.json().get("code")
                assert r.status_code < 500 and code in NOT_HERE | {"22023", "ME400"}, (name, hop, r.status_code, text)
    assert tried > 15
    assert fingerprint(ca, a) == before, "a call from namespace B changed namespace A"


def test_filters_cannot_name_the_namespace_column_into_another(two_namespaces, http, gateway_url):
    a, _, ids, _, token = two_namespaces
    r = http.get(f"{gateway_url}/api/accounts?account_id=eq.{ids['p_account_id']}",
                 headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json() == []
    r = http.get(f"{gateway_url}/api/consumption?select=namespace_id,quantity&namespace_id=neq.00000000-0000-0000-0000-000000000000",
                 headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and a not in r.text


def test_tables_are_as_listed(db):
    # the fingerprint covers every table that has a namespace_id
    have = {r[0] for r in db.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'mec_data' "
        "AND column_name = 'namespace_id' AND table_name IN (SELECT tablename FROM pg_tables "
        "WHERE schemaname = 'mec_data')").fetchall()}
    assert have - {"namespaces"} <= set(TABLES), have - set(TABLES)

