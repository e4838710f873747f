"""Security issue, finding 2: a SQL caller could act in any namespace by naming it.

The namespace now comes from who opened the session: the gateway's authenticator, a superuser and
the database owner name it with the claims or `mec.namespace_id`; any other login role acts only
in the namespace the database owner bound it to with `mec.bind_role` (docs/security.md). Each test
logs in as a real login role of its own, as a vendor's backend would."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

pytestmark = pytest.mark.sql


def _err(conn, sql: str, params=()) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    return e.value


def _count(db, namespace: str, key: str) -> int:
    db.execute("SELECT set_config('mec.namespace_id', %s, false)", (namespace,))
    return db.execute("SELECT count(*) FROM mec.consumption WHERE idempotency_key = %s",
                      (key,)).fetchone()[0]


@pytest.fixture
def two_tenants(security_namespace, new_account):
    a, b = security_namespace(), security_namespace()
    return {"A": a, "B": b,
            "a1": new_account("basic", namespace_id=a), "a2": new_account("basic", namespace_id=a),
            "b1": new_account("basic", namespace_id=b)}


METER = ("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s, "
         "p_resource_type => 'runs', p_quantity => 1)")


def test_an_unbound_login_role_cannot_use_pg_mec(app_role, two_tenants, fresh_key):
    _, connect = app_role()
    conn = connect()
    conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (two_tenants["A"],))
    e = _err(conn, METER, (fresh_key(), two_tenants["a1"]))
    assert e.sqlstate == "42501" and "not bound" in str(e), e
    assert "mec.bind_role" in (e.diag.message_hint or "")
    assert _err(conn, "SELECT mec.current_namespace()").sqlstate == "42501"
    assert _err(conn, "SELECT count(*) FROM mec.accounts").sqlstate == "42501"


def test_the_reported_set_local_and_set_config_are_refused(db, app_role, two_tenants, fresh_key):
    role, connect = app_role()
    bound = db.execute("SELECT mec.bind_role(p_role => %s, p_namespace_id => %s, p_api_role => 'mec_service')",
                       (role, two_tenants["A"])).fetchone()[0]
    assert bound["created"] is True and bound["namespace_id"] == two_tenants["A"]
    conn = connect(autocommit=False)

    # The report: BEGIN; SET LOCAL ROLE mec_service; SET LOCAL mec.namespace_id = '<B>'; meter B's account.
    key = fresh_key("t13-k")
    conn.execute("SET LOCAL ROLE mec_service")
    conn.execute("SELECT set_config('mec.namespace_id', %s, true)", (two_tenants["B"],))
    e = _err(conn, METER, (key, two_tenants["b1"]))
    assert e.sqlstate == "42501" and "may not act in namespace" in str(e), e
    conn.rollback()

    # The same with claims set mid-transaction.
    conn.execute("SET LOCAL ROLE mec_service")
    conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                 (json.dumps({"role": "mec_service", "namespace_id": two_tenants["B"]}),))
    e = _err(conn, METER, (key, two_tenants["b1"]))
    assert e.sqlstate == "42501", e
    conn.rollback()

    # Views and current_namespace() refuse it the same way (row-level security asks the same place).
    conn.execute("SELECT set_config('mec.namespace_id', %s, true)", (two_tenants["B"],))
    assert _err(conn, "SELECT count(*) FROM mec.consumption").sqlstate == "42501"
    conn.rollback()
    assert _count(db, two_tenants["B"], key) == 0, "something was recorded in namespace B"

    # Its own namespace works, named or not; B's account is simply not there (ME404).
    conn.autocommit = True
    r = conn.execute(METER, (key, two_tenants["a1"])).fetchone()[0]
    assert r["duplicate"] is False
    conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (two_tenants["A"],))
    assert conn.execute("SELECT mec.current_namespace()").fetchone()[0] == uuid.UUID(two_tenants["A"])
    assert _err(conn, METER, (fresh_key(), two_tenants["b1"])).sqlstate == "ME404"
    assert _count(db, two_tenants["A"], key) == 1


def test_a_bound_role_acts_at_most_as_the_role_it_was_bound_as(db, app_role, two_tenants):
    role, connect = app_role()
    db.execute("SELECT mec.bind_role(%s, %s, 'mec_service')", (role, two_tenants["A"]))
    db.execute(f'GRANT mec_admin TO "{role}"')
    conn = connect()
    conn.execute("SET ROLE mec_admin")
    e = _err(conn, "SELECT mec.load_catalog('{}')")
    assert e.sqlstate == "42501" and "bound as mec_service" in str(e), e
    conn.execute("SET ROLE mec_service")
    assert conn.execute("SELECT mec.check_entitlement(%s, 'runs') ->> 'decision'",
                        (two_tenants["a1"],)).fetchone()[0] == "allow"


def test_a_mec_user_binding_pins_the_account(db, app_role, two_tenants):
    role, connect = app_role(grant=None)
    r = db.execute("SELECT mec.bind_role(%s, %s, 'mec_user', %s)",
                   (role, two_tenants["A"], two_tenants["a1"])).fetchone()[0]
    assert r["granted"] is True and r["account_id"] == two_tenants["a1"]
    conn = connect()
    summary = conn.execute("SELECT mec.usage_summary(%s)", (two_tenants["a1"],)).fetchone()[0]
    assert summary["account_id"] == two_tenants["a1"]
    assert _err(conn, "SELECT mec.usage_summary(%s)", (two_tenants["a2"],)).sqlstate == "42501"
    conn.execute("SELECT set_config('mec.account_id', %s, false)", (two_tenants["a2"],))
    e = _err(conn, "SELECT mec.usage_summary(%s)", (two_tenants["a2"],))
    assert e.sqlstate == "42501" and "bound to account" in str(e), e
    conn.execute("RESET mec.account_id")
    accounts = conn.execute("SELECT array_agg(account_id::text) FROM mec.accounts").fetchone()[0]
    assert accounts == [two_tenants["a1"]], "a mec_user binding sees only its account's rows"


def test_several_bindings_need_a_choice_and_unbind_ends_them(db, app_role, two_tenants):
    role, connect = app_role()
    db.execute("SELECT mec.bind_role(%s, %s)", (role, two_tenants["A"]))
    db.execute("SELECT mec.bind_role(%s, %s)", (role, two_tenants["B"]))
    conn = connect()
    e = _err(conn, "SELECT mec.current_namespace()")
    assert e.sqlstate == "42501" and "2 namespaces" in str(e), e
    conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (two_tenants["B"],))
    assert str(conn.execute("SELECT mec.current_namespace()").fetchone()[0]) == two_tenants["B"]
    r = db.execute("SELECT mec.unbind_role(%s, %s)", (role, two_tenants["B"])).fetchone()[0]
    assert r["unbound"] == 1
    # The unbinding reaches the open session at its next statement.
    e = _err(conn, "SELECT mec.current_namespace()")
    assert e.sqlstate == "42501" and "may not act in namespace" in str(e), e
    conn.execute("RESET mec.namespace_id")
    assert str(conn.execute("SELECT mec.current_namespace()").fetchone()[0]) == two_tenants["A"]


def test_trusted_sessions_still_name_the_namespace(connect, authenticator_url, two_tenants):
    # The gateway's authenticator: the claims name the namespace (what every HTTP request does).
    conn = connect(url=authenticator_url, namespace_id="")
    conn.execute("SET ROLE mec_service")
    conn.execute("SELECT set_config('request.jwt.claims', %s, false)",
                 (json.dumps({"role": "mec_service", "namespace_id": two_tenants["B"]}),))
    assert str(conn.execute("SELECT mec.current_namespace()").fetchone()[0]) == two_tenants["B"]
    # A superuser (the platform operator in psql) names any namespace with mec.namespace_id.
    op = connect(namespace_id=two_tenants["A"])
    assert str(op.execute("SELECT mec.current_namespace()").fetchone()[0]) == two_tenants["A"]


@pytest.mark.parametrize("case, args, code", [
    ("a superuser", ("postgres", "A", "mec_service", None), "22023"),
    ("pg_mec's own role", ("mec_service", "A", "mec_service", None), "22023"),
    ("the authenticator", ("mec_authenticator", "A", "mec_service", None), "22023"),
    ("an unknown role", ("no_such_role_t13", "A", "mec_service", None), "ME404"),
    ("not an API role", ("APP", "A", "postgres", None), "22023"),
    ("mec_user without account", ("APP", "A", "mec_user", None), "22023"),
    ("an account for mec_service", ("APP", "A", "mec_service", "a1"), "22023"),
    ("an unknown namespace", ("APP", "00000000-0000-4000-8000-0000000000ff", "mec_service", None), "ME404"),
])
def test_bind_role_refuses_what_would_not_bind(db, app_role, two_tenants, case, args, code):
    role, _ = app_role()
    r, ns, api_role, account = args
    r = role if r == "APP" else r
    ns = two_tenants.get(ns, ns)
    account = two_tenants.get(account) if account else None
    e = _err(db, "SELECT mec.bind_role(%s, %s::uuid, %s, %s::uuid)", (r, ns, api_role, account))
    assert e.sqlstate == code, (case, e)
    assert db.execute("SELECT count(*) FROM mec_data.role_bindings WHERE role_name = %s",
                      (r,)).fetchone()[0] == 0


def test_api_roles_cannot_bind(connect, app_role, two_tenants):
    role, _ = app_role()
    conn = connect(namespace_id=two_tenants["A"], role="mec_admin")
    assert _err(conn, "SELECT mec.bind_role(%s, %s)", (role, two_tenants["A"])).sqlstate == "42501"
    assert _err(conn, "SELECT * FROM mec_data.role_bindings").sqlstate == "42501"
