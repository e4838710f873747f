"""Alerts and outbound webhooks over real HTTP: usage that crosses the catalog's thresholds is
alerted once per threshold, in the transaction that crossed it (NOTIFY mec_alerts on commit); the
running gateway delivers every event from the outbox signed per the Standard Webhooks spec, which
the receiver verifies with the `standardwebhooks` library; failures are retried on the
namespace's schedule, then dead-lettered, requeued by the admin. See docs/integrations.md."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable

import pytest
from psycopg.types.json import Jsonb

from webhook_receiver import Receiver

pytestmark = [pytest.mark.gateway]

CATALOG = {
    "version": "alerts-1",
    "resources": [{"resource_type": "tokens", "kind": "metered", "unit": "token"}],
    "plans": [
        {"plan_id": "free", "default": True, "entitlements": {"tokens": {"limit": 10, "grace": 0}}},
        {"plan_id": "pro", "entitlements": {"tokens": {"limit": 320, "grace": 0}}},
        {"plan_id": "team", "entitlements": {"tokens": {"limit": 1000, "grace": 0}}},
    ],
    "alerts": {"thresholds": [50, 80, 100]},
}


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


class Ns:
    def __init__(self, namespace_id: str, conn: Any, admin: str, service: str):
        self.id, self.conn, self.admin, self.service = namespace_id, conn, admin, service

    def sql(self, query: str, *params: Any) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None


@pytest.fixture
def alert_ns(new_namespace, connect, make_token) -> Callable[..., Ns]:
    def _make(retry_schedule: list[int] | None = None) -> Ns:
        ns_id = new_namespace(catalog=CATALOG)
        ns = Ns(ns_id, connect(namespace_id=ns_id), make_token(role="mec_admin", namespace_id=ns_id),
                make_token(role="mec_service", namespace_id=ns_id))
        if retry_schedule is not None:
            ns.sql("SELECT mec.update_namespace_settings(p_settings => %s)",
                   Jsonb({"webhook_retry_schedule": retry_schedule}))
        return ns

    return _make


def rpc(http, gateway_url, token: str, function: str, **args: Any):
    return http.post(f"{gateway_url}/api/rpc/{function}", json={f"p_{k}": v for k, v in args.items()},
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)


def register(http, gateway_url, ns: Ns, receiver: Receiver, **args: Any) -> dict[str, Any]:
    r = rpc(http, gateway_url, ns.admin, "create_webhook_endpoint", url=receiver.url, **args)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["secret"].startswith("whsec_")
    receiver.secret = body["secret"]
    return body


def deliveries(http, gateway_url, ns: Ns, query: str = "") -> list[dict[str, Any]]:
    r = http.get(f"{gateway_url}/admin/deliveries{query}",
                 headers={"Authorization": f"Bearer {ns.admin}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def provision(ns: Ns, plan: str = "pro", account: str | None = None) -> str:
    account = account or str(uuid.uuid4())
    ns.sql("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => %s)", account, plan)
    return account


def test_32_clients_crossing_every_threshold_alert_once_each(http, gateway_url, alert_ns, receiver):
    ns = alert_ns()
    register(http, gateway_url, ns, receiver)
    account = provision(ns)
    outcomes: list[int] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        import requests

        with requests.Session() as s:
            for i in range(20):
                r = s.post(f"{gateway_url}/api/rpc/meter_consumption",
                           json={"p_idempotency_key": f"c{n}-{i}", "p_account_id": account,
                                 "p_resource_type": "tokens", "p_quantity": 1},
                           headers={"Authorization": f"Bearer {ns.service}"}, timeout=30)
                with lock:
                    outcomes.append(r.status_code)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(200) == 320 and outcomes.count(429) == 320, sorted(set(outcomes))
    assert ns.sql("SELECT sum(quantity) FROM mec.consumption WHERE account_id = %s::uuid", account) == 320

    rows = ns.conn.execute(
        "SELECT event_type, threshold, quantity_used, consumption_id IS NOT NULL FROM mec.alert_crossings "
        "WHERE account_id = %s::uuid ORDER BY quantity_used, event_type", (account,)).fetchall()
    # One row per threshold, each recorded by the very event that reached its value.
    assert [(r[0], int(r[1]), int(r[2]), r[3]) for r in rows] == [
        ("usage.threshold_crossed", 50, 160, True),
        ("usage.threshold_crossed", 80, 256, True),
        ("usage.limit_reached", 100, 320, True),
        ("usage.threshold_crossed", 100, 320, True),
    ]
    # The ledger row each names is the event that took usage to that value.
    crossing_usage = ns.conn.execute(
        "SELECT c.quantity_used, l.quantity_used FROM mec.alert_crossings c "
        "JOIN mec.consumption l ON l.consumption_id = c.consumption_id WHERE c.account_id = %s::uuid",
        (account,)).fetchall()
    assert all(a == b for a, b in crossing_usage), crossing_usage

    wait_for(lambda: len(receiver.events) == 4, what="four verified deliveries")
    time.sleep(1.5)  # a second delivery of any of them would arrive now
    assert len(receiver.events) == 4 and receiver.rejected == 0
    assert [r["status"] for r in receiver.requests] == [200] * 4, receiver.requests
    crossed = sorted(e["data"]["threshold"] for e in receiver.of_type("usage.threshold_crossed"))
    assert crossed == [50, 80, 100]
    [limit] = receiver.of_type("usage.limit_reached")
    assert limit["data"]["account_id"] == account and limit["data"]["quantity_used"] == 320
    assert limit["data"]["quantity_allowed"] == 320 and limit["data"]["resource_type"] == "tokens"
    log = deliveries(http, gateway_url, ns)
    assert len(log) == 4 and {d["state"] for d in log} == {"delivered"} and {d["attempts"] for d in log} == {1}
    assert {d["webhook_id"] for d in log} == set(receiver.events)


def test_failing_endpoint_is_retried_and_delivered_once(http, gateway_url, alert_ns, receiver):
    ns = alert_ns(retry_schedule=[1, 1, 1, 1])
    register(http, gateway_url, ns, receiver, event_types=["account.plan_changed"])
    account = provision(ns, "pro")
    receiver.fail_next = 2
    provision(ns, "team", account)
    wait_for(lambda: receiver.events, what="the plan change delivered")
    [ev] = receiver.of_type("account.plan_changed")
    assert ev["data"] == {"account_id": account, "plan_id": "team", "previous_plan_id": "pro",
                          "effective_at": ev["data"]["effective_at"]}
    # The same webhook-id on every attempt: two failures, then one success.
    assert [r["status"] for r in receiver.requests] == [500, 500, 200]
    assert len({r["id"] for r in receiver.requests}) == 1
    [d] = deliveries(http, gateway_url, ns)
    assert d["state"] == "delivered" and d["attempts"] == 3 and d["last_status"] == 200
    assert d["event_type"] == "account.plan_changed" and d["url"] == receiver.url


def test_dead_letter_after_the_schedule_then_requeued(http, gateway_url, alert_ns, receiver, make_token):
    ns = alert_ns(retry_schedule=[0, 0])
    register(http, gateway_url, ns, receiver)
    receiver.always_fail = True
    account = provision(ns, "pro")
    ns.sql("SELECT mec.set_payment_overdue(p_account_id => %s::uuid, p_overdue => true)", account)
    dead = wait_for(lambda: deliveries(http, gateway_url, ns, "?state=eq.dead"), what="a dead delivery")
    assert len(dead) == 1 and dead[0]["attempts"] == 3 and dead[0]["last_status"] == 500
    assert dead[0]["event_type"] == "account.payment_overdue" and "500" in dead[0]["last_error"]
    assert len(receiver.requests) == 3
    # Only the admin reads the log.
    r = http.get(f"{gateway_url}/admin/deliveries", headers={"Authorization": f"Bearer {ns.service}"})
    assert r.status_code in (401, 403) and r.json()["code"] == "42501", r.text
    # The admin fixed the endpoint and requeues: delivered, once.
    receiver.always_fail = False
    r = rpc(http, gateway_url, ns.admin, "retry_webhook_delivery", delivery_id=dead[0]["delivery_id"])
    assert r.status_code == 200 and r.json()["requeued"] == 1, r.text
    wait_for(lambda: receiver.events, what="the requeued delivery")
    [ev] = receiver.of_type("account.payment_overdue")
    assert ev["data"]["account_id"] == account and ev["data"]["payment_overdue"] is True
    assert deliveries(http, gateway_url, ns)[0]["state"] == "delivered"


def test_endpoints_get_only_their_event_types_and_bad_input_is_refused(http, gateway_url, alert_ns, receiver):
    ns = alert_ns()
    register(http, gateway_url, ns, receiver, event_types=["usage.limit_reached"])
    account = provision(ns, "free")
    provision(ns, "pro", account)  # account.plan_changed: not subscribed
    for i in range(320):
        ns.sql("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
               "p_resource_type => 'tokens', p_quantity => 1)", f"k{i}", account)
    wait_for(lambda: receiver.events, what="limit_reached")
    time.sleep(1.5)
    assert [e["payload"]["type"] for e in receiver.events.values()] == ["usage.limit_reached"]
    for args, code in [({"url": receiver.url, "event_types": ["usage.nope"]}, "22023"),
                       ({"url": "ftp://example.com/x"}, "22023"),
                       ({"url": receiver.url, "secret": "not-a-secret"}, "22023"),
                       ({"url": "http://user:pw@example.com/"}, "22023")]:
        r = rpc(http, gateway_url, ns.admin, "create_webhook_endpoint", **args)
        assert r.status_code == 400 and r.json()["code"] == code, (args, r.text)
    r = rpc(http, gateway_url, ns.service, "create_webhook_endpoint", url=receiver.url)
    assert r.status_code in (401, 403) and r.json()["code"] == "42501", r.text
    # (a superuser's connection: row-level security does not narrow it)
    assert ns.sql("SELECT count(*) FROM mec.webhook_endpoints WHERE namespace_id = %s::uuid", ns.id) == 1
    # Secrets are shown once: neither the view nor the table's columns give them to the admin.
    r = http.get(f"{gateway_url}/api/webhook_endpoints", headers={"Authorization": f"Bearer {ns.admin}"})
    assert r.status_code == 200 and "secret" not in r.json()[0], r.text


def test_alerts_belong_to_the_transaction_that_crossed_them(alert_ns, connect):
    ns = alert_ns()
    account = provision(ns, "free")  # limit 10: thresholds at 5, 8, 10
    listener = connect(namespace_id=ns.id)
    listener.execute("LISTEN mec_alerts")
    meter = ("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
             "p_resource_type => 'tokens', p_quantity => %s)")
    writer = connect(namespace_id=ns.id, autocommit=False)
    writer.execute(meter, ("big", account, 6))
    writer.rollback()
    assert ns.sql("SELECT count(*) FROM mec.alert_crossings WHERE account_id = %s::uuid", account) == 0
    assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
    writer.execute(meter, ("big", account, 6))
    writer.commit()
    [n] = list(listener.notifies(timeout=5, stop_after=1))
    assert n.channel == "mec_alerts" and ns.id in n.payload and "usage.threshold_crossed" in n.payload
    assert '"account_id"' not in n.payload  # any role may LISTEN: ids only
    # Replaying the key crosses nothing again; the next event crosses 80 %.
    ns.sql(meter, "big", account, 6)
    ns.sql(meter, "next", account, 2)
    rows = ns.conn.execute("SELECT threshold, quantity_used FROM mec.alert_crossings "
                           "WHERE account_id = %s::uuid ORDER BY threshold", (account,)).fetchall()
    assert [(int(t), int(u)) for t, u in rows] == [(50, 6), (80, 8)]
