"""Security issue, finding 5: a batch reported an event rejected and recorded it anyway.

A quantity pg_mec cannot count exactly (more than 10 decimal places, or 10^17 and more) is refused
before anything is written, alone (22023) or as one rejected event of a batch; no counter may be
taken to a value the read path cannot read. The account keeps working afterwards."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.sql

HUGE = "9999999999999999999999999999"


@pytest.fixture
def tenant(connect, security_namespace, new_account):
    ns = security_namespace()
    account = new_account("basic", namespace_id=ns)
    conn = connect(namespace_id=ns, role="mec_service")
    return {"ns": ns, "account": account, "conn": conn}


def _state(conn, account):
    ledger = conn.execute("SELECT array_agg(idempotency_key ORDER BY idempotency_key), sum(quantity) "
                          "FROM mec.consumption WHERE account_id = %s", (account,)).fetchone()
    counters = conn.execute("SELECT coalesce(sum(used), 0) FROM mec_data.usage_counters "
                            "WHERE account_id = %s AND resource_type = 'un'", (account,)).fetchone()[0]
    return ledger[0] or [], ledger[1], counters


def _still_works(conn, account):
    assert conn.execute("SELECT mec.check_entitlement(%s, 'un') ->> 'decision'",
                        (account,)).fetchone()[0] == "allow"
    conn.execute("SELECT mec.usage_summary(%s)", (account,))
    r = conn.execute("SELECT mec.meter_consumption(%s, %s, 'un', 1)",
                     (f"after-{account}", account)).fetchone()[0]
    assert r["duplicate"] is False


def test_the_reported_batch_records_the_good_event_only(tenant):
    conn, a = tenant["conn"], tenant["account"]
    events = [{"idempotency_key": "x2-1", "account_id": a, "resource_type": "un", "quantity": "0.5"},
              {"idempotency_key": "x2-2", "account_id": a, "resource_type": "un", "quantity": HUGE}]
    r = conn.execute("SELECT mec.meter_consumption_batch(%s)", (Jsonb(events),)).fetchone()[0]
    assert (r["accepted"], r["rejected"]) == (1, 1), r
    bad = r["results"][1]
    assert bad["status"] == "rejected" and bad["error"]["code"] == "22023", bad
    keys, total, counter = _state(conn, a)
    assert keys == ["x2-1"] and total == counter == 0.5, (keys, total, counter)
    _still_works(conn, a)


@pytest.mark.parametrize("quantity", [HUGE, "100000000000000000", "0.12345678901", 1e20,
                                      "1.23456789012345678901234567891"])
def test_uncountable_quantities_leave_no_trace(tenant, quantity):
    conn, a = tenant["conn"], tenant["account"]
    before = _state(conn, a)
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT mec.meter_consumption('single-bad', %s, 'un', %s::numeric)", (a, str(quantity)))
    assert e.value.sqlstate == "22023", e.value
    r = conn.execute("SELECT mec.meter_consumption_batch(%s)", (Jsonb([
        {"idempotency_key": "batch-bad", "account_id": a, "resource_type": "un", "quantity": quantity}]),)
    ).fetchone()[0]
    assert r["rejected"] == 1 and r["results"][0]["error"]["code"] == "22023", r
    assert _state(conn, a) == before
    _still_works(conn, a)


def test_a_counter_never_passes_the_bound(tenant):
    """Each quantity is below 10^17, but together they would pass it: the event that would take
    the counter there is refused (22023), alone or in a batch, and nothing of it stays."""
    conn, a = tenant["conn"], tenant["account"]
    near = "99999999999999999"  # 10^17 - 1
    conn.execute("SELECT mec.meter_consumption('near', %s, 'un', %s::numeric)", (a, near))
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT mec.meter_consumption('over', %s, 'un', 1.5)", (a,))
    assert e.value.sqlstate == "22023" and "10^17" in str(e.value), e.value
    r = conn.execute("SELECT mec.meter_consumption_batch(%s)", (Jsonb([
        {"idempotency_key": "fits", "account_id": a, "resource_type": "un", "quantity": "0.5"},
        {"idempotency_key": "over", "account_id": a, "resource_type": "un", "quantity": 1}]),)).fetchone()[0]
    assert (r["accepted"], r["rejected"]) == (1, 1), r
    keys, total, counter = _state(conn, a)
    assert keys == ["fits", "near"] and total == counter, (keys, total, counter)
    assert str(counter) == "99999999999999999.5"
    assert conn.execute("SELECT mec.check_entitlement(%s, 'un', 0.5) ->> 'decision'",
                        (a,)).fetchone()[0] == "allow"
    conn.execute("SELECT mec.usage_summary(%s)", (a,))
