"""Concurrency: many real connections at once against pg_mec's acting functions.

Every worker is a thread with its own PostgreSQL connection that acts like the vendor's backend:
`SET ROLE mec_service` plus `mec.namespace_id`, so row-level security applies as for a real
caller. Workers open their connections first and start together at a barrier, so the calls really
overlap on the server (psycopg releases the GIL while it waits on the socket).

What must hold (CONTRACT §3, "Atomic check-and-consume" and "Idempotency"):
  * a hard limit is never passed, not by one unit, however many clients race for it;
  * no increment is ever lost;
  * a key is recorded once, replays answer with the original result, and a key reused with
    another payload is ME409;
  * a concurrency resource never has more active leases than its limit, and one lease key gives
    one lease however many clients send it;
  * held reservations count against the hard limit like metered usage.

Each module run creates its own namespace (`conc-<random>`) and deletes it at the end.
Runs in about 25 s against the debug build on 2 vCPU.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any, Callable

import pytest

psycopg = pytest.importorskip("psycopg")
from psycopg.types.json import Jsonb  # noqa: E402

pytestmark = [pytest.mark.concurrency, pytest.mark.sql]

CLIENTS = 32
HARD_LIMIT = 500
SOFT_LIMIT = 100
LEASE_LIMIT = 3

CATALOG: dict[str, Any] = {
    "version": "concurrency-test",
    "resources": [
        {"resource_type": "units", "kind": "metered", "unit": "unit"},
        {"resource_type": "soft_units", "kind": "metered", "unit": "unit"},
        {"resource_type": "free_units", "kind": "metered", "unit": "unit"},
        {"resource_type": "slots", "kind": "concurrency", "unit": "job"},
    ],
    "plans": [
        {
            "plan_id": "conc",
            "name": "Concurrency test",
            "entitlements": {
                "units": {"limit": HARD_LIMIT, "enforcement": "hard", "grace": 0},
                "soft_units": {"limit": SOFT_LIMIT, "enforcement": "soft"},
                "free_units": {"limit": None},
                "slots": {"limit": LEASE_LIMIT},
            },
        }
    ],
}


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def conc_url(request) -> str:
    """Superuser URL: conftest's `database_url` (from .mec/env), else $MEC_DATABASE_URL."""
    try:
        return request.getfixturevalue("database_url")
    except pytest.FixtureLookupError:
        url = os.environ.get("MEC_DATABASE_URL")
        if not url:
            pytest.fail("MEC_DATABASE_URL is not set: run `scripts/mec up` first", pytrace=False)
        return url


class Namespace:
    """A fresh namespace with the test catalog; `admin` is a superuser connection inside it."""

    def __init__(self, url: str, namespace_id: str, admin: Any):
        self.url = url
        self.id = namespace_id
        self.admin = admin

    def new_account(self, plan_id: str = "conc") -> str:
        account = str(uuid.uuid4())
        self.admin.execute(
            "SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => %s)", (account, plan_id)
        )
        return account

    def service_conn(self) -> Any:
        """A new autocommit connection acting as mec_service in this namespace (caller closes it)."""
        conn = psycopg.connect(self.url, autocommit=True)
        conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (self.id,))
        conn.execute("SET statement_timeout = '30s'")
        conn.execute("SET ROLE mec_service")
        return conn

    def scalar(self, query: str, params: Any = None) -> Any:
        row = self.admin.execute(query, params).fetchone()
        return row[0] if row else None

    def ledger(self, account: str, resource: str) -> tuple[int, Decimal]:
        row = self.admin.execute(
            "SELECT count(*), coalesce(sum(quantity), 0) FROM mec.consumption"
            " WHERE account_id = %s::uuid AND resource_type = %s",
            (account, resource),
        ).fetchone()
        return row[0], Decimal(row[1])

    def counter(self, account: str, resource: str) -> Decimal:
        return Decimal(self.scalar(
            "SELECT coalesce(sum(quantity_used), 0) FROM mec.usage"
            " WHERE account_id = %s::uuid AND resource_type = %s",
            (account, resource),
        ))

    def check(self, account: str, resource: str, qty: int = 1) -> dict[str, Any]:
        return self.scalar(
            "SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => %s,"
            " p_requested_qty => %s)",
            (account, resource, qty),
        )

    def active_leases(self, account: str) -> int:
        return self.scalar(
            "SELECT count(*) FROM mec.leases WHERE account_id = %s::uuid AND resource_type = 'slots' AND active",
            (account,),
        )


@pytest.fixture(scope="module")
def ns(conc_url) -> Any:
    namespace_id = str(uuid.uuid4())
    admin = psycopg.connect(conc_url, autocommit=True)
    try:
        admin.execute(
            "SELECT mec.create_namespace(p_name => %s, p_namespace_id => %s::uuid)",
            (f"conc-{namespace_id[:8]}", namespace_id),
        )
        admin.execute("SELECT set_config('mec.namespace_id', %s, false)", (namespace_id,))
        admin.execute("SELECT mec.load_catalog(p_catalog => %s)", (Jsonb(CATALOG),))
        yield Namespace(conc_url, namespace_id, admin)
    finally:
        try:
            drop_namespace(admin, namespace_id)
        finally:
            admin.close()


def drop_namespace(admin: Any, namespace_id: str) -> None:
    """Deletes the test namespace and everything in it (as the superuser)."""
    admin.execute("RESET ROLE")
    # The ledger tables have no foreign key to the namespace (append-only): delete their rows first.
    for table in ("consumption", "idempotency_keys", "audit_log"):
        try:
            admin.execute(f"DELETE FROM mec_data.{table} WHERE namespace_id = %s::uuid", (namespace_id,))
        except psycopg.Error:
            pass
    try:
        admin.execute("DELETE FROM mec_data.namespaces WHERE namespace_id = %s::uuid", (namespace_id,))
    except psycopg.Error:
        # Fallback when the cascade trips over a NO ACTION key (plan_entitlements -> resource_types):
        # children first, in one transaction.
        with admin.transaction():
            for table in ("accounts", "plans", "namespaces"):
                admin.execute(f"DELETE FROM mec_data.{table} WHERE namespace_id = %s::uuid", (namespace_id,))


class Outcome:
    """One call's outcome: `ok` with the jsonb result, or the error's SQLSTATE and DETAIL."""

    __slots__ = ("ok", "result", "sqlstate", "message", "detail", "args")

    def __init__(self, args: tuple, result: Any = None, error: Any = None):
        self.args = args
        self.ok = error is None
        self.result = result
        self.sqlstate = getattr(error, "sqlstate", None) if error is not None else None
        self.message = str(error) if error is not None else None
        raw = error.diag.message_detail if error is not None else None
        try:
            self.detail = json.loads(raw) if raw else None
        except ValueError:
            self.detail = raw

    def __repr__(self) -> str:
        if self.ok:
            return f"<ok {self.args} {self.result}>"
        return f"<{self.sqlstate} {self.args} {self.message!r} detail={self.detail}>"


def call(conn: Any, query: str, args: tuple) -> Outcome:
    try:
        return Outcome(args, result=conn.execute(query, args).fetchone()[0])
    except psycopg.Error as e:  # the error of one call, not of the test
        if e.sqlstate is None:  # connection lost etc.: not an answer of pg_mec
            raise
        return Outcome(args, error=e)


METER = (
    "SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid,"
    " p_resource_type => %s, p_quantity => %s)"
)
ACQUIRE = (
    "SELECT mec.acquire_lease(p_account_id => %s::uuid, p_resource_type => %s,"
    " p_holder => %s, p_ttl_seconds => %s, p_idempotency_key => %s)"
)
RELEASE = "SELECT mec.release_lease(p_lease_id => %s::uuid)"


def meter(conn: Any, key: str, account: str, resource: str, qty: int) -> Outcome:
    return call(conn, METER, (key, account, resource, qty))


def acquire(conn: Any, account: str, holder: str, key: str | None = None, ttl: int = 120) -> Outcome:
    return call(conn, ACQUIRE, (account, "slots", holder, ttl, key))


def run_clients(ns: Namespace, work: Callable[[Any, int], Any], clients: int = CLIENTS,
                timeout: float = 60.0) -> list[Any]:
    """Runs work(conn, i) for i in 0..clients-1, each in its own thread with its own mec_service
    connection, all released together; returns the results in client order. Any exception in a
    worker fails the test."""
    barrier = threading.Barrier(clients)
    results: list[Any] = [None] * clients
    errors: list[BaseException | None] = [None] * clients

    def target(i: int) -> None:
        conn = None
        try:
            conn = ns.service_conn()
            barrier.wait(timeout=30)
            results[i] = work(conn, i)
        except BaseException as e:  # reported below
            errors[i] = e
            barrier.abort()
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=target, args=(i,), name=f"conc-client-{i}", daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        pytest.fail(f"clients still running after {timeout} s (a lock wait that never ends?)")
    real = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if real or any(errors):
        raise (real or [e for e in errors if e is not None])[0]
    return results


class Monitor:
    """Polls `probe(conn)` on its own mec_service connection while the clients run and keeps
    the largest value seen (for 'never more than the limit, at any moment')."""

    def __init__(self, ns: Namespace, probe: Callable[[Any], Any]):
        self.ns, self.probe = ns, probe
        self.seen: list[Any] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="conc-monitor", daemon=True)

    def _run(self) -> None:
        try:
            with self.ns.service_conn() as conn:
                while not self._stop.is_set():
                    self.seen.append(self.probe(conn))
                    time.sleep(0.002)
        except BaseException as e:  # reported by stop()
            self.error = e

    def __enter__(self) -> "Monitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None and exc[0] is None:
            raise self.error


def flatten(per_client: list[list[Outcome]]) -> list[Outcome]:
    return [o for outs in per_client for o in outs]


def unexpected(outcomes: list[Outcome], allowed: set[str]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok and o.sqlstate not in allowed]


def check_refusals(refused: list[Outcome], resource: str, limit: int, monotonic: bool = True) -> None:
    """Every ME429 must be a real refusal: DETAIL's `current` (usage before the refused call)
    plus the quantity asked for passes the limit, and `current` itself never does.
    With monotonic=False (usage can also go down meanwhile: cancelled reservations) only the
    second half is checked, as `current` may be read a moment after the refusal."""
    for o in refused:
        assert isinstance(o.detail, dict), f"ME429 without a JSON DETAIL: {o!r}"
        policies = o.detail.get("violated_policies")
        assert policies, f"ME429 DETAIL without violated_policies: {o!r}"
        p = policies[0]
        assert p.get("policy") == resource, o
        assert Decimal(str(p["limit"])) == limit, o
        current, qty = Decimal(str(p["current"])), Decimal(o.args[3])
        if monotonic:
            assert current + qty > limit, f"refused although {current} + {qty} <= {limit}: {o!r}"
        assert current <= limit, f"usage {current} is past the hard limit {limit}: {o!r}"


def usage_probe(account: str, resource: str) -> Callable[[Any], Decimal]:
    def probe(conn: Any) -> Decimal:
        row = conn.execute(
            "SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => %s)",
            (account, resource),
        ).fetchone()[0]
        return Decimal(str(row["quantity_used"]))

    return probe


# ---------------------------------------------------------------- 1. hard limit
def test_hard_limit_is_never_passed_by_racing_clients(ns):
    """32 clients x 40 events of 1 unit on ONE account, hard limit 500, grace 0:
    exactly 500 accepted, every other call ME429, and usage is 500 — never more, at any moment."""
    account = ns.new_account()
    run = uuid.uuid4().hex[:8]
    events = 40

    def work(conn, i):
        return [meter(conn, f"{run}-c{i}-e{j}", account, "units", 1) for j in range(events)]

    with Monitor(ns, usage_probe(account, "units")) as mon:
        outcomes = flatten(run_clients(ns, work))

    accepted = [o for o in outcomes if o.ok]
    refused = [o for o in outcomes if not o.ok and o.sqlstate == "ME429"]
    assert not unexpected(outcomes, {"ME429"}), unexpected(outcomes, {"ME429"})[:5]
    assert len(accepted) == HARD_LIMIT, f"{len(accepted)} accepted, limit {HARD_LIMIT}"
    assert len(refused) == CLIENTS * events - HARD_LIMIT

    ids = [o.result["consumption_id"] for o in accepted]
    assert len(set(ids)) == HARD_LIMIT, "two events got the same consumption_id"
    assert all(o.result["duplicate"] is False for o in accepted)
    used_seen = [Decimal(str(o.result["quantity_used"])) for o in accepted]
    assert max(used_seen) <= HARD_LIMIT, f"a result reported quantity_used {max(used_seen)}"
    check_refusals(refused, "units", HARD_LIMIT)

    assert mon.seen, "the monitor never read the usage"
    assert max(mon.seen) <= HARD_LIMIT, f"check_entitlement saw {max(mon.seen)} during the race"

    assert ns.ledger(account, "units") == (HARD_LIMIT, HARD_LIMIT)
    assert ns.counter(account, "units") == HARD_LIMIT
    after = ns.check(account, "units")
    assert Decimal(str(after["quantity_used"])) == HARD_LIMIT
    assert after["decision"] == "deny"
    assert Decimal(str(after["quantity_remaining"])) == 0

    with ns.service_conn() as conn:
        late = meter(conn, f"{run}-late", account, "units", 1)
    assert not late.ok and late.sqlstate == "ME429", late
    assert ns.counter(account, "units") == HARD_LIMIT


def test_hard_limit_with_mixed_quantities(ns):
    """Quantities 1..7 from 32 clients: the recorded sum never passes the limit, equals the sum of
    the accepted calls, and every refusal was a real one (current + qty > limit)."""
    account = ns.new_account()
    run = uuid.uuid4().hex[:8]
    events = 40
    plans = [[random.Random(f"{run}-{i}").randint(1, 7) for _ in range(events)] for i in range(CLIENTS)]
    assert sum(map(sum, plans)) > 2 * HARD_LIMIT  # far more asked than allowed

    def work(conn, i):
        return [meter(conn, f"{run}-c{i}-e{j}", account, "units", q) for j, q in enumerate(plans[i])]

    with Monitor(ns, usage_probe(account, "units")) as mon:
        outcomes = flatten(run_clients(ns, work))

    accepted = [o for o in outcomes if o.ok]
    refused = [o for o in outcomes if not o.ok]
    assert not unexpected(outcomes, {"ME429"}), unexpected(outcomes, {"ME429"})[:5]
    accepted_sum = sum(Decimal(o.args[3]) for o in accepted)
    assert accepted_sum <= HARD_LIMIT, f"accepted {accepted_sum} units, limit {HARD_LIMIT}"
    check_refusals(refused, "units", HARD_LIMIT)
    assert refused, "nothing was refused"
    # A refusal of q <= 7 units means usage had passed 500 - 7 at that moment; usage only grows.
    assert accepted_sum > HARD_LIMIT - 7, f"only {accepted_sum} accepted although calls were refused"

    assert max(mon.seen) <= HARD_LIMIT
    assert ns.ledger(account, "units") == (len(accepted), accepted_sum)
    assert ns.counter(account, "units") == accepted_sum
    assert Decimal(str(ns.check(account, "units")["quantity_used"])) == accepted_sum


# ---------------------------------------------------------------- 2. replays
@pytest.mark.parametrize(
    "resource, quantity",
    [
        ("free_units", lambda k: k % 5 + 1),  # unlimited: one copy = 300 units
        ("units", lambda k: 5),  # hard limit 500: one copy = exactly the limit
    ],
    ids=["unlimited", "hard-limit-exactly-filled"],
)
def test_replays_from_many_clients_record_each_key_once(ns, resource, quantity):
    """32 clients send the same 100 keys with the same payloads, in the same or a shuffled order:
    100 ledger rows, usage = one copy, one original answer per key, all answers alike."""
    account = ns.new_account()
    run = uuid.uuid4().hex[:8]
    keys = [(f"{run}-k{k}", quantity(k)) for k in range(100)]
    one_copy = sum(q for _, q in keys)

    def work(conn, i):
        order = list(keys)
        if i % 2:
            random.Random(i).shuffle(order)
        return [meter(conn, key, account, resource, q) for key, q in order]

    outcomes = flatten(run_clients(ns, work))
    failed = [o for o in outcomes if not o.ok]
    assert not failed, f"{len(failed)} replays failed, e.g. {failed[:3]}"

    by_key: dict[str, list[dict]] = defaultdict(list)
    for o in outcomes:
        by_key[o.args[0]].append(o.result)
    assert len(by_key) == 100
    for key, results in by_key.items():
        assert len(results) == CLIENTS
        originals = [r for r in results if r["duplicate"] is False]
        assert len(originals) == 1, f"{key}: {len(originals)} answers with duplicate=false"
        assert len({r["consumption_id"] for r in results}) == 1, f"{key}: several consumption_ids"
        original = {k: v for k, v in originals[0].items() if k != "duplicate"}
        for r in results:
            assert {k: v for k, v in r.items() if k != "duplicate"} == original, (
                f"{key}: a replay did not return the original result\n{r}\n{originals[0]}")

    rows = ns.admin.execute(
        "SELECT idempotency_key, consumption_id::text FROM mec.consumption WHERE account_id = %s::uuid",
        (account,),
    ).fetchall()
    assert len(rows) == 100
    assert {k: c for k, c in rows} == {k: rs[0]["consumption_id"] for k, rs in by_key.items()}
    assert ns.ledger(account, resource) == (100, one_copy)
    assert ns.counter(account, resource) == one_copy
    assert Decimal(str(ns.check(account, resource)["quantity_used"])) == one_copy


# ---------------------------------------------------------------- 3. one key, many payloads
def test_same_key_with_different_payloads_is_recorded_once(ns):
    """32 clients send 20 keys, each client with one of four payloads (other quantity, other
    account, other resource): per key exactly one payload is recorded; senders of that payload get
    it (one original, the rest duplicates), every other sender gets ME409."""
    a, b = ns.new_account(), ns.new_account()
    run = uuid.uuid4().hex[:8]
    variants = [(a, "free_units", 1), (a, "free_units", 2), (b, "free_units", 1), (a, "soft_units", 1)]
    keys = [f"{run}-k{k}" for k in range(20)]

    def work(conn, i):
        account, resource, qty = variants[i % len(variants)]
        order = list(keys)
        random.Random(i).shuffle(order)
        return [(i % len(variants), meter(conn, key, account, resource, qty)) for key in order]

    outcomes = [pair for outs in run_clients(ns, work) for pair in outs]
    assert not [o for _, o in outcomes if not o.ok and o.sqlstate != "ME409"], [
        o for _, o in outcomes if not o.ok and o.sqlstate != "ME409"][:5]

    rows = ns.admin.execute(
        "SELECT idempotency_key, account_id::text, resource_type, quantity, consumption_id::text"
        " FROM mec.consumption WHERE idempotency_key LIKE %s",
        (f"{run}-%",),
    ).fetchall()
    recorded = {r[0]: r for r in rows}
    assert len(rows) == len(keys) == len(recorded), f"{len(rows)} ledger rows for {len(keys)} keys"

    by_key: dict[str, list[tuple[int, Outcome]]] = defaultdict(list)
    for v, o in outcomes:
        by_key[o.args[0]].append((v, o))
    for key in keys:
        _, account, resource, qty, cid = recorded[key]
        winner = variants.index((account, resource, int(qty)))
        same = [o for v, o in by_key[key] if v == winner]
        other = [o for v, o in by_key[key] if v != winner]
        assert all(o.ok for o in same), f"{key}: a sender of the recorded payload failed: {same}"
        assert [o.result["duplicate"] for o in same].count(False) == 1, key
        assert {o.result["consumption_id"] for o in same} == {cid}, key
        assert all(not o.ok and o.sqlstate == "ME409" for o in other), (
            f"{key}: a different payload was not refused with ME409: {[o for o in other if o.ok][:2]}")

    # Counters hold exactly what the ledger holds, for every account x resource touched.
    for account in (a, b):
        for resource in ("free_units", "soft_units"):
            assert ns.counter(account, resource) == ns.ledger(account, resource)[1], (account, resource)


# ---------------------------------------------------------------- 4. leases
def test_leases_never_exceed_the_concurrency_limit(ns):
    """32 clients race acquire_lease on a resource with 3 slots: exactly 3 win, 29 get ME429.
    After the winners release, the slots are taken again — three rounds."""
    account = ns.new_account()
    with ns.service_conn() as svc:
        for rnd in range(3):
            def work(conn, i, rnd=rnd):
                return acquire(conn, account, f"r{rnd}-c{i}")

            outcomes = run_clients(ns, work)
            won = [o for o in outcomes if o.ok]
            refused = [o for o in outcomes if not o.ok]
            assert not unexpected(outcomes, {"ME429"}), unexpected(outcomes, {"ME429"})[:3]
            assert len(won) == LEASE_LIMIT, f"round {rnd}: {len(won)} leases granted, limit {LEASE_LIMIT}"
            assert len(refused) == CLIENTS - LEASE_LIMIT
            for o in won:
                assert o.result["active_leases"] <= LEASE_LIMIT, o
                assert o.result["max_concurrent"] == LEASE_LIMIT, o
            for o in refused:
                policy = o.detail["violated_policies"][0]
                assert policy["policy"] == "slots" and Decimal(str(policy["current"])) == LEASE_LIMIT, o
            assert ns.active_leases(account) == LEASE_LIMIT
            assert len({o.result["lease_id"] for o in won}) == LEASE_LIMIT

            for o in won:
                released = svc.execute(RELEASE, (o.result["lease_id"],)).fetchone()[0]
                assert released["released"] is True
            assert ns.active_leases(account) == 0
            assert Decimal(str(ns.check(account, "slots")["quantity_used"])) == 0


def test_lease_churn_never_holds_more_than_the_limit(ns):
    """32 clients acquire and release in a loop; a monitor counting active leases never sees more
    than 3, no answer reports more than 3, and everything is released at the end."""
    account = ns.new_account()
    rounds = 12

    def work(conn, i):
        got = []
        for r in range(rounds):
            o = acquire(conn, account, f"churn-c{i}-{r}")
            got.append(o)
            if o.ok:
                time.sleep(0.001)
                conn.execute(RELEASE, (o.result["lease_id"],))
        return got

    def probe(conn):
        return conn.execute(
            "SELECT count(*) FROM mec.leases WHERE account_id = %s::uuid AND active", (account,)
        ).fetchone()[0]

    with Monitor(ns, probe) as mon:
        outcomes = flatten(run_clients(ns, work))
    assert not unexpected(outcomes, {"ME429"}), unexpected(outcomes, {"ME429"})[:3]
    won = [o for o in outcomes if o.ok]
    assert len(won) >= LEASE_LIMIT
    assert max(o.result["active_leases"] for o in won) <= LEASE_LIMIT
    assert max(mon.seen) <= LEASE_LIMIT, f"{max(mon.seen)} leases active at once"
    assert ns.active_leases(account) == 0


def test_same_lease_key_from_many_clients_gives_one_lease(ns):
    """The last free slot, asked for by 32 clients with the SAME idempotency key: one lease is
    taken and every client gets it back (a replay, not ME429)."""
    account = ns.new_account()
    with ns.service_conn() as svc:
        held = [acquire(svc, account, f"pre-{n}") for n in range(LEASE_LIMIT - 1)]
        assert all(o.ok for o in held), held
        key = f"lease-{uuid.uuid4().hex[:8]}"

        outcomes = run_clients(ns, lambda conn, i: acquire(conn, account, "same", key=key))
        failed = [o for o in outcomes if not o.ok]
        assert not failed, f"{len(failed)} replays of one lease key failed, e.g. {failed[:2]}"
        assert len({o.result["lease_id"] for o in outcomes}) == 1
        assert [o.result.get("duplicate") for o in outcomes].count(False) == 1
        assert ns.active_leases(account) == LEASE_LIMIT
        for o in held + outcomes[:1]:
            svc.execute(RELEASE, (o.result["lease_id"],))
    assert ns.active_leases(account) == 0


# ---------------------------------------------------------------- 5. no lost increments
@pytest.mark.parametrize("resource", ["soft_units", "free_units"], ids=["soft", "unlimited"])
def test_no_increment_is_lost(ns, resource):
    """32 clients x 50 events of 1 unit on a fresh account (the counter row does not exist yet
    when they start) of a soft-limited or unlimited resource: all accepted, usage 1600 exactly."""
    account = ns.new_account()
    run = uuid.uuid4().hex[:8]
    events = 50

    def work(conn, i):
        return [meter(conn, f"{run}-c{i}-e{j}", account, resource, 1) for j in range(events)]

    outcomes = flatten(run_clients(ns, work))
    failed = [o for o in outcomes if not o.ok]
    assert not failed, f"{len(failed)} of {len(outcomes)} calls failed, e.g. {failed[:3]}"
    total = CLIENTS * events
    assert len({o.result["consumption_id"] for o in outcomes}) == total
    assert ns.ledger(account, resource) == (total, total)
    assert ns.counter(account, resource) == total
    assert Decimal(str(ns.check(account, resource)["quantity_used"])) == total
    if resource == "soft_units":
        flagged = Counter(o.result["overage"] for o in outcomes)
        assert flagged[False] == SOFT_LIMIT and flagged[True] == total - SOFT_LIMIT, flagged


# ---------------------------------------------------------------- 6. reservations and metering together
RESERVE = (
    "SELECT mec.reserve_consumption(p_idempotency_key => %s, p_account_id => %s::uuid,"
    " p_resource_type => %s, p_quantity => %s, p_ttl_seconds => 120)"
)


def test_reservations_and_metering_share_the_hard_limit(ns):
    """32 clients mix meter_consumption with reserve -> commit and reserve -> cancel on one account
    (hard limit 500): usage, held reservations included, never passes the limit, commits and cancels
    never fail, and in the end the counter equals the ledger."""
    account = ns.new_account()
    run = uuid.uuid4().hex[:8]
    iterations = 30  # 32 x 30 x 2/3 consuming = 640 units asked for

    def work(conn, i):
        out = []
        for j in range(iterations):
            key = f"{run}-c{i}-e{j}"
            step = (i + j) % 3
            if step == 0:
                out.append(("meter", meter(conn, key, account, "units", 1)))
                continue
            held = call(conn, RESERVE, (key, account, "units", 1))
            out.append(("reserve", held))
            if not held.ok:
                continue
            rid = held.result["reservation_id"]
            if step == 1:
                out.append(("commit", call(conn, "SELECT mec.commit_reservation(p_reservation_id => %s::uuid)", (rid,))))
            else:
                out.append(("cancel", call(conn, "SELECT mec.cancel_reservation(p_reservation_id => %s::uuid)", (rid,))))
        return out

    with Monitor(ns, usage_probe(account, "units")) as mon:
        pairs = [p for outs in run_clients(ns, work) for p in outs]

    by_op: dict[str, list[Outcome]] = defaultdict(list)
    for op, o in pairs:
        by_op[op].append(o)
    for op in ("commit", "cancel"):
        bad = [o for o in by_op[op] if not o.ok]
        assert not bad, f"{len(bad)} {op}s failed, e.g. {bad[:2]}"
    acting = by_op["meter"] + by_op["reserve"]
    assert not unexpected(acting, {"ME429"}), unexpected(acting, {"ME429"})[:3]
    check_refusals([o for o in acting if not o.ok], "units", HARD_LIMIT, monotonic=False)
    assert any(not o.ok for o in acting), "the limit was never reached"

    consumed = sum(1 for o in by_op["meter"] if o.ok) + len(by_op["commit"])
    assert consumed <= HARD_LIMIT, f"{consumed} units consumed, limit {HARD_LIMIT}"
    assert max(mon.seen) <= HARD_LIMIT, f"check_entitlement saw {max(mon.seen)} during the race"
    assert ns.ledger(account, "units") == (consumed, consumed)
    assert ns.counter(account, "units") == consumed
    assert Decimal(str(ns.check(account, "units")["quantity_used"])) == consumed


# ---------------------------------------------------------------- 7. stripes after the burst
STRIPE_STATE = (
    "SELECT jsonb_build_object('striped', bool_or(striped) FILTER (WHERE slot = 0),"
    " 'slot0', sum(used) FILTER (WHERE slot = 0), 'stripes', coalesce(sum(used) FILTER (WHERE slot > 0), 0),"
    " 'granted', sum(stripe_quota) FILTER (WHERE slot = 0))"
    " FROM mec_data.usage_counters WHERE namespace_id = %s::uuid AND account_id = %s::uuid"
    " AND resource_type = %s"
)


def stripe_as_after_a_burst(ns: Namespace, account: str, resource: str, idle: str) -> None:
    """Two stripes of the account's counter holding 5 units each, last touched `idle` ago, each
    granted a quota of 20 when the resource has a limit (slot 0 counting the 40 granted): the
    state a burst of contention leaves behind."""
    limit = HARD_LIMIT if resource == "units" else None
    quota = 20 if limit is not None else None
    ns.admin.execute(
        "INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start,"
        " period_end, slot, used, quota, updated_at)"
        " SELECT namespace_id, account_id, resource_type, period_start, period_end, s, 5, %s,"
        "        clock_timestamp() - %s::interval"
        " FROM mec_data.usage_counters, generate_series(1, 2) s"
        " WHERE namespace_id = %s::uuid AND account_id = %s::uuid AND resource_type = %s AND slot = 0"
        " ON CONFLICT (namespace_id, account_id, resource_type, period_start, slot)"
        " DO UPDATE SET used = excluded.used, quota = excluded.quota, updated_at = excluded.updated_at",
        (quota, idle, ns.id, account, resource),
    )
    ns.admin.execute(
        "UPDATE mec_data.usage_counters SET striped = true, stripe_quota = %s, stripe_limit = %s"
        " WHERE namespace_id = %s::uuid AND account_id = %s::uuid AND resource_type = %s AND slot = 0",
        (2 * quota if quota is not None else 0, limit, ns.id, account, resource),
    )


def meter_fresh(ns: Namespace, key: str, account: str, resource: str, lock_timeout: str = "0") -> Outcome:
    conn = ns.service_conn()  # a backend that is not hot on this counter
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (lock_timeout,))
        return meter(conn, key, account, resource, 1)
    finally:
        conn.close()


@pytest.mark.parametrize("resource", ["units", "free_units"])
def test_idle_stripes_are_folded_back_into_slot_0(ns, resource):
    """Once the stripes of a counter sit idle, the next event metered through slot 0 folds them
    back: the counter returns to one row (the one-statement path), the total and the limit
    unchanged. Stripes still in use are left alone."""
    account = ns.new_account()
    run = uuid.uuid4().hex[:8]
    state = (STRIPE_STATE, (ns.id, account, resource))
    assert meter_fresh(ns, f"{run}-0", account, resource).ok  # slot 0: 1

    stripe_as_after_a_burst(ns, account, resource, "0 seconds")  # busy stripes
    first = meter_fresh(ns, f"{run}-1", account, resource)
    assert first.ok and first.result["quantity_used"] == 12
    granted = 40 if resource == "units" else 0
    assert ns.scalar(*state) == {"striped": True, "slot0": 2, "stripes": 10, "granted": granted}

    stripe_as_after_a_burst(ns, account, resource, "1 minute")  # idle for longer than 5 s
    second = meter_fresh(ns, f"{run}-2", account, resource)
    assert second.ok and second.result["quantity_used"] == 13
    assert ns.scalar(*state) == {"striped": False, "slot0": 13, "stripes": 0, "granted": 0}
    third = meter_fresh(ns, f"{run}-3", account, resource)  # now on slot 0 alone
    assert third.ok and third.result["quantity_used"] == 14
    assert ns.ledger(account, resource) == (4, 4)
    assert ns.counter(account, resource) == 14
    if resource == "units":  # the quota the stripes held is back: exactly the limit is usable
        conn = ns.service_conn()
        try:
            outcomes = [meter(conn, f"{run}-fill-{i}", account, resource, 1) for i in range(HARD_LIMIT)]
        finally:
            conn.close()
        assert sum(o.ok for o in outcomes) == HARD_LIMIT - 14
        assert ns.counter(account, resource) == HARD_LIMIT


def test_a_stripe_held_by_a_transaction_in_progress_is_neither_waited_for_nor_folded(ns):
    """A hot transaction still holds its stripe (it metered on it and has not committed): a
    backend metering through slot 0 must neither wait for that stripe (holding slot 0 while the
    hot transaction may ask for slot 0 next would deadlock) nor fold the stripes without it."""
    resource = "units"
    account = ns.new_account()
    run = uuid.uuid4().hex[:8]
    state = (STRIPE_STATE, (ns.id, account, resource))
    assert meter_fresh(ns, f"{run}-0", account, resource).ok
    stripe_as_after_a_burst(ns, account, resource, "1 minute")  # idle by its timestamps

    hot = psycopg.connect(ns.url)  # a transaction in progress holding stripe 1
    try:
        hot.execute(
            "SELECT 1 FROM mec_data.usage_counters WHERE namespace_id = %s::uuid AND account_id = %s::uuid"
            " AND resource_type = %s AND slot = 1 FOR UPDATE",
            (ns.id, account, resource),
        )
        held = meter_fresh(ns, f"{run}-1", account, resource, lock_timeout="2s")
        assert held.ok, held  # no lock wait (lock_timeout would raise 55P03)
        assert held.result["quantity_used"] == 12
        assert ns.scalar(*state) == {"striped": True, "slot0": 2, "stripes": 10, "granted": 40}
    finally:
        hot.rollback()
        hot.close()

    time.sleep(1.1)  # one look per second per backend; a fresh backend anyway
    after = meter_fresh(ns, f"{run}-2", account, resource)
    assert after.ok and after.result["quantity_used"] == 13
    assert ns.scalar(*state) == {"striped": False, "slot0": 13, "stripes": 0, "granted": 0}
    assert ns.ledger(account, resource) == (3, 3)
