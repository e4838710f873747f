"""Dimensions of usage events: declared per resource in the catalog, carried by events
(`p_dimensions`, meter_usage items' and batch events' `dimensions`), kept on the ledger, part of the
idempotency payload; per-dimension-value limits (`dimension_limits`) decided together with the
resource's own limit, also under concurrency; usage_summary and usage_history per dimension; plan
versions carrying dimension limits. See docs/CONTRACT.md ("Dimensions", issue 14) and §3, §5."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from sql_helpers import adapt as _adapt
from sql_helpers import detail, race
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.sql

PRO_L = "model_class=PRO_L"
SCOPED = "tokens@model_class=PRO_L"

RESOURCES = [
    {"resource_type": "tokens", "kind": "metered", "unit": "token",
     "dimensions": {"model_class": ["BASE_S", "PRO_M", "PRO_L"], "region": ["eu", "us"]}},
    {"resource_type": "requests", "kind": "metered", "unit": "request",
     "dimensions": {"model_class": ["BASE_S", "PRO_M", "PRO_L"]}},
    {"resource_type": "plain", "kind": "metered", "unit": "unit"},
    {"resource_type": "rpm", "kind": "rate", "window_seconds": 60,
     "dimensions": {"model_class": ["BASE_S", "PRO_L"]}},
]


def plan(pro_l: int = 100, version: str | None = None, tokens: int = 1000) -> dict:
    p: dict = {"plan_id": "p", "default": True, "entitlements": {
        "tokens": {"limit": tokens, "grace": 0,
                   "dimension_limits": {"model_class": {"PRO_L": {"limit": pro_l, "grace": 0}}}},
        "requests": {"limit": 10, "grace": 0,
                     "dimension_limits": {"model_class": {"PRO_L": {"limit": 3, "grace": 0}}}},
        "plain": {"limit": 50, "grace": 0},
        "rpm": {"limit": 1000}}}
    if version is not None:
        p["version"] = version
    return p


def catalog(*plans: dict) -> dict:
    return {"resources": RESOURCES, "plans": list(plans) or [plan()]}


CATALOG = catalog()


class Ns:
    """A fresh namespace: `admin` a superuser connection naming it (catalog, provisioning, reads),
    `svc` a mec_service connection (the acting calls, as the vendor's backend makes them)."""

    def __init__(self, ns_id: str, admin: psycopg.Connection, svc: psycopg.Connection) -> None:
        self.id, self.admin, self.svc = ns_id, admin, svc

    def one(self, q: str, *args: Any, conn: psycopg.Connection | None = None) -> Any:
        row = (conn or self.admin).execute(q, [_adapt(a) for a in args]).fetchone()
        return row[0] if row else None

    def load(self, cat: dict) -> Any:
        return self.one("SELECT mec.load_catalog(p_catalog => %s)", cat)

    def provision(self, account: str | None = None, plan_id: str = "p") -> str:
        a = account or str(uuid.uuid4())
        self.one("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => %s)", a, plan_id)
        return a

    def meter(self, a: str, qty: Any, resource: str = "tokens", dims: Any = None, key: str | None = None,
              status: int | None = None, metadata: dict | None = None, conn: psycopg.Connection | None = None):
        """meter_consumption; dims=None omits p_dimensions (its default)."""
        args: list[Any] = [key or str(uuid.uuid4()), a, resource, qty, metadata or {}, status]
        extra = ""
        if dims is not None:
            extra = ", p_dimensions => %s"
            args.append(dims)
        return self.one("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                        "p_resource_type => %s, p_quantity => %s, p_metadata => %s, p_http_status => %s"
                        + extra + ")", *args, conn=conn or self.svc)

    def usage(self, key: str, a: str, items: list, dims: Any = None, conn: psycopg.Connection | None = None):
        """meter_usage; dims=None omits the call's p_dimensions."""
        extra = "" if dims is None else ", p_dimensions => %s"
        args = [key, a, items] + ([] if dims is None else [dims])
        return self.one("SELECT mec.meter_usage(p_idempotency_key => %s, p_account_id => %s::uuid, "
                        "p_items => %s" + extra + ")", *args, conn=conn or self.svc)

    def summary(self, a: str, as_of: Any = None) -> dict:
        if as_of is None:
            return self.one("SELECT mec.usage_summary(p_account_id => %s::uuid)", a)
        return self.one("SELECT mec.usage_summary(p_account_id => %s::uuid, p_as_of => %s)", a, as_of)

    def counters(self, a: str, resource: str = "tokens", dim: str = PRO_L) -> tuple:
        """(the resource's current, the dimension limit's current) from usage_summary."""
        f = self.summary(a)["features"][resource]
        return f["current"], f["dimensions"][dim]["current"]

    def ledger(self, a: str, resource: str | None = None, where: str = "", *args: Any) -> tuple:
        """(rows, sum of quantity) of the account's usage events in the ledger."""
        q = ("SELECT count(*), coalesce(sum(quantity), 0) FROM mec.consumption WHERE namespace_id = %s::uuid "
             "AND account_id = %s::uuid AND entry_type = 'usage'")
        params: list[Any] = [self.id, a]
        if resource is not None:
            q += " AND resource_type = %s"
            params.append(resource)
        row = self.admin.execute(q + where, params + list(args)).fetchone()
        return row[0], row[1]

    def row(self, key: str) -> tuple:
        """(dimensions, billable, quantity) of the ledger row with that idempotency key."""
        return self.admin.execute(
            "SELECT dimensions, billable, quantity FROM mec.consumption WHERE namespace_id = %s::uuid "
            "AND idempotency_key = %s", (self.id, key)).fetchone()


def policies(err: Any) -> dict:
    """The DETAIL's violated_policies by policy name."""
    return {p["policy"]: p for p in detail(err)["violated_policies"]}


@pytest.fixture
def fresh(new_namespace, connect):
    """fresh(catalog=CATALOG) -> Ns in a new namespace with that catalog loaded."""

    def _fresh(cat: dict = CATALOG) -> Ns:
        ns = new_namespace(catalog=cat)
        return Ns(ns, connect(namespace_id=ns), connect(namespace_id=ns, role="mec_service"))

    return _fresh


# ---------------------------------------------------------------- events carry dimensions
def test_declared_dimensions_are_kept_on_the_ledger(fresh):
    ns = fresh()
    a = ns.provision()
    r = ns.meter(a, 7, dims={"model_class": "PRO_L"}, key="k1")
    assert r["duplicate"] is False and r["quantity_used"] == 7, r
    assert ns.row("k1")[:2] == ({"model_class": "PRO_L"}, True)
    ns.meter(a, 3, dims={"model_class": "BASE_S", "region": "us"}, key="k2")
    assert ns.row("k2")[0] == {"model_class": "BASE_S", "region": "us"}
    ns.meter(a, 2, dims={"region": "eu"}, key="k3")  # any subset of the declared names
    assert ns.row("k3")[0] == {"region": "eu"}
    # a rate resource may declare dimensions too
    ns.meter(a, 1, "rpm", dims={"model_class": "BASE_S"}, key="k4")
    assert ns.row("k4")[0] == {"model_class": "BASE_S"}
    assert ns.counters(a) == (12, 7)
    # the view shows them to mec_service too
    got = ns.one("SELECT dimensions FROM mec.consumption WHERE idempotency_key = 'k1'", conn=ns.svc)
    assert got == {"model_class": "PRO_L"}


@pytest.mark.parametrize("resource, dims, needles", [
    ("tokens", {"model_class": "PRO_X"}, ["PRO_X", "BASE_S", "PRO_M", "PRO_L"]),  # undeclared value
    ("tokens", {"size": "PRO_L"}, ["size", "model_class", "region"]),  # undeclared name
    ("tokens", {"model_class": "PRO_L", "size": "xl"}, ["size"]),  # one good, one undeclared
    ("tokens", {"Model_Class": "PRO_L"}, ["Model_Class"]),  # names are exact
    ("tokens", {"model_class": "pro_l"}, ["pro_l"]),  # values are exact
    ("requests", {"region": "eu"}, ["region"]),  # declared on another resource only
    ("plain", {"model_class": "PRO_L"}, ["model_class"]),  # a resource without dimensions refuses any
    ("tokens", ["PRO_L"], []),  # not an object
    ("tokens", "PRO_L", []),
    ("tokens", 1, []),
    ("tokens", {"model_class": 1}, ["model_class"]),  # not a string
    ("tokens", {"model_class": True}, ["model_class"]),
    ("tokens", {"model_class": None}, ["model_class"]),
    ("tokens", {"model_class": ["PRO_L"]}, ["model_class"]),
    ("tokens", {"model_class": {"v": "PRO_L"}}, ["model_class"]),
    ("tokens", {"model_class": ""}, ["model_class"]),
])
def test_undeclared_or_malformed_dimensions_are_refused_and_record_nothing(fresh, expect_sqlstate, resource, dims,
                                                                           needles):
    ns = fresh()
    a = ns.provision()
    ns.meter(a, 1, resource, dims={"model_class": "PRO_L"} if resource != "plain" else None)
    before = (ns.ledger(a), ns.summary(a)["features"])
    with expect_sqlstate("22023") as err:
        ns.meter(a, 1, resource, dims=Jsonb(dims), key="bad")
    text = str(err.value)  # message and HINT: the allowed names / values are named
    for needle in needles:
        assert needle in text, (needle, text)
    with expect_sqlstate("22023"):
        ns.usage("bad-u", a, [{"resource_type": resource, "quantity": 1}], dims=Jsonb(dims))
    with expect_sqlstate("22023"):
        ns.usage("bad-i", a, [{"resource_type": resource, "quantity": 1, "dimensions": dims}])
    assert (ns.ledger(a), ns.summary(a)["features"]) == before
    # nothing was recorded, the key neither: it still takes a good event
    assert ns.meter(a, 1, resource, key="bad")["duplicate"] is False


def test_empty_and_omitted_dimensions_are_the_same(fresh):
    ns = fresh()
    a = ns.provision()
    first = ns.meter(a, 4, key="none")
    again = ns.meter(a, 4, dims={}, key="none")
    assert again["duplicate"] is True and again["consumption_id"] == first["consumption_id"], again
    first = ns.meter(a, 6, dims={}, key="empty")
    again = ns.meter(a, 6, key="empty")
    assert again["duplicate"] is True and again["consumption_id"] == first["consumption_id"], again
    assert ns.row("none")[0] == ns.row("empty")[0], "{} and no dimensions must be stored alike"
    assert ns.row("none")[0] in (None, {}), ns.row("none")
    # no dimensions: counts against the resource only; {} is fine on a resource without dimensions
    assert ns.counters(a) == (10, 0)
    assert ns.meter(a, 1, "plain", dims={})["quantity_used"] == 1
    assert ns.usage("u", a, [{"resource_type": "plain", "quantity": 1, "dimensions": {}}], dims={})["items"][0][
        "quantity_used"] == 2


def test_the_same_key_with_other_dimensions_is_me409(fresh, expect_sqlstate):
    ns = fresh()
    a = ns.provision()
    dims = {"model_class": "PRO_L", "region": "eu"}
    first = ns.meter(a, 5, dims=dims, key="k")
    again = ns.meter(a, 5, dims={"region": "eu", "model_class": "PRO_L"}, key="k")
    assert again["duplicate"] is True and again["consumption_id"] == first["consumption_id"], again
    for other in ({"model_class": "BASE_S", "region": "eu"}, {"model_class": "PRO_L"},
                  {"model_class": "PRO_L", "region": "us"}, {}, None):
        with expect_sqlstate("ME409"):
            ns.meter(a, 5, dims=other, key="k")
    # and an event recorded without dimensions is not replayed with some
    ns.meter(a, 5, key="plain-k")
    with expect_sqlstate("ME409"):
        ns.meter(a, 5, dims={"model_class": "BASE_S"}, key="plain-k")
    # meter_usage: the call's dimensions are part of its payload
    items = [{"resource_type": "tokens", "quantity": 1}, {"resource_type": "requests", "quantity": 1}]
    u = ns.usage("call", a, items, dims={"model_class": "BASE_S"})
    assert ns.usage("call", a, items, dims={"model_class": "BASE_S"})["duplicate"] is True
    with expect_sqlstate("ME409"):
        ns.usage("call", a, items, dims={"model_class": "PRO_M"})
    with expect_sqlstate("ME409"):
        ns.usage("call", a, [dict(items[0], dimensions={"model_class": "PRO_M"}), items[1]],
                 dims={"model_class": "BASE_S"})
    assert ns.usage("call", a, items, dims={"model_class": "BASE_S"})["items"] == u["items"]
    assert ns.ledger(a, "tokens") == (3, 11) and ns.counters(a) == (11, 5)


# ---------------------------------------------------------------- limits decided together
def test_dimension_limit_and_resource_limit_are_decided_together(fresh, expect_sqlstate):
    ns = fresh()
    a = ns.provision()
    assert ns.meter(a, 80, dims={"model_class": "PRO_L"})["quantity_used"] == 80
    s = ns.summary(a)["features"]["tokens"]
    assert s["dimensions"][PRO_L]["limit"] == 100 and s["dimensions"][PRO_L]["remaining"] == 20, s
    assert s["dimensions"][PRO_L]["percent_used"] == 80 and s["limit"] == 1000, s

    # refused by the dimension limit: both counters and the ledger unchanged
    with expect_sqlstate("ME429") as err:
        ns.meter(a, 30, dims={"model_class": "PRO_L", "region": "us"}, key="over")
    assert "tokens" in err.value.diag.message_primary
    p = policies(err)
    assert SCOPED in p, p
    assert (p[SCOPED]["limit"], p[SCOPED]["current"], p[SCOPED]["dimension"], p[SCOPED]["value"]) == (
        100, 80, "model_class", "PRO_L"), p
    assert p[SCOPED]["reset_at"] == s["reset_date"] and "tokens" not in p, p
    assert ns.counters(a) == (80, 80) and ns.ledger(a, "tokens") == (1, 80)
    assert ns.row("over") is None

    assert ns.meter(a, 20, dims={"model_class": "PRO_L", "region": "us"})["quantity_used"] == 100
    with expect_sqlstate("ME429") as err:
        ns.meter(a, 1, dims={"model_class": "PRO_L"})
    assert policies(err)[SCOPED]["current"] == 100
    # other values, and events without the dimension, go on until the resource's limit
    assert ns.meter(a, 850, dims={"model_class": "BASE_S"})["quantity_used"] == 950
    assert ns.meter(a, 30, dims={"region": "eu"})["quantity_used"] == 980
    assert ns.meter(a, 10)["quantity_used"] == 990
    with expect_sqlstate("ME429"):
        ns.meter(a, 1, dims={"model_class": "PRO_L"})
    assert ns.meter(a, 10, dims={"model_class": "PRO_M"})["quantity_used"] == 1000
    assert ns.counters(a) == (1000, 100)
    with expect_sqlstate("ME429") as err:
        ns.meter(a, 1, dims={"model_class": "BASE_S"})
    p = policies(err)
    assert list(p) == ["tokens"] and (p["tokens"]["limit"], p["tokens"]["current"]) == (1000, 1000), p
    assert ns.counters(a) == (1000, 100) and ns.ledger(a, "tokens") == (6, 1000)

    # refused by the resource's limit while the dimension has room: the dimension counter unchanged
    b = ns.provision()
    ns.meter(b, 950, dims={"model_class": "BASE_S"})
    ns.meter(b, 40, dims={"model_class": "PRO_L"})
    with expect_sqlstate("ME429") as err:
        ns.meter(b, 20, dims={"model_class": "PRO_L"})
    p = policies(err)
    assert list(p) == ["tokens"] and (p["tokens"]["limit"], p["tokens"]["current"]) == (1000, 990), p
    assert ns.counters(b) == (990, 40) and ns.ledger(b, "tokens") == (2, 990)
    assert ns.meter(b, 10, dims={"model_class": "PRO_L"})["quantity_used"] == 1000
    assert ns.counters(b) == (1000, 50)


def test_overrides_and_grants_change_only_the_resources_own_limit(fresh, expect_sqlstate):
    ns = fresh()
    a = ns.provision()
    ns.one("SELECT mec.set_override(p_account_id => %s::uuid, p_resource_type => 'tokens', p_limit => 5000)", a)
    ns.one("SELECT mec.grant_credits(p_account_id => %s::uuid, p_resource_type => 'tokens', p_quantity => 500)", a)
    f = ns.summary(a)["features"]["tokens"]
    assert f["limit"] == 5500 and f["dimensions"][PRO_L]["limit"] == 100, f
    ns.meter(a, 100, dims={"model_class": "PRO_L"})
    with expect_sqlstate("ME429") as err:
        ns.meter(a, 1, dims={"model_class": "PRO_L"})
    assert policies(err)[SCOPED]["limit"] == 100
    assert ns.meter(a, 2000, dims={"model_class": "BASE_S"})["quantity_used"] == 2100


# ---------------------------------------------------------------- concurrency
CLIENTS = 32
GROUPS = CLIENTS // 2  # two clients send each group's keys, in different orders
EVENTS = 20
QTY = 5
CHOICES = [{"model_class": "BASE_S"}, {"model_class": "PRO_M"}, {"model_class": "PRO_L"},
           {"model_class": "PRO_L", "region": "us"}, {}, {"region": "eu"}]


def _race(ns: Ns, connect, work, monitor=None) -> list:
    """work(conn, i) for 32 clients, each on its own mec_service connection, released together."""
    return race(ns.id, connect, work, monitor, CLIENTS)


def _send(conn, key: str, account: str, dims: dict) -> tuple:
    try:
        r = conn.execute("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                         "p_resource_type => 'tokens', p_quantity => %s, p_dimensions => %s)",
                         (key, account, QTY, Jsonb(dims))).fetchone()[0]
        return key, r, None, None
    except psycopg.Error as e:
        if e.sqlstate is None:
            raise
        raw = e.diag.message_detail
        return key, None, e.sqlstate, json.loads(raw) if raw else None


def test_32_clients_never_pass_a_dimension_limit_or_the_resources(fresh, connect):
    """32 clients (16 pairs sending the same keys) race events of 5 tokens with random dimensions on
    one account: tokens limit 1000, PRO_L limit 100 (hard, grace 0). Neither limit is passed, at
    any moment; each counter equals the ledger; every key is recorded once; replays change nothing."""
    ns = fresh()
    a = ns.provision()
    run = uuid.uuid4().hex[:8]
    payload = {f"{run}-g{g}-e{j}": random.Random(g * 100 + j).choice(CHOICES)
               for g in range(GROUPS) for j in range(EVENTS)}
    pro_l_asked = QTY * sum(d.get("model_class") == "PRO_L" for d in payload.values())
    other_asked = QTY * len(payload) - pro_l_asked
    assert pro_l_asked > 100 + QTY and other_asked > 1000 + QTY  # both limits are reached for sure

    def work(conn, i):
        keys = [k for k in payload if f"-g{i // 2}-" in k]
        random.Random(i).shuffle(keys)
        return [_send(conn, k, a, payload[k]) for k in keys]

    def probe(conn):
        f = conn.execute("SELECT mec.usage_summary(p_account_id => %s::uuid)", (a,)).fetchone()[0]
        f = f["features"]["tokens"]
        return f["current"], f["dimensions"][PRO_L]["current"]

    *per_client, seen = _race(ns, connect, work, probe)
    outcomes = [o for outs in per_client for o in outs]
    assert len(outcomes) == 2 * len(payload)
    bad = [o for o in outcomes if o[1] is None and o[2] != "ME429"]
    assert not bad, bad[:5]

    # every refusal is a real one, by the limit it names
    for key, _, state, det in (o for o in outcomes if o[1] is None):
        pro_l = payload[key].get("model_class") == "PRO_L"
        names = {p["policy"]: p for p in det["violated_policies"]}
        assert names and set(names) <= ({"tokens", SCOPED} if pro_l else {"tokens"}), (key, payload[key], det)
        for name, p in names.items():
            limit = 100 if name == SCOPED else 1000
            assert p["limit"] == limit, det
            assert p["current"] + QTY > limit >= p["current"], (key, det)

    # per key: either every sender was refused, or all got the one recorded event
    by_key: dict[str, list] = defaultdict(list)
    for o in outcomes:
        by_key[o[0]].append(o)
    accepted: dict[str, dict] = {}
    for key, outs in by_key.items():
        oks = [r for _, r, _, _ in outs if r is not None]
        if not oks:
            continue
        assert len(oks) == 2, f"{key}: one sender recorded, the other refused: {outs}"
        assert sorted(r["duplicate"] for r in oks) == [False, True], outs
        assert oks[0]["consumption_id"] == oks[1]["consumption_id"], outs
        assert max(r["quantity_used"] for r in oks) <= 1000, outs
        accepted[key] = next(r for r in oks if not r["duplicate"])

    pro_l_keys = [k for k in accepted if payload[k].get("model_class") == "PRO_L"]
    resource, scoped = ns.counters(a)
    assert scoped <= 100 and resource <= 1000, (resource, scoped)
    assert resource == 1000, "the resource limit was reached: usage must end at it exactly"
    assert scoped == 100, "PRO_L was refused by its limit: usage must end at it exactly"
    assert seen and all(r <= 1000 and s <= 100 for r, s in seen), max(seen, default=None)
    assert ns.ledger(a, "tokens") == (len(accepted), QTY * len(accepted)) == (len(accepted), resource)
    assert ns.ledger(a, "tokens", " AND dimensions->>'model_class' = 'PRO_L'") == (
        len(pro_l_keys), QTY * len(pro_l_keys)) == (len(pro_l_keys), scoped)
    rows = {k: (cid, dims) for k, cid, dims in ns.admin.execute(
        "SELECT idempotency_key, consumption_id::text, dimensions FROM mec.consumption "
        "WHERE namespace_id = %s::uuid AND account_id = %s::uuid", (ns.id, a)).fetchall()}
    assert {k: cid for k, (cid, _) in rows.items()} == {k: r["consumption_id"] for k, r in accepted.items()}
    assert all((dims or {}) == payload[k] for k, (_, dims) in rows.items()), rows

    # replays of every key, from all 32 clients at once: recorded ones once, refused ones still refused
    def replay(conn, i):
        keys = [k for k in payload if f"-g{(i + 5) % GROUPS}-" in k]
        random.Random(-i).shuffle(keys)
        return [_send(conn, k, a, payload[k]) for k in keys]

    for key, r, state, _ in (o for outs in _race(ns, connect, replay) for o in outs):
        if key in accepted:
            assert r is not None and r["duplicate"] is True, (key, r, state)
            assert r["consumption_id"] == accepted[key]["consumption_id"], key
        else:
            assert state == "ME429", (key, r, state)
    assert ns.counters(a) == (resource, scoped)
    assert ns.ledger(a, "tokens")[0] == len(accepted)


# ---------------------------------------------------------------- meter_usage and batches
def test_meter_usage_is_all_or_nothing_when_its_second_item_hits_a_limit(fresh, expect_sqlstate):
    ns = fresh()
    a = ns.provision()
    ns.meter(a, 3, "requests", dims={"model_class": "PRO_L"})  # requests' PRO_L limit (3) is full
    ns.meter(a, 45, "plain")
    before = (ns.counters(a), ns.counters(a, "requests"), ns.ledger(a))
    assert before == ((0, 0), (3, 3), (2, 48))
    items = [{"resource_type": "tokens", "quantity": 10}, {"resource_type": "requests", "quantity": 1}]

    # the second item hits its dimension limit: nothing of the call is recorded
    with expect_sqlstate("ME429") as err:
        ns.usage("u1", a, items, dims={"model_class": "PRO_L"})
    assert "requests" in str(err.value)
    assert "requests@model_class=PRO_L" in policies(err), detail(err)
    assert (ns.counters(a), ns.counters(a, "requests"), ns.ledger(a)) == before

    # the second item hits its plain limit
    with expect_sqlstate("ME429") as err:
        ns.usage("u2", a, [{"resource_type": "tokens", "quantity": 10, "dimensions": {"model_class": "PRO_L"}},
                           {"resource_type": "plain", "quantity": 6}])
    assert list(policies(err)) == ["plain"], detail(err)
    assert (ns.counters(a), ns.counters(a, "requests"), ns.ledger(a)) == before

    # an item's own dimensions override the call's: requests as BASE_S is not limited by PRO_L's 3
    r = ns.usage("u1", a, [items[0], dict(items[1], dimensions={"model_class": "BASE_S"})],
                 dims={"model_class": "PRO_L"})
    assert [i["quantity_used"] for i in r["items"]] == [10, 4], r
    assert ns.row("u1/tokens")[0] == {"model_class": "PRO_L"}
    assert ns.row("u1/requests")[0] == {"model_class": "BASE_S"}
    assert ns.counters(a) == (10, 10) and ns.counters(a, "requests") == (4, 3)
    # and the other way round: the call says BASE_S, the item PRO_L (its limit is full)
    with expect_sqlstate("ME429") as err:
        ns.usage("u3", a, [items[0], dict(items[1], dimensions={"model_class": "PRO_L"})],
                 dims={"model_class": "BASE_S"})
    assert "requests@model_class=PRO_L" in policies(err), detail(err)
    assert ns.counters(a) == (10, 10) and ns.ledger(a) == (4, 59)


def test_a_batch_event_refused_by_a_dimension_limit_is_rejected_alone(fresh):
    ns = fresh()
    a = ns.provision()
    ns.meter(a, 95, dims={"model_class": "PRO_L"})

    def ev(key, qty, dims=None):
        e = {"idempotency_key": key, "account_id": a, "resource_type": "tokens", "quantity": qty}
        if dims is not None:
            e["dimensions"] = dims
        return e

    events = [ev("b1", 10, {"model_class": "BASE_S"}), ev("b2", 10, {"model_class": "PRO_L"}),
              ev("b3", 5, {"model_class": "PRO_L", "region": "eu"}), ev("b4", 1, {"model_class": "PRO_X"}),
              ev("b5", 7), ev("b1", 10, {"model_class": "BASE_S"})]
    r = ns.one("SELECT mec.meter_consumption_batch(p_events => %s)", events, conn=ns.svc)
    res = r["results"]
    assert len(res) == 6, r
    assert res[0]["duplicate"] is False and res[0]["quantity_used"] == 105, res[0]
    assert res[1]["status"] == "rejected" and res[1]["error"]["code"] == "ME429", res[1]
    assert SCOPED in json.dumps(res[1]["error"]), res[1]
    assert res[2]["duplicate"] is False and res[2]["quantity_used"] == 110, res[2]
    assert res[3]["status"] == "rejected" and res[3]["error"]["code"] == "22023", res[3]
    assert res[4]["duplicate"] is False and res[4]["quantity_used"] == 117, res[4]
    assert res[5]["duplicate"] is True and res[5]["consumption_id"] == res[0]["consumption_id"], res[5]
    assert (r["accepted"], r["duplicates"], r["rejected"]) == (3, 1, 2), r
    assert ns.counters(a) == (117, 100)
    assert ns.row("b2") is None and ns.row("b4") is None
    assert ns.row("b3")[0] == {"model_class": "PRO_L", "region": "eu"}
    assert ns.row("b5")[0] in (None, {})
    assert ns.ledger(a, "tokens") == (4, 117)


# ---------------------------------------------------------------- history and billability
def test_usage_history_groups_by_a_dimension_else_the_metadata_key(fresh):
    ns = fresh()
    a = ns.provision()
    ns.meter(a, 10, dims={"model_class": "PRO_L"})
    ns.meter(a, 20, dims={"model_class": "BASE_S"}, metadata={"model_class": "PRO_M"})  # the dimension wins
    ns.meter(a, 40, metadata={"model_class": "PRO_M"})  # no dimension: the metadata key
    ns.meter(a, 80, dims={"region": "eu"}, metadata={"model_class": "legacy"})
    ns.meter(a, 160)
    ns.meter(a, 5, dims={"model_class": "PRO_L", "region": "us"}, metadata={"region": "mars"})
    now = datetime.now(timezone.utc)

    def grouped(by):
        h = ns.one("SELECT mec.usage_history(p_account_id => %s::uuid, p_resource_type => 'tokens', p_from => %s, "
                   "p_to => %s, p_bucket => 'month', p_group_by => %s)", a, now - timedelta(days=1),
                   now + timedelta(hours=1), by, conn=ns.svc)
        out: dict = defaultdict(int)
        for b in h["buckets"]:
            out[b.get("group")] += b["quantity"]
        assert h["total"] == 315, h
        return dict(out)

    assert grouped("model_class") == {"PRO_L": 15, "BASE_S": 20, "PRO_M": 40, "legacy": 80, None: 160}
    assert grouped("region") == {"eu": 80, "us": 5, None: 230}


def test_non_billable_events_keep_dimensions_and_do_not_count(fresh, expect_sqlstate):
    ns = fresh()
    a = ns.provision()
    r = ns.meter(a, 200, dims={"model_class": "PRO_L"}, status=500, key="failed")
    assert r["billable"] is False, r
    assert ns.row("failed") == ({"model_class": "PRO_L"}, False, 200)
    assert ns.counters(a) == (0, 0)
    assert ns.meter(a, 100, dims={"model_class": "PRO_L"}, status=200)["billable"] is True
    assert ns.counters(a) == (100, 100)
    # the dimension limit is full; a failed call is still recorded, without quota
    r = ns.meter(a, 5, dims={"model_class": "PRO_L"}, status=503, key="failed-2")
    assert r["billable"] is False and ns.row("failed-2") == ({"model_class": "PRO_L"}, False, 5), r
    with expect_sqlstate("ME429") as err:
        ns.meter(a, 1, dims={"model_class": "PRO_L"}, status=200)
    assert policies(err)[SCOPED]["current"] == 100
    assert ns.counters(a) == (100, 100)
    assert ns.ledger(a, "tokens", " AND billable AND dimensions->>'model_class' = 'PRO_L'") == (1, 100)


# ---------------------------------------------------------------- the catalog
def test_catalog_refuses_bad_dimension_limits_with_their_paths(fresh, expect_sqlstate):
    ns = fresh()
    a = ns.provision()
    bad = catalog(plan())
    ents = bad["plans"][0]["entitlements"]
    ents["tokens"]["dimension_limits"] = {"size": {"xl": {"limit": 1}},
                                          "model_class": {"PRO_L": {"limit": 500}, "PRO_X": {"limit": 5}}}
    # (a rate resource's dimension limits are valid: tests/test_rate_windows.py)
    ents["rpm"]["dimension_limits"] = {"model_class": {"PRO_L": {"limit": 1}}}
    ents["plain"]["dimension_limits"] = {"model_class": {"PRO_L": {"limit": 1}}}
    with expect_sqlstate("ME422") as err:
        ns.load(bad)
    paths = {p["path"] for p in detail(err)["problems"]}
    assert paths == {"$.plans[0].entitlements.tokens.dimension_limits.size",
                     "$.plans[0].entitlements.tokens.dimension_limits.model_class.PRO_X",
                     "$.plans[0].entitlements.plain.dimension_limits.model_class"}, detail(err)
    # all or nothing: the PRO_L limit of 500 in the refused catalog changed nothing
    assert ns.summary(ns.provision())["features"]["tokens"]["dimensions"][PRO_L]["limit"] == 100
    assert ns.summary(a)["features"]["tokens"]["dimensions"][PRO_L]["limit"] == 100

    # declaring dimensions: at most 16, names like resource types, not on a concurrency resource
    resources = json.loads(json.dumps(RESOURCES))
    resources[2]["dimensions"] = {f"d{i}": ["x"] for i in range(17)}
    resources.append({"resource_type": "slots", "kind": "concurrency", "dimensions": {"model_class": ["PRO_L"]}})
    resources[1]["dimensions"]["Bad Name!"] = ["x"]
    with expect_sqlstate("ME422") as err:
        ns.load({"resources": resources, "plans": [plan()]})
    paths = sorted(p["path"] for p in detail(err)["problems"])
    for prefix in ("$.resources[1].dimensions", "$.resources[2].dimensions", "$.resources[4]"):
        assert any(p.startswith(prefix) for p in paths), (prefix, detail(err))


def test_plan_versions_keep_their_dimension_limits(fresh, expect_sqlstate):
    ns = fresh(catalog(plan(100, "1")))
    a = ns.provision()
    ns.meter(a, 100, dims={"model_class": "PRO_L"})
    ns.load(catalog(plan(300, "2")))
    b = ns.provision()
    assert ns.summary(b)["features"]["tokens"]["dimensions"][PRO_L]["limit"] == 300
    assert ns.meter(b, 150, dims={"model_class": "PRO_L"})["quantity_used"] == 150
    # A is grandfathered on version 1, PRO_L limit 100 included
    s = ns.summary(a)
    assert s["plan_version"] == "1" and s["features"]["tokens"]["dimensions"][PRO_L]["limit"] == 100, s
    with expect_sqlstate("ME429") as err:
        ns.meter(a, 1, dims={"model_class": "PRO_L"})
    assert policies(err)[SCOPED]["limit"] == 100
    r = ns.one("SELECT mec.migrate_plan_version(p_plan_id => 'p', p_from_version => '1', p_to_version => '2', "
               "p_account_id => %s::uuid)", a)
    assert r["accounts_migrated"] == 1, r
    f = ns.summary(a)["features"]["tokens"]["dimensions"][PRO_L]
    assert (f["limit"], f["current"]) == (300, 100), f
    assert ns.meter(a, 200, dims={"model_class": "PRO_L"})["quantity_used"] == 300
    with expect_sqlstate("ME429"):
        ns.meter(a, 1, dims={"model_class": "PRO_L"})
    assert ns.summary(b)["features"]["tokens"]["dimensions"][PRO_L]["current"] == 150


def test_usage_summary_as_of_shows_the_dimension_limits_then(fresh):
    """"Dimension limits are part of the plan row: plan versions, grandfathering and `as of` windows
    carry them"; usage_summary shows them under features.<resource>.dimensions."""
    ns = fresh(catalog(plan(100, "1")))
    a = ns.provision()
    ns.meter(a, 30, dims={"model_class": "PRO_L"})
    time.sleep(0.02)
    before = ns.one("SELECT clock_timestamp()")
    time.sleep(0.02)
    ns.meter(a, 20, dims={"model_class": "PRO_L"})
    ns.load(catalog(plan(300, "2")))
    ns.one("SELECT mec.migrate_plan_version(p_plan_id => 'p', p_from_version => '1', p_to_version => '2')")
    now = ns.summary(a)["features"]["tokens"]["dimensions"][PRO_L]
    assert (now["limit"], now["current"]) == (300, 50), now
    then = ns.summary(a, as_of=before)["features"]["tokens"]
    assert then["current"] == 30 and then["limit"] == 1000, then
    assert "dimensions" in then, (
        "IMPLEMENTATION BUG: usage_summary(p_as_of => ...) leaves out features.<resource>.dimensions, although "
        "the contract says `as of` windows carry dimension limits and usage_summary shows them: " + repr(then))
    assert (then["dimensions"][PRO_L]["limit"], then["dimensions"][PRO_L]["current"]) == (100, 30), then


# ---------------------------------------------------------------- check_policy and dimension limits

def test_check_policy_passes_over_a_model_class_whose_own_quota_is_spent(fresh):
    """The policy's fallback order skips a class whose dimension limit cannot take the request, and
    the chosen class's own remaining bounds the shaped output tokens (docs/CONTRACT.md, Access policy)."""
    cat = catalog({"plan_id": "p", "default": True,
                   "entitlements": {"tokens": {"limit": 1000, "grace": 0, "dimension_limits": {"model_class": {
                       "PRO_L": {"limit": 100, "grace": 0}, "PRO_M": {"limit": 300, "grace": 0}}}}},
                   "policy": {"dimensions": {"model_class": ["PRO_L", "PRO_M", "BASE_S"]},
                              "tasks": {"DRAFT": {"model_class": {"allowed": ["PRO_L", "PRO_M"],
                                                                  "default": "PRO_L"}}},
                              "quota": {"output_tokens": "tokens"}}})
    ns = fresh(cat)
    a = ns.provision()

    def ask(max_out: int) -> dict:
        return ns.one("SELECT mec.check_policy(p_account_id => %s::uuid, p_request => %s)", a,
                      {"task": "DRAFT", "max_output_tokens": max_out}, conn=ns.svc)

    first = ask(500)
    assert first["decision"] == "allow" and first["shaped"]["model_class"] == "PRO_L", first
    assert first["shaped"]["max_output_tokens"] == 100, first  # PRO_L's own 100, not the resource's 1000
    ns.meter(a, 100, dims={"model_class": "PRO_L"})            # PRO_L spent
    ns.meter(a, 250, dims={"model_class": "PRO_M"})
    second = ask(500)
    assert second["decision"] == "allow" and second["shaped"]["model_class"] == "PRO_M", second
    assert second["shaped"]["max_output_tokens"] == 50, second
    fallback = [r for r in second["reasons"] if r["code"] == "fallback"]
    assert fallback and fallback[0]["quota_exhausted"] is True, second
    ns.meter(a, 50, dims={"model_class": "PRO_M"})             # PRO_M spent too: no allowed class left
    third = ask(500)
    assert third["decision"] == "deny", third
    assert [r["code"] for r in third["reasons"]] == ["dimension_quota_exhausted"], third
    assert ns.counters(a, dim="model_class=PRO_M") == (400, 300)  # the checks changed nothing


def test_a_member_inherits_its_organisations_dimension_limits(fresh, expect_sqlstate):
    """A member without a plan of its own inherits the organisation's entitlement, dimension limits
    included: its own PRO_L usage is limited as the organisation's plan says (and the pool counts it)."""
    ns = fresh()
    org = ns.provision()
    member = str(uuid.uuid4())
    ns.one("SELECT mec.set_parent_account(p_account_id => %s::uuid, p_parent_account_id => %s::uuid)",
           member, org)
    ns.meter(member, 100, dims={"model_class": "PRO_L"})
    with expect_sqlstate("ME429") as err:
        ns.meter(member, 1, dims={"model_class": "PRO_L"})
    assert SCOPED in policies(err)
    f = ns.summary(member)["features"]["tokens"]
    assert f["inherited_from"] == org and f["dimensions"][PRO_L]["current"] == 100, f
    assert ns.summary(org)["features"]["tokens"]["current"] == 100  # the organisation's pool
