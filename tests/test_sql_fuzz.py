"""A SQL-level fuzz of every function of schema mec: each argument in turn gets hostile values
(NULL, huge and tiny numbers, NaN, ±Infinity, -0, 1 MB strings, control and non-Latin characters,
injection text, odd timestamps, deep and large JSON, odd arrays) while the others are valid. Every
call must succeed or fail with a documented SQLSTATE — never an internal error, a constraint
violation that validation should have caught, or a lost connection — and a failed call must leave
the namespace's data exactly as it was."""

from __future__ import annotations

import json
import os
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

CATALOG = {"resources": [{"resource_type": "m", "kind": "metered"}, {"resource_type": "c", "kind": "concurrency"}],
           "plans": [{"plan_id": "a", "default": True, "entitlements": {"m": {"limit": 1000}, "c": {"limit": 5}}}]}

# What a caller may see: the documented SQLSTATEs, and PostgreSQL's own refusals of input it cannot
# even convert to the argument's type (or parse: 54001 for JSON nested past the stack).
DOCUMENTED = {"22023", "42501", "P0002", "23505", "ME400", "ME402", "ME404", "ME409", "ME410", "ME422", "ME429"}
INPUT = {"22P02", "22003", "22008", "22007", "54001", "22P05", "42704"}

HOSTILE = {
    "numeric": [None, "0", "-0", "-1", "1e17", "1e300", "NaN", "Infinity", "-Infinity", "1e-30", "0.12345678901"],
    "text": [None, "", "   ", "x" * 1_000_000, "\x01\x02\x7f", "é漢字🙂", "'; SELECT 1; --", "\\"],
    "uuid": [None, "00000000-0000-0000-0000-000000000000", str(uuid.UUID(int=1))],
    "integer": [None, 0, -1, 2147483647, -2147483648],
    "timestamp with time zone": [None, "infinity", "-infinity", "1970-01-01Z", "0001-01-01Z", "294276-12-31Z",
                                 "2200-01-01Z"],
    "jsonb": [None, "{}", "[]", "null", '"x"', "[" * 5000 + "]" * 5000, json.dumps({"a": "x" * 1_000_000}),
              json.dumps(list(range(10_000))), '{"a": 1e400}'],
    "text[]": [None, "{}", "{NULL}", '{""}', "{" + ",".join(["x"] * 1000) + "}"],
    "boolean": [None, True, False],
}

TABLES = ["accounts", "entitlements", "usage_counters", "consumption", "leases", "reservations",
          "idempotency_keys", "webhook_endpoints", "webhook_events", "alert_crossings", "namespace_secrets",
          "catalogs", "plans", "plan_entitlements", "resource_types"]


@pytest.fixture(scope="module")
def world():
    conn = psycopg.connect(os.environ["MEC_DATABASE_URL"], autocommit=True)
    ns = str(uuid.uuid4())
    conn.execute("SELECT mec.create_namespace(p_name => 'fuzz', p_namespace_id => %s::uuid)", (ns,))
    conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
    conn.execute("SELECT mec.load_catalog(%s)", (Jsonb(CATALOG),))
    functions = conn.execute(
        """SELECT p.proname, p.proargnames, array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t),
                  p.pronargdefaults
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'mec'
            ORDER BY 1""").fetchall()
    yield conn, ns, functions
    conn.close()


def fixtures(conn, ns):
    """Valid arguments by name: a fresh account with a lease, a held reservation and an endpoint."""
    account = str(uuid.uuid4())
    one = lambda q, *a: conn.execute(q, a).fetchone()[0]  # noqa: E731
    one("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'a')", account)
    lease = one("SELECT mec.acquire_lease(p_account_id => %s::uuid, p_resource_type => 'c', p_holder => 'h', "
                "p_ttl_seconds => 600)", account)["lease_id"]
    reservation = one("SELECT mec.reserve_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                      "p_resource_type => 'm', p_quantity => 1, p_ttl_seconds => 600)",
                      str(uuid.uuid4()), account)["reservation_id"]
    endpoint = one("SELECT mec.create_webhook_endpoint(p_url => 'https://example.com/h')")["endpoint_id"]
    return {
        "p_account_id": account, "p_resource_type": "m", "p_quantity": "1", "p_plan_id": "a", "p_holder": "h",
        "p_ttl_seconds": 60, "p_reason": "fuzz", "p_role": "mec_fuzz_nobody", "p_namespace_id": ns,
        "p_api_role": "mec_service", "p_rows": "[]", "p_reservation_id": reservation, "p_actual_quantity": "1",
        "p_name": "fuzz", "p_settings": "{}", "p_url": "https://example.com/hook", "p_endpoint_id": endpoint,
        "p_catalog": json.dumps(CATALOG), "p_events": "[]", "p_items": '[{"resource_type": "m", "quantity": 1}]',
        "p_payload": "{}", "p_authorization": "Bearer nope", "p_signature": "t=1,v1=00", "p_lease_id": lease,
        "p_delivery_id": str(uuid.uuid4()), "p_anchor_day": 1, "p_limit": 10, "p_overdue": False,
        "p_identifier": "mec_fuzz", "p_status": 200, "p_from": "2026-01-01Z", "p_requested_qty": "1",
        "p_event": json.dumps({"id": "evt_fuzz", "type": "fuzz.event", "created": 1, "data": {"object": {}}}),
    }


def fingerprint(conn, ns) -> list:
    return [conn.execute(f"SELECT count(*), coalesce(sum(hashtext(t::text)), 0) FROM mec_data.{t} t "
                         "WHERE namespace_id = %s", (ns,)).fetchone() for t in TABLES]


def test_every_function_refuses_hostile_arguments_cleanly(world):
    conn, ns, functions = world
    bad: list[str] = []
    calls = 0
    shared = fixtures(conn, ns)
    # these use up what they are given: each call gets fresh fixtures
    consuming = {"forget_account", "commit_reservation", "cancel_reservation", "release_lease",
                 "delete_webhook_endpoint"}
    for name, arg_names, arg_types, n_defaults in functions:
        if not arg_names:
            continue
        required = len(arg_names) - n_defaults
        for i, (arg, typ) in enumerate(zip(arg_names, arg_types)):
            if typ not in HOSTILE:
                continue
            for value in HOSTILE[typ]:
                base = fixtures(conn, ns) if name in consuming else shared
                args = {a: base.get(a) for a in arg_names[:required]}
                args[arg] = value
                if name == "create_namespace" and arg != "p_namespace_id":
                    args["p_namespace_id"] = str(uuid.uuid4())
                key_args = [f"{a} => %({a})s::{t}" for a, t in zip(arg_names, arg_types) if a in args]
                sql = f"SELECT mec.{name}({', '.join(key_args)})"
                before = fingerprint(conn, ns)
                calls += 1
                try:
                    conn.execute(sql, args)
                except psycopg.Error as e:
                    if conn.closed or e.sqlstate is None:
                        bad.append(f"{name}({arg}={str(value)[:40]!r}): connection lost: {e}")
                        conn = psycopg.connect(os.environ["MEC_DATABASE_URL"], autocommit=True)
                        conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
                        continue
                    if e.sqlstate not in DOCUMENTED | INPUT:
                        bad.append(f"{name}({arg}={str(value)[:40]!r}): {e.sqlstate} {str(e)[:120]}")
                    elif fingerprint(conn, ns) != before:
                        bad.append(f"{name}({arg}={str(value)[:40]!r}): failed with {e.sqlstate} but changed data")
    assert calls > 500, calls
    assert not bad, f"{len(bad)} of {calls} calls misbehaved:\n" + "\n".join(bad)
