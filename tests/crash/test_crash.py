"""Crash tests: metering, reservations and leases under load, through SQL and through the gateway,
when the postmaster is killed -9 mid-run, and when the gateway is killed -9 mid-request with its clients retrying. Every call that
returned success is in the ledger exactly once; none that failed is there; a replay of every key
counts nothing twice; every counter equals the ledger. Figures go to docs/reliability.md."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid

import psycopg
from psycopg.types.json import Jsonb

from crash_helpers import (REPO, HttpMeters, bring_back, check_counters_equal_ledger, connect, gateway_pid,
                           kill_postmaster, ledger_counts, wait_for)

CATALOG = {
    "resources": [{"resource_type": "units", "kind": "metered"}, {"resource_type": "scarce", "kind": "metered"},
                  {"resource_type": "slots", "kind": "concurrency"},
                  # an hour's window: the whole test runs inside one, so the limit is exact to check
                  {"resource_type": "rpm", "kind": "rate", "window_seconds": 3600}],
    "plans": [{"plan_id": "p", "default": True, "entitlements": {
        "units": {"limit": 1000000000}, "scarce": {"limit": 40, "grace": 0}, "slots": {"limit": 4},
        "rpm": {"limit": 30, "grace": 0}}}],
}
RPM_LIMIT = 30


def new_namespace(e) -> tuple[str, list[str]]:
    ns = str(uuid.uuid4())
    conn = psycopg.connect(e["MEC_DATABASE_URL"], autocommit=True)
    conn.execute("SELECT mec.create_namespace(p_name => 'crash', p_namespace_id => %s::uuid)", (ns,))
    conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
    conn.execute("SELECT mec.load_catalog(%s)", (Jsonb(CATALOG),))
    accounts = [str(uuid.uuid4()) for _ in range(3)]
    for a in accounts:
        conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (a,))
    conn.close()
    return ns, accounts


METER = ("SELECT mec.meter_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
         "p_resource_type => %s, p_quantity => %s)")


def test_postmaster_killed_mid_load(mec_env):
    e = mec_env
    ns, accounts = new_namespace(e)
    lock = threading.Lock()
    acked: dict[str, tuple] = {}      # key -> (account, resource, qty, consumption_id)
    refused: dict[str, tuple] = {}    # ME429: must not be recorded
    unknown: dict[str, tuple] = {}    # in flight when the server died
    committed: dict[str, str] = {}    # reservation key -> reservation_id
    sql_errors: list[BaseException] = []
    stop = threading.Event()

    def client(n: int) -> None:
        rnd = random.Random(n)
        conn = connect(e, ns)
        i = 0
        while not stop.is_set():
            i += 1
            account = rnd.choice(accounts)
            op = rnd.random()
            key = f"c{n}-{i}"
            try:
                if op < 0.6:
                    qty = rnd.randint(1, 5)
                    args = (key, account, "units", qty)
                    with lock:
                        unknown[key] = args
                    r = conn.execute(METER, args).fetchone()[0]
                    with lock:
                        del unknown[key]
                        acked[key] = (*args[1:], r["consumption_id"])
                elif op < 0.8:
                    args = (key, account, "scarce" if op < 0.7 else "rpm", 1)
                    with lock:
                        unknown[key] = args
                    try:
                        r = conn.execute(METER, args).fetchone()[0]
                        with lock:
                            del unknown[key]
                            acked[key] = (*args[1:], r["consumption_id"])
                    except psycopg.OperationalError:
                        raise
                    except psycopg.Error as err:
                        if err.sqlstate != "ME429":
                            raise
                        with lock:
                            del unknown[key]
                            refused[key] = args
                elif op < 0.9:
                    res = conn.execute("SELECT mec.reserve_consumption(p_idempotency_key => %s, p_account_id => "
                                       "%s::uuid, p_resource_type => 'units', p_quantity => 3, p_ttl_seconds => 600)",
                                       (key, account)).fetchone()[0]
                    conn.execute("SELECT mec.commit_reservation(p_reservation_id => %s::uuid, "
                                 "p_actual_quantity => 2)", (res["reservation_id"],))
                    with lock:
                        committed[key] = res["reservation_id"]
                else:
                    lease = conn.execute("SELECT mec.acquire_lease(p_account_id => %s::uuid, p_resource_type => "
                                         "'slots', p_holder => %s, p_ttl_seconds => 600)",
                                         (account, key)).fetchone()[0]
                    conn.execute("SELECT mec.release_lease(%s::uuid)", (lease["lease_id"],))
            except psycopg.OperationalError:
                return  # the server is gone
            except psycopg.Error as err:
                if err.sqlstate == "ME429":
                    continue  # a lease or reservation refused: nothing recorded
                with lock:
                    sql_errors.append(err)  # anything else is a failure, not the crash
                return

    # Beside the SQL clients, HTTP clients meter through the gateway and retry a failed call with
    # the same key until it is answered: through the database's crash and recovery, each key they
    # sent must land exactly once.
    http = HttpMeters(e, ns, accounts, prefix="w", seed=1000, timeout=10, patience=120)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    http.start(2)
    time.sleep(2.0)
    kill_postmaster(e)
    for t in threads:
        t.join(30)
    seconds = bring_back(e)
    time.sleep(1.0)  # the HTTP clients finish their retries against the recovered database
    stop.set()
    http.finish(150)
    conn = connect(e, ns)
    # Rate windows are unlogged: the crash emptied them (the next event rebuilds each from the ledger).
    assert conn.execute("SELECT count(*) FROM mec_data.rate_windows WHERE namespace_id = %s",
                        (ns,)).fetchone()[0] == 0, "an unlogged rate window survived the crash"

    assert not sql_errors, sql_errors
    assert len(acked) > 100, f"the load recorded too little before the kill: {len(acked)}"
    assert len(http.acked) > 20, f"the HTTP load recorded too little: {len(http.acked)}"
    assert http.retries > 0, "the crash hit no HTTP call: that half proved nothing"
    http_counts = ledger_counts(conn, ns, list(http.acked))
    assert all(http_counts.get(k) == 1 for k in http.acked), "an HTTP call is missing or twice in the ledger"
    for key, (_, qty, cid, _) in http.acked.items():
        row = conn.execute("SELECT consumption_id::text, quantity FROM mec.consumption WHERE namespace_id = %s "
                           "AND idempotency_key = %s", (ns, key)).fetchone()
        assert row == (cid, qty), (key, row, cid, qty)
    counts = ledger_counts(conn, ns, list(acked) + list(refused) + list(unknown))
    assert all(counts.get(k) == 1 for k in acked), "an acknowledged call is missing or twice in the ledger"
    assert not any(k in counts for k in refused), "a refused call was recorded"
    for key, (_, _, _, cid) in acked.items():
        assert conn.execute("SELECT consumption_id::text FROM mec.consumption WHERE namespace_id = %s "
                            "AND idempotency_key = %s", (ns, key)).fetchone()[0] == cid
    for key, rid in committed.items():
        state = conn.execute("SELECT state FROM mec.reservations WHERE namespace_id = %s "
                             "AND reservation_id = %s::uuid", (ns, rid)).fetchone()
        assert state and state[0] == "committed", (key, state)
    check_counters_equal_ledger(conn, ns)

    # Replay every key: acknowledged ones answer as the first time, the in-flight ones land once.
    for key, (account, resource, qty, cid) in acked.items():
        r = conn.execute(METER, (key, account, resource, qty)).fetchone()[0]
        assert r["duplicate"] is True and r["consumption_id"] == cid
    for key, args in unknown.items():
        try:
            conn.execute(METER, args)
        except psycopg.Error as err:
            assert err.sqlstate == "ME429", err
    counts = ledger_counts(conn, ns, list(acked) + list(unknown))
    assert all(n == 1 for n in counts.values())
    check_counters_equal_ledger(conn, ns)
    scarce = conn.execute("SELECT account_id, sum(quantity) FROM mec_data.consumption WHERE namespace_id = %s "
                          "AND resource_type = 'scarce' GROUP BY 1", (ns,)).fetchall()
    assert all(total <= 40 for _, total in scarce), scarce
    # The rebuilt rate windows admit exactly up to the limit, counting what was admitted before the
    # crash: a crash neither loses a window's requests nor lets more through.
    for account in accounts:
        for i in range(RPM_LIMIT + 1):
            try:
                conn.execute(METER, (f"after-{account}-{i}", account, "rpm", 1))
            except psycopg.Error as err:
                assert err.sqlstate == "ME429", err
                break
        total = conn.execute("SELECT coalesce(sum(quantity), 0) FROM mec_data.consumption WHERE namespace_id = %s "
                             "AND account_id = %s::uuid AND resource_type = 'rpm'", (ns, account)).fetchone()[0]
        check = conn.execute("SELECT mec.check_entitlement(p_account_id => %s::uuid, p_resource_type => 'rpm')",
                             (account,)).fetchone()[0]
        assert total == RPM_LIMIT == check["quantity_used"], (account, total, check)
    active = conn.execute("SELECT account_id, count(*) FROM mec_data.leases WHERE namespace_id = %s "
                          "AND released_at IS NULL AND expires_at > now() GROUP BY 1", (ns,)).fetchall()
    assert all(n <= 4 for _, n in active), active
    report("postmaster", acknowledged=len(acked), refused=len(refused), in_flight=len(unknown),
           reservations_committed=len(committed), http_acknowledged=len(http.acked),
           http_retried_attempts=http.retries, http_answered_as_duplicate=http.duplicates(),
           lost=0, twice=0, recovery_seconds=round(seconds, 1))


def test_gateway_killed_mid_request_clients_retry(mec_env):
    import requests

    e = mec_env
    ns, accounts = new_namespace(e)
    http = HttpMeters(e, ns, accounts, prefix="h", seed=100, timeout=5, patience=60)
    http.start(8)
    time.sleep(1.0)
    os.kill(gateway_pid(e), signal.SIGKILL)
    killed_at = time.time()
    wait_for(lambda: requests.get(e["MEC_GATEWAY_URL"] + "/ready", timeout=1).status_code == 200, 60,
             "the supervised gateway to come back")
    back = time.time() - killed_at
    time.sleep(1.0)
    http.finish(120)
    sent = http.acked
    assert len(sent) > 100, len(sent)
    conn = connect(e, ns)
    counts = ledger_counts(conn, ns, list(sent))
    assert all(counts.get(k) == 1 for k in sent), "a call is missing or twice in the ledger"
    total = conn.execute("SELECT sum(quantity) FROM mec_data.consumption WHERE namespace_id = %s", (ns,)).fetchone()[0]
    assert total == sum(q for _, q, _, _ in sent.values())
    check_counters_equal_ledger(conn, ns)
    assert http.retries > 0, "the kill hit no request: the test proved nothing"
    report("gateway", calls=len(sent), retried_attempts=http.retries, answered_as_duplicate=http.duplicates(),
           lost=0, twice=0, gateway_back_seconds=round(back, 1))


def report(name: str, **figures) -> None:
    out = REPO / ".mec" / "crash-figures.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    data[name] = figures
    out.write_text(json.dumps(data, indent=1))
    print(f"crash {name}: {figures}")
