"""What the crash tests share: killing and bringing back the cluster, and the exactly-once checks
every crash test ends with."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]


def env() -> dict[str, str]:
    out = dict(os.environ)
    for line in (REPO / ".mec" / "env").read_text().splitlines():
        if line.startswith("export "):
            k, _, v = line.removeprefix("export ").partition("=")
            out[k] = v
    return out


def wait_for(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 (anything that is not up yet)
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def kill_postmaster(e: dict[str, str]) -> int:
    pid = int((Path(e["MEC_PGDATA"]) / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    return pid


def bring_back(e: dict[str, str]) -> float:
    """`scripts/mec up`, as a person would after a crash; seconds it took."""
    started = time.time()
    r = subprocess.run([str(REPO / "scripts" / "mec"), "up"], env={**e, "MEC_SKIP_APT": "1"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wait_for(lambda: psycopg.connect(e["MEC_DATABASE_URL"], connect_timeout=2).close() is None, 60, "the database")
    return time.time() - started


def connect(e: dict[str, str], namespace: str) -> psycopg.Connection:
    conn = psycopg.connect(e["MEC_DATABASE_URL"], autocommit=True, connect_timeout=5)
    conn.execute("SELECT set_config('mec.namespace_id', %s, false)", (namespace,))
    return conn


def check_counters_equal_ledger(conn: psycopg.Connection, namespace: str) -> int:
    """Every counter (all slots and stripes) equals its billable ledger rows plus its held
    reservations. Returns how many counters were compared."""
    rows = conn.execute(
        """
        WITH c AS (SELECT account_id, resource_type, period_start, sum(used) AS used
                     FROM mec_data.usage_counters WHERE namespace_id = %(ns)s GROUP BY 1, 2, 3),
             -- rate resources count in their sliding windows, not in counters (check_rate_windows)
             l AS (SELECT account_id, resource_type, period_start, sum(quantity) AS used
                     FROM mec_data.consumption WHERE namespace_id = %(ns)s AND billable
                      AND resource_type NOT IN (SELECT resource_type FROM mec_data.resource_types
                                                 WHERE namespace_id = %(ns)s AND kind = 'rate')
                     GROUP BY 1, 2, 3),
             h AS (SELECT account_id, resource_type, period_start, sum(quantity) AS used
                     FROM mec_data.reservations WHERE namespace_id = %(ns)s AND state = 'held' GROUP BY 1, 2, 3)
        SELECT coalesce(c.account_id, l.account_id), coalesce(c.resource_type, l.resource_type),
               coalesce(c.used, 0), coalesce(l.used, 0) + coalesce(h.used, 0)
          FROM c FULL JOIN l USING (account_id, resource_type, period_start)
          LEFT JOIN h USING (account_id, resource_type, period_start)
        """, {"ns": namespace}).fetchall()
    wrong = [r for r in rows if r[2] != r[3]]
    assert not wrong, f"counters differ from the ledger: {wrong}"
    return len(rows)


def ledger_counts(conn: psycopg.Connection, namespace: str, keys: list[str]) -> dict[str, int]:
    rows = conn.execute("SELECT idempotency_key, count(*) FROM mec_data.consumption "
                        "WHERE namespace_id = %s AND idempotency_key = ANY(%s) GROUP BY 1",
                        (namespace, keys)).fetchall()
    return {k: n for k, n in rows}


def record(results: dict[str, Any], lock, key: str, value: Any) -> None:
    with lock:
        results[key] = value


def gateway_pid(e: dict[str, str]) -> int:
    """The running gateway's pid: its pid file (the supervised gateway), else the mec-gateway
    process serving MEC_GATEWAY_ADDR (the systemd unit's)."""
    pid_file = REPO / ".mec" / "gateway.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().strip())
        if Path(f"/proc/{pid}").exists():
            return pid
    addr = e.get("MEC_GATEWAY_ADDR", "127.0.0.1:8000").encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (b"mec-gateway" in (proc / "cmdline").read_bytes()
                    and b"MEC_GATEWAY_ADDR=" + addr in (proc / "environ").read_bytes()):
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError("no running gateway found")


class HttpMeters:
    """Threads that meter `units` through the gateway as a mec_service of `ns`, each call with a key
    of its own, and retry a call the crash failed (502, 503, 504, a dropped connection) with the
    same key until it is answered, as the contract tells callers to. Any other answer or error is
    collected in `errors`, so it fails the test and not just its thread."""

    def __init__(self, e: dict[str, str], ns: str, accounts: list[str], prefix: str, seed: int,
                 timeout: float, patience: float):
        import jwt

        self.url = e["MEC_GATEWAY_URL"] + "/api/rpc/meter_consumption"
        self.token = jwt.encode({"role": "mec_service", "namespace_id": ns, "exp": int(time.time()) + 900},
                                e["MEC_JWT_SECRET"], algorithm="HS256")
        self.accounts, self.prefix, self.seed = accounts, prefix, seed
        self.timeout, self.patience = timeout, patience
        self.acked: dict[str, tuple] = {}  # key -> (account, qty, consumption_id, answered as duplicate)
        self.retries = 0
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self, clients: int) -> None:
        self.threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]
        for t in self.threads:
            t.start()

    def finish(self, timeout: float) -> None:
        """Stops issuing new calls; waits for the ones in flight to be answered."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "an HTTP client is still retrying"
        assert not self.errors, self.errors

    def duplicates(self) -> int:
        return sum(1 for *_, dup in self.acked.values() if dup)

    def _client(self, n: int) -> None:
        try:
            self._calls(n)
        except BaseException as err:  # a thread's failure must fail the test, not vanish
            self.errors.append(err)

    def _calls(self, n: int) -> None:
        import requests

        rnd = random.Random(self.seed + n)
        session = requests.Session()
        i = 0
        while not self.stop.is_set():
            i += 1
            key, account, qty = f"{self.prefix}{n}-{i}", rnd.choice(self.accounts), rnd.randint(1, 3)
            body = {"p_idempotency_key": key, "p_account_id": account, "p_resource_type": "units", "p_quantity": qty}
            deadline = time.time() + self.patience
            while True:
                try:
                    r = session.post(self.url, json=body, headers={"Authorization": f"Bearer {self.token}"},
                                     timeout=self.timeout)
                    if r.status_code == 200:
                        got = r.json()
                        with self.lock:
                            self.acked[key] = (account, qty, got["consumption_id"], got["duplicate"])
                        break
                    assert r.status_code in (502, 503, 504), (r.status_code, r.text)
                except requests.RequestException:
                    pass
                with self.lock:
                    self.retries += 1
                assert time.time() < deadline, "the gateway never answered the call"
                time.sleep(0.1)
