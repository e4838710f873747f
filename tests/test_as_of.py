"""check_entitlement and usage_summary with p_as_of answer as they would have at that instant:
across a plan change, an override, a grant that expires, a correction, and a late event (counted
from when it was recorded, not from when it occurred). See docs/CONTRACT.md."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

CATALOG = {"resources": [{"resource_type": "calls", "kind": "metered"}],
           "plans": [{"plan_id": "small", "name": "Small", "default": True,
                      "entitlements": {"calls": {"limit": 100, "grace": 0}}},
                     {"plan_id": "big", "name": "Big", "entitlements": {"calls": {"limit": 1000, "grace": 0}}}]}


def test_as_of_is_exact_across_every_kind_of_change(new_namespace, connect, expect_sqlstate):
    ns = new_namespace(catalog=CATALOG)
    conn = connect(namespace_id=ns)
    a = str(uuid.uuid4())

    def sql(q, *args):
        return conn.execute(q, args).fetchone()[0]

    def mark():
        time.sleep(0.02)
        t = sql("SELECT clock_timestamp()")
        time.sleep(0.02)
        return t

    def meter(key, qty, at=None):
        sql("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
            "p_resource_type => 'calls', p_quantity => %s, p_occurred_at => coalesce(%s, now()))", key, a, qty, at)

    def check(at=None):
        r = sql("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'calls', p_as_of => %s)",
                a, at)
        return r["quantity_allowed"], r["quantity_used"]

    sql("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'small')", a)
    meter("m1", 30)
    t1 = mark()
    sql("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'big')", a)
    t2 = mark()
    sql("SELECT mec.set_override(p_account_id => %s::uuid, p_resource_type => 'calls', p_limit => 50)", a)
    meter("m2", 10)
    t3 = mark()
    sql("SELECT mec.grant_credits(p_account_id => %s::uuid, p_resource_type => 'calls', p_quantity => 25, "
        "p_expires_at => clock_timestamp() + interval '1 second')", a)
    t4 = mark()
    time.sleep(1.1)
    t5 = mark()
    sql("SELECT mec.adjust_consumption(p_idempotency_key => 'fix', p_account_id => %s::uuid, "
        "p_resource_type => 'calls', p_quantity => -5, p_reason => 'refund')", a)
    t6 = mark()
    now = datetime.now(timezone.utc)
    late = now - timedelta(hours=1)
    if late.month != now.month:
        late = now - timedelta(seconds=30)
    meter("late", 7, late)
    t7 = mark()

    assert [check(t) for t in (t1, t2, t3, t4, t5, t6, t7)] == [
        (100, 30), (1000, 30), (50, 40), (75, 40), (50, 40), (50, 35), (50, 42)]
    # an instant before the late event was recorded does not count it, though it occurred earlier
    assert check(t6) == (50, 35)
    assert check() == check(t7)
    s1 = sql("SELECT mec.usage_summary(p_account_id => %s::uuid, p_as_of => %s)", a, t1)
    assert s1["plan"] == "small" and s1["plan_name"] == "Small" and s1["features"]["calls"]["current"] == 30
    assert s1["features"]["calls"]["limit"] == 100 and "as_of" in s1
    s7 = sql("SELECT mec.usage_summary(p_account_id => %s::uuid, p_as_of => %s)", a, t7)
    assert s7["plan"] == "big" and s7["features"]["calls"]["current"] == 42
    with expect_sqlstate("22023"):
        check(datetime.now(timezone.utc) + timedelta(hours=1))


@pytest.mark.parametrize("role", ["mec_user"])
def test_as_of_keeps_tenancy(new_namespace, connect, expect_sqlstate, role):
    ns = new_namespace(catalog=CATALOG)
    conn = connect(namespace_id=ns)
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    for acc in (mine, other):
        conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'small')", (acc,))
    user = connect(namespace_id=ns, role=role, claims={"account_id": mine})
    user.execute("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'calls', "
                 "p_as_of => now())", (mine,))
    with expect_sqlstate("42501"):
        user.execute("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'calls', "
                     "p_as_of => now())", (other,))
