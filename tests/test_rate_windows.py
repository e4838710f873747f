"""Rate windows (`kind: rate`) are exact sliding windows that write no WAL (issue 14).

An event at t is judged by everything counted after t - window_seconds (later-dated events too), so
no span of the window ever holds more than the ceiling; a denial's reset_at is the first instant
the retry is allowed. The window lives in UNLOGGED tables rebuilt from the ledger when missing (a
crash empties them), and is read from the ledger where they cannot answer. Each property is checked
against a brute-force model of the rule: hypothesis drives event times (in order, out of order,
back-dated past the kept log, ahead of the clock) and quantities."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sql_helpers import adapt, detail, race

pytestmark = pytest.mark.sql

WINDOW = 60
LIMIT = 5


def rate_catalog(limit: int = LIMIT, window: int = WINDOW, **extra) -> dict:
    return {"resources": [{"resource_type": "r", "kind": "rate", "window_seconds": window,
                           "dimensions": {"model_class": ["BASE_S", "PRO_L"]}}],
            "plans": [{"plan_id": "p", "default": True,
                       "entitlements": {"r": {"limit": limit, "grace": 0, **extra}}}]}


def meter(conn, account, qty=1, key=None, at: datetime | None = None, dims: dict | None = None):
    return conn.execute(
        "SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, p_resource_type => 'r',"
        " p_quantity => %s, p_occurred_at => coalesce(%s, now()), p_dimensions => %s)",
        (key or str(uuid.uuid4()), account, qty, at, adapt(dims))).fetchone()[0]


def server_now(conn) -> datetime:
    return conn.execute("SELECT now()").fetchone()[0]


def ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


class Model:
    """The rule, by brute force: accepted events as (at, quantity)."""

    def __init__(self, limit: int, window: timedelta):
        self.limit, self.window, self.accepted = limit, window, []

    def used(self, t: datetime) -> int:
        return sum(q for at, q in self.accepted if at > t - self.window)

    def fits(self, t: datetime, q: int) -> bool:
        return self.used(t) + q <= self.limit

    def fit_at(self, t: datetime, q: int) -> datetime:
        """The first instant >= t at which q more fit, if nothing else is counted."""
        counted = sorted((at, n) for at, n in self.accepted if at > t - self.window)
        need = self.used(t) + q - self.limit
        run = 0
        for at, n in counted:
            run += n
            if run >= need:
                return max(t, at + self.window)
        raise AssertionError("never fits")


@pytest.fixture
def rate_ns(new_namespace, connect):
    def make(limit: int = LIMIT, window: int = WINDOW, **extra):
        ns = new_namespace(catalog=rate_catalog(limit, window, **extra))
        return ns, connect(namespace_id=ns, role="mec_admin")
    return make


def new_account(conn) -> str:
    account = str(uuid.uuid4())
    conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (account,))
    return account


def test_the_issues_case_is_exact(rate_ns, expect_sqlstate):
    """10 events at 10:00:59, then at 10:01:30 (31 s later) nothing more fits in 10 per 60 s; at
    10:01:59 (a window after the first ten) all 10 fit again; `current` counts events, not a weighted estimate."""
    _, conn = rate_ns(limit=10)
    account = new_account(conn)
    t0 = server_now(conn) - timedelta(seconds=40)
    for i in range(10):
        meter(conn, account, 1, key=f"a{i}", at=t0)
    with expect_sqlstate("ME429") as err:
        meter(conn, account, 1, key="b0", at=t0 + timedelta(seconds=31))
    [policy] = detail(err)["violated_policies"]
    assert policy["current"] == 10 and policy["window_seconds"] == WINDOW
    assert ts(policy["reset_at"]) == t0 + timedelta(seconds=WINDOW)
    with expect_sqlstate("ME429"):
        meter(conn, account, 1, key="b1", at=t0 + timedelta(seconds=WINDOW, microseconds=-1))
    after = t0 + timedelta(seconds=WINDOW)
    for i in range(10):
        assert meter(conn, account, 1, key=f"c{i}", at=after)["quantity_used"] == i + 1
    check = conn.execute("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'r',"
                         " p_as_of => NULL)", (account,)).fetchone()[0]
    # a check now counts the later-dated ten too: no span of 60 s may hold more than 10
    assert check["quantity_used"] == 20 and check["decision"] == "deny", check


@pytest.fixture
def rate_conn(rate_ns):
    """One namespace's connection for every example of a hypothesis test (a new account each)."""
    return rate_ns()[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.integers(-230_000, 250_000), st.integers(1, 3)), min_size=1, max_size=25),
       shuffled=st.booleans())
def test_decisions_and_reset_at_match_the_rule(rate_conn, events, shuffled):
    """Every decision, every denial's reset_at and the final check equal the brute-force rule's:
    events in order, out of order, back-dated past the kept log (the ledger answers) and ahead."""
    conn = rate_conn
    account = new_account(conn)
    base = server_now(conn)
    offsets = events if shuffled else sorted(events)
    model = Model(LIMIT, timedelta(seconds=WINDOW))
    for i, (ms, q) in enumerate(offsets):
        at = base + timedelta(milliseconds=ms)
        try:
            r = meter(conn, account, q, key=f"{account}-{i}", at=at)
        except psycopg.Error as e:
            assert e.sqlstate == "ME429", e
            assert not model.fits(at, q), (i, at, q, model.accepted)
            [policy] = json.loads(e.diag.message_detail or "{}")["violated_policies"]
            assert policy["current"] == model.used(at)
            assert ts(policy["reset_at"]) == model.fit_at(at, q), (i, at, q, model.accepted)
            continue
        assert model.fits(at, q), (i, at, q, model.accepted)
        model.accepted.append((at, q))
        assert r["quantity_used"] == model.used(at)
    with conn.transaction():
        now = server_now(conn)
        check = conn.execute("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'r')",
                             (account,)).fetchone()[0]
    assert check["quantity_used"] == model.used(now)


def test_a_denials_reset_at_is_when_the_retry_is_allowed(rate_ns, expect_sqlstate):
    _, conn = rate_ns(limit=3)
    account = new_account(conn)
    t0 = server_now(conn)
    for i, s in enumerate((0, 10, 20)):
        meter(conn, account, 1, key=f"k{i}", at=t0 + timedelta(seconds=s))
    with expect_sqlstate("ME429") as err:
        meter(conn, account, 2, key="two", at=t0 + timedelta(seconds=25))
    # two must leave: the second event's
    reset = ts(detail(err)["violated_policies"][0]["reset_at"])
    assert reset == t0 + timedelta(seconds=10 + WINDOW)
    with expect_sqlstate("ME429"):
        meter(conn, account, 2, key="early", at=reset - timedelta(microseconds=1))
    assert meter(conn, account, 2, key="on-time", at=reset)["quantity_used"] == 3


def test_concurrent_callers_never_pass_the_limit(rate_ns, connect):
    """32 clients at once on one window of 50: exactly 50 admitted, each once in the ledger."""
    ns, conn = rate_ns(limit=50)
    account = new_account(conn)

    def work(c, i):
        ok = 0
        for j in range(4):
            try:
                meter(c, account, 1, key=f"w{i}-{j}")
                ok += 1
            except psycopg.Error as e:
                assert e.sqlstate == "ME429", e
        return ok

    admitted = sum(race(ns, connect, work))
    rows = conn.execute("SELECT count(*) FROM mec.consumption WHERE account_id = %s::uuid", (account,)).fetchone()[0]
    assert admitted == rows == 50


def test_a_replay_counts_once_and_answers_as_the_first_time(rate_ns):
    _, conn = rate_ns(limit=2)
    account = new_account(conn)
    first = meter(conn, account, 1, key="same")
    again = meter(conn, account, 1, key="same")
    assert again["duplicate"] is True and again["consumption_id"] == first["consumption_id"]
    assert {k: v for k, v in again.items() if k != "duplicate"} == {k: v for k, v in first.items() if k != "duplicate"}
    assert meter(conn, account, 1)["quantity_used"] == 2


def test_a_lost_window_is_rebuilt_from_the_ledger(rate_ns, connect, expect_sqlstate):
    """What a crash does to unlogged tables (they come back empty) loses nothing: the next event
    rebuilds the window from the ledger, and reads answer from the ledger until then."""
    ns, conn = rate_ns(limit=4)
    account = new_account(conn)
    for i in range(3):
        meter(conn, account, 1, key=f"k{i}")
    admin = connect(namespace_id=ns)
    admin.execute("DELETE FROM mec_data.rate_entries WHERE account_id = %s::uuid", (account,))
    admin.execute("DELETE FROM mec_data.rate_windows WHERE account_id = %s::uuid", (account,))
    check = conn.execute("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'r')",
                         (account,)).fetchone()[0]
    assert check["quantity_used"] == 3
    assert meter(conn, account, 1, key="k3")["quantity_used"] == 4
    with expect_sqlstate("ME429"):
        meter(conn, account, 1, key="k4")
    assert admin.execute("SELECT total FROM mec_data.rate_windows WHERE account_id = %s::uuid",
                         (account,)).fetchone()[0] == 4


def test_the_window_tables_are_unlogged_and_tenant_bound(connect):
    admin = connect()
    rows = admin.execute("SELECT relname, relpersistence, relrowsecurity, relforcerowsecurity FROM pg_class"
                         " WHERE relnamespace = 'mec_data'::regnamespace AND relname IN ('rate_windows', 'rate_entries')"
                         " ORDER BY relname").fetchall()
    assert rows == [("rate_entries", "u", True, True), ("rate_windows", "u", True, True)]


def test_the_kept_log_is_pruned_and_stays_exact(rate_ns, connect):
    """A one-second window keeps two windows of entries: after a few seconds the oldest go, and the
    window still counts exactly."""
    ns, conn = rate_ns(limit=3, window=1)
    account = new_account(conn)
    admin = connect(namespace_id=ns)
    for i in range(3):
        meter(conn, account, 1, key=f"a{i}")
    time.sleep(3.2)
    assert meter(conn, account, 1, key="b0")["quantity_used"] == 1
    kept = admin.execute("SELECT count(*) FROM mec_data.rate_entries WHERE account_id = %s::uuid",
                         (account,)).fetchone()[0]
    assert kept == 1, "the entries older than two windows were not dropped"
    assert meter(conn, account, 2, key="b1")["quantity_used"] == 3


def test_repeatable_read_callers_are_serialised_not_overcounted(rate_ns, connect, expect_sqlstate):
    """A caller whose snapshot predates another's counted event gets 40001 (retry), as on a counter
    row, rather than deciding on a stale window."""
    ns, conn = rate_ns(limit=2)
    account = new_account(conn)
    meter(conn, account, 1, key="first")
    rr = connect(namespace_id=ns, role="mec_service", autocommit=False)
    rr.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    rr.execute("SELECT 1 FROM mec.accounts LIMIT 1")
    meter(conn, account, 1, key="second")
    with expect_sqlstate("40001"):
        meter(rr, account, 1, key="third")
    rr.rollback()


def test_a_dimension_scoped_rate_limit_slides_too(rate_ns, expect_sqlstate):
    _, conn = rate_ns(limit=100, dimension_limits={"model_class": {"PRO_L": {"limit": 2, "grace": 0}}})
    account = new_account(conn)
    t0 = server_now(conn)
    meter(conn, account, 1, key="p0", at=t0, dims={"model_class": "PRO_L"})
    meter(conn, account, 1, key="p1", at=t0 + timedelta(seconds=30), dims={"model_class": "PRO_L"})
    with expect_sqlstate("ME429") as err:
        meter(conn, account, 1, key="p2", at=t0 + timedelta(seconds=45), dims={"model_class": "PRO_L"})
    [policy] = detail(err)["violated_policies"]
    assert policy["dimension"] == "model_class" and policy["current"] == 2
    assert ts(policy["reset_at"]) == t0 + timedelta(seconds=WINDOW)
    # other classes are not limited by it; PRO_L fits again once the first leaves
    meter(conn, account, 1, key="b0", at=t0 + timedelta(seconds=45), dims={"model_class": "BASE_S"})
    assert meter(conn, account, 1, key="p3", at=t0 + timedelta(seconds=WINDOW, microseconds=1),
                 dims={"model_class": "PRO_L"})["quantity_used"] == 3


def test_as_of_reads_the_window_from_the_ledger(rate_ns):
    _, conn = rate_ns(limit=10)
    account = new_account(conn)
    for i in range(4):
        meter(conn, account, 1, key=f"k{i}")
    later = server_now(conn) + timedelta(seconds=1)
    conn.execute("SELECT pg_sleep(1.1)")
    meter(conn, account, 1, key="k4")
    at = conn.execute("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'r',"
                      " p_as_of => %s)", (account, later)).fetchone()[0]
    assert at["quantity_used"] == 4


def test_the_summary_says_when_usage_next_drops(rate_ns):
    _, conn = rate_ns(limit=10)
    account = new_account(conn)
    t0 = server_now(conn) - timedelta(seconds=20)
    meter(conn, account, 2, key="a", at=t0)
    meter(conn, account, 1, key="b", at=t0 + timedelta(seconds=5))
    r = conn.execute("SELECT mec.usage_summary(p_account_id => %s::uuid)", (account,)).fetchone()[0]["features"]["r"]
    assert r["current"] == 3 and r["remaining"] == 7 and r["period"] is None, r
    assert ts(r["reset_date"]) == t0 + timedelta(seconds=WINDOW), r


def test_a_caller_that_waited_for_the_window_counts_what_the_holder_counted(rate_ns, connect):
    """B waits on the window A holds; once A commits, B's decision includes A's event (the lock's
    own snapshot predates it, so it is read again)."""
    import threading

    ns, conn = rate_ns(limit=2)
    account = new_account(conn)
    meter(conn, account, 1, key="first")
    holder = connect(namespace_id=ns, role="mec_service", autocommit=False)
    meter(holder, account, 1, key="held")
    waiter = connect(namespace_id=ns, role="mec_service")
    out: dict = {}

    def wait() -> None:
        try:
            out["r"] = meter(waiter, account, 1, key="waited")
        except psycopg.Error as e:
            out["e"] = e

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.5)
    assert t.is_alive(), "the second caller did not wait for the window"
    holder.commit()
    t.join(10)
    assert out.get("e") is not None and out["e"].sqlstate == "ME429", out
    assert json.loads(out["e"].diag.message_detail)["violated_policies"][0]["current"] == 2
