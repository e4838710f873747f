"""What SQL tests share: JSON arguments for psycopg (`adapt`), an error's JSON DETAIL (`detail`), and
32 clients released together, each on its own connection (`race`)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

from psycopg.types.json import Jsonb

CLIENTS = 32


def adapt(value: Any) -> Any:
    """A dict or list as a jsonb parameter; anything else as it is."""
    return Jsonb(value) if isinstance(value, (dict, list)) else value


def detail(err: Any) -> dict:
    """The JSON DETAIL of the error a pytest.raises (or expect_sqlstate) caught."""
    raw = err.value.diag.message_detail
    assert raw, f"no DETAIL: {err.value}"
    return json.loads(raw)


def race(namespace_id: str, connect, work: Callable[[Any, int], Any],
         monitor: Callable[[Any], Any] | None = None, clients: int = CLIENTS) -> list:
    """work(conn, i) for `clients` clients, each on its own mec_service connection of the namespace,
    released together. With `monitor`, a superuser connection samples monitor(conn) every 5 ms while
    they run, and the samples come last in the returned list."""
    barrier = threading.Barrier(clients)
    results: list[Any] = [None] * clients
    errors: list[BaseException] = []
    conns = [connect(namespace_id=namespace_id, role="mec_service") for _ in range(clients)]
    for c in conns:
        c.execute("SET statement_timeout = '30s'")

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(conns[i], i)
        except BaseException as e:  # reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(clients)]
    stop = threading.Event()
    seen: list[Any] = []
    mon = None
    if monitor is not None:
        mconn = connect(namespace_id=namespace_id)

        def watch() -> None:
            while not stop.is_set():
                seen.append(monitor(mconn))
                time.sleep(0.005)

        mon = threading.Thread(target=watch, daemon=True)
        mon.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    if mon is not None:
        mon.join(10)
    assert not any(t.is_alive() for t in threads), "clients still running after 60 s"
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    if monitor is not None:
        results.append(seen)
    return results
