"""Account hierarchies (issue 14): `mec.set_parent_account` (organisation → team → member → key, at
most four levels, no cycles), inheritance of an ancestor's entitlement by an account without one of its
own, pools (metered and gauge usage counted against every entitled ancestor's own counter, decided all
or nothing with the account's own limit, also under concurrency), replays, corrections carried up,
reservations refused where the resource is pooled, rate and concurrency limits not pooled, an overdue
organisation blocking its members, forgetting an account making its children top-level.
See docs/CONTRACT.md ("Account hierarchies", issue 14) and §3."""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sql_helpers import adapt as _adapt
from sql_helpers import detail, race

pytestmark = pytest.mark.sql

ORG_LIMIT = 100
TEAM_LIMIT = 80
MEMBER_LIMIT = 60

RESOURCES = [
    {"resource_type": "units", "kind": "metered", "unit": "unit"},
    {"resource_type": "solo", "kind": "metered", "unit": "unit"},
    {"resource_type": "storage", "kind": "gauge", "unit": "GB"},
    {"resource_type": "feat", "kind": "feature"},
    {"resource_type": "rpm", "kind": "rate", "window_seconds": 60},
    {"resource_type": "slots", "kind": "concurrency", "unit": "job"},
]


def hard(limit: int) -> dict:
    return {"limit": limit, "enforcement": "hard", "grace": 0}


CATALOG = {
    "resources": RESOURCES,
    "plans": [
        {"plan_id": "org", "entitlements": {
            "units": hard(ORG_LIMIT), "storage": hard(10), "feat": True, "rpm": {"limit": 3},
            "slots": {"limit": 2}}},
        {"plan_id": "org_big", "entitlements": {"units": hard(300)}},
        {"plan_id": "member_small", "entitlements": {"units": hard(40)}},
        {"plan_id": "team", "entitlements": {"units": hard(TEAM_LIMIT)}},
        # a member's own plan: its own units limit, and a resource its organisation does not have
        {"plan_id": "member", "entitlements": {"units": hard(MEMBER_LIMIT), "solo": hard(50)}},
    ],
}


class Ns:
    """A fresh namespace: `admin` a superuser connection naming it (reads), `adm` a mec_admin
    connection (provisioning, hierarchy, corrections), `svc` a mec_service connection (the acting
    calls, as the vendor's backend makes them)."""

    def __init__(self, ns_id: str, admin: psycopg.Connection, adm: psycopg.Connection,
                 svc: psycopg.Connection) -> None:
        self.id, self.admin, self.adm, self.svc = ns_id, admin, adm, svc

    def one(self, q: str, *args: Any, conn: psycopg.Connection | None = None) -> Any:
        row = (conn or self.admin).execute(q, [_adapt(a) for a in args]).fetchone()
        return row[0] if row else None

    def provision(self, plan_id: str, account: str | None = None) -> str:
        a = account or str(uuid.uuid4())
        self.one("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => %s)", a, plan_id, conn=self.adm)
        return a

    def set_parent(self, a: str, parent: str | None, conn: psycopg.Connection | None = None) -> dict:
        return self.one("SELECT mec.set_parent_account(p_account_id => %s::uuid, p_parent_account_id => %s::uuid)",
                        a, parent, conn=conn or self.adm)

    def under(self, parent: str | None, plan_id: str | None = None) -> str:
        """A new account under `parent`, with `plan_id` or without a plan."""
        a = self.provision(plan_id) if plan_id else str(uuid.uuid4())
        self.set_parent(a, parent)
        return a

    def meter(self, a: str, qty: Any, resource: str = "units", key: str | None = None,
              conn: psycopg.Connection | None = None) -> dict:
        return self.one("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                        "p_resource_type => %s, p_quantity => %s)", key or str(uuid.uuid4()), a, resource, qty,
                        conn=conn or self.svc)

    def check(self, a: str, resource: str = "units", qty: Any = 1) -> dict:
        return self.one("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => %s, "
                        "p_requested_qty => %s)", a, resource, qty, conn=self.svc)

    def summary(self, a: str) -> dict:
        return self.one("SELECT mec.usage_summary(p_account_id => %s::uuid)", a, conn=self.svc)

    def used(self, *accounts: str, resource: str = "units") -> tuple:
        """Each account's own counter (check_entitlement's quantity_used)."""
        return tuple(self.check(a, resource, 0)["quantity_used"] for a in accounts)

    def counter(self, *accounts: str, resource: str = "units") -> tuple:
        """Each account's own counter as the mec.usage view has it (0 without one)."""
        got = dict(self.admin.execute(
            "SELECT account_id::text, sum(quantity_used) FROM mec.usage WHERE namespace_id = %s::uuid "
            "AND resource_type = %s GROUP BY 1", (self.id, resource)).fetchall())
        return tuple(got.get(a, 0) for a in accounts)

    def parent_of(self, a: str) -> str | None:
        row = self.admin.execute("SELECT parent_account_id::text FROM mec.accounts WHERE namespace_id = %s::uuid "
                                 "AND account_id = %s::uuid", (self.id, a)).fetchone()
        assert row is not None, f"account {a} does not exist"
        return row[0]

    def accounts(self) -> dict:
        """{account_id: (plan_id, parent_account_id)} of every account of the namespace."""
        return {a: (p, par) for a, p, par in self.admin.execute(
            "SELECT account_id::text, plan_id, parent_account_id::text FROM mec.accounts "
            "WHERE namespace_id = %s::uuid", (self.id,)).fetchall()}

    def ledger(self, *accounts: str, resource: str = "units", usage_only: bool = False) -> Decimal:
        """The sum of the ledger rows (usage and corrections) of these accounts."""
        q = ("SELECT coalesce(sum(quantity), 0) FROM mec.consumption WHERE namespace_id = %s::uuid "
             "AND account_id = ANY(%s::uuid[]) AND resource_type = %s")
        if usage_only:
            q += " AND entry_type = 'usage'"
        return self.admin.execute(q, (self.id, list(accounts), resource)).fetchone()[0]

    def rows(self, a: str, resource: str = "units") -> int:
        return self.admin.execute("SELECT count(*) FROM mec.consumption WHERE namespace_id = %s::uuid "
                                  "AND account_id = %s::uuid AND resource_type = %s",
                                  (self.id, a, resource)).fetchone()[0]


def pool_ids(err: Any) -> list:
    """The pool_account_id of each violated policy (None for the account's own limit)."""
    return [p.get("pool_account_id") for p in detail(err)["violated_policies"]]


@pytest.fixture
def fresh(new_namespace, connect):
    """fresh(catalog=CATALOG) -> Ns in a new namespace with that catalog loaded (no default plan)."""

    def _fresh(cat: dict = CATALOG) -> Ns:
        ns = new_namespace(catalog=cat)
        return Ns(ns, connect(namespace_id=ns), connect(namespace_id=ns, role="mec_admin"),
                  connect(namespace_id=ns, role="mec_service"))

    return _fresh


# ---------------------------------------------------------------- set_parent_account
def test_set_parent_account_creates_moves_and_makes_top_level(fresh):
    ns = fresh()
    org = ns.provision("org")
    m = str(uuid.uuid4())  # does not exist yet
    r = ns.set_parent(m, org)
    assert r == {"account_id": m, "parent_account_id": org, "previous_parent_account_id": None,
                 "created": True, "changed": True, "ancestors": [org]}, r
    assert ns.accounts()[m] == (None, org), "created without a plan, under the organisation"

    r = ns.set_parent(m, org)
    assert (r["created"], r["changed"], r["previous_parent_account_id"], r["parent_account_id"]) == (
        False, False, org, org), r
    assert r["ancestors"] == [org], r

    team = ns.provision("team")
    r = ns.set_parent(team, org)
    assert (r["created"], r["changed"], r["ancestors"]) == (False, True, [org]), r
    r = ns.set_parent(m, team)
    assert (r["previous_parent_account_id"], r["parent_account_id"], r["changed"]) == (org, team, True), r
    assert r["ancestors"] == [team, org], "nearest first"
    assert ns.parent_of(m) == team

    r = ns.set_parent(m, None)
    assert r == {"account_id": m, "parent_account_id": None, "previous_parent_account_id": team,
                 "created": False, "changed": True, "ancestors": []}, r
    assert ns.parent_of(m) is None
    r = ns.set_parent(m, None)
    assert (r["changed"], r["previous_parent_account_id"]) == (False, None), r
    # the view shows the column to the vendor's backend too
    got = ns.one("SELECT parent_account_id::text FROM mec.accounts WHERE account_id = %s::uuid", team, conn=ns.svc)
    assert got == org


def test_set_parent_account_refuses_cycles_depth_unknown_parents_and_non_admins(fresh, expect_sqlstate):
    ns = fresh()
    org = ns.provision("org")
    team = ns.under(org, "team")
    member = ns.under(team, "member")
    key = ns.under(member)  # the fourth level: allowed
    assert ns.parent_of(key) == member
    loose = ns.provision("org")
    sub = ns.under(loose)  # a top-level account with a child
    before = ns.accounts()

    # cycles
    for child, parent in ((org, member), (org, key), (team, key), (member, key), (org, org), (key, key)):
        with expect_sqlstate("22023"):
            ns.set_parent(child, parent)
    # a fifth level: below the key, or by hanging a whole tree below another account
    with expect_sqlstate("22023"):
        ns.set_parent(str(uuid.uuid4()), key)
    with expect_sqlstate("22023"):
        ns.set_parent(org, loose)  # loose → org → team → member → key
    with expect_sqlstate("22023"):
        ns.set_parent(loose, member)  # ... → member → loose → sub
    # unknown parent: ME404, and the missing account is not created either
    ghost = str(uuid.uuid4())
    with expect_sqlstate("ME404"):
        ns.set_parent(member, str(uuid.uuid4()))
    with expect_sqlstate("ME404"):
        ns.set_parent(ghost, str(uuid.uuid4()))
    # mec_admin only
    with expect_sqlstate("42501"):
        ns.set_parent(sub, None, conn=ns.svc)
    with expect_sqlstate("42501"):
        ns.set_parent(str(uuid.uuid4()), org, conn=ns.svc)
    assert ns.accounts() == before, "a refused set_parent_account must change nothing"
    assert ghost not in ns.accounts()

    # a two-level tree may go below a top-level account: three levels
    r = ns.set_parent(loose, org)
    assert r["changed"] is True and ns.parent_of(sub) == loose


# ---------------------------------------------------------------- inheritance
def test_a_member_without_a_plan_inherits_features_limits_and_period(fresh):
    ns = fresh()
    org = ns.provision("org")
    ns.one("SELECT mec.set_billing_anchor(p_account_id => %s::uuid, p_anchor_day => 15)", org, conn=ns.adm)
    m = ns.under(org)  # no plan
    own = ns.under(org, "member")

    c = ns.check(m, "feat")
    assert (c["decision"], c["quantity_allowed"], c.get("inherited_from")) == ("allow", 1, org), c
    # the member's plan has no `feat`: it inherits that one too, but uses its own units limit
    c = ns.check(own, "feat")
    assert (c["decision"], c.get("inherited_from")) == ("allow", org), c

    c = ns.check(m)
    assert (c["decision"], c["quantity_allowed"], c["inherited_from"]) == ("allow", ORG_LIMIT, org), c
    org_check = ns.check(org)
    assert "inherited_from" not in org_check and "pools" not in org_check, "a top-level account has neither"
    assert (c["period_start"], c["period_end"]) == (org_check["period_start"], org_check["period_end"]), (
        "the member inherits the organisation's period and billing anchor", c, org_check)
    assert org_check["period_start"][8:10] == "15", org_check

    c = ns.check(own)
    assert "inherited_from" in c and c["inherited_from"] is None, c
    assert (c["decision"], c["quantity_allowed"]) == ("allow", MEMBER_LIMIT), c
    assert c["period_start"][8:10] == "01", "its own plan: calendar months"

    # its own use is limited by the inherited limit, and counts in the organisation's pool
    r = ns.meter(m, 40)
    assert (r["quantity_used"], r["quantity_allowed"]) == (40, ORG_LIMIT), r
    assert ns.used(m, org) == (40, 40)
    # the member with its own plan counts in the organisation's pool too, in the organisation's period
    ns.meter(own, 10)
    assert ns.used(own, m, org) == (10, 40, 50)
    s = ns.summary(m)["features"]["units"]
    assert (s["current"], s["limit"], s.get("inherited_from")) == (40, ORG_LIMIT, org), s


# ---------------------------------------------------------------- pools, sequential
def test_pool_counts_members_and_refuses_all_or_nothing(fresh, expect_sqlstate):
    ns = fresh()
    org = ns.provision("org")
    a = ns.under(org, "member")
    b = ns.under(org, "member")
    assert ns.meter(a, 30)["quantity_used"] == 30
    assert ns.meter(b, 10)["quantity_used"] == 10
    assert ns.meter(org, 20)["quantity_used"] == 60, "the organisation's own usage adds to its pool"
    assert ns.used(a, b, org) == (30, 10, 60)
    assert ns.check(org)["quantity_remaining"] == 40
    # the ledger keeps each event once, on the account that sent it
    assert (ns.rows(a), ns.rows(b), ns.rows(org)) == (1, 1, 1)
    assert ns.ledger(org) == 20

    # refused by the member's own limit (30 + 35 > 60; the pool has room): nothing anywhere
    with expect_sqlstate("ME429") as err:
        ns.meter(a, 35, key="own-refused")
    assert "units" in err.value.diag.message_primary
    assert pool_ids(err) == [None], detail(err)
    p = detail(err)["violated_policies"][0]
    assert (p["policy"], p["limit"], p["current"]) == ("units", MEMBER_LIMIT, 30), p
    assert ns.used(a, b, org) == (30, 10, 60) and ns.rows(a) == 1

    # refused by the pool (60 + 45 > 100; b's own 10 + 45 <= 60): nothing anywhere
    with expect_sqlstate("ME429") as err:
        ns.meter(b, 45, key="pool-refused")
    assert "units" in err.value.diag.message_primary
    assert pool_ids(err) == [org], detail(err)
    p = detail(err)["violated_policies"][0]
    assert (p["policy"], p["limit"], p["current"]) == ("units", ORG_LIMIT, 60), p
    assert p.get("reset_at") == ns.check(org)["period_end"], p
    assert ns.used(a, b, org) == (30, 10, 60) and ns.rows(b) == 1
    assert ns.one("SELECT count(*) FROM mec.consumption WHERE namespace_id = %s::uuid "
                  "AND idempotency_key IN ('own-refused', 'pool-refused')", ns.id) == 0

    # check_entitlement on the member: its pools, and the least remaining of every level
    c = ns.check(b, qty=20)
    assert (c["decision"], c["quantity_used"], c["quantity_allowed"]) == ("allow", 10, MEMBER_LIMIT), c
    assert c["quantity_remaining"] == 40, ("the least remaining of all levels: the member 50, the pool 40", c)
    assert [pl["account_id"] for pl in c["pools"]] == [org], c
    pl = c["pools"][0]
    assert (pl["decision"], pl["quantity_used"], pl["quantity_allowed"], pl["quantity_remaining"]) == (
        "allow", 60, ORG_LIMIT, 40), pl
    c = ns.check(b, qty=41)
    assert (c["decision"], c["reason"], c["quantity_remaining"]) == ("deny", "pool_limit_reached", 40), c
    assert c["pools"][0]["decision"] == "deny", c
    assert ns.meter(org, 25)["quantity_used"] == 85
    c = ns.check(b, qty=15)
    assert (c["decision"], c["quantity_remaining"]) == ("allow", 15), c
    c = ns.check(b, qty=16)
    assert (c["decision"], c["reason"], c["quantity_remaining"]) == ("deny", "pool_limit_reached", 15), c

    # usage_summary shows the pools; on the organisation, its own usage plus its members'
    s = ns.summary(b)["features"]["units"]
    assert s["current"] == 10 and [(x["account_id"], x["quantity_used"]) for x in s["pools"]] == [(org, 85)], s
    so = ns.summary(org)["features"]["units"]
    assert (so["current"], so["remaining"]) == (85, 15), so

    # filling the pool to its limit exactly
    assert ns.meter(b, 15)["quantity_used"] == 25
    assert ns.used(a, b, org) == (30, 25, ORG_LIMIT)
    for acc in (a, b, org):
        with expect_sqlstate("ME429"):
            ns.meter(acc, 1)
    assert ns.used(a, b, org) == (30, 25, ORG_LIMIT)
    assert ns.ledger(a, b, org) == ORG_LIMIT


def test_three_levels_count_at_every_level(fresh, expect_sqlstate):
    ns = fresh()
    org = ns.provision("org")
    team = ns.under(org, "team")
    m = ns.under(team, "member")
    n = ns.under(team)  # no plan: inherits the team's
    k = ns.under(m)  # an API key below the member: inherits the member's
    direct = ns.under(org, "member")

    assert ns.meter(m, 30)["quantity_used"] == 30
    assert ns.used(m, team, org) == (30, 30, 30)
    c = ns.check(n)
    assert (c["inherited_from"], c["quantity_allowed"]) == (team, TEAM_LIMIT), c
    assert ns.meter(n, 20)["quantity_used"] == 20
    assert ns.check(k)["inherited_from"] == m
    assert ns.meter(k, 10)["quantity_used"] == 10
    assert ns.used(k, m, n, team, org) == (10, 40, 20, 60, 60), "a key's usage counts at all four levels"
    ns.meter(direct, 5)
    ns.meter(org, 25)
    assert ns.used(k, m, n, team, org, direct) == (10, 40, 20, 60, 90, 5)

    # m asks 15: its own (40 + 15 <= 60) and the team's (60 + 15 <= 80) fit, the organisation's does not
    c = ns.check(m, qty=15)
    assert (c["decision"], c["reason"], c["quantity_remaining"]) == ("deny", "pool_limit_reached", 10), c
    assert [(p["account_id"], p["decision"]) for p in c["pools"]] == [(team, "allow"), (org, "deny")], c
    assert [p["quantity_remaining"] for p in c["pools"]] == [20, 10], c
    with expect_sqlstate("ME429") as err:
        ns.meter(m, 15)
    assert pool_ids(err) == [org], detail(err)
    # n asks 25: the team (60 + 25 > 80) and the organisation refuse
    with expect_sqlstate("ME429") as err:
        ns.meter(n, 25)
    assert team in pool_ids(err) and None not in pool_ids(err), detail(err)
    with expect_sqlstate("ME429") as err:
        ns.meter(k, 11)
    assert ns.used(k, m, n, team, org, direct) == (10, 40, 20, 60, 90, 5), "refusals record nothing anywhere"

    assert ns.check(k, qty=10)["decision"] == "allow"
    assert ns.meter(k, 10)["quantity_used"] == 20
    assert ns.used(k, m, n, team, org) == (20, 50, 20, 70, ORG_LIMIT)
    s = ns.summary(k)["features"]["units"]
    assert [(p["account_id"], p["quantity_used"]) for p in s["pools"]] == [(m, 50), (team, 70), (org, ORG_LIMIT)], s
    assert ns.ledger(org, team, m, n, k, direct) == ORG_LIMIT
    assert ns.ledger(team, m, n, k) == 70


def test_gauge_usage_is_pooled_too(fresh, expect_sqlstate):
    ns = fresh()
    org = ns.provision("org")
    a, b = ns.under(org), ns.under(org)
    ns.meter(a, 6, "storage")
    with expect_sqlstate("ME429") as err:
        ns.meter(b, 5, "storage")
    assert pool_ids(err) == [org], detail(err)
    assert ns.used(a, b, org, resource="storage") == (6, 0, 6)
    ns.meter(b, 4, "storage")
    ns.meter(a, -3, "storage")
    assert ns.used(a, b, org, resource="storage") == (3, 4, 7)
    ns.meter(b, 3, "storage")
    assert ns.used(a, b, org, resource="storage") == (3, 7, 10)


STALE_PARENT = (
    "(Likely cause: the entitlement caches keep accounts.parent_account_id, but the invalidate_cache "
    "triggers on mec_data.accounts (sql/cache.sql) do not fire on UPDATE OF parent_account_id, so the "
    "shared cache keeps the old parent.)")


def test_moving_a_member_leaves_its_usage_where_it_was_counted(fresh):
    ns = fresh()
    org_a, org_b = ns.provision("org"), ns.provision("org")
    m = ns.under(org_a, "member")
    ns.meter(m, 20)
    ns.set_parent(m, org_b)
    assert ns.used(m, org_a, org_b) == (20, 20, 0), "the usage counted so far stays where it was counted"
    ns.meter(m, 10)
    got = ns.used(m, org_a, org_b)
    assert got == (30, 20, 10), (
        "IMPLEMENTATION BUG: after set_parent_account moved a member from organisation A to B, its next event "
        f"(10) was counted in A's pool and not in B's: (member, A, B) = {got}, expected (30, 20, 10). Spec: usage "
        "'counts against the pool of every ancestor that has an entitlement of its own'; 'Moving an account to "
        "another parent leaves the usage counted so far where it was counted.' " + STALE_PARENT)
    ns.set_parent(m, None)
    ns.meter(m, 5)
    got = ns.used(m, org_a, org_b)
    assert got == (35, 20, 10), (
        "IMPLEMENTATION BUG: a member made top-level (set_parent_account(..., NULL)) still counts in its former "
        f"organisation's pool: (member, A, B) = {got}. " + STALE_PARENT)


def test_an_account_put_under_an_organisation_after_it_was_used_counts_in_its_pool(fresh):
    """An account that metered as a top-level account, then is put under an organisation whose pool is
    nearly full: its next event must be decided by the pool too."""
    ns = fresh()
    org = ns.provision("org")
    m = ns.provision("member")
    ns.meter(m, 10)  # top-level: no pool
    ns.meter(org, 95)
    ns.set_parent(m, org)
    try:
        r = ns.meter(m, 10, key="past-the-pool")
    except psycopg.Error as e:
        assert e.sqlstate == "ME429", e
        assert json.loads(e.diag.message_detail)["violated_policies"][0].get("pool_account_id") == org, e
    else:
        pytest.fail(
            "IMPLEMENTATION BUG: an account put under an organisation after it had metered as a top-level "
            f"account metered 10 more although the organisation's pool (hard limit {ORG_LIMIT}, grace 0) had 95 "
            f"used: {r}; organisation's counter now {ns.used(org)[0]}. Spec: 'Metered and gauge usage also counts "
            "against the pool of every ancestor that has an entitlement of its own ... a refusal at any level "
            "records nothing at any level (ME429 ...)'. " + STALE_PARENT, pytrace=False)
    assert ns.used(m, org) == (10, 95)
    c = ns.check(m, qty=10)
    assert (c["decision"], c.get("reason")) == ("deny", "pool_limit_reached"), c


# ---------------------------------------------------------------- replays and corrections
def test_replays_count_once_everywhere(fresh, expect_sqlstate):
    ns = fresh()
    org = ns.provision("org")
    team = ns.under(org, "team")
    m = ns.under(team, "member")
    first = ns.meter(m, 10, key="k")
    assert first["duplicate"] is False
    again = ns.meter(m, 10, key="k")
    assert again["duplicate"] is True and again["consumption_id"] == first["consumption_id"], again
    assert ns.used(m, team, org) == (10, 10, 10)
    with expect_sqlstate("ME409"):
        ns.meter(m, 11, key="k")
    # fill the organisation's pool: a replay is still the original answer, not a refusal
    ns.meter(org, 90)
    with expect_sqlstate("ME429"):
        ns.meter(m, 1)
    again = ns.meter(m, 10, key="k")
    assert again["duplicate"] is True and again["consumption_id"] == first["consumption_id"], again
    assert ns.used(m, team, org) == (10, 10, ORG_LIMIT)
    assert ns.one("SELECT count(*) FROM mec.consumption WHERE namespace_id = %s::uuid AND idempotency_key = 'k'",
                  ns.id) == 1
    # a batch replaying it too
    r = ns.one("SELECT mec.meter_consumption_batch(p_events => %s)",
               [{"idempotency_key": "k", "account_id": m, "resource_type": "units", "quantity": 10}], conn=ns.svc)
    assert r["results"][0]["duplicate"] is True, r
    assert ns.used(m, team, org) == (10, 10, ORG_LIMIT)


def test_corrections_of_a_member_are_carried_into_its_pools(fresh):
    ns = fresh()
    org = ns.provision("org")
    team = ns.under(org, "team")
    m = ns.under(team, "member")
    inh = ns.under(org)

    def adjust(a, qty, key):
        return ns.one("SELECT mec.adjust_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                      "p_resource_type => 'units', p_quantity => %s, p_reason => 'refund')", key, a, qty,
                      conn=ns.adm)

    ns.meter(m, 30)
    ns.meter(inh, 20)
    assert ns.used(m, inh, team, org) == (30, 20, 30, 50)
    adjust(m, -10, "adj-1")
    assert ns.used(m, inh, team, org) == (20, 20, 20, 40)
    adjust(m, 5, "adj-2")
    assert ns.used(m, inh, team, org) == (25, 20, 25, 45)
    adjust(m, 5, "adj-2")  # a replay
    assert ns.used(m, inh, team, org) == (25, 20, 25, 45)
    adjust(inh, -4, "adj-3")  # a member inheriting the organisation's entitlement
    assert ns.used(m, inh, team, org) == (25, 16, 25, 41)
    # the ledger keeps the corrections on the member, none on its ancestors
    assert (ns.rows(org), ns.rows(team)) == (0, 0)
    assert ns.ledger(m) == 25 and ns.ledger(m, inh, team, org) == 41


# ---------------------------------------------------------------- what is not pooled
def test_reservations_are_refused_where_ancestors_pool_the_resource(fresh, expect_sqlstate):
    ns = fresh()
    org = ns.provision("org")
    own = ns.under(org, "member")
    inh = ns.under(org)

    def reserve(a, resource="units", qty=5):
        return ns.one("SELECT mec.reserve_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                      "p_resource_type => %s, p_quantity => %s)", str(uuid.uuid4()), a, resource, qty, conn=ns.svc)

    ns.meter(own, 10)
    for a in (own, inh):
        with expect_sqlstate("ME400"):
            reserve(a)
    assert ns.used(own, inh, org) == (10, 0, 10)
    assert ns.one("SELECT count(*) FROM mec.reservations WHERE namespace_id = %s::uuid", ns.id) == 0
    # a resource no ancestor pools, and the organisation itself (top-level), may reserve
    assert reserve(own, "solo")["quantity_reserved"] == 5
    r = reserve(org)
    assert r["quantity_reserved"] == 5, r
    ns.one("SELECT mec.cancel_reservation(p_reservation_id => %s::uuid)", r["reservation_id"], conn=ns.svc)


def test_rate_and_concurrency_limits_are_inherited_not_pooled(fresh, expect_sqlstate):
    ns = fresh()
    org = ns.provision("org")
    a, b = ns.under(org), ns.under(org)
    for acc in (a, b, org):  # each its own 3 a minute
        for _ in range(3):
            ns.meter(acc, 1, "rpm")
        with expect_sqlstate("ME429"):
            ns.meter(acc, 1, "rpm")
    c = ns.check(a, "rpm")
    assert (c["decision"], c.get("inherited_from")) == ("deny", org), c
    assert not c.get("pools"), c
    assert ns.check(org, "rpm", 0)["quantity_used"] == 3, "members' requests are not counted in the organisation's"

    def acquire(acc):
        return ns.one("SELECT mec.acquire_lease(p_account_id => %s::uuid, p_resource_type => 'slots')", acc,
                      conn=ns.svc)

    for acc in (a, b, org):  # each its own 2 slots
        acquire(acc)
        acquire(acc)
        with expect_sqlstate("ME429"):
            acquire(acc)
    assert ns.one("SELECT count(*) FROM mec.leases WHERE namespace_id = %s::uuid AND active", ns.id) == 6


# ---------------------------------------------------------------- blocking, forgetting
def test_an_overdue_organisation_blocks_its_members(fresh, expect_sqlstate):
    ns = fresh()
    ns.one("SELECT mec.update_namespace_settings(p_settings => %s)", {"overdue_action": "block"}, conn=ns.adm)
    org = ns.provision("org")
    inh = ns.under(org)
    team = ns.under(org, "team")
    deep = ns.under(team)  # inherits the team's, which is not overdue, but counts in the organisation's pool
    own = ns.under(org, "member")
    other = ns.provision("org")
    first = ns.meter(inh, 5, key="before")
    ns.meter(own, 5)
    before = ns.counter(inh, own, team, deep, org)
    assert before == (5, 5, 0, 0, 10), before
    r = ns.one("SELECT mec.set_payment_overdue(p_account_id => %s::uuid, p_overdue => true)", org, conn=ns.adm)
    assert r["payment_overdue"] is True, r

    for acc in (org, inh, own, deep):
        with expect_sqlstate("ME402"):
            ns.meter(acc, 1)
    with expect_sqlstate("ME402"):
        ns.meter(inh, 1, "rpm")
    c = ns.check(inh)
    assert (c["decision"], c["reason"]) == ("deny", "payment_overdue"), c
    c = ns.check(inh, "feat")
    assert c["decision"] == "deny", c
    assert ns.counter(inh, own, team, deep, org) == before, "a blocked call records nothing"
    assert ns.meter(other, 1)["quantity_used"] == 1, "another organisation is not blocked"
    again = ns.meter(inh, 5, key="before")
    assert again["duplicate"] is True and again["consumption_id"] == first["consumption_id"], (
        "a replay of what was recorded before the block answers as the first time", again)

    ns.one("SELECT mec.set_payment_overdue(p_account_id => %s::uuid, p_overdue => false)", org, conn=ns.adm)
    assert ns.meter(inh, 1)["quantity_used"] == 6
    assert ns.used(org) == (11,)


def test_forgetting_an_account_makes_its_children_top_level(fresh):
    ns = fresh()
    org = ns.provision("org")
    team = ns.under(org, "team")
    key = ns.under(team)
    own = ns.under(org, "member")
    inh = ns.under(org)
    ns.meter(own, 10)
    ns.meter(key, 7)

    r = ns.one("SELECT mec.forget_account(p_account_id => %s::uuid)", org, conn=ns.adm)
    assert r["account_id"] == org, r
    accts = ns.accounts()
    assert org not in accts
    assert (accts[team][1], accts[own][1], accts[inh][1]) == (None, None, None), accts
    assert accts[key][1] == team, "only the forgotten account's own children move"
    # the children go on alone: their own counters, no pools, nothing inherited
    try:
        c = ns.check(own)
    except psycopg.Error as e:
        pytest.fail(
            "IMPLEMENTATION BUG: after forget_account on an organisation, check_entitlement on its former member "
            f"(now top-level, parent NULL in mec.accounts) fails with {e.sqlstate}: {e} -- it still looks for the "
            "forgotten parent. Spec: 'deleting (forgetting) an account makes its children top-level'. (Likely "
            "cause: ON DELETE SET NULL updates the children's parent_account_id without the invalidate_cache_rows "
            "trigger, which does not fire on UPDATE OF parent_account_id (sql/cache.sql), so the shared cache "
            "keeps the old parent.)", pytrace=False)
    assert c["quantity_used"] == 10 and not c.get("pools") and not c.get("inherited_from"), c
    assert ns.meter(own, 5)["quantity_used"] == 15
    assert ns.check(inh)["decision"] == "deny", "nothing left to inherit"
    assert ns.check(key)["inherited_from"] == team

    ns.one("SELECT mec.forget_account(p_account_id => %s::uuid)", team, conn=ns.adm)
    assert ns.parent_of(key) is None


# ---------------------------------------------------------------- concurrency
CLIENTS = 32
MEMBERS = 8
GROUPS = CLIENTS // 2  # two clients send each group's keys, in different orders
EVENTS = 15
QTY = 5
BIG_ORG_LIMIT = 300  # plan org_big
SMALL_MEMBER_LIMIT = 40  # plan member_small; MEMBERS * 40 = 320 > 300


def _race(ns: Ns, connect, work, monitor=None) -> list:
    """work(conn, i) for 32 clients, each on its own mec_service connection, released together."""
    return race(ns.id, connect, work, monitor, CLIENTS)


def _send(conn, key: str, account: str) -> tuple:
    try:
        r = conn.execute("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                         "p_resource_type => 'units', p_quantity => %s)", (key, account, QTY)).fetchone()[0]
        return key, r, None, None
    except psycopg.Error as e:
        if e.sqlstate is None:
            raise
        raw = e.diag.message_detail
        return key, None, e.sqlstate, json.loads(raw) if raw else None


@pytest.mark.concurrency
def test_32_clients_through_8_members_never_pass_the_pool_or_their_own_limits(fresh, connect):
    """32 clients (16 pairs sending the same keys) meter 5 units at a time through 8 members of one
    organisation (each member hard 40, the organisation hard 300 < 8 x 40) and the organisation itself:
    no limit is passed at any moment, every counter equals the ledger rows it counts, every key is
    recorded once, and replays (all keys again, concurrently) change nothing."""
    ns = fresh()
    org = ns.provision("org_big")
    members = [ns.under(org, "member_small") for _ in range(MEMBERS)]
    limit_of = {org: BIG_ORG_LIMIT, **{m: SMALL_MEMBER_LIMIT for m in members}}
    run = uuid.uuid4().hex[:8]
    # groups 0..14 meter through the members (each member asks more than its 60), group 15 as the organisation
    owner = {g: org if g == GROUPS - 1 else members[g % MEMBERS] for g in range(GROUPS)}
    payload = {f"{run}-g{g}-e{j}": owner[g] for g in range(GROUPS) for j in range(EVENTS)}

    def work(conn, i):
        keys = [k for k in payload if f"-g{i // 2}-" in k]
        random.Random(i).shuffle(keys)
        return [_send(conn, k, payload[k]) for k in keys]

    def probe(conn):
        return dict(conn.execute("SELECT account_id::text, sum(quantity_used) FROM mec.usage "
                                 "WHERE namespace_id = %s::uuid AND resource_type = 'units' GROUP BY 1",
                                 (ns.id,)).fetchall())

    *per_client, seen = _race(ns, connect, work, probe)
    outcomes = [o for outs in per_client for o in outs]
    assert len(outcomes) == 2 * len(payload)
    bad = [o for o in outcomes if o[1] is None and o[2] != "ME429"]
    assert not bad, bad[:5]

    # every refusal is a real one, by the limit it names: a member's own, or the organisation's pool
    kinds = defaultdict(int)
    for key, _, _, det in (o for o in outcomes if o[1] is None):
        acc = payload[key]
        assert det and det.get("violated_policies"), (key, det)
        for p in det["violated_policies"]:
            pool = p.get("pool_account_id")
            assert pool in (None, org), (key, det)
            kinds["pool" if pool else "organisation" if acc == org else "member"] += 1
            if pool is None:
                assert p["limit"] == limit_of[acc], (key, det)
                assert p["current"] + QTY > limit_of[acc] >= p["current"], (key, det)
            else:
                assert acc != org, (key, det)
                assert p["limit"] == BIG_ORG_LIMIT, (key, det)
                assert p["current"] + QTY > BIG_ORG_LIMIT >= p["current"], (key, det)
    # both levels refused some events (the pool always: 555 units asked of 300)
    assert kinds["pool"] > 0 and kinds["member"] + kinds["organisation"] > 0, dict(kinds)

    # per key: either every sender was refused, or both got the one recorded event
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
        assert max(r["quantity_used"] for r in oks) <= limit_of[payload[key]], outs
        accepted[key] = next(r for r in oks if not r["duplicate"])

    # the limits hold, at every moment the monitor saw and at the end
    assert seen, "the monitor saw nothing"
    for snapshot in seen:
        for acc, used in snapshot.items():
            assert used <= limit_of[acc], ("a limit was passed", acc, used, limit_of[acc])
    counters = {acc: ns.check(acc, "units", 0)["quantity_used"] for acc in limit_of}
    assert counters[org] == BIG_ORG_LIMIT, (
        "every member asked for more than its own limit, and the members' limits together exceed the "
        "organisation's: the pool must end exactly full", counters)
    for m in members:
        assert counters[m] <= SMALL_MEMBER_LIMIT, counters
    # each counter is the ledger of what it counts: a member its own events, the organisation everyone's
    for m in members:
        assert ns.ledger(m, usage_only=True) == counters[m] == sum(
            QTY for k in accepted if payload[k] == m), (m, counters)
    assert ns.ledger(org, *members, usage_only=True) == counters[org] == QTY * len(accepted), counters
    assert ns.ledger(org, usage_only=True) == counters[org] - sum(counters[m] for m in members)
    assert probe(ns.admin) == {a: Decimal(u) for a, u in counters.items()}, "mec.usage agrees"
    rows = dict(ns.admin.execute("SELECT idempotency_key, consumption_id::text FROM mec.consumption "
                                 "WHERE namespace_id = %s::uuid", (ns.id,)).fetchall())
    assert rows == {k: r["consumption_id"] for k, r in accepted.items()}, "each accepted key once, nothing else"

    # replays of every key, from all 32 clients at once: recorded ones once, refused ones still refused
    def replay(conn, i):
        keys = [k for k in payload if f"-g{(i + 5) % GROUPS}-" in k]
        random.Random(-i).shuffle(keys)
        return [_send(conn, k, payload[k]) for k in keys]

    for key, r, state, _ in (o for outs in _race(ns, connect, replay) for o in outs):
        if key in accepted:
            assert r is not None and r["duplicate"] is True, (key, r, state)
            assert r["consumption_id"] == accepted[key]["consumption_id"], key
        else:
            assert state == "ME429", (key, r, state)
    assert {acc: ns.check(acc, "units", 0)["quantity_used"] for acc in limit_of} == counters
    assert ns.one("SELECT count(*) FROM mec.consumption WHERE namespace_id = %s::uuid", ns.id) == len(accepted)


@pytest.mark.concurrency
def test_three_levels_metering_and_correcting_together_never_deadlock(fresh, connect):
    """Every level of org → team → member metered at once, with corrections among them: counter rows
    are locked down the hierarchy in one order (ancestors first, the account's own last), so no call
    fails with a deadlock (40P01) and every counter equals the ledger rows it counts."""
    ns = fresh()
    org = ns.provision("org_big")
    team = ns.under(org, "team")
    member = ns.under(team, "member")
    levels = [org, team, member]

    def work(conn, i):
        out = []
        rnd = random.Random(i)
        for j in range(12):
            a = levels[(i + j) % 3]
            try:
                if j % 4 == 3:
                    conn.execute("SELECT mec.adjust_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                                 "p_resource_type => 'units', p_quantity => 1, p_reason => 'race')",
                                 (f"adj-{i}-{j}", a))
                else:
                    conn.execute("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                                 "p_resource_type => 'units', p_quantity => %s)", (f"m-{i}-{j}", a, rnd.choice([1, 2])))
                out.append(None)
            except psycopg.Error as e:
                out.append(e.sqlstate)
        return out

    def admin_conn(conn, i):
        conn.execute("RESET ROLE")
        conn.execute("SET ROLE mec_admin")
        return work(conn, i)

    per_client = _race(ns, connect, admin_conn)
    codes = [c for outs in per_client for c in outs if c is not None]
    assert "40P01" not in codes, codes
    assert set(codes) <= {"ME429"}, codes
    # each level's counter: its own ledger rows and its descendants'
    assert ns.counter(member, team, org) == (ns.ledger(member), ns.ledger(team, member),
                                             ns.ledger(org, team, member))


def test_a_replay_answers_after_the_ancestor_falls_overdue(fresh):
    ns = fresh()
    org = ns.provision("org")
    member = ns.under(org)
    first = ns.meter(member, 3, key="before-block")
    ns.one("SELECT mec.update_namespace_settings(p_settings => %s)", {"overdue_action": "block"}, conn=ns.adm)
    ns.one("SELECT mec.set_payment_overdue(p_account_id => %s::uuid, p_overdue => true)", org, conn=ns.adm)
    again = ns.meter(member, 3, key="before-block")
    assert again["duplicate"] is True and again["consumption_id"] == first["consumption_id"], again


def test_an_organisation_hears_of_its_members_usage_by_its_alerts(fresh):
    """Usage alerts fire on a pool as on the account's own counter: members' events that take the
    organisation past a threshold record its crossing once (and queue its webhook event)."""
    ns = fresh({**CATALOG, "alerts": {"thresholds": [50, 80]}})
    org = ns.provision("org")          # units: hard 100
    members = [ns.under(org) for _ in range(3)]
    ns.meter(members[0], 30)
    ns.meter(members[1], 25)           # the organisation at 55: past 50
    ns.meter(members[2], 30)           # at 85: past 80

    def crossings(a):
        return [(float(r[0]), float(r[1])) for r in ns.admin.execute(
            "SELECT threshold, quantity_used FROM mec.alert_crossings WHERE namespace_id = %s::uuid "
            "AND account_id = %s::uuid AND resource_type = 'units' ORDER BY threshold", (ns.id, a))]

    assert crossings(org) == [(50.0, 55.0), (80.0, 85.0)]
    ns.meter(members[0], 5)            # no new crossing
    assert len(crossings(org)) == 2
    # the members themselves (inheriting the organisation's limit of 100) crossed nothing
    assert all(crossings(m) == [] for m in members)


@pytest.mark.concurrency
def test_a_busy_organisation_is_striped_and_stays_exact(fresh, connect):
    """A busy organisation is a hot account: once 32 clients metering through its 8 members queue on
    the pool's counter, each backend takes the pool's share on its own stripe (quota granted by slot
    0, as for an account's own hot counter). The pool never passes its limit, ends exactly full,
    every counter equals the ledger rows it counts, and each alert threshold of the organisation is
    crossed exactly once, by the event that reached it."""
    limit = 2000
    ns = fresh({**CATALOG,
                "alerts": {"thresholds": [50, 80]},
                "plans": CATALOG["plans"] + [{"plan_id": "org_busy", "entitlements": {"units": hard(limit)}}]})
    org = ns.provision("org_busy")
    members = [ns.under(org) for _ in range(MEMBERS)]   # no plan: they inherit the organisation's
    run = uuid.uuid4().hex[:8]
    per_client = 80                                     # 32 x 80 x 1 = 2560 asked of 2000

    def work(conn, i):
        out = []
        for j in range(per_client):
            try:
                conn.execute("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                             "p_resource_type => 'units', p_quantity => 1)",
                             (f"{run}-{i}-{j}", members[(i + j) % MEMBERS]))
                out.append(None)
            except psycopg.Error as e:
                out.append(e.sqlstate)
        return out

    def probe(conn):
        return conn.execute("SELECT coalesce(sum(used), 0) FROM mec_data.usage_counters WHERE namespace_id = %s::uuid"
                            " AND account_id = %s::uuid AND resource_type = 'units'", (ns.id, org)).fetchone()[0]

    *results, seen = _race(ns, connect, work, probe)
    codes = [c for outs in results for c in outs if c is not None]
    assert set(codes) <= {"ME429"}, set(codes)
    stripes = ns.admin.execute(
        "SELECT count(*) FROM mec_data.usage_counters WHERE namespace_id = %s::uuid AND account_id = %s::uuid"
        " AND resource_type = 'units' AND slot > 0", (ns.id, org)).fetchone()[0]
    assert stripes > 0, "the organisation's pool was never striped"
    assert seen and max(seen) <= limit, ("the pool passed its limit", max(seen))
    assert ns.check(org, "units", 0)["quantity_used"] == limit, "asked 2560 of 2000: the pool ends full"
    assert len(codes) == CLIENTS * per_client - limit
    assert ns.ledger(org, *members, usage_only=True) == limit
    for m in members:
        assert ns.check(m, "units", 0)["quantity_used"] == ns.ledger(m, usage_only=True)
    crossings = ns.admin.execute(
        "SELECT threshold, quantity_used FROM mec.alert_crossings WHERE namespace_id = %s::uuid"
        " AND account_id = %s::uuid AND resource_type = 'units' ORDER BY threshold", (ns.id, org)).fetchall()
    # (the limit itself is a threshold too: the event that fills the pool reaches 100 %)
    assert [(float(t), float(u)) for t, u in crossings] == [(50.0, 1000.0), (80.0, 1600.0), (100.0, 2000.0)], crossings
