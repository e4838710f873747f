"""Network faults between the gateway and PostgreSQL (a TCP proxy on loopback, tcp_proxy.py):
every connection cut mid-load, new connections refused for a while, slow traffic. The gateway
recovers without a restart (no dead pool), clients retry with the same keys, and every call is in
the ledger once with the counters equal to the ledger."""

from __future__ import annotations

import os
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import jwt
import psycopg
import pytest
import requests
from psycopg.types.json import Jsonb

from own_gateway import REPO, Gateway
from tcp_proxy import Proxy

pytestmark = [pytest.mark.gateway]

CATALOG = {"resources": [{"resource_type": "units", "kind": "metered"}],
           "plans": [{"plan_id": "p", "default": True, "entitlements": {"units": {"limit": 100000000}}}]}


def authenticator_url() -> str:
    for line in (REPO / ".mec" / "gateway.env").read_text().splitlines():
        if line.startswith("MEC_AUTHENTICATOR_URL="):
            return line.partition("=")[2]
    raise AssertionError("no MEC_AUTHENTICATOR_URL in .mec/gateway.env")


def through(proxy: Proxy, url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    hostport = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=(netloc[0] + "@" + hostport) if len(netloc) == 2 else hostport))


def test_cut_connections_refusals_and_delay(http):
    url = os.environ["MEC_DATABASE_URL"]
    conn = psycopg.connect(url, autocommit=True)
    ns, account = str(uuid.uuid4()), str(uuid.uuid4())
    conn.execute("SELECT mec.create_namespace(p_name => 'net', p_namespace_id => %s::uuid)", (ns,))
    conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (ns,))
    conn.execute("SELECT mec.load_catalog(%s)", (Jsonb(CATALOG),))
    conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (account,))
    token = jwt.encode({"role": "mec_service", "namespace_id": ns, "exp": int(time.time()) + 600},
                       os.environ["MEC_JWT_SECRET"], algorithm="HS256")
    db = urlsplit(authenticator_url())
    proxy = Proxy(db.hostname or "127.0.0.1", db.port or 5432)
    proxied = through(proxy, authenticator_url())
    gw = Gateway(MEC_AUTHENTICATOR_URL=proxied, MEC_DATABASE_URL=proxied, MEC_POOL_TIMEOUT_MS="1000",
                 MEC_CONNECT_TIMEOUT_MS="1000", MEC_REQUEST_TIMEOUT_MS="5000")
    done: dict[str, int] = {}
    statuses: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        s = requests.Session()
        i = 0
        while not stop.is_set():
            i += 1
            key = f"n{n}-{i}"
            deadline = time.time() + 60
            while True:
                try:
                    r = s.post(f"{gw.url}/api/rpc/meter_consumption", timeout=10,
                               json={"p_idempotency_key": key, "p_account_id": account,
                                     "p_resource_type": "units", "p_quantity": 1},
                               headers={"Authorization": f"Bearer {token}"})
                    with lock:
                        statuses.append(r.status_code)
                    if r.status_code == 200:
                        with lock:
                            done[key] = 1
                        break
                    assert r.status_code in (500, 502, 503, 504), r.text
                except requests.RequestException:
                    pass
                assert time.time() < deadline, "no recovery"
                time.sleep(0.05)

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        cut = proxy.cut()                      # every connection dies mid-traffic
        time.sleep(1.0)
        proxy.refusing = True                  # the database is unreachable for a while
        proxy.cut()
        time.sleep(1.5)
        proxy.refusing = False
        time.sleep(1.0)
        proxy.delay = 0.05                     # then slow
        time.sleep(1.0)
        proxy.delay = 0.0
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(90)
        assert cut > 0
        # answers during the faults were errors a client retries, never a hang; after them, 200s again
        assert statuses.count(200) == len(done) and len(done) > 50, (len(done), set(statuses))
        assert set(statuses) - {200, 500, 502, 503, 504} == set()
        assert requests.get(f"{gw.url}/ready", timeout=5).status_code == 200
        counts = dict(conn.execute("SELECT idempotency_key, count(*) FROM mec_data.consumption "
                                   "WHERE namespace_id = %s GROUP BY 1", (ns,)).fetchall())
        assert set(counts) == set(done) and set(counts.values()) == {1}
        used = conn.execute("SELECT sum(used) FROM mec_data.usage_counters WHERE namespace_id = %s",
                            (ns,)).fetchone()[0]
        assert used == len(done)
    finally:
        stop.set()
        gw.stop()
        proxy.close()
        conn.close()
