"""Plan versions: accounts stay on the version they were provisioned on while the catalog moves on
(grandfathered); provisioning again or `"apply": "now"` moves them to the plan's current version;
an explicit version is immutable; `mec.migrate_plan_version` moves accounts between any versions ever
loaded, forward or back, in one transaction, keeping usage, overrides and grants. See docs/CONTRACT.md
("Plan versions", issue 14)."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.sql

RESOURCES = [{"resource_type": "calls", "kind": "metered"}, {"resource_type": "exports", "kind": "metered"}]


def plan(plan_id: str, calls: int, version: str | None = None, exports: int | None = None) -> dict:
    p: dict = {"plan_id": plan_id, "entitlements": {"calls": {"limit": calls, "grace": 0}}}
    if exports is not None:
        p["entitlements"]["exports"] = {"limit": exports, "grace": 0}
    if version is not None:
        p["version"] = version
    return p


def catalog(*plans: dict, version: str | None = None, apply: str | None = None) -> dict:
    cat: dict = {"resources": RESOURCES, "plans": list(plans)}
    if version is not None:
        cat["version"] = version
    if apply is not None:
        cat["apply"] = apply
    return cat


class Ns:
    """One fresh namespace and an autocommit superuser connection naming it."""

    def __init__(self, ns_id: str, conn: psycopg.Connection) -> None:
        self.id, self.conn = ns_id, conn

    def one(self, q: str, *args, conn: psycopg.Connection | None = None):
        return (conn or self.conn).execute(q, args).fetchone()[0]

    def load(self, cat: dict):
        return self.one("SELECT mec.load_catalog(p_catalog => %s)", Jsonb(cat))

    def provision(self, plan_id: str = "pro", account: str | None = None) -> str:
        a = account or str(uuid.uuid4())
        self.one("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => %s)", a, plan_id)
        return a

    def meter(self, a: str, qty: int, resource: str = "calls"):
        return self.one("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                        "p_resource_type => %s, p_quantity => %s)", str(uuid.uuid4()), a, resource, qty)

    def check(self, a: str, resource: str = "calls", as_of=None) -> tuple:
        r = self.one("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => %s, "
                     "p_as_of => %s)", a, resource, as_of)
        return r["quantity_allowed"], r["quantity_used"]

    def version(self, a: str, conn: psycopg.Connection | None = None) -> str:
        return self.one("SELECT plan_version FROM mec.accounts WHERE account_id = %s::uuid", a, conn=conn)

    def row_versions(self, a: str) -> list:
        """plan_version of the account's plan entitlement rows in force now."""
        return self.one("SELECT coalesce(array_agg(DISTINCT plan_version), '{}') FROM mec_data.entitlements "
                        "WHERE namespace_id = %s::uuid AND account_id = %s::uuid AND source = 'plan' "
                        "AND valid_from <= now() AND (valid_until IS NULL OR valid_until > now())", self.id, a)

    def stored_versions(self, plan_id: str = "pro") -> list:
        return self.one("SELECT coalesce(array_agg(version ORDER BY version), '{}') FROM mec_data.plan_versions "
                        "WHERE namespace_id = %s::uuid AND plan_id = %s", self.id, plan_id)

    def migrate(self, plan_id="pro", from_version="1", to_version="2", account_id=None,
                conn: psycopg.Connection | None = None):
        return self.one("SELECT mec.migrate_plan_version(p_plan_id => %s, p_from_version => %s, "
                        "p_to_version => %s, p_account_id => %s::uuid)",
                        plan_id, from_version, to_version, account_id, conn=conn)


@pytest.fixture
def fresh(new_namespace, connect):
    """fresh(catalog) -> Ns: a new namespace with that catalog loaded."""

    def _fresh(cat: dict) -> Ns:
        ns = new_namespace(catalog=cat)
        return Ns(ns, connect(namespace_id=ns))

    return _fresh


def mark(ns: Ns):
    time.sleep(0.02)
    t = ns.one("SELECT clock_timestamp()")
    time.sleep(0.02)
    return t


def assert_migrated(r: dict, plan_id: str, from_version: str, to_version: str, accounts: list[str]) -> None:
    assert r["plan_id"] == plan_id, r
    assert r["from_version"] == from_version, r
    assert r["to_version"] == to_version, r
    assert r["accounts_migrated"] == len(accounts), r
    assert sorted(str(a) for a in r["account_ids"]) == sorted(accounts), r


# ---------------------------------------------------------------- grandfathering
def test_accounts_keep_the_version_they_were_provisioned_on(fresh):
    ns = fresh(catalog(plan("pro", 100, "1"), plan("free", 5)))
    a = ns.provision()
    ns.meter(a, 30)
    assert ns.version(a) == "1" and ns.row_versions(a) == ["1"]
    assert ns.check(a) == (100, 30)

    ns.load(catalog(plan("pro", 200, "2"), plan("free", 5)))
    assert ns.stored_versions() == ["1", "2"]
    # A is grandfathered
    assert ns.version(a) == "1" and ns.row_versions(a) == ["1"]
    assert ns.check(a) == (100, 30)
    s = ns.one("SELECT mec.usage_summary(p_account_id => %s::uuid)", a)
    assert s["plan"] == "pro" and s["plan_version"] == "1" and s["features"]["calls"]["limit"] == 100
    # a new account gets the current version
    b = ns.provision()
    assert ns.version(b) == "2" and ns.row_versions(b) == ["2"]
    assert ns.check(b) == (200, 0)
    s = ns.one("SELECT mec.usage_summary(p_account_id => %s::uuid)", b)
    assert s["plan"] == "pro" and s["plan_version"] == "2" and s["features"]["calls"]["limit"] == 200
    # the same document again changes nothing and keeps no extra version
    ns.load(catalog(plan("pro", 200, "2"), plan("free", 5)))
    assert ns.stored_versions() == ["1", "2"] and ns.version(a) == "1" and ns.check(a) == (100, 30)

    # provisioning A again moves it to the current version; its usage in the period stays
    ns.provision(account=a)
    assert ns.version(a) == "2" and ns.row_versions(a) == ["2"]
    assert ns.check(a) == (200, 30)


def test_a_plan_without_a_version_takes_the_catalogs_else_1(fresh):
    ns = fresh(catalog(plan("pro", 100), plan("team", 10, "7"), version="2026-01"))
    a, t = ns.provision("pro"), ns.provision("team")
    assert (ns.version(a), ns.version(t)) == ("2026-01", "7")
    assert ns.one("SELECT mec.usage_summary(p_account_id => %s::uuid)", a)["plan_version"] == "2026-01"

    # the catalog's version is not declared on the plan: reusing it with other limits redefines it
    ns.load(catalog(plan("pro", 150), plan("team", 10, "7"), version="2026-01"))
    assert ns.check(ns.provision("pro")) == (150, 0)

    # a new catalog version: a new plan version; the old one is kept and A stays on it
    ns.load(catalog(plan("pro", 200), plan("team", 10, "7"), version="2026-02"))
    b = ns.provision("pro")
    assert ns.version(b) == "2026-02" and ns.check(b) == (200, 0)
    assert ns.version(a) == "2026-01" and ns.check(a) == (100, 0)
    assert ns.stored_versions() == ["2026-01", "2026-02"]
    assert_migrated(ns.migrate("pro", "2026-01", "2026-02", a), "pro", "2026-01", "2026-02", [a])
    assert ns.version(a) == "2026-02" and ns.check(a) == (200, 0)

    # neither the plan nor the catalog names a version: "1", redefined by each load
    other = fresh(catalog(plan("pro", 100)))
    c = other.provision()
    assert other.version(c) == "1" and other.row_versions(c) == ["1"]
    other.load(catalog(plan("pro", 300)))
    d = other.provision()
    assert other.version(d) == "1" and other.check(d) == (300, 0)
    assert other.stored_versions() == ["1"]


# ---------------------------------------------------------------- migrate_plan_version
def test_migration_moves_accounts_forward_and_back(fresh):
    ns = fresh(catalog(plan("pro", 100, "1"), plan("free", 5)))
    a, c = ns.provision(), ns.provision()
    f = ns.provision("free")
    ns.meter(a, 30)
    ns.load(catalog(plan("pro", 200, "2"), plan("free", 5)))
    b = ns.provision()
    before = mark(ns)

    r = ns.migrate("pro", "1", "2")
    assert_migrated(r, "pro", "1", "2", [a, c])
    # usage counted so far stays; the new limit is in force from now on
    assert ns.check(a) == (200, 30) and ns.check(c) == (200, 0) and ns.check(b) == (200, 0)
    assert ns.version(a) == ns.version(c) == ns.version(b) == "2"
    assert ns.row_versions(a) == ["2"]
    assert ns.check(a, as_of=before) == (100, 30)
    assert ns.one("SELECT mec.usage_summary(p_account_id => %s::uuid)", a)["plan_version"] == "2"
    assert ns.meter(a, 150)["quantity_used"] == 180  # past the old limit of 100
    # other plans untouched
    assert ns.version(f) == "1" and ns.check(f) == (5, 0)

    # again: nobody left on version 1
    again = ns.migrate("pro", "1", "2")
    assert_migrated(again, "pro", "1", "2", [])

    # back to the older version, for one account only
    back = ns.migrate("pro", "2", "1", account_id=c)
    assert_migrated(back, "pro", "2", "1", [c])
    assert ns.version(c) == "1" and ns.row_versions(c) == ["1"] and ns.check(c) == (100, 0)
    assert ns.version(a) == ns.version(b) == "2"
    assert ns.check(a) == (200, 180) and ns.check(b) == (200, 0)
    # the rest back too: A keeps its usage, now over the old limit
    assert_migrated(ns.migrate("pro", "2", "1"), "pro", "2", "1", [a, b])
    assert ns.check(a) == (100, 180) and ns.check(b) == (100, 0) and ns.check(c) == (100, 0)


def test_overrides_and_grants_survive_a_migration(fresh):
    ns = fresh(catalog(plan("pro", 100, "1", exports=10)))
    a = ns.provision()
    ns.one("SELECT mec.set_override(p_account_id => %s::uuid, p_resource_type => 'calls', p_limit => 50)", a)
    ns.one("SELECT mec.grant_credits(p_account_id => %s::uuid, p_resource_type => 'exports', p_quantity => 5)", a)
    ns.meter(a, 20)
    ns.meter(a, 3, "exports")
    assert ns.check(a) == (50, 20) and ns.check(a, "exports") == (15, 3)

    ns.load(catalog(plan("pro", 200, "2", exports=20)))
    assert_migrated(ns.migrate("pro", "1", "2"), "pro", "1", "2", [a])
    assert ns.version(a) == "2"
    # the override still replaces the plan's limit; the grant adds to the new version's
    assert ns.check(a) == (50, 20)
    assert ns.check(a, "exports") == (25, 3)
    kinds = ns.one("SELECT array_agg(source ORDER BY source) FROM mec.active_entitlements "
                   "WHERE account_id = %s::uuid AND source <> 'plan'", a)
    assert kinds == ["grant", "override"]


def test_migration_as_mec_admin_and_refusals(fresh, connect, expect_sqlstate):
    ns = fresh(catalog(plan("pro", 100, "1"), plan("team", 10, "3"), plan("free", 5)))
    a = ns.provision()
    f = ns.provision("free")
    ns.load(catalog(plan("pro", 200, "2"), plan("team", 10, "3"), plan("free", 5)))
    b = ns.provision()

    with expect_sqlstate("ME404"):
        ns.migrate("nope", "1", "2")
    with expect_sqlstate("ME404"):
        ns.migrate("pro", "1", "9")
    with expect_sqlstate("ME404"):
        ns.migrate("pro", "9", "1")
    with expect_sqlstate("ME404"):  # "3" is a version of another plan
        ns.migrate("pro", "1", "3")
    with expect_sqlstate("ME409"):  # B is on version 2
        ns.migrate("pro", "1", "2", account_id=b)
    with expect_sqlstate("ME409"):  # F is on another plan
        ns.migrate("pro", "1", "2", account_id=f)
    with expect_sqlstate("22023"):
        ns.migrate("pro", "2", "2")
    for args in ((None, "1", "2"), ("pro", None, "2"), ("pro", "1", None)):
        with expect_sqlstate("22023"):
            ns.migrate(*args)
    for role in ("mec_service", "mec_user"):
        conn = connect(namespace_id=ns.id, role=role, claims={"account_id": a} if role == "mec_user" else None)
        with expect_sqlstate("42501"):
            ns.migrate("pro", "1", "2", conn=conn)
    # nothing moved
    assert ns.version(a) == "1" and ns.check(a) == (100, 0)
    assert ns.version(b) == "2" and ns.version(f) == "1"

    admin = connect(namespace_id=ns.id, role="mec_admin")
    assert_migrated(ns.migrate("pro", "1", "2", account_id=a, conn=admin), "pro", "1", "2", [a])
    assert ns.version(a) == "2" and ns.check(a) == (200, 0)


def test_migration_is_one_transaction(fresh, connect, expect_sqlstate):
    ns = fresh(catalog(plan("pro", 100, "1")))
    a, b = ns.provision(), ns.provision()
    ns.meter(a, 40)
    ns.load(catalog(plan("pro", 200, "2")))

    tx = connect(namespace_id=ns.id, autocommit=False)
    assert_migrated(ns.migrate("pro", "1", "2", conn=tx), "pro", "1", "2", [a, b])
    assert ns.version(a, conn=tx) == ns.version(b, conn=tx) == "2"
    # not visible to others before commit
    assert ns.version(a) == ns.version(b) == "1" and ns.check(a) == (100, 40)
    # within the transaction B has moved, so moving it from 1 fails; the transaction is lost whole
    with expect_sqlstate("ME409"):
        ns.migrate("pro", "1", "2", account_id=b, conn=tx)
    tx.rollback()
    assert ns.version(a) == ns.version(b) == "1"
    assert ns.row_versions(a) == ns.row_versions(b) == ["1"]
    assert ns.check(a) == (100, 40) and ns.check(b) == (100, 0)
    assert ns.meter(a, 60)["quantity_used"] == 100
    with expect_sqlstate("ME429"):
        ns.meter(a, 1)

    # and committed, every account moves at once
    assert_migrated(ns.migrate("pro", "1", "2", conn=tx), "pro", "1", "2", [a, b])
    tx.commit()
    assert ns.version(a) == ns.version(b) == "2" and ns.check(a) == (200, 100)


# ---------------------------------------------------------------- the catalog
def test_an_explicit_version_is_immutable(fresh, expect_sqlstate):
    v1 = catalog(plan("pro", 100, "1"), plan("team", 10, "1"), plan("free", 5))
    ns = fresh(v1)
    a = ns.provision()
    ns.load(v1)  # the identical document is fine
    # the implicit version of free may change; pro's and team's explicit "1" may not
    changed = catalog(plan("pro", 150, "1"), plan("team", 20, "1"), plan("free", 6))
    with expect_sqlstate("ME422") as err:
        ns.load(changed)
    problems = json.loads(err.value.diag.message_detail)["problems"]
    assert {p["path"] for p in problems} == {"$.plans[0].version", "$.plans[1].version"}, problems
    # nothing changed
    assert ns.check(ns.provision()) == (100, 0)
    assert ns.check(ns.provision("team")) == (10, 0)
    assert ns.check(ns.provision("free")) == (5, 0)
    assert ns.stored_versions() == ["1"] and ns.version(a) == "1"

    # bumping the version is the way
    ns.load(catalog(plan("pro", 150, "2"), plan("team", 10, "1"), plan("free", 6)))
    assert ns.check(ns.provision()) == (150, 0)
    # an older explicit version stays immutable once it is no longer current
    with expect_sqlstate("ME422") as err:
        ns.load(catalog(plan("pro", 999, "1"), plan("team", 10, "1"), plan("free", 6)))
    assert [p["path"] for p in json.loads(err.value.diag.message_detail)["problems"]] == ["$.plans[0].version"]
    assert ns.check(ns.provision()) == (150, 0) and ns.check(a) == (100, 0)


def test_apply_now_moves_accounts_to_the_current_version(fresh):
    ns = fresh(catalog(plan("pro", 100, "1"), plan("free", 5, "1")))
    a, b = ns.provision(), ns.provision()
    f = ns.provision("free")
    ns.meter(a, 30)
    ns.load(catalog(plan("pro", 200, "2"), plan("free", 5, "1"), apply="now"))
    assert ns.version(a) == ns.version(b) == "2"
    assert ns.row_versions(a) == ["2"]
    assert ns.check(a) == (200, 30) and ns.check(b) == (200, 0)
    assert ns.version(f) == "1" and ns.check(f) == (5, 0)
    assert ns.stored_versions() == ["1", "2"]
    # the old version is still there to go back to
    assert_migrated(ns.migrate("pro", "2", "1", account_id=b), "pro", "2", "1", [b])
    assert ns.check(b) == (100, 0)

    # an implicit version redefined with "apply": "now" changes the accounts on it in place
    other = fresh(catalog(plan("pro", 100)))
    c = other.provision()
    other.load(catalog(plan("pro", 150), apply="now"))
    assert other.version(c) == "1" and other.check(c) == (150, 0)
