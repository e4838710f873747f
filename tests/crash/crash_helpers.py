"""What the crash tests share: killing and bringing back the cluster, and the exactly-once checks
every crash test ends with."""

from __future__ import annotations

import os
import signal
import subprocess
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
             l AS (SELECT account_id, resource_type, period_start, sum(quantity) AS used
                     FROM mec_data.consumption WHERE namespace_id = %(ns)s AND billable GROUP BY 1, 2, 3),
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
