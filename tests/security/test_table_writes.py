"""Security issue, finding 3: service roles wrote pg_mec's tables directly.

The API roles may read `mec_data` (through row-level security) but not write, truncate or lock
it; pg_mec's functions write as `mec_owner`, with a search path the caller cannot steer. Every
statement here runs as a real login role bound with `mec.bind_role`, and as each API role."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.sql

TABLES = ["namespaces", "namespace_secrets", "catalogs", "resource_types", "plans",
          "plan_entitlements", "plan_versions", "accounts", "entitlements", "usage_counters", "consumption",
          "consumption_rollups",
          "leases", "reservations", "idempotency_keys", "audit_log", "role_bindings",
          "stripe_events", "stripe_subscriptions", "stripe_usage_outbox", "stripe_usage_items",
          "auth0_events", "webhook_endpoints", "webhook_events", "webhook_deliveries", "alert_crossings",
          "rate_windows", "rate_entries"]

# Statements that must be refused with 42501 on every table.
WRITES = {
    "update": "UPDATE mec_data.{t} SET namespace_id = namespace_id",
    "delete": "DELETE FROM mec_data.{t}",
    "truncate": "TRUNCATE mec_data.{t}",
    "lock access exclusive": "LOCK TABLE mec_data.{t} IN ACCESS EXCLUSIVE MODE NOWAIT",
    "lock row exclusive": "LOCK TABLE mec_data.{t} IN ROW EXCLUSIVE MODE NOWAIT",
    "select for update": "SELECT 1 FROM mec_data.{t} FOR UPDATE",
}


def _refused(conn, sql: str) -> str | None:
    try:
        conn.execute("SAVEPOINT w")
        conn.execute(sql)
    except psycopg.Error as e:
        conn.execute("ROLLBACK TO SAVEPOINT w")
        return e.sqlstate
    conn.execute("ROLLBACK TO SAVEPOINT w")
    return None


@pytest.fixture
def bound(db, app_role, security_namespace, new_account):
    ns = security_namespace()
    account = new_account("basic", namespace_id=ns)
    role, connect = app_role(grant="mec_admin")
    db.execute("SELECT mec.bind_role(%s, %s, 'mec_admin')", (role, ns))
    return {"ns": ns, "account": account, "role": role, "connect": connect}


def test_the_list_is_every_table_of_mec_data(db):
    """A table added later is refused too only if it is listed here: the list must be whole."""
    tables = {r[0] for r in db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'mec_data'").fetchall()}
    assert tables == set(TABLES), {"unlisted": tables - set(TABLES), "gone": set(TABLES) - tables}


@pytest.mark.parametrize("api_role", ["mec_user", "mec_service", "mec_admin"])
def test_api_roles_cannot_write_truncate_or_lock_mec_data(bound, api_role):
    conn = bound["connect"](autocommit=False)
    conn.execute(f"SET ROLE {api_role}")
    got = {}
    for t in TABLES:
        for what, sql in WRITES.items():
            got[(t, what)] = _refused(conn, sql.format(t=t))
        got[(t, "insert")] = _refused(conn, f"INSERT INTO mec_data.{t} DEFAULT VALUES")
    allowed = sorted(k for k, code in got.items() if code != "42501")
    assert not allowed, f"{api_role} may still do: {allowed}"
    conn.rollback()


def test_the_reported_writes_are_refused_and_change_nothing(db, bound, fresh_key):
    conn = bound["connect"](autocommit=False)
    conn.execute("SET ROLE mec_service")
    conn.execute("SELECT mec.meter_consumption(%s, %s, 'runs', 3)", (fresh_key(), bound["account"]))
    conn.commit()
    conn.execute("SET ROLE mec_service")
    for sql in ["UPDATE mec_data.usage_counters SET used = 0",
                "INSERT INTO mec_data.consumption (namespace_id, idempotency_key, consumption_id, account_id,"
                " resource_type, quantity, occurred_at, period_start, billable)"
                f" VALUES ('{bound['ns']}', 'forged', gen_random_uuid(), '{bound['account']}', 'runs', -1000,"
                " now(), now(), true)",
                "UPDATE mec_data.reservations SET state = 'held'",
                "LOCK mec_data.usage_counters IN ACCESS EXCLUSIVE MODE NOWAIT",
                "LOCK mec_data.leases IN ACCESS EXCLUSIVE MODE NOWAIT",
                "LOCK mec_data.reservations IN ACCESS EXCLUSIVE MODE NOWAIT",
                "UPDATE mec.accounts SET payment_overdue = false",
                "SET ROLE mec_owner"]:
        assert _refused(conn, sql) == "42501", sql
    # Through a view: not updatable (0A000) or not permitted (42501), never done.
    assert _refused(conn, "INSERT INTO mec.accounts (namespace_id, account_id) VALUES "
                          f"('{bound['ns']}', gen_random_uuid())") in ("42501", "0A000")
    conn.rollback()
    db.execute("SELECT set_config('mec.namespace_id', %s, false)", (bound["ns"],))
    assert db.execute("SELECT quantity_used FROM mec.usage WHERE account_id = %s AND resource_type = 'runs'",
                      (bound["account"],)).fetchone()[0] == 3
    assert db.execute("SELECT count(*) FROM mec.consumption WHERE idempotency_key = 'forged'").fetchone()[0] == 0


def test_every_write_still_works_through_the_functions(db, bound, fresh_key):
    conn = bound["connect"]()
    a = bound["account"]
    conn.execute("SET ROLE mec_service")
    calls = [
        ("SELECT mec.meter_consumption(%s, %s, 'runs', 1)", (fresh_key(), a)),
        ("SELECT mec.meter_consumption_batch(jsonb_build_array(jsonb_build_object("
         "'idempotency_key', %s::text, 'account_id', %s::text, 'resource_type', 'runs', 'quantity', 1)))",
         (fresh_key(), a)),
        ("SELECT mec.acquire_lease(%s, 'jobs', 'w1')", (a,)),
        ("SELECT mec.reserve_consumption(%s, %s, 'runs', 5)", (fresh_key(), a)),
    ]
    out = [conn.execute(sql, p).fetchone()[0] for sql, p in calls]
    lease, reservation = out[2]["lease_id"], out[3]["reservation_id"]
    conn.execute("SELECT mec.renew_lease(%s)", (lease,))
    conn.execute("SELECT mec.release_lease(%s)", (lease,))
    conn.execute("SELECT mec.commit_reservation(%s, 2)", (reservation,))
    second = conn.execute("SELECT mec.reserve_consumption(%s, %s, 'runs', 1)", (fresh_key(), a)).fetchone()[0]
    conn.execute("SELECT mec.cancel_reservation(%s)", (second["reservation_id"],))

    conn.execute("SET ROLE mec_admin")
    conn.execute("SELECT mec.update_namespace_settings('{\"late_event_days\": 3}')")
    conn.execute("SELECT mec.set_override(%s, 'runs', 500, p_reason => 'pilot')", (a,))
    conn.execute("SELECT mec.grant_credits(%s, 'runs', 10)", (a,))
    conn.execute("SELECT mec.adjust_consumption(%s, %s, 'runs', -1, 'refund')", (fresh_key(), a))
    conn.execute("SELECT mec.expire_stale_leases()")
    other = conn.execute("SELECT mec.provision_plan(gen_random_uuid(), 'basic')").fetchone()[0]
    conn.execute("SELECT mec.forget_account(%s)", (other["account_id"],))
    used = conn.execute("SELECT (mec.check_entitlement(%s, 'runs') ->> 'quantity_used')::numeric",
                        (a,)).fetchone()[0]
    assert used == 1 + 1 + 2 - 1
    # The audit log names the API role that acted, not mec_owner.
    db.execute("SELECT set_config('mec.namespace_id', %s, false)", (bound["ns"],))
    actors = {r[0] for r in db.execute("SELECT DISTINCT actor FROM mec_data.audit_log WHERE namespace_id = %s",
                                       (bound["ns"],))}
    assert "mec_admin" in actors and "mec_owner" not in actors, actors


def test_statements_ignore_the_callers_search_path(db, bound, fresh_key):
    """Functions named like the ones pg_mec's statements call, in a schema first on the caller's
    path: were they resolved there, they would run as mec_owner. They are never called."""
    schema = f"evil_{bound['role']}"
    db.execute(f'CREATE SCHEMA "{schema}"')
    db.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO PUBLIC')
    try:
        for fn, ret in [("now", "timestamptz"), ("clock_timestamp", "timestamptz"),
                        ("gen_random_uuid", "uuid")]:
            db.execute(f'CREATE FUNCTION "{schema}".{fn}() RETURNS {ret} LANGUAGE plpgsql AS '
                       f"$$BEGIN RAISE EXCEPTION 'hijacked by {fn}'; END$$")
            db.execute(f'GRANT EXECUTE ON FUNCTION "{schema}".{fn}() TO PUBLIC')
        conn = bound["connect"]()
        conn.execute("SET ROLE mec_service")
        conn.execute(f'SET search_path = "{schema}", pg_catalog, mec')
        a = bound["account"]
        # Every kind of statement: metering (plain and batch), leases, reservations, reads.
        conn.execute("SELECT mec.meter_consumption(%s, %s, 'runs', 1)", (fresh_key(), a))
        conn.execute("SELECT mec.meter_consumption(%s, %s, 'runs', 1)", (fresh_key(), a))
        lease = conn.execute("SELECT mec.acquire_lease(%s, 'jobs')", (a,)).fetchone()[0]
        conn.execute("SELECT mec.release_lease(%s)", (lease["lease_id"],))
        r = conn.execute("SELECT mec.reserve_consumption(%s, %s, 'runs', 1)", (fresh_key(), a)).fetchone()[0]
        conn.execute("SELECT mec.commit_reservation(%s)", (r["reservation_id"],))
        conn.execute("SELECT mec.usage_summary(%s)", (a,))
        conn.execute("SET ROLE mec_admin")
        conn.execute("SELECT mec.set_override(%s, 'runs', 7)", (a,))
    finally:
        db.execute(f'DROP SCHEMA "{schema}" CASCADE')
