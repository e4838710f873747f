"""Usage to Stripe exactly once, against a local Stripe stand-in (stripe_standin.py) that the
official `stripe` library is shown to be accepted by. A gateway of the test's own is pointed at the
stand-in (MEC_STRIPE_API_BASE); failures, hangs, crashes after receiving and a gateway killed mid-run
all end with Stripe holding every billable unit once. See docs/integrations.md."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import stripe
from psycopg.types.json import Jsonb

import stripe_events as se
from stripe_helpers import PRICE_STARTER
from own_gateway import Gateway as OwnGateway
from stripe_standin import StandIn

pytestmark = [pytest.mark.gateway, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
API_KEY = "sk_test_" + uuid.uuid4().hex


def Gateway(standin_url: str, **extra: str) -> OwnGateway:  # noqa: N802 (reads as the class it makes)
    """A gateway of the test's own pointed at the Stripe stand-in."""
    settings = {"MEC_STRIPE_API_BASE": standin_url, "MEC_STRIPE_TIMEOUT_MS": "1500"}
    settings.update(extra)
    return OwnGateway(**settings)


@pytest.fixture(scope="module")
def standin():
    s = StandIn(API_KEY)
    yield s
    s.close()


@pytest.fixture(scope="module")
def gateway(standin):
    g = Gateway(standin.url)
    yield g
    g.stop()


@pytest.fixture
def billed(stripe_ns, make_token, http):
    """billed() -> (namespace, account, customer): an account on starter, linked to a new
    Stripe customer, in a namespace with the stand-in's API key."""

    def _make(api_key: str = API_KEY):
        ns = stripe_ns()
        ns.settings(stripe_api_key=api_key)
        account, cus = str(uuid.uuid4()), se.new_id("cus")
        ev = se.event("customer.subscription.created",
                      se.subscription(se.new_id("sub"), cus, PRICE_STARTER, metadata={"account_id": account}))
        assert ns.sql("SELECT mec.apply_stripe_event(%s)->>'outcome'", Jsonb(ev)) == "applied"
        ns.admin_token = make_token(role="mec_admin", namespace_id=ns.namespace_id)
        return ns, account, cus

    return _make


def meter(ns, account, key, qty, http_status=None):
    return ns.sql("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                  "p_resource_type => 'api_calls', p_quantity => %s, p_http_status => %s)",
                  key, account, qty, http_status)


def sync(http, gateway, ns, expect=200):
    r = http.post(gateway.url + "/admin/sync-usage-to-stripe",
                  headers={"Authorization": f"Bearer {ns.admin_token}"}, timeout=30)
    assert r.status_code == expect, r.text
    return r.json()


def outbox(ns):
    return ns.conn.execute(
        "SELECT identifier, kind, value, state, attempts, last_status, last_error, cancels "
        "FROM mec.stripe_usage_outbox WHERE namespace_id = %s::uuid ORDER BY created_at, identifier",
        (ns.namespace_id,)).fetchall()


def test_the_official_library_is_accepted_and_pg_mec_sends_the_same(standin, gateway, billed, http):
    client = stripe.StripeClient(API_KEY, base_addresses={"api": standin.url}, max_network_retries=0)
    cus = se.new_id("cus")
    ev = client.v1.billing.meter_events.create(params={
        "event_name": "api_calls", "identifier": "lib-" + uuid.uuid4().hex,
        "payload": {"stripe_customer_id": cus, "value": "3"}, "timestamp": int(time.time())})
    assert ev.object == "billing.meter_event" and ev.payload["value"] == "3"
    adj = client.v1.billing.meter_event_adjustments.create(params={
        "event_name": "api_calls", "type": "cancel", "cancel": {"identifier": ev.identifier}})
    assert adj.object == "billing.meter_event_adjustment" and adj.cancel.identifier == ev.identifier
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(params={"event_name": "api_calls",
                                                      "payload": {"value": "1"}})
    with pytest.raises(stripe.AuthenticationError):
        stripe.StripeClient("sk_test_wrong", base_addresses={"api": standin.url},
                            max_network_retries=0).v1.billing.meter_events.create(
            params={"event_name": "api_calls", "payload": {"stripe_customer_id": cus, "value": "1"}})
    lib = [r for r in standin.requests if r["path"] == "/v1/billing/meter_events"
           and r["form"].get("payload[stripe_customer_id]") == cus][0]

    ns, account, customer = billed()
    meter(ns, account, "lib-compare", 2)
    assert sync(http, gateway, ns)["sent"] == 1
    ours = [r for r in standin.requests if r["form"].get("payload[stripe_customer_id]") == customer][0]
    assert set(ours["form"]) == set(lib["form"]), (ours["form"], lib["form"])
    assert ours["headers"]["content-type"] == lib["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert ours["headers"]["authorization"] == lib["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert ours["headers"]["idempotency-key"] == ours["form"]["identifier"]


def test_usage_reaches_stripe_once(standin, gateway, billed, http):
    ns, account, cus = billed()
    for i, q in enumerate([1, 2, 3, Decimal("0.5")]):
        meter(ns, account, f"u-{i}", q)
    meter(ns, account, "u-failed", 7, http_status=503)  # recorded, not billable
    first = sync(http, gateway, ns)
    assert first["prepared"]["events"] == 1 and first["prepared"]["ledger_rows"] == 4, first
    assert first["sent"] == 1 and first["pending"] == 0 and first["finished"] is True
    assert standin.units(cus) == Decimal("6.5")
    again = sync(http, gateway, ns)
    assert again["prepared"]["events"] == 0 and again["sent"] == 0, again
    meter(ns, account, "u-later", 4)
    sync(http, gateway, ns)
    assert standin.units(cus) == Decimal("10.5")
    assert [row[3] for row in outbox(ns)] == ["sent", "sent"]


def test_5xx_429_and_4xx(standin, gateway, billed, http):
    ns, account, cus = billed()
    meter(ns, account, "f-1", 5)
    standin.fail_next("500")
    s = sync(http, gateway, ns)
    assert s["retrying"] == 1 and s["sent"] == 0 and standin.units(cus) == 0, s
    row = outbox(ns)[0]
    assert row[3] == "pending" and row[5] == 500 and "api_error" in row[6], row
    time.sleep(1.2)  # the first backoff is 1 s
    standin.fail_next("429", retry_after=1)
    s = sync(http, gateway, ns)
    assert s["retrying"] == 1, s
    time.sleep(1.2)
    s = sync(http, gateway, ns)
    assert s["sent"] == 1 and standin.units(cus) == 5, s
    # A key Stripe refuses parks the event; fixed and retried, it goes.
    ns.settings(stripe_api_key="sk_test_revoked")
    meter(ns, account, "f-2", 2)
    s = sync(http, gateway, ns)
    assert s["parked"] == 1 and standin.units(cus) == 5, s
    assert outbox(ns)[-1][3] == "parked" and outbox(ns)[-1][5] == 401
    ns.settings(stripe_api_key=API_KEY)
    assert ns.sql("SELECT mec.stripe_usage_retry()->>'requeued'") == "1"
    assert sync(http, gateway, ns)["sent"] == 1 and standin.units(cus) == 7


def test_a_crash_after_receiving_and_a_hang(standin, gateway, billed, http):
    ns, account, cus = billed()
    meter(ns, account, "c-1", 3)
    standin.fail_next("crash")
    s = sync(http, gateway, ns)
    assert s["retrying"] == 1, s
    assert standin.units(cus) == 3, "Stripe took the event; pg_mec did not hear it"
    time.sleep(1.2)
    assert sync(http, gateway, ns)["sent"] == 1
    assert standin.units(cus) == 3, "sent again with the same identifier and key: counted once"
    sends = [r for r in standin.requests if r["form"].get("payload[stripe_customer_id]") == cus]
    assert len(sends) == 2 and sends[0]["form"] == sends[1]["form"]
    assert sends[0]["headers"]["idempotency-key"] == sends[1]["headers"]["idempotency-key"]
    meter(ns, account, "c-2", 1)
    standin.fail_next("hang", seconds=3)
    s = sync(http, gateway, ns)
    assert s["retrying"] == 1 and standin.units(cus) == 3, s
    time.sleep(1.2)
    assert sync(http, gateway, ns)["sent"] == 1 and standin.units(cus) == 4


def test_killing_the_sync_mid_batch(standin, billed, http):
    g = Gateway(standin.url)
    try:
        runs = [billed() for _ in range(3)]
        ns = runs[0][0]
        accounts = []
        for i in range(20):
            account = str(uuid.uuid4())
            ev = se.event("customer.subscription.created",
                          se.subscription(se.new_id("sub"), se.new_id("cus"), PRICE_STARTER,
                                          metadata={"account_id": account}))
            ns.sql("SELECT mec.apply_stripe_event(%s)", Jsonb(ev))
            meter(ns, account, f"k-{i}", i + 1)
            accounts.append(account)
        total = Decimal(sum(range(1, 21)))
        standin.fail_next("slow", count=20, seconds=0.25)
        def doomed():
            with contextlib.suppress(OSError):  # the gateway dies under it
                http.post(g.url + "/admin/sync-usage-to-stripe",
                          headers={"Authorization": f"Bearer {ns.admin_token}"}, timeout=30)

        t = threading.Thread(target=doomed)
        t.start()
        time.sleep(2.0)
        g.kill()  # mid-batch: some sent and marked, one perhaps received and not marked
        t.join()
        states = [row[3] for row in outbox(ns)]
        assert "sent" in states and "pending" in states, states
        g = Gateway(standin.url)
        s = sync(http, g, ns)
        assert s["pending"] == 0 and s["finished"] is True, s
        customers = set(ns.conn.execute(
            "SELECT stripe_customer_id FROM mec.accounts WHERE namespace_id = %s::uuid AND account_id = ANY(%s::uuid[])",
            (ns.namespace_id, accounts)).fetchall())
        assert sum(standin.units(c[0]) for c in customers) == total
        assert all(row[3] == "sent" for row in outbox(ns))
    finally:
        g.stop()


def test_a_correction_after_sync(standin, gateway, billed, http):
    ns, account, cus = billed()
    meter(ns, account, "r-1", 10)
    sync(http, gateway, ns)
    assert standin.units(cus) == 10
    ns.sql("SELECT mec.adjust_consumption(p_idempotency_key => 'r-fix', p_account_id => %s::uuid, "
           "p_resource_type => 'api_calls', p_quantity => -3, p_reason => 'refund')", account)
    s = sync(http, gateway, ns)
    assert s["prepared"]["cancellations"] == 1 and s["sent"] == 2, s
    assert standin.units(cus) == 7, "the event was cancelled and replaced by one of 7"
    kinds = sorted((row[1], str(row[2]), row[3]) for row in outbox(ns))
    assert kinds == [("cancel", "0", "sent"), ("meter_event", "10", "cancelled"),
                     ("meter_event", "7", "sent")], kinds
    # The cancellation went before the replacement.
    order = [r["path"] for r in standin.requests if r["form"].get("event_name") == "api_calls"
             and (r["form"].get("payload[stripe_customer_id]") == cus or "cancel[identifier]" in r["form"])]
    assert order[-2:] == ["/v1/billing/meter_event_adjustments", "/v1/billing/meter_events"], order
    # A refund Stripe can no longer take back (its event was received more than a day ago) waits
    # for the admin.
    ns.conn.execute("UPDATE mec_data.stripe_usage_outbox SET sent_at = now() - interval '2 days' "
                    "WHERE namespace_id = %s::uuid", (ns.namespace_id,))
    ns.sql("SELECT mec.adjust_consumption(p_idempotency_key => 'r-fix2', p_account_id => %s::uuid, "
           "p_resource_type => 'api_calls', p_quantity => -2, p_reason => 'refund')", account)
    s = sync(http, gateway, ns)
    assert s["prepared"]["parked"] == 1 and standin.units(cus) == 7, s
    parked = outbox(ns)[-1]
    assert parked[3] == "parked" and "24 hours" in parked[6], parked
    assert ns.sql("SELECT mec.stripe_usage_retry()->>'requeued'") == "0", "a refund is not resent"


def test_one_run_at_a_time(standin, gateway, billed, http):
    ns, account, _ = billed()
    for i in range(4):
        meter(ns, account, f"o-{i}", 1)
        ns.sql("SELECT mec.stripe_usage_prepare()")  # one event per prepare
    standin.fail_next("slow", count=4, seconds=0.5)
    t = threading.Thread(target=lambda: sync(http, gateway, ns))
    t.start()
    time.sleep(0.4)
    busy = http.post(gateway.url + "/admin/sync-usage-to-stripe",
                     headers={"Authorization": f"Bearer {ns.admin_token}"}, timeout=30)
    t.join()
    assert busy.status_code == 503 and busy.json()["code"] == "ME503", busy.text
    assert busy.headers.get("retry-after")


def test_no_api_key_and_other_roles(standin, gateway, stripe_ns, make_token, http):
    ns = stripe_ns()
    ns.admin_token = make_token(role="mec_admin", namespace_id=ns.namespace_id)
    r = sync(http, gateway, ns, expect=400)
    assert r["code"] == "ME400" and "stripe_api_key" in r["message"], r
    ns.admin_token = make_token(role="mec_service", namespace_id=ns.namespace_id)
    assert sync(http, gateway, ns, expect=403)["code"] == "42501"


def test_background_sync_in_two_replicas_sends_once(standin, billed):
    ns, account, cus = billed()
    ns.settings(stripe_usage_sync=True)
    replicas = [Gateway(standin.url, MEC_STRIPE_SYNC_INTERVAL_MS="300") for _ in range(2)]
    try:
        for i in range(10):
            meter(ns, account, f"b-{i}", 1)
            time.sleep(0.1)
        deadline = time.time() + 15
        while time.time() < deadline and standin.units(cus) < 10:
            time.sleep(0.2)
        time.sleep(1)
        assert standin.units(cus) == 10
        sent = [r for r in standin.requests if r["form"].get("payload[stripe_customer_id]") == cus]
        identifiers = [r["form"]["identifier"] for r in sent]
        assert len(identifiers) == len(set(identifiers)), "no event was sent twice"
    finally:
        for g in replicas:
            g.stop()
        ns.settings(stripe_usage_sync=False)
