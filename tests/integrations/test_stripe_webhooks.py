"""Stripe in, over real HTTP: POST /webhooks/stripe/<namespace> with Stripe-shaped events, signed
as Stripe signs (checked against the official `stripe` library below). Every refused delivery is
a 400 that records nothing; every accepted one is applied once, in order of the events' creation,
whatever order they arrive in. See docs/integrations.md."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
import stripe

import stripe_events as se
from stripe_helpers import PRICE_GROWTH, PRICE_STARTER, STRIPE_CATALOG, StripeNamespace, now

pytestmark = pytest.mark.gateway


def _sub_created(customer: str, account: str | None = None, price: str = PRICE_STARTER,
                 status: str = "active", sub_id: str | None = None, created: int | None = None,
                 event_type: str = "customer.subscription.created"):
    meta = {"account_id": account} if account else {}
    return se.event(event_type, se.subscription(sub_id or se.new_id("sub"), customer, price,
                                                status=status, metadata=meta), created=created)


# ---------------------------------------------------------------- signatures
def test_our_deliveries_are_what_the_official_library_accepts():
    """The tests sign as Stripe does: the `stripe` library verifies our header, and refuses it
    for another body or secret (so the check below is not vacuous)."""
    ev = _sub_created(se.new_id("cus"), str(uuid.uuid4()))
    payload = json.dumps(ev).encode()
    header = se.signature(payload, ["whsec_abc"])
    parsed = stripe.Webhook.construct_event(payload.decode(), header, "whsec_abc", tolerance=300)
    assert parsed.id == ev["id"] and parsed.type == ev["type"]
    assert parsed.data.object["items"]["data"][0]["price"]["id"] == PRICE_STARTER
    for body, secret in [(payload + b" ", "whsec_abc"), (payload, "whsec_other")]:
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body.decode(), header, secret, tolerance=300)
    two = se.signature(payload, ["whsec_old", "whsec_abc"])
    assert stripe.Webhook.construct_event(payload.decode(), two, "whsec_abc", tolerance=300).id == ev["id"]


def test_a_signed_delivery_is_applied_once(stripe_ns, deliver):
    ns = stripe_ns()
    account, cus = str(uuid.uuid4()), se.new_id("cus")
    ev = _sub_created(cus, account)
    first = deliver(ns, ev)
    assert first.status == 200, first.body
    assert first.body["outcome"] == "applied" and first.body["duplicate"] is False, first.body
    assert first.body["account_id"] == account
    assert ns.account(account)["plan_id"] == "starter"
    assert ns.account(account)["stripe_customer_id"] == cus
    again = deliver(ns, ev)
    assert again.status == 200 and again.body["duplicate"] is True, again.body
    assert again.body["outcome"] == "applied"
    assert ns.inbox_count() == 1
    assert ns.sql("SELECT count(*) FROM mec_data.audit_log WHERE action = 'provision_plan' "
                  "AND subject = %s", account) == 1


@pytest.mark.parametrize("case", ["wrong_secret", "other_namespace", "tampered_body", "stale",
                                  "future", "missing_header", "no_v1", "no_timestamp", "garbage"])
def test_a_refused_delivery_is_400_and_records_nothing(stripe_ns, deliver, case):
    ns, other = stripe_ns(), stripe_ns()
    account = str(uuid.uuid4())
    ev = _sub_created(se.new_id("cus"), account)
    payload = json.dumps(ev, separators=(",", ":")).encode()
    kwargs: dict = {}
    if case == "wrong_secret":
        kwargs["secrets"] = ["whsec_" + uuid.uuid4().hex]
    elif case == "other_namespace":
        kwargs["secrets"] = [other.secret]
    elif case == "tampered_body":
        kwargs["header"] = se.signature(payload, [ns.secret])
        kwargs["body"] = payload.replace(PRICE_STARTER.encode(), PRICE_GROWTH.encode())
    elif case == "stale":
        kwargs["t"] = now() - 301
    elif case == "future":
        kwargs["t"] = now() + 301
    elif case == "missing_header":
        kwargs["header"] = None
    elif case == "no_v1":
        kwargs["header"] = se.signature(payload, [ns.secret]).replace("v1=", "v0=")
    elif case == "no_timestamp":
        kwargs["header"] = se.signature(payload, [ns.secret]).split(",", 1)[1]
    elif case == "garbage":
        kwargs["header"] = "definitely not a signature"
    r = deliver(ns, ev, **kwargs)
    assert r.status == 400, r.body
    assert r.body["code"] == "ME400" and set(r.body) >= {"code", "message", "details", "hint"}, r.body
    assert ns.inbox_count() == 0
    assert ns.account(account) is None, "nothing may be provisioned"


def test_the_tolerance_is_the_namespaces_setting(stripe_ns, deliver):
    ns = stripe_ns()
    ns.settings(stripe_webhook_tolerance_seconds=3600)
    r = deliver(ns, _sub_created(se.new_id("cus"), str(uuid.uuid4())), t=now() - 1800)
    assert r.status == 200 and r.body["outcome"] == "applied", r.body


def test_a_rolling_secret_signs_twice_and_either_matches(stripe_ns, deliver):
    ns = stripe_ns()
    old = ns.secret
    ev = _sub_created(se.new_id("cus"), str(uuid.uuid4()))
    r = deliver(ns, ev, secrets=["whsec_next_" + uuid.uuid4().hex, old])
    assert r.status == 200 and r.body["outcome"] == "applied", r.body
    new = "whsec_" + uuid.uuid4().hex
    ns.settings(stripe_webhook_secret=new)
    ev2 = _sub_created(se.new_id("cus"), str(uuid.uuid4()))
    assert deliver(ns, ev2, secrets=[old, new]).status == 200
    assert deliver(ns, _sub_created(se.new_id("cus"), str(uuid.uuid4())), secrets=[old]).status == 400


def test_no_secret_no_webhooks(connect, new_namespace, deliver):
    ns_id = new_namespace(catalog=STRIPE_CATALOG)
    ns = StripeNamespace(ns_id, "whsec_never_set", connect(namespace_id=ns_id))
    r = deliver(ns, _sub_created(se.new_id("cus"), str(uuid.uuid4())))
    assert r.status == 400 and "no stripe_webhook_secret" in r.body["message"], r.body


def test_paths_without_a_namespace(deliver, demo_namespace_id, stripe_ns, connect):
    ns = stripe_ns()
    ev = _sub_created(se.new_id("cus"), str(uuid.uuid4()))
    r = deliver(ns, ev, path="/webhooks/stripe/not-a-uuid")
    assert r.status == 404 and r.body["code"] == "ME404", r.body
    assert ns.inbox_count() == 0
    # /webhooks/stripe is the gateway's default namespace: the demo namespace (scripts/mec up).
    demo = StripeNamespace(demo_namespace_id, "whsec_" + uuid.uuid4().hex, connect())
    before = demo.sql("SELECT stripe_webhook_secret FROM mec_data.namespace_secrets "
                      "WHERE namespace_id = %s::uuid", demo_namespace_id)
    demo.settings(stripe_webhook_secret=demo.secret)
    try:
        ping = se.event("ping", {"id": se.new_id("ping"), "object": "ping"})
        r = deliver(demo, ping, path="/webhooks/stripe")
        assert r.status == 200 and r.body["outcome"] == "ignored", r.body
        assert demo.inbox(ping["id"]) is not None
        assert deliver(ns, ping, path="/webhooks/stripe").status == 400, "signed for another namespace"
    finally:
        demo.settings(stripe_webhook_secret=before)
        demo.conn.execute("DELETE FROM mec_data.stripe_events WHERE namespace_id = %s::uuid AND event_id = %s",
                          (demo_namespace_id, ping["id"]))


def test_concurrent_redeliveries_apply_once(stripe_ns, deliver):
    ns = stripe_ns()
    account = str(uuid.uuid4())
    ev = _sub_created(se.new_id("cus"), account)
    results: list = []
    barrier = threading.Barrier(8)

    def post():
        barrier.wait()
        results.append(deliver(ns, ev))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status == 200 for r in results), [r.body for r in results]
    assert sorted(r.body["duplicate"] for r in results) == [False] + [True] * 7
    assert ns.inbox_count() == 1
    assert ns.account(account)["plan_id"] == "starter"


# ---------------------------------------------------------------- order and matching
def test_an_older_update_arriving_late_changes_nothing(stripe_ns, deliver):
    ns = stripe_ns()
    account, cus, sub = str(uuid.uuid4()), se.new_id("cus"), se.new_id("sub")
    t0 = now() - 100
    created = _sub_created(cus, account, sub_id=sub, created=t0)
    upgraded = _sub_created(cus, account, price=PRICE_GROWTH, sub_id=sub, created=t0 + 20,
                            event_type="customer.subscription.updated")
    older = _sub_created(cus, account, price=PRICE_STARTER, sub_id=sub, created=t0 + 10,
                         event_type="customer.subscription.updated")
    assert deliver(ns, created).body["outcome"] == "applied"
    assert deliver(ns, upgraded).body["outcome"] == "applied"
    assert ns.account(account)["plan_id"] == "growth"
    late = deliver(ns, older)
    assert late.status == 200 and late.body["outcome"] == "stale", late.body
    assert ns.account(account)["plan_id"] == "growth"
    # The subscription's own record keeps the newest state.
    assert ns.sql("SELECT plan_id FROM mec.stripe_subscriptions WHERE subscription_id = %s", sub) == "growth"


def test_a_subscription_before_its_checkout_waits_then_applies(stripe_ns, deliver):
    ns = stripe_ns()
    account, cus, sub = str(uuid.uuid4()), se.new_id("cus"), se.new_id("sub")
    early = deliver(ns, _sub_created(cus, None, sub_id=sub))  # no metadata, unknown customer
    assert early.status == 200 and early.body["outcome"] == "unmatched", early.body
    assert ns.account(account) is None
    checkout = deliver(ns, se.event("checkout.session.completed",
                                    se.checkout_session(cus, client_reference_id=account, subscription=sub)))
    assert checkout.body["outcome"] == "applied" and checkout.body.get("replayed") == 1, checkout.body
    assert ns.account(account) == {"plan_id": "starter", "stripe_customer_id": cus,
                                   "payment_overdue": False,
                                   "billing_anchor_day": ns.account(account)["billing_anchor_day"]}
    assert ns.inbox(early.body["event_id"])["outcome"] == "applied"


def test_checkout_by_external_id_creates_the_account_on_the_default_plan(stripe_ns, deliver):
    ns = stripe_ns()
    cus = se.new_id("cus")
    ext = f"auth0|{uuid.uuid4().hex[:12]}"
    r = deliver(ns, se.event("checkout.session.completed", se.checkout_session(cus, client_reference_id=ext)))
    assert r.body["outcome"] == "applied", r.body
    row = ns.conn.execute("SELECT account_id::text, plan_id, stripe_customer_id FROM mec.accounts "
                          "WHERE external_id = %s", (ext,)).fetchone()
    assert row is not None and row[1] == "free" and row[2] == cus, row
    assert r.body["account_id"] == row[0]


def test_a_customer_of_another_account_is_not_taken(stripe_ns, deliver):
    ns = stripe_ns()
    a, b, cus = str(uuid.uuid4()), str(uuid.uuid4()), se.new_id("cus")
    assert deliver(ns, _sub_created(cus, a)).body["outcome"] == "applied"
    r = deliver(ns, se.event("checkout.session.completed", se.checkout_session(cus, client_reference_id=b)))
    assert r.body["outcome"] == "ignored" and a in r.body["detail"], r.body
    assert ns.account(a)["stripe_customer_id"] == cus
    assert ns.account(b)["stripe_customer_id"] is None


def test_a_price_no_plan_has_changes_nothing(stripe_ns, deliver):
    ns = stripe_ns()
    account, cus = str(uuid.uuid4()), se.new_id("cus")
    assert deliver(ns, _sub_created(cus, account)).body["outcome"] == "applied"
    r = deliver(ns, _sub_created(cus, account, price="price_unknown",
                                 event_type="customer.subscription.updated"))
    assert r.body["outcome"] == "ignored" and "price_unknown" in r.body["detail"], r.body
    assert ns.account(account)["plan_id"] == "starter"


def test_unknown_event_types_are_stored_and_ignored(stripe_ns, deliver):
    ns = stripe_ns()
    ev = se.event("product.created", {"id": se.new_id("prod"), "object": "product", "name": "Pro"})
    r = deliver(ns, ev)
    assert r.status == 200 and r.body["outcome"] == "ignored", r.body
    assert ns.inbox(ev["id"])["outcome"] == "ignored"


def test_a_body_that_is_not_an_event_is_refused(stripe_ns, deliver):
    ns = stripe_ns()
    r = deliver(ns, {"hello": "world"})
    assert r.status == 400 and "not a Stripe event" in r.body["message"], r.body
    r = deliver(ns, {}, body=b"{not json")
    assert r.status == 400 and r.body["code"] == "ME400", r.body
    assert ns.inbox_count() == 0


# ---------------------------------------------------------------- the lifecycle
def _meter(rpc, ns, account, key, qty=1):
    return rpc(ns, "meter_consumption", idempotency_key=key, account_id=account,
               resource_type="api_calls", quantity=qty)


def _check(rpc, ns, account, resource="api_calls"):
    r = rpc(ns, "check_entitlement", account_id=account, resource_type=resource)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("overdue_action", ["flag", "default_plan", "block"])
def test_checkout_subscription_payment_failed_overdue_then_paid(stripe_ns, deliver, rpc, overdue_action):
    ns = stripe_ns(overdue_action)
    account, cus, sub = str(uuid.uuid4()), se.new_id("cus"), se.new_id("sub")
    t0 = now() - 60
    steps = [
        se.event("checkout.session.completed",
                 se.checkout_session(cus, client_reference_id=account, subscription=sub), created=t0),
        se.event("customer.subscription.created", se.subscription(sub, cus, PRICE_STARTER), created=t0 + 1),
    ]
    for ev in steps:
        r = deliver(ns, ev)
        assert r.status == 200 and r.body["outcome"] == "applied", r.body
    assert ns.account(account)["plan_id"] == "starter"
    assert _meter(rpc, ns, account, "before-overdue").status_code == 200

    failed = deliver(ns, se.event("invoice.payment_failed", se.invoice(cus, sub, "open"), created=t0 + 2))
    assert failed.body["outcome"] == "applied", failed.body
    assert ns.account(account)["payment_overdue"] is True
    summary = rpc(ns, "usage_summary", account_id=account).json()
    assert summary["payment_overdue"] is True, summary

    check = _check(rpc, ns, account)
    feature = _check(rpc, ns, account, "exports")
    metered = _meter(rpc, ns, account, "while-overdue")
    if overdue_action == "flag":
        assert check["decision"] == "allow" and check["quantity_allowed"] == 100, check
        assert feature["decision"] == "allow", feature
        assert metered.status_code == 200, metered.text
    elif overdue_action == "default_plan":
        assert check["decision"] == "allow" and check["quantity_allowed"] == 10, check
        assert feature["decision"] == "deny" and feature["reason"] == "feature_disabled", feature
        assert metered.status_code == 200 and metered.json()["quantity_allowed"] == 10, metered.text
        assert ns.account(account)["plan_id"] == "starter", "the plan itself is kept"
    else:
        assert check["decision"] == "deny" and check["reason"] == "payment_overdue", check
        assert feature["decision"] == "deny" and feature["reason"] == "payment_overdue", feature
        assert metered.status_code == 402, metered.text
        assert metered.headers["content-type"].startswith("application/problem+json")
        problem = metered.json()
        assert problem["status"] == 402 and problem["code"] == "ME402", problem
        assert problem["type"] == "urn:pg-mec:problem:payment-overdue" and problem["account_id"] == account
        # A replay of what was recorded before still answers as the first time.
        replay = _meter(rpc, ns, account, "before-overdue")
        assert replay.status_code == 200 and replay.json()["duplicate"] is True, replay.text
        lease = rpc(ns, "reserve_consumption", idempotency_key="reserve-overdue", account_id=account,
                    resource_type="api_calls", quantity=1)
        assert lease.status_code == 402, lease.text

    # An older "paid" arriving after the failure changes nothing; the newer one clears it.
    stale = deliver(ns, se.event("invoice.paid", se.invoice(cus, sub, "paid"), created=t0 + 1))
    assert stale.body["outcome"] == "stale", stale.body
    assert ns.account(account)["payment_overdue"] is True
    paid = deliver(ns, se.event("invoice.paid", se.invoice(cus, sub, "paid"), created=t0 + 3))
    assert paid.body["outcome"] == "applied", paid.body
    assert ns.account(account)["payment_overdue"] is False
    after = _meter(rpc, ns, account, "after-paid")
    assert after.status_code == 200 and after.json()["quantity_allowed"] == 100, after.text
    assert _check(rpc, ns, account)["decision"] == "allow"


def test_subscription_statuses(stripe_ns, deliver):
    ns = stripe_ns()
    account, cus, sub = str(uuid.uuid4()), se.new_id("cus"), se.new_id("sub")
    t = now() - 100

    def send(status, event_type="customer.subscription.updated", price=PRICE_STARTER):
        nonlocal t
        t += 1
        return deliver(ns, se.event(event_type, se.subscription(sub, cus, price, status=status,
                                                                metadata={"account_id": account}), created=t))

    assert send("trialing", "customer.subscription.created").body["outcome"] == "applied"
    assert ns.account(account)["plan_id"] == "starter"
    assert send("past_due").body["outcome"] == "applied"
    assert ns.account(account)["payment_overdue"] is True
    assert send("active", price=PRICE_GROWTH).body["outcome"] == "applied"
    assert ns.account(account) | {"billing_anchor_day": None} == {
        "plan_id": "growth", "stripe_customer_id": cus, "payment_overdue": False, "billing_anchor_day": None}
    # `unpaid` (retries exhausted) keeps the plan and marks the account overdue, like `past_due`.
    assert send("unpaid", price=PRICE_GROWTH).body["outcome"] == "applied"
    assert (ns.account(account)["plan_id"], ns.account(account)["payment_overdue"]) == ("growth", True)
    # invoice.payment_succeeded clears it, as invoice.paid does.
    t += 1
    ok = deliver(ns, se.event("invoice.payment_succeeded", se.invoice(cus, sub, "paid"), created=t))
    assert ok.body["outcome"] == "applied", ok.body
    assert ns.account(account)["payment_overdue"] is False
    r = send("incomplete")
    assert r.body["outcome"] == "applied" and ns.account(account)["plan_id"] == "growth", r.body
    r = send("canceled", "customer.subscription.deleted")
    assert r.body["outcome"] == "applied" and "default plan" in r.body["detail"], r.body
    assert ns.account(account)["plan_id"] == "free"


def test_the_billing_anchor_follows_the_subscription(stripe_ns, deliver, rpc):
    ns = stripe_ns()
    account, cus = str(uuid.uuid4()), se.new_id("cus")
    anchor = 1_767_830_400  # 2026-01-08T00:00:00Z
    ev = se.event("customer.subscription.created",
                  se.subscription(se.new_id("sub"), cus, PRICE_STARTER, anchor=anchor,
                                  metadata={"account_id": account}))
    assert deliver(ns, ev).body["outcome"] == "applied"
    assert ns.account(account)["billing_anchor_day"] == 8
    check = _check(rpc, ns, account)
    assert check["period_start"][8:10] == "08" and check["period_end"][8:10] == "08", check
    r = rpc(ns, "set_billing_anchor", role="mec_admin", account_id=account, anchor_day=None)
    assert r.status_code == 200 and r.json()["changed"] is True, r.text
    assert _check(rpc, ns, account)["period_start"][8:10] == "01"
    bad = rpc(ns, "set_billing_anchor", role="mec_admin", account_id=account, anchor_day=32)
    assert bad.status_code == 400 and bad.json()["code"] == "22023", bad.text


def test_customer_deleted_unlinks(stripe_ns, deliver):
    ns = stripe_ns()
    account, cus = str(uuid.uuid4()), se.new_id("cus")
    deliver(ns, _sub_created(cus, account))
    r = deliver(ns, se.event("customer.deleted", se.customer(cus)))
    assert r.body["outcome"] == "applied" and r.body["account_id"] == account, r.body
    assert ns.account(account)["stripe_customer_id"] is None


# ---------------------------------------------------------------- the roles around it
def test_admins_apply_and_read_events_others_may_not(stripe_ns, rpc, api):
    ns = stripe_ns()
    account, cus = str(uuid.uuid4()), se.new_id("cus")
    ev = _sub_created(cus, account)
    r = rpc(ns, "apply_stripe_event", role="mec_admin", event=ev)
    assert r.status_code == 200 and r.json()["outcome"] == "applied", r.text
    assert rpc(ns, "apply_stripe_event", role="mec_admin", event=ev).json()["duplicate"] is True
    assert rpc(ns, "apply_stripe_event", role="mec_service", event=ev).status_code in (403, 404)
    rows = api("GET", "/stripe_events?select=event_id,outcome", role="mec_admin", namespace_id=ns.namespace_id)
    assert rows.status_code == 200 and rows.json() == [{"event_id": ev["id"], "outcome": "applied"}], rows.text
    denied = api("GET", "/stripe_events", role="mec_service", namespace_id=ns.namespace_id)
    assert denied.status_code in (403, 404), denied.text
    r = rpc(ns, "set_payment_overdue", role="mec_admin", account_id=account, overdue=True)
    assert r.status_code == 200 and r.json()["changed"] is True, r.text
    assert ns.account(account)["payment_overdue"] is True
    # A Stripe event created before the admin's decision does not undo it.
    older = se.event("invoice.paid", se.invoice(cus, None, "paid"), created=now() - 5)
    assert rpc(ns, "apply_stripe_event", role="mec_admin", event=older).json()["outcome"] == "stale"
    assert ns.account(account)["payment_overdue"] is True
    r = rpc(ns, "set_payment_overdue", role="mec_admin", account_id=account, overdue=False)
    assert r.json() == {"account_id": account, "payment_overdue": False, "changed": True}, r.text
    unknown = rpc(ns, "set_payment_overdue", role="mec_admin", account_id=str(uuid.uuid4()), overdue=True)
    assert unknown.status_code == 404 and unknown.json()["code"] == "ME404", unknown.text


def test_the_webhook_role_can_do_nothing_else(connect, authenticator_url, stripe_ns, expect_sqlstate):
    ns = stripe_ns()
    conn = connect(namespace_id=ns.namespace_id, url=authenticator_url)
    conn.execute("SET ROLE mec_webhook")
    for statement in ["SELECT mec.check_entitlement(gen_random_uuid(), 'api_calls')",
                      "SELECT * FROM mec_data.accounts",
                      "SELECT * FROM mec.stripe_events",
                      "SELECT mec.apply_stripe_event('{}')"]:
        with expect_sqlstate("42501"):
            conn.execute(statement)


def test_forgetting_an_account_keeps_event_ids_not_their_content(stripe_ns, deliver, call, connect):
    ns = stripe_ns()
    account, cus = str(uuid.uuid4()), se.new_id("cus")
    ev = _sub_created(cus, account)
    deliver(ns, ev)
    call("forget_account", account_id=account, conn=ns.conn)
    row = ns.conn.execute("SELECT payload, customer_id FROM mec.stripe_events WHERE event_id = %s",
                          (ev["id"],)).fetchone()
    assert row == ({}, None), row
    again = deliver(ns, ev)
    assert again.body["duplicate"] is True and ns.account(account) is None, again.body
