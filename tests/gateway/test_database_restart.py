"""A database restart mid-run costs failed requests, not a dead gateway (issue 4).

Runs last in this folder (the file name sorts last): it restarts the real cluster with
`pg_ctl restart` while a client keeps calling the gateway, then waits until the database answers
again, so the suites after it find the system as it was."""

from __future__ import annotations

import os
import pwd
import subprocess
import threading
import time

import httpx
import pytest

from gateway_helpers import env


def _pg_ctl_restart() -> None:
    pgdata = env("MEC_PGDATA")
    pg_bin = os.environ.get("MEC_PG_BIN", "/usr/lib/postgresql/15/bin")
    owner = pwd.getpwuid(os.stat(pgdata).st_uid).pw_name
    # The restarted postmaster keeps its stdout and stderr: send them to the cluster's log, not a
    # pipe this test would wait on forever.
    log = os.path.join(os.path.dirname(os.path.abspath(pgdata)), "postgres.log")
    cmd = [f"{pg_bin}/pg_ctl", "-D", pgdata, "-l", log, "restart", "-m", "fast", "-w", "-t", "60"]
    if os.geteuid() == 0 and owner != "root":
        cmd = ["runuser", "-u", owner, "--", "env", "-u", "RUST_BACKTRACE", *cmd]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=90)


def test_database_restart_costs_requests_not_the_gateway(http: httpx.Client, token, demo_ns: str,
                                                         demo_account: str) -> None:
    headers = {"Authorization": f"Bearer {token('mec_service', demo_ns)}"}
    body = {"p_account_id": demo_account, "p_resource_type": "benchmark_runs"}

    def call() -> httpx.Response:
        return http.post("/api/rpc/check_entitlement", json=body, headers=headers, timeout=10)

    assert call().status_code == 200

    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                statuses.append(call().status_code)
            except httpx.TransportError as e:  # the gateway itself went away: the test fails below
                statuses.append(-1)
                pytest.fail(f"gateway connection failed during the restart: {e!r}")
            time.sleep(0.01)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        _pg_ctl_restart()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and call().status_code != 200:
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(timeout=30)

    # Served again by the same gateway process, with no transport error at any point.
    assert call().status_code == 200
    assert -1 not in statuses
    assert http.get("/health", timeout=10).status_code == 200
    # Requests during the restart failed cleanly (JSON errors with 5xx), they did not hang.
    assert all(s == 200 or 500 <= s < 600 for s in statuses), sorted(set(statuses))
