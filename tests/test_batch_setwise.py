"""meter_consumption_batch decides its plain events set-wise (issue 12): every event still gets the
answer it would have had alone, in the batch's order.

Hypothesis draws batches that mix what the set-wise path takes (metered and gauge events on top-level
accounts) with what it hands back to be metered one by one (dimensions, unbilled statuses, rate
resources, pooled members, keys sent twice, keys recorded before), allows, denials at hard, soft and
capped limits, and malformed events. The same events go to a second namespace one
`meter_consumption` call at a time; the answers, the ledger, the counters and the usage alerts must
be the same."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sql_helpers import adapt, race

pytestmark = pytest.mark.sql

CATALOG = {
    "resources": [
        {"resource_type": "units", "kind": "metered"},
        {"resource_type": "soft", "kind": "metered"},
        {"resource_type": "cap", "kind": "metered"},
        {"resource_type": "lvl", "kind": "gauge"},
        {"resource_type": "tok", "kind": "metered", "dimensions": {"model_class": ["S", "L"]}},
        {"resource_type": "free", "kind": "metered"},
        {"resource_type": "rpm", "kind": "rate", "window_seconds": 60},
    ],
    "plans": [{"plan_id": "p", "default": True, "entitlements": {
        "units": {"limit": 10, "grace": 0},
        "soft": {"limit": 5, "enforcement": "soft"},
        "cap": {"limit": 5, "enforcement": "capped", "overage_cap": 2, "grace": 0},
        "lvl": {"limit": 6, "grace": 0},
        "tok": {"limit": 12, "grace": 0, "dimension_limits": {"model_class": {"L": {"limit": 4, "grace": 0}}}},
        "free": {"limit": None},
        "rpm": {"limit": 5, "grace": 0},
    }}],
}
RESOURCES = ["units", "soft", "cap", "lvl", "tok", "free", "rpm"]
ACCOUNTS = [str(uuid.UUID(int=0xA0 + i)) for i in range(3)]
MEMBER = str(uuid.UUID(int=0xB0))

event = st.fixed_dictionaries({
    "account": st.sampled_from(ACCOUNTS + [MEMBER]),
    "resource": st.sampled_from(RESOURCES),
    "quantity": st.integers(-2, 4),
    "key": st.one_of(st.none(), st.integers(0, 3)),   # None: fresh; n: the n-th key again (or pre-recorded)
    "status": st.sampled_from([None, None, None, 200, 500]),
    "dims": st.sampled_from([None, None, {"model_class": "L"}, {"model_class": "S"}]),
    "malformed": st.sampled_from([False] * 9 + [True]),
})


def setup_namespace(new_namespace, connect, member: bool, url: str | None = None) -> psycopg.Connection:
    """A namespace of CATALOG with the accounts provisioned; its mec_admin connection (opened with
    `url` when given, so that the caller closes it; else through `connect`)."""
    ns = new_namespace(catalog=CATALOG)
    if url is None:
        conn = connect(namespace_id=ns, role="mec_admin")
    else:
        conn = psycopg.connect(url, autocommit=True)
        conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
        conn.execute("SET ROLE mec_admin")
    for a in ACCOUNTS + [MEMBER]:
        conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (a,))
    if member:
        conn.execute("SELECT mec.set_parent_account(%s::uuid, %s::uuid)", (MEMBER, ACCOUNTS[0]))
    # two keys recorded before the batch
    for i in range(2):
        conn.execute("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid,"
                     " p_resource_type => 'units', p_quantity => 1)", (f"pre-{i}", ACCOUNTS[i]))
    return conn


def batch_events(drawn: list[dict]) -> list[dict]:
    out = []
    for i, d in enumerate(drawn):
        key = f"e{i}" if d["key"] is None else (f"pre-{d['key']}" if d["key"] < 2 else f"e{d['key']}")
        e = {"idempotency_key": key, "account_id": d["account"], "resource_type": d["resource"],
             "quantity": d["quantity"]}
        if d["status"] is not None:
            e["http_status"] = d["status"]
        if d["dims"] is not None:
            e["dimensions"] = d["dims"]
        if d["malformed"]:
            del e["quantity"]
        out.append(e)
    return out


def one_by_one(conn, e: dict) -> dict:
    """meter_consumption alone: {"ok": result} or {"error": {code, message, details, hint}}."""
    try:
        r = conn.execute(
            "SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid,"
            " p_resource_type => %s, p_quantity => %s, p_http_status => %s, p_dimensions => %s)",
            (e["idempotency_key"], e["account_id"], e["resource_type"], e["quantity"], e.get("http_status"),
             adapt(e.get("dimensions", {})))).fetchone()[0]
        return {"ok": r}
    except psycopg.Error as err:
        detail = err.diag.message_detail
        try:
            detail = json.loads(detail) if detail else None
        except ValueError:
            pass
        return {"error": {"code": err.sqlstate, "message": err.diag.message_primary, "details": detail,
                          "hint": err.diag.message_hint}}


def same_error(batch: dict, alone: dict) -> bool:
    """The same error, but for a rate window's reset_at: the instant its oldest entry leaves the
    window, an entry the batch and the call alone each recorded at their own moment (checked to be
    within a few seconds of each other)."""
    def split(err: dict) -> tuple[dict, list]:
        err = json.loads(json.dumps(err))
        resets = []
        for p in (err.get("details") or {}).get("violated_policies", []):
            if p.get("kind") == "rate" and "reset_at" in p:
                resets.append(datetime.fromisoformat(p.pop("reset_at").replace("Z", "+00:00")))
        return err, resets
    (b, b_resets), (a, a_resets) = split(batch), split(alone)
    return b == a and len(b_resets) == len(a_resets) and all(
        abs((x - y).total_seconds()) < 5 for x, y in zip(b_resets, a_resets))


def comparable(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("consumption_id", "index", "status")}


def state(conn) -> dict:
    ledger = conn.execute(
        "SELECT idempotency_key, account_id::text, resource_type, quantity::text, billable, overage,"
        " overage_quantity::text, quantity_used::text, quantity_allowed::text, coalesce(dimensions, '{}')::text"
        " FROM mec_data.consumption WHERE namespace_id = mec.current_namespace() ORDER BY 1").fetchall()
    counters = conn.execute(
        "SELECT account_id::text, resource_type, period_start, sum(used)::text FROM mec_data.usage_counters"
        " WHERE namespace_id = mec.current_namespace() GROUP BY 1, 2, 3"
        # a batch leaves the empty counters of its refused events (as it always did); no answer differs
        " HAVING sum(used) <> 0 ORDER BY 1, 2, 3").fetchall()
    alerts = conn.execute(
        "SELECT account_id::text, resource_type, event_type, threshold::text, quantity_used::text FROM mec_data.alert_crossings"
        " WHERE namespace_id = mec.current_namespace() ORDER BY 1, 2, 3, 4").fetchall()
    return {"ledger": ledger, "counters": counters, "alerts": alerts}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=st.lists(event, min_size=1, max_size=30), member=st.booleans())
def test_every_event_answers_as_it_would_alone(new_namespace, connect, database_url, drawn, member):
    events = batch_events(drawn)
    x = setup_namespace(new_namespace, connect, member, database_url)
    y = setup_namespace(new_namespace, connect, member, database_url)
    try:
        compare(x, y, events)
    finally:
        x.close()
        y.close()


def compare(x, y, events: list[dict]) -> None:
    got = x.execute("SELECT mec.meter_consumption_batch(%s)", (adapt(events),)).fetchone()[0]
    assert len(got["results"]) == len(events)
    for i, (e, r) in enumerate(zip(events, got["results"])):
        assert r["index"] == i
        if "quantity" not in e:
            assert r["status"] == "rejected" and r["error"]["code"] == "22023", r
            continue
        alone = one_by_one(y, e)
        if "ok" in alone:
            assert r["status"] == "recorded", (i, e, r, alone)
            assert comparable(r) == comparable(alone["ok"]), (i, e, r, alone)
        else:
            assert r["status"] == "rejected", (i, e, r, alone)
            assert same_error(r["error"], alone["error"]), (i, e, r, alone)
    sx, sy = state(x), state(y)
    assert sx["ledger"] == sy["ledger"]
    assert sx["counters"] == sy["counters"]
    assert sx["alerts"] == sy["alerts"]


def test_a_thousand_plain_events_in_one_call(new_namespace, connect):
    conn = setup_namespace(new_namespace, connect, member=False)
    events = [{"idempotency_key": f"k{i}", "account_id": ACCOUNTS[i % 3], "resource_type": "free",
               "quantity": 1 + i % 3} for i in range(1000)]
    r = conn.execute("SELECT mec.meter_consumption_batch(%s)", (adapt(events),)).fetchone()[0]
    assert (r["accepted"], r["duplicates"], r["rejected"]) == (1000, 0, 0)
    used = [row["quantity_used"] for row in r["results"] if row["account_id"] == ACCOUNTS[0]]
    assert used == sorted(used) and used[-1] == sum(1 + i % 3 for i in range(0, 1000, 3))
    again = conn.execute("SELECT mec.meter_consumption_batch(%s)", (adapt(events),)).fetchone()[0]
    assert (again["accepted"], again["duplicates"]) == (0, 1000)
    assert [x["consumption_id"] for x in again["results"]] == [x["consumption_id"] for x in r["results"]]
    counters = dict(conn.execute(
        "SELECT account_id::text, sum(used) FROM mec_data.usage_counters WHERE namespace_id = mec.current_namespace()"
        " AND resource_type = 'free' GROUP BY 1").fetchall())
    ledger = dict(conn.execute(
        "SELECT account_id::text, sum(quantity) FROM mec_data.consumption WHERE namespace_id = mec.current_namespace()"
        " AND resource_type = 'free' GROUP BY 1").fetchall())
    assert counters == ledger
    # nothing is over no limit
    assert conn.execute("SELECT sum(overage_quantity) FROM mec_data.consumption"
                        " WHERE namespace_id = mec.current_namespace() AND resource_type = 'free'").fetchone()[0] == 0


def test_concurrent_batches_never_pass_a_limit_nor_deadlock(new_namespace, connect):
    """8 clients send batches of 40 events over the same three accounts in different orders: each
    account's hard limit (10) is reached exactly, and the counters equal the ledger."""
    conn = setup_namespace(new_namespace, connect, member=False)
    ns = conn.execute("SELECT mec.current_namespace()::text").fetchone()[0]

    def work(c, n):
        events = [{"idempotency_key": f"c{n}-{j}", "account_id": ACCOUNTS[(n + j) % 3], "resource_type": "units",
                   "quantity": 1} for j in range(40)]
        if n % 2:
            events.reverse()
        return c.execute("SELECT mec.meter_consumption_batch(%s)", (adapt(events),)).fetchone()[0]["accepted"]

    accepted = sum(race(ns, connect, work, clients=8))
    per_account = dict(conn.execute(
        "SELECT account_id::text, sum(quantity) FROM mec_data.consumption WHERE namespace_id = %s::uuid"
        " AND resource_type = 'units' GROUP BY 1", (ns,)).fetchall())
    # two accounts had one unit recorded before (pre-0, pre-1)
    assert per_account == {a: 10 for a in ACCOUNTS}
    assert accepted == 30 - 2
    counters = dict(conn.execute(
        "SELECT account_id::text, sum(used) FROM mec_data.usage_counters WHERE namespace_id = %s::uuid"
        " AND resource_type = 'units' GROUP BY 1", (ns,)).fetchall())
    assert counters == per_account


def test_a_pooled_member_keeps_the_batch_in_order_even_under_a_repeated_key(new_namespace, connect, database_url):
    """A member's event counts in its parent's counter: when the member's key is sent twice, the
    parent's own later event must still be decided after it (everything goes one by one)."""
    member = MEMBER
    events = [{"idempotency_key": "k", "account_id": member, "resource_type": "units", "quantity": 5},
              {"idempotency_key": "p1", "account_id": ACCOUNTS[0], "resource_type": "units", "quantity": 5},
              {"idempotency_key": "k", "account_id": member, "resource_type": "units", "quantity": 5}]
    x = setup_namespace(new_namespace, connect, True, database_url)
    y = setup_namespace(new_namespace, connect, True, database_url)
    try:
        compare(x, y, events)
        statuses = [r["status"] for r in
                    x.execute("SELECT mec.meter_consumption_batch(%s)", (adapt(events),)).fetchone()[0]["results"]]
        assert statuses == ["recorded", "rejected", "recorded"], statuses
    finally:
        x.close()
        y.close()


def _index_reads(conn) -> int:
    """Index entries read so far in the counters' and the ledger's primary keys."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        "SELECT sum(idx_tup_read)::int8 FROM pg_stat_all_indexes WHERE indexrelid IN"
        " ('mec_data.usage_counters_pkey'::regclass, 'mec_data.consumption_pkey'::regclass)"
    ).fetchone()[0]


def test_small_batch_reads_only_its_own_rows(new_namespace, connect):
    """A batch looks up each of its counters and idempotency keys by itself, however many the
    namespace holds. (Once the statements' generic plans were taken, they merge-joined the batch's
    counters against every counter of the namespace and filtered its whole ledger for the keys: a
    batch of one event read them all, several ms per statement at 10 000 accounts, which made the
    gateway's group commit slower than no grouping.)"""
    ns = new_namespace(catalog=CATALOG)
    admin = connect(namespace_id=ns, role="mec_admin")
    n = 3000
    accounts = [str(uuid.UUID(int=0xC000 + i)) for i in range(n)]
    admin.execute("SELECT mec.bulk_provision(%s)",
                  (adapt([{"account_id": a, "plan_id": "p"} for a in accounts]),))
    events = [{"idempotency_key": f"warm-{a}", "account_id": a, "resource_type": "units", "quantity": 1}
              for a in accounts]
    for i in range(0, n, 1000):
        admin.execute("SELECT mec.meter_consumption_batch(%s)", (adapt(events[i:i + 1000]),))
    stats = connect(namespace_id="")
    stats.execute("ANALYZE mec_data.usage_counters")

    svc = connect(namespace_id=ns, role="mec_service")

    def batch(i: int) -> None:
        one = [{"idempotency_key": f"b-{i}", "account_id": accounts[i], "resource_type": "units",
                "quantity": 1}]
        out = svc.execute("SELECT mec.meter_consumption_batch(%s)", (adapt(one),)).fetchone()[0]
        assert out["results"][0]["status"] == "recorded", out

    for i in range(8):  # past the plan cache's five custom plans: the generic plan is in use
        batch(i)
    svc.execute("SELECT pg_stat_force_next_flush()")
    svc.execute("SELECT 1")
    before = _index_reads(stats)
    for i in range(8, 12):
        batch(i)
    svc.execute("SELECT pg_stat_force_next_flush()")
    svc.execute("SELECT 1")
    read = _index_reads(stats) - before
    # 4 batches of one event; each reads its counter and its key a handful of times, never the
    # namespace's 3 000 counters or ledger rows
    assert read < 200, f"4 one-event batches read {read} index entries"


def test_a_key_recorded_meanwhile_by_another_transaction(new_namespace, connect):
    """The batch writes its ledger rows with a plain INSERT, which meets a key that another
    transaction recorded after the batch looked its keys up (here: last month, so on another
    counter, whose lock the batch does not wait for). That INSERT is taken back and the rows are
    written again without the key: the event answers as a replay, the batch's later events on its
    counter are counted, answered and recorded without it, and the counters equal the ledger."""
    admin = setup_namespace(new_namespace, connect, member=False)
    ns = admin.execute("SELECT mec.current_namespace()::text").fetchone()[0]
    admin.execute("SELECT mec.update_namespace_settings(%s)", (adapt({"late_event_days": 40}),))
    other = connect(namespace_id=ns, role="mec_service", autocommit=False)
    last_month = other.execute(
        "SELECT mec.meter_consumption(p_idempotency_key => 'race', p_account_id => %s::uuid,"
        " p_resource_type => 'units', p_quantity => 2,"
        " p_occurred_at => date_trunc('month', now()) - interval '1 hour')", (ACCOUNTS[0],)).fetchone()[0]

    batcher = connect(namespace_id=ns, role="mec_service")
    batcher.execute("SET statement_timeout = '30s'")
    pid = batcher.execute("SELECT pg_backend_pid()").fetchone()[0]
    events = [{"idempotency_key": "race", "account_id": ACCOUNTS[0], "resource_type": "units", "quantity": 2},
              {"idempotency_key": "b1", "account_id": ACCOUNTS[0], "resource_type": "units", "quantity": 3},
              {"idempotency_key": "b2", "account_id": ACCOUNTS[0], "resource_type": "units", "quantity": 4},
              {"idempotency_key": "b3", "account_id": ACCOUNTS[1], "resource_type": "units", "quantity": 1}]
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = batcher.execute("SELECT mec.meter_consumption_batch(%s)",
                                            (adapt(events),)).fetchone()[0]
        except psycopg.Error as e:  # reported below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    watcher = connect(namespace_id="")
    for _ in range(1000):  # the batch's INSERT waits for the other transaction's key
        waiting = watcher.execute("SELECT wait_event = 'transactionid' FROM pg_stat_activity WHERE pid = %s",
                                  (pid,)).fetchone()[0]
        if waiting or not t.is_alive():
            break
        time.sleep(0.01)
    assert waiting, "the batch never waited for the other transaction's key"
    other.commit()
    t.join(30)
    assert "error" not in out, out.get("error")

    results = out["result"]["results"]
    assert [r["status"] for r in results] == ["recorded"] * 4
    assert results[0]["duplicate"] is True
    assert comparable(results[0]) == {**comparable(last_month), "duplicate": True}
    # pre-0 had recorded 1 on this month's counter: b1 and b2 are counted without the replay
    assert [r["quantity_used"] for r in results[1:]] == [4, 8, 2]
    assert all(r["duplicate"] is False for r in results[1:])
    used = dict(admin.execute(
        "SELECT idempotency_key, quantity_used FROM mec_data.consumption WHERE namespace_id = %s::uuid"
        " AND idempotency_key IN ('b1', 'b2', 'b3')", (ns,)).fetchall())
    assert used == {"b1": 4, "b2": 8, "b3": 2}
    mismatched = admin.execute(
        "SELECT count(*) FROM (SELECT account_id, resource_type, period_start, sum(used) AS used"
        "   FROM mec_data.usage_counters WHERE namespace_id = %s::uuid GROUP BY 1, 2, 3) c"
        " FULL JOIN (SELECT account_id, resource_type, period_start, sum(quantity) AS used"
        "   FROM mec_data.consumption WHERE namespace_id = %s::uuid AND billable GROUP BY 1, 2, 3) l"
        " USING (account_id, resource_type, period_start)"
        " WHERE coalesce(c.used, 0) <> coalesce(l.used, 0)", (ns, ns)).fetchone()[0]
    assert mismatched == 0


def test_a_counter_rolled_back_after_a_batch_saw_it(new_namespace, connect):
    """A backend remembers which counters exist so that its batches skip creating them. A counter
    whose creating transaction rolled back is gone although remembered: the next batch on it still
    records its events (one by one), and every batch after that too."""
    admin = setup_namespace(new_namespace, connect, member=False)
    ns = admin.execute("SELECT mec.current_namespace()::text").fetchone()[0]
    svc = connect(namespace_id=ns, role="mec_service", autocommit=False)
    fresh = str(uuid.UUID(int=0xD0))
    admin.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (fresh,))

    def batch(*keys: str) -> list[dict]:
        events = [{"idempotency_key": k, "account_id": fresh, "resource_type": "units", "quantity": 1}
                  for k in keys]
        return svc.execute("SELECT mec.meter_consumption_batch(%s)", (adapt(events),)).fetchone()[0]["results"]

    assert [r["status"] for r in batch("gone-1", "gone-2")] == ["recorded", "recorded"]
    svc.rollback()  # the counter row this batch created is gone
    assert admin.execute("SELECT count(*) FROM mec_data.usage_counters WHERE namespace_id = %s::uuid"
                         " AND account_id = %s::uuid", (ns, fresh)).fetchone()[0] == 0
    for keys in (("r-1", "r-2"), ("r-3",), ("r-4", "r-5")):
        results = batch(*keys)
        svc.commit()
        assert [r["status"] for r in results] == ["recorded"] * len(keys)
    used = admin.execute("SELECT sum(used) FROM mec_data.usage_counters WHERE namespace_id = %s::uuid"
                         " AND account_id = %s::uuid", (ns, fresh)).fetchone()[0]
    ledger = admin.execute("SELECT count(*), max(quantity_used) FROM mec_data.consumption"
                           " WHERE namespace_id = %s::uuid AND account_id = %s::uuid", (ns, fresh)).fetchone()
    assert used == 5 and tuple(ledger) == (5, 5)
