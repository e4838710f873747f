"""Retention: mec.purge_expired removes idempotency keys past key_retention_days and ledger detail past
history_retention_days, in bounded batches, rolling the ledger up per day first, so that totals, day and
month history (by dimension too) and as-of answers after the horizon are the same before and after; a
row Stripe still has to be sent is kept. See docs/CONTRACT.md ("Retention", issue 14)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.sql

CATALOG = {
    "resources": [{"resource_type": "tokens", "kind": "metered",
                   "dimensions": {"model_class": ["BASE_S", "PRO_L"]}}],
    "plans": [{"plan_id": "p", "default": True,
               "entitlements": {"tokens": {"limit": 1_000_000, "period": "month"}}}],
}


def _one(conn, q: str, *args: Any) -> Any:
    row = conn.execute(q, [Jsonb(a) if isinstance(a, (dict, list)) else a for a in args]).fetchone()
    return row[0] if row else None


@pytest.fixture
def aged(new_namespace, connect):
    """A namespace whose account has usage spread over the last 120 days, as if each event had been
    recorded a minute after it occurred (the rows are back-dated in place, as time would have)."""
    ns = new_namespace(catalog=CATALOG)
    admin = connect(namespace_id=ns)
    _one(admin, "SELECT mec.update_namespace_settings(%s)",
         {"late_event_days": 365, "history_retention_days": 45})
    account = str(uuid.uuid4())
    _one(admin, "SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", account)
    now = datetime.now(timezone.utc)
    for i in range(60):
        at = now - timedelta(days=2 * i, hours=i % 5)
        _one(admin, "SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
             "p_resource_type => 'tokens', p_quantity => %s, p_occurred_at => %s, p_dimensions => %s, "
             "p_http_status => %s)",
             f"e{i}", account, 10 + i, at, {"model_class": "PRO_L" if i % 3 else "BASE_S"},
             500 if i % 11 == 0 else 200)
    _one(admin, "SELECT mec.adjust_consumption(p_idempotency_key => 'fix-1', p_account_id => %s::uuid, "
         "p_resource_type => 'tokens', p_quantity => -5, p_reason => 'refund', p_occurred_at => %s)",
         account, now - timedelta(days=100))
    admin.execute("UPDATE mec_data.consumption SET recorded_at = occurred_at + interval '1 minute' "
                  "WHERE namespace_id = %s", (ns,))
    # back to a week of late events: the ledger is kept as long as a retry could still be accepted
    _one(admin, "SELECT mec.update_namespace_settings(%s)", {"late_event_days": 7})
    # a key of another operation, old enough to go, and a recent one
    _one(admin, "SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p', "
         "p_idempotency_key => 'old-provision')", account)
    _one(admin, "SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p', "
         "p_idempotency_key => 'new-provision')", account)
    admin.execute("UPDATE mec_data.idempotency_keys SET created_at = now() - interval '50 days' "
                  "WHERE namespace_id = %s AND idempotency_key = 'old-provision'", (ns,))
    return ns, admin, account, now


def _answers(admin, account: str, now: datetime) -> dict:
    frm = now - timedelta(days=200)
    hist = {}
    for bucket in ("day", "month"):
        for group in (None, "model_class"):
            h = _one(admin, "SELECT mec.usage_history(p_account_id => %s::uuid, p_resource_type => 'tokens', "
                     "p_from => %s, p_to => %s, p_bucket => %s, p_group_by => %s)",
                     account, frm, now + timedelta(minutes=1), bucket, group)
            hist[(bucket, group)] = h
    return {
        "history": hist,
        "summary": _one(admin, "SELECT mec.usage_summary(p_account_id => %s::uuid)", account),
        "as_of": _one(admin, "SELECT mec.usage_summary(p_account_id => %s::uuid, p_as_of => %s)",
                      account, now - timedelta(days=1)),
        "check_as_of": _one(admin, "SELECT mec.check_entitlement(p_account_id => %s::uuid, "
                            "p_resource_type => 'tokens', p_as_of => %s)", account, now - timedelta(days=3)),
    }


def _drop_volatile(a: dict) -> dict:
    """last_updated / updated_at move with the latest row recorded, which the rollup keeps per day."""
    out = {k: v for k, v in a.items()}
    for k in ("summary", "as_of"):
        out[k] = {**a[k], "features": {r: {f: v for f, v in feat.items() if f != "last_updated"}
                                       for r, feat in a[k]["features"].items()}}
    return out


def test_purge_keeps_totals_history_and_as_of_answers(aged):
    ns, admin, account, now = aged
    before = _answers(admin, account, now)
    ledger_before = admin.execute("SELECT count(*), sum(quantity) FROM mec_data.consumption "
                                  "WHERE namespace_id = %s", (ns,)).fetchone()
    cutoff = now - timedelta(days=45)
    old = admin.execute("SELECT count(*) FROM mec_data.consumption WHERE namespace_id = %s "
                        "AND occurred_at < %s", (ns, cutoff)).fetchone()[0]
    assert old > 20

    rounds, rolled, keys = 0, 0, 0
    while True:
        r = _one(admin, "SELECT mec.purge_expired(p_batch_size => 7)")
        rounds += 1
        rolled += r["ledger_rows_rolled_up"]
        keys += r["keys_deleted"]
        assert r["ledger_rows_rolled_up"] <= 7 and r["keys_deleted"] <= 7, r
        if not r["more"]:
            break
        assert rounds < 50, r
    assert rounds >= 3 and rolled == old and keys == 1, (rounds, rolled, keys)

    left = admin.execute("SELECT count(*), min(occurred_at) FROM mec_data.consumption "
                         "WHERE namespace_id = %s", (ns,)).fetchone()
    assert left[0] == ledger_before[0] - old and left[1] >= cutoff - timedelta(minutes=2), left
    total = admin.execute(
        "SELECT (SELECT coalesce(sum(quantity), 0) FROM mec_data.consumption WHERE namespace_id = %s) "
        "     + (SELECT coalesce(sum(quantity), 0) FROM mec_data.consumption_rollups WHERE namespace_id = %s)",
        (ns, ns)).fetchone()[0]
    assert total == ledger_before[1]
    assert _drop_volatile(_answers(admin, account, now)) == _drop_volatile(before)

    # the old provision key is gone (a replay would provision again), the recent one stays
    kept = {r[0] for r in admin.execute("SELECT idempotency_key FROM mec_data.idempotency_keys "
                                        "WHERE namespace_id = %s", (ns,))}
    assert "new-provision" in kept and "old-provision" not in kept
    # purging again changes nothing
    again = _one(admin, "SELECT mec.purge_expired()")
    assert (again["ledger_rows_rolled_up"], again["keys_deleted"], again["more"]) == (0, 0, False), again


def test_a_row_stripe_has_still_to_be_sent_is_kept(aged):
    ns, admin, account, now = aged
    key = admin.execute("SELECT idempotency_key::text FROM mec_data.consumption WHERE namespace_id = %s "
                        "AND billable AND occurred_at < now() - interval '60 days' LIMIT 1", (ns,)).fetchone()[0]
    admin.execute(
        "INSERT INTO mec_data.stripe_usage_outbox (namespace_id, identifier, kind, account_id, resource_type, "
        "period_start, event_name, stripe_customer_id, value, event_timestamp, state) "
        "SELECT namespace_id, 'pending-1', 'meter_event', account_id, resource_type, period_start, 'tokens', "
        "'cus_1', quantity, occurred_at, 'pending' FROM mec_data.consumption "
        "WHERE namespace_id = %s AND idempotency_key = %s", (ns, key))
    admin.execute("INSERT INTO mec_data.stripe_usage_items (namespace_id, idempotency_key, identifier) "
                  "VALUES (%s, %s, 'pending-1')", (ns, key))
    while _one(admin, "SELECT mec.purge_expired(p_batch_size => 1000)")["more"]:
        pass
    assert admin.execute("SELECT count(*) FROM mec_data.consumption WHERE namespace_id = %s "
                         "AND idempotency_key = %s", (ns, key)).fetchone()[0] == 1
    # sent: now it may go
    admin.execute("UPDATE mec_data.stripe_usage_outbox SET state = 'sent' WHERE namespace_id = %s", (ns,))
    r = _one(admin, "SELECT mec.purge_expired()")
    assert r["ledger_rows_rolled_up"] == 1 and r["stripe_items_deleted"] == 1, r


def test_purge_refuses_bad_arguments_and_callers(aged, connect, expect_sqlstate):
    ns, admin, _, now = aged
    with expect_sqlstate("22023"):
        _one(admin, "SELECT mec.purge_expired(p_before => now() + interval '1 day')")
    with expect_sqlstate("22023"):
        _one(admin, "SELECT mec.purge_expired(p_batch_size => 0)")
    svc = connect(namespace_id=ns, role="mec_service")
    with expect_sqlstate("42501"):
        _one(svc, "SELECT mec.purge_expired()")
    worker = connect(namespace_id=ns, role="mec_admin")
    assert _one(worker, "SELECT mec.purge_expired()")["ledger_rows_rolled_up"] > 0
    with expect_sqlstate("22023"):
        _one(admin, "SELECT mec.update_namespace_settings(%s)", {"history_retention_days": 10})


def test_the_ledger_stays_while_a_late_retry_could_be_accepted(aged):
    """A ledger row is its event's key: with late_event_days 100, rows up to 101 days old stay."""
    ns, admin, _, now = aged
    _one(admin, "SELECT mec.update_namespace_settings(%s)", {"late_event_days": 100})
    r = _one(admin, "SELECT mec.purge_expired(p_batch_size => 1000)")
    cutoff = datetime.fromisoformat(r["ledger_cutoff"].replace("Z", "+00:00"))
    assert abs((now - cutoff) - timedelta(days=101)) < timedelta(minutes=5), r
    assert admin.execute("SELECT count(*) FROM mec_data.consumption WHERE namespace_id = %s "
                         "AND occurred_at < %s", (ns, cutoff)).fetchone()[0] == 0
