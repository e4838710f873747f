"""Semantics decided in the controls issue (issue 14), each written down in docs/CONTRACT.md:
grace on capped limits, explicit zero grace, overrides checked by the catalog's rule, expired
holds not counted by reads nor by writes, percent_used never 100 before the limit, the clock tolerances of
late_event_days, plan_effective_at of back-dated provisioning, and a retried key with another
HTTP status being a duplicate."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.types.json import Jsonb


def catalog(entitlement: dict, kind: str = "metered") -> dict:
    return {"resources": [{"resource_type": "r", "kind": kind}],
            "plans": [{"plan_id": "p", "default": True, "entitlements": {"r": entitlement}}]}


@pytest.fixture
def ns_with(new_namespace, connect):
    def _make(entitlement: dict, **settings):
        ns = new_namespace(catalog=catalog(entitlement))
        conn = connect(namespace_id=ns)
        if settings:
            conn.execute("SELECT mec.update_namespace_settings(%s)", (Jsonb(settings),))
        account = str(uuid.uuid4())
        conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (account,))
        return conn, account

    return _make


def meter(conn, account, qty, key=None, **extra):
    args = "".join(f", p_{k} => %({k})s" for k in extra)
    return conn.execute(
        "SELECT mec.meter_consumption(p_idempotency_key => %(key)s, p_account_id => %(a)s::uuid, "
        f"p_resource_type => 'r', p_quantity => %(q)s{args})",
        {"key": key or str(uuid.uuid4()), "a": account, "q": qty, **extra}).fetchone()[0]


def check(conn, account):
    return conn.execute("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'r')",
                        (account,)).fetchone()[0]


def test_capped_limits_take_a_grace_and_an_explicit_zero(ns_with, expect_sqlstate):
    conn, account = ns_with({"limit": 10, "enforcement": "capped", "overage_cap": 5, "grace": 0})
    assert meter(conn, account, 15)["overage"] is True
    with expect_sqlstate("ME429") as err:
        meter(conn, account, 1)
    assert '"ceiling":15' in err.value.diag.message_detail
    # default grace on a capped limit: min(1 % of the limit, 100), on top of the cap
    conn, account = ns_with({"limit": 100, "enforcement": "capped", "overage_cap": 50})
    meter(conn, account, 151)
    with expect_sqlstate("ME429"):
        meter(conn, account, 1)


def test_zero_grace_is_never_an_error_and_soft_has_no_other(new_namespace, expect_sqlstate):
    new_namespace(catalog=catalog({"limit": 10, "enforcement": "soft", "grace": 0}))
    with expect_sqlstate("ME422") as err:
        new_namespace(catalog=catalog({"limit": 10, "enforcement": "soft", "grace": 1}))
    assert "entitlements.r.grace" in err.value.diag.message_detail


def test_overrides_follow_the_catalogs_rule(ns_with, expect_sqlstate):
    conn, account = ns_with({"limit": 10, "grace": 0})
    with expect_sqlstate("22023") as err:
        conn.execute("SELECT mec.set_override(p_account_id => %s::uuid, p_resource_type => 'r', p_limit => 10, "
                     "p_enforcement => 'capped')", (account,))
    assert "p_overage_cap" in str(err.value)
    with expect_sqlstate("22023"):
        conn.execute("SELECT mec.set_override(p_account_id => %s::uuid, p_resource_type => 'r', p_limit => 10, "
                     "p_overage_cap => 5)", (account,))
    with expect_sqlstate("22023"):
        conn.execute("SELECT mec.set_override(p_account_id => %s::uuid, p_resource_type => 'r', p_limit => 10, "
                     "p_enforcement => 'soft', p_grace => 2)", (account,))
    row = conn.execute("SELECT mec.set_override(p_account_id => %s::uuid, p_resource_type => 'r', p_limit => 10, "
                       "p_enforcement => 'capped', p_overage_cap => 5, p_grace => 0)", (account,)).fetchone()[0]
    assert row["enforcement"] == "capped" and row["overage_cap"] == 5 and row["grace"] == 0
    assert meter(conn, account, 15)["overage"] is True
    with expect_sqlstate("ME429"):
        meter(conn, account, 1)


def test_reads_do_not_count_expired_holds(ns_with):
    conn, account = ns_with({"limit": 10, "grace": 0})
    conn.execute("SELECT mec.reserve_consumption(p_idempotency_key => 'hold-1', p_account_id => %s::uuid, "
                 "p_resource_type => 'r', p_quantity => 6, p_ttl_seconds => 1)", (account,))
    assert check(conn, account)["quantity_used"] == 6
    time.sleep(1.3)
    assert check(conn, account)["quantity_used"] == 0
    summary = conn.execute("SELECT mec.usage_summary(p_account_id => %s::uuid)", (account,)).fetchone()[0]
    assert summary["features"]["r"]["current"] == 0, summary


def test_writes_do_not_count_expired_holds_either(ns_with, expect_sqlstate):
    """Found by the state machine (tests/test_model.py): before a sweep, an expired hold still sat
    in the counter, so a meter, a reservation or a commit answered with it in `quantity_used`, and
    a negative correction could take the account's recorded usage below zero."""
    conn, account = ns_with({"limit": 10, "grace": 0})

    def hold(key, qty, ttl=1):
        return conn.execute("SELECT mec.reserve_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                            "p_resource_type => 'r', p_quantity => %s, p_ttl_seconds => %s)",
                            (key, account, qty, ttl)).fetchone()[0]

    hold("gone-1", 6)
    meter(conn, account, 2)
    time.sleep(1.3)
    assert meter(conn, account, 1)["quantity_used"] == 3  # 2 + 1, not 6 + 2 + 1
    hold("gone-2", 4)
    time.sleep(1.3)
    live = hold("live", 2, ttl=600)
    assert live["quantity_used"] == 5
    committed = conn.execute("SELECT mec.commit_reservation(p_reservation_id => %s::uuid)",
                             (live["reservation_id"],)).fetchone()[0]
    assert committed["quantity_used"] == 5
    # 5 recorded: a correction of -6 would leave -1
    with expect_sqlstate("22023"):
        conn.execute("SELECT mec.adjust_consumption(p_idempotency_key => 'fix', p_account_id => %s::uuid, "
                     "p_resource_type => 'r', p_quantity => -6, p_reason => 'refund')", (account,))
    counters = conn.execute("SELECT sum(used) FROM mec_data.usage_counters WHERE account_id = %s::uuid",
                            (account,)).fetchone()[0]
    ledger = conn.execute("SELECT sum(quantity) FROM mec_data.consumption WHERE account_id = %s::uuid",
                          (account,)).fetchone()[0]
    assert counters == ledger == 5


def test_a_correction_cannot_spend_a_held_reservation(ns_with, expect_sqlstate):
    """Recorded usage is the counter less its holds: with 5 recorded and 6 held, a correction of
    -6 would leave -1 recorded once the hold is cancelled (found in review)."""
    conn, account = ns_with({"limit": 100, "grace": 0})
    meter(conn, account, 5)
    held = conn.execute("SELECT mec.reserve_consumption(p_idempotency_key => 'h', p_account_id => %s::uuid, "
                        "p_resource_type => 'r', p_quantity => 6, p_ttl_seconds => 600)", (account,)).fetchone()[0]
    with expect_sqlstate("22023"):
        conn.execute("SELECT mec.adjust_consumption(p_idempotency_key => 'too-much', p_account_id => %s::uuid, "
                     "p_resource_type => 'r', p_quantity => -6, p_reason => 'refund')", (account,))
    conn.execute("SELECT mec.adjust_consumption(p_idempotency_key => 'all', p_account_id => %s::uuid, "
                 "p_resource_type => 'r', p_quantity => -5, p_reason => 'refund')", (account,))
    conn.execute("SELECT mec.cancel_reservation(p_reservation_id => %s::uuid)", (held["reservation_id"],))
    counters = conn.execute("SELECT sum(used) FROM mec_data.usage_counters WHERE account_id = %s::uuid",
                            (account,)).fetchone()[0]
    ledger = conn.execute("SELECT sum(quantity) FROM mec_data.consumption WHERE account_id = %s::uuid",
                          (account,)).fetchone()[0]
    assert counters == ledger == 0


def test_percent_used_is_never_100_before_the_limit(ns_with):
    conn, account = ns_with({"limit": 20000, "grace": 0})
    res = meter(conn, account, "19999.9")
    assert res["percent_used"] == 99.99 and res["quantity_remaining"] == 0.1
    assert meter(conn, account, "0.1")["percent_used"] == 100


def test_late_event_days_zero_leaves_only_the_clock_tolerance(ns_with, expect_sqlstate):
    conn, account = ns_with({"limit": 100}, late_event_days=0)
    now = datetime.now(timezone.utc)
    meter(conn, account, 1, occurred_at=now - timedelta(minutes=1))
    meter(conn, account, 1, occurred_at=now + timedelta(minutes=4))
    with expect_sqlstate("22023"):
        meter(conn, account, 1, occurred_at=now - timedelta(hours=1))
    with expect_sqlstate("22023") as err:
        meter(conn, account, 1, occurred_at=now + timedelta(minutes=6))
    assert "5 minutes" in (err.value.diag.message_hint or "")


def test_back_dated_provisioning_shows_its_date(ns_with):
    conn, _ = ns_with({"limit": 100})
    account, at = str(uuid.uuid4()), datetime(2026, 11, 20, tzinfo=timezone.utc)
    conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p', p_effective_at => %s)",
                 (account, at))
    shown = conn.execute("SELECT plan_effective_at FROM mec.accounts WHERE account_id = %s::uuid",
                         (account,)).fetchone()[0]
    assert shown == at


def test_a_retry_with_another_http_status_is_the_same_event(ns_with):
    conn, account = ns_with({"limit": 100})
    first = meter(conn, account, 1, key="call-1", http_status=500)
    again = meter(conn, account, 1, key="call-1", http_status=200)
    assert first["billable"] is False and again["duplicate"] is True and again["billable"] is False
    assert check(conn, account)["quantity_used"] == 0


def test_the_override_signature_is_the_one_granted(db):
    # mec_admin may execute the new set_override; nobody else
    assert db.execute("SELECT has_function_privilege('mec_admin', 'mec.set_override(uuid, text, numeric, text, "
                      "timestamptz, timestamptz, text, text, numeric, numeric)', 'EXECUTE')").fetchone()[0]
    assert not db.execute("SELECT has_function_privilege('mec_service', 'mec.set_override(uuid, text, numeric, "
                          "text, timestamptz, timestamptz, text, text, numeric, numeric)', 'EXECUTE')").fetchone()[0]
    with pytest.raises(psycopg.Error):
        db.execute("SELECT 'mec.set_override(uuid, text, numeric, text, timestamptz, timestamptz, text, text)'"
                   "::regprocedure")


def test_json_numbers_are_exact_decimals(ns_with, new_namespace, connect):
    conn, account = ns_with({"limit": 100})
    batch = conn.execute(
        "SELECT mec.meter_consumption_batch(%s::jsonb)",
        ('[{"idempotency_key": "j1", "account_id": "%s", "resource_type": "r", '
         '"quantity": 0.1234567890123456789012345678},'
         ' {"idempotency_key": "j2", "account_id": "%s", "resource_type": "r", "quantity": 0.1234567891}]'
         % (account, account),)).fetchone()[0]
    first, second = batch["results"]
    assert first["status"] == "rejected" and first["error"]["code"] == "22023", first
    assert "decimal places" in first["error"]["message"]
    assert second["status"] == "recorded"
    exact = conn.execute("SELECT quantity FROM mec.consumption WHERE idempotency_key = 'j2' "
                         "AND account_id = %s::uuid", (account,)).fetchone()[0]
    assert str(exact) == "0.1234567891"
    # catalogs: a limit is what the document says, digit for digit (raw JSON text: Python's floats
    # would round it before it is sent)
    ns = new_namespace(catalog=None)
    c = connect(namespace_id=ns)
    c.execute("SELECT mec.load_catalog(%s::jsonb)", (
        '{"resources": [{"resource_type": "r", "kind": "metered"}], "plans": ['
        '{"plan_id": "p", "entitlements": {"r": {"limit": 99999999999999999999}}},'
        '{"plan_id": "q", "entitlements": {"r": {"limit": 1.0000000000000001}}}]}',))
    limits = dict(c.execute("SELECT plan_id, quantity_limit::text FROM mec_data.plan_entitlements "
                            "WHERE namespace_id = %s::uuid", (ns,)).fetchall())
    assert limits == {"p": "99999999999999999999", "q": "1.0000000000000001"}


def test_a_rate_denials_reset_at_is_when_the_retry_is_allowed(new_namespace, connect, expect_sqlstate):
    import json as _json

    ns = new_namespace(catalog={"resources": [{"resource_type": "r", "kind": "rate", "window_seconds": 60}],
                                "plans": [{"plan_id": "p", "default": True,
                                           "entitlements": {"r": {"limit": 10, "grace": 0}}}]})
    conn = connect(namespace_id=ns)
    account = str(uuid.uuid4())
    conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (account,))
    for i in range(10):
        meter(conn, account, 1, key=f"k{i}")
    with expect_sqlstate("ME429") as err:
        meter(conn, account, 1, key="over")
    [policy] = _json.loads(err.value.diag.message_detail)["violated_policies"]
    reset = datetime.fromisoformat(policy["reset_at"].replace("Z", "+00:00"))
    assert reset > datetime.now(timezone.utc)
    # a second before reset_at the retry is still refused; at reset_at it is allowed
    if reset - timedelta(seconds=1) > datetime.now(timezone.utc):
        with expect_sqlstate("ME429"):
            meter(conn, account, 1, key="early", occurred_at=reset - timedelta(seconds=1))
    assert meter(conn, account, 1, key="on-time", occurred_at=reset + timedelta(milliseconds=1))["billable"] is True


def test_loading_a_catalog_into_a_namespace_that_does_not_exist(connect, expect_sqlstate):
    conn = connect(namespace_id=str(uuid.uuid4()))
    with expect_sqlstate("42501") as err:
        conn.execute("SELECT mec.load_catalog(%s)", (Jsonb(catalog({"limit": 1})),))
    assert "does not exist" in str(err.value)
