"""usage_history: an account's usage over time from the ledger, exact across corrections and late
events, bucketed and grouped; tenancy and bad input. See docs/CONTRACT.md."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.types.json import Jsonb

CATALOG = {"resources": [{"resource_type": "tokens", "kind": "metered"}, {"resource_type": "x", "kind": "feature"}],
           "plans": [{"plan_id": "p", "default": True, "entitlements": {"tokens": {"limit": None}, "x": True}}]}


@pytest.fixture
def hist(new_namespace, connect):
    ns = new_namespace(catalog=CATALOG)
    conn = connect(namespace_id=ns)
    conn.execute("SELECT mec.update_namespace_settings('{\"late_event_days\": 7}')")
    account = str(uuid.uuid4())
    conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (account,))
    return ns, conn, account


def meter(conn, account, key, qty, at, model=None, status=None):
    conn.execute("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                 "p_resource_type => 'tokens', p_quantity => %s, p_occurred_at => %s, p_metadata => %s, "
                 "p_http_status => %s)", (key, account, qty, at, Jsonb({"model_class": model} if model else {}),
                                          status))


def history(conn, account, frm, to, bucket="day", group_by=None):
    return conn.execute("SELECT mec.usage_history(p_account_id => %s::uuid, p_resource_type => 'tokens', "
                        "p_from => %s, p_to => %s, p_bucket => %s, p_group_by => %s)",
                        (account, frm, to, bucket, group_by)).fetchone()[0]


def test_days_hours_groups_and_corrections(hist):
    _, conn, account = hist
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    two_days_ago = today - timedelta(days=2)
    meter(conn, account, "a", 100, two_days_ago + timedelta(hours=3), "PRO_L")
    meter(conn, account, "b", 50, two_days_ago + timedelta(hours=3, minutes=30), "BASE_S")
    meter(conn, account, "c", 7, two_days_ago + timedelta(hours=5), "PRO_L", status=500)  # not billable
    meter(conn, account, "d", 10, today + timedelta(minutes=1), "PRO_L")
    conn.execute("SELECT mec.adjust_consumption(p_idempotency_key => 'fix', p_account_id => %s::uuid, "
                 "p_resource_type => 'tokens', p_quantity => -20, p_reason => 'refund', p_occurred_at => %s)",
                 (account, two_days_ago + timedelta(hours=4)))
    frm, to = two_days_ago, today + timedelta(days=1)
    h = history(conn, account, frm, to)
    assert h["total"] == 147 and h["billable_total"] == 140, h
    assert [(b["start"][:10], b["quantity"], b["billable_quantity"], b["events"], b["adjustments"])
            for b in h["buckets"]] == [(two_days_ago.date().isoformat(), 137, 130, 3, 1),
                                      (today.date().isoformat(), 10, 10, 1, 0)]
    hours = history(conn, account, frm, to, "hour")
    assert [(b["start"][11:13], b["quantity"]) for b in hours["buckets"]] == [
        ("03", 150), ("04", -20), ("05", 7), ("00", 10)]
    by_model = history(conn, account, frm, to, "month", "model_class")
    month = lambda d: d.strftime("%Y-%m-01T00:00:00Z")  # noqa: E731
    expected: dict = {}
    for at, model, qty in [(two_days_ago, "PRO_L", 100), (two_days_ago, "BASE_S", 50), (two_days_ago, "PRO_L", 7),
                           (today, "PRO_L", 10), (two_days_ago, None, -20)]:
        expected[(month(at), model)] = expected.get((month(at), model), 0) + qty
    assert {(b["start"], b.get("group")): b["quantity"] for b in by_model["buckets"]} == expected
    # the month's buckets add up to what check_entitlement counts for the period
    this_month = sum(q for (m, _), q in expected.items() if m == month(today))
    used = conn.execute("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'tokens')",
                        (account,)).fetchone()[0]["quantity_used"]
    assert used == this_month - (7 if month(two_days_ago) == month(today) else 0)


def test_refusals_and_tenancy(hist, connect, new_namespace, expect_sqlstate):
    ns, conn, account = hist
    now = datetime.now(timezone.utc)
    for args, code in [((now, now - timedelta(days=1), "day"), "22023"),
                       ((now - timedelta(days=1), now, "week"), "22023"),
                       ((now - timedelta(days=800), now, "hour"), "22023")]:
        with expect_sqlstate(code):
            history(conn, account, *args)
    with expect_sqlstate("ME404"):
        history(conn, str(uuid.uuid4()), now - timedelta(days=1), now)
    # mec_user reads its own account only
    me = connect(namespace_id=ns, role="mec_user", claims={"account_id": account})
    assert history(me, account, now - timedelta(days=1), now)["total"] == 0
    other = str(uuid.uuid4())
    conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (other,))
    with expect_sqlstate("42501"):
        history(me, other, now - timedelta(days=1), now)
    # another namespace does not see the account
    ns2 = new_namespace(catalog=CATALOG)
    with pytest.raises(psycopg.Error):
        history(connect(namespace_id=ns2, role="mec_service"), account, now - timedelta(days=1), now)
