"""Faults between the gateway and the database, each ending with the exactly-once checks: more
clients than pool connections (bounded queueing, then 503 PGRST003 with Retry-After, never a hang)
and a statement timeout while a row is locked (refused, nothing recorded). Clients retry with the
same keys; every call ends up in the ledger once."""

from __future__ import annotations

import os
import threading
import time
import uuid

import jwt
import psycopg
import pytest
import requests
from psycopg.types.json import Jsonb

from own_gateway import Gateway

pytestmark = [pytest.mark.gateway]

CATALOG = {"resources": [{"resource_type": "units", "kind": "metered"}],
           "plans": [{"plan_id": "p", "default": True, "entitlements": {"units": {"limit": 1000000}}}]}


@pytest.fixture
def tenant():
    url = os.environ["MEC_DATABASE_URL"]
    ns, account = str(uuid.uuid4()), str(uuid.uuid4())
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SELECT mec.create_namespace(p_name => 'faults', p_namespace_id => %s::uuid)", (ns,))
    conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
    conn.execute("SELECT mec.load_catalog(%s)", (Jsonb(CATALOG),))
    conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (account,))
    conn.execute("SELECT mec.meter_consumption(p_idempotency_key => 'first', p_account_id => %s::uuid, "
                 "p_resource_type => 'units', p_quantity => 1)", (account,))
    token = jwt.encode({"role": "mec_service", "namespace_id": ns, "exp": int(time.time()) + 600},
                       os.environ["MEC_JWT_SECRET"], algorithm="HS256")
    yield ns, account, token, conn
    conn.close()


def lock_counter(ns: str, account: str) -> psycopg.Connection:
    """A transaction holding the account's counter row: every meter call of it waits."""
    locker = psycopg.connect(os.environ["MEC_DATABASE_URL"])
    locker.execute("SELECT 1 FROM mec_data.usage_counters WHERE namespace_id = %s AND account_id = %s "
                   "FOR UPDATE", (ns, account))
    return locker


def meter(gw: Gateway, token: str, account: str, key: str, timeout: float = 15):
    return requests.post(f"{gw.url}/api/rpc/meter_consumption", timeout=timeout,
                         json={"p_idempotency_key": key, "p_account_id": account, "p_resource_type": "units",
                               "p_quantity": 1},
                         headers={"Authorization": f"Bearer {token}"})


def exactly_once(conn, ns: str, keys: list[str]) -> None:
    counts = dict(conn.execute("SELECT idempotency_key, count(*) FROM mec_data.consumption WHERE namespace_id = %s "
                               "AND idempotency_key = ANY(%s) GROUP BY 1", (ns, keys)).fetchall())
    assert all(counts.get(k) == 1 for k in keys), counts
    used = conn.execute("SELECT sum(used) FROM mec_data.usage_counters WHERE namespace_id = %s", (ns,)).fetchone()[0]
    total = conn.execute("SELECT sum(quantity) FROM mec_data.consumption WHERE namespace_id = %s", (ns,)).fetchone()[0]
    assert used == total


def test_more_clients_than_connections_queue_then_503_never_hang(tenant):
    ns, account, token, conn = tenant
    # one call per connection: group commit (on by default) would let several calls share one
    # (tests/gateway/test_group_commit.py); this test is about the pool's queue
    gw = Gateway(MEC_POOL_SIZE="2", MEC_POOL_TIMEOUT_MS="300", MEC_GROUP_COMMIT_US="0")
    try:
        locker = lock_counter(ns, account)
        answers: dict[str, tuple[int, float, str | None]] = {}
        lock = threading.Lock()

        def client(key: str) -> None:
            started = time.time()
            r = meter(gw, token, account, key)
            with lock:
                answers[key] = (r.status_code, time.time() - started, r.headers.get("retry-after"))

        keys = [f"q{i}" for i in range(8)]
        threads = [threading.Thread(target=client, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        time.sleep(1.5)
        # the two on the pool's connections wait for the lock; the rest were answered, quickly
        refused = {k: a for k, a in answers.items() if a[0] == 503}
        assert len(refused) == 6, answers
        assert all(seconds < 1.5 and retry == "1" for _, seconds, retry in refused.values()), refused
        locker.rollback()
        locker.close()
        for t in threads:
            t.join(15)
        assert sorted(a[0] for a in answers.values()) == [200, 200] + [503] * 6
        # the refused ones retry with their keys
        for k in refused:
            assert meter(gw, token, account, k).status_code == 200
        exactly_once(conn, ns, keys)
    finally:
        gw.stop()


def test_a_statement_timeout_records_nothing(tenant):
    ns, account, token, conn = tenant
    gw = Gateway(MEC_STATEMENT_TIMEOUT_MS="400")
    try:
        locker = lock_counter(ns, account)
        started = time.time()
        r = meter(gw, token, account, "t1")
        assert r.status_code == 500 and r.json()["code"] == "57014", r.text
        assert "statement timeout" in r.json()["message"] and "idempotency key" in r.json()["hint"], r.text
        assert time.time() - started < 3
        assert conn.execute("SELECT count(*) FROM mec_data.consumption WHERE namespace_id = %s "
                            "AND idempotency_key = 't1'", (ns,)).fetchone()[0] == 0
        locker.rollback()
        locker.close()
        assert meter(gw, token, account, "t1").json()["duplicate"] is False
        assert meter(gw, token, account, "t1").json()["duplicate"] is True
        exactly_once(conn, ns, ["t1"])
    finally:
        gw.stop()
