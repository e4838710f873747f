"""Group commit (issue 12): concurrent `meter_consumption` calls of one caller share a transaction,
and each still gets exactly the answer it would have had alone.

Two namespaces get the same catalog, accounts and history. In the first, 32 calls are sent at once
(so the gateway groups them: its /metrics counts the grouped calls); in the second, the same calls
one at a time (each alone). Every call's status, body and rate-limit headers must be the same: allows
on accounts of their own, denials on an account at its limit, replays of recorded keys, a key reused
with another quantity, an unknown account, a malformed quantity, an unbilled status, and calls the
gateway must not group (a query string, a `Prefer` header)."""

from __future__ import annotations

import json
import re
import threading
import uuid

import httpx
import pytest

from gateway_helpers import bearer, make_token, psql

CATALOG = {
    "resources": [{"resource_type": "runs", "kind": "metered"}, {"resource_type": "free", "kind": "metered"}],
    "plans": [{"plan_id": "p", "default": True, "entitlements": {
        "runs": {"limit": 5, "grace": 0}, "free": {"limit": None}}}],
}
FULL = str(uuid.UUID(int=0xF0))            # at its limit before the calls
OWN = [str(uuid.UUID(int=0xA00 + i)) for i in range(22)]
UNKNOWN = str(uuid.UUID(int=0xDEAD))


def namespace(http: httpx.Client, secret: str) -> str:
    name = f"group-{uuid.uuid4().hex[:8]}"
    ns = json.loads(psql(f"select mec.create_namespace(p_name => '{name}')::text"))["namespace_id"]
    admin = bearer(make_token(secret, "mec_admin", ns))
    assert http.post("/api/rpc/load_catalog", headers=admin, json={"p_catalog": CATALOG}).status_code == 200
    for a in [FULL] + OWN:
        r = http.post("/api/rpc/provision_plan", headers=admin, json={"p_account_id": a, "p_plan_id": "p"})
        assert r.status_code == 200, r.text
    service = bearer(make_token(secret, "mec_service", ns))
    for i in range(5):
        r = http.post("/api/rpc/meter_consumption", headers=service,
                      json={"p_idempotency_key": f"fill-{i}", "p_account_id": FULL, "p_resource_type": "runs",
                            "p_quantity": 1})
        assert r.status_code == 200, r.text
    for i in range(3):
        r = http.post("/api/rpc/meter_consumption", headers=service,
                      json={"p_idempotency_key": f"seen-{i}", "p_account_id": OWN[0], "p_resource_type": "free",
                            "p_quantity": 2})
        assert r.status_code == 200, r.text
    return ns


def calls() -> list[tuple[str, dict | str, dict]]:
    """(path suffix, body (a dict, or JSON text sent as written), extra headers) of the 32 calls."""
    out: list[tuple[str, dict | str, dict]] = []
    for i in range(19):   # allows, each on an account of its own
        out.append(("", {"p_idempotency_key": f"own-{i}", "p_account_id": OWN[i + 1], "p_resource_type": "runs",
                         "p_quantity": 1 + i % 3, "p_metadata": {"i": i}}, {}))
    for i in range(3):    # denials: the account is at its limit
        out.append(("", {"p_idempotency_key": f"over-{i}", "p_account_id": FULL, "p_resource_type": "runs",
                         "p_quantity": 1}, {}))
    for i in range(3):    # replays of recorded keys
        out.append(("", {"p_idempotency_key": f"seen-{i}", "p_account_id": OWN[0], "p_resource_type": "free",
                         "p_quantity": 2}, {}))
    out.append(("", {"p_idempotency_key": "seen-0", "p_account_id": OWN[0], "p_resource_type": "free",
                     "p_quantity": 3}, {}))                      # a key reused with another quantity
    out.append(("", {"p_idempotency_key": "nobody", "p_account_id": UNKNOWN, "p_resource_type": "runs",
                     "p_quantity": 1}, {}))                      # the failing call: no such account
    out.append(("", {"p_idempotency_key": "negative", "p_account_id": OWN[21], "p_resource_type": "runs",
                     "p_quantity": -1}, {}))
    # more digits than pg_mec keeps, sent as written (the batch words this error as a call would not:
    # the gateway runs it alone)
    out.append(("", '{"p_idempotency_key": "digits", "p_account_id": "%s", "p_resource_type": "runs", '
                    '"p_quantity": 0.1234567890123456789012345678}' % OWN[21], {}))
    out.append(("", {"p_idempotency_key": "unbilled", "p_account_id": OWN[21], "p_resource_type": "free",
                     "p_quantity": 4, "p_http_status": 500}, {}))
    # (every call that counts has a counter of its own: the answers do not depend on the order)
    out.append(("?select=consumption_id", {"p_idempotency_key": "q", "p_account_id": OWN[20],
                                            "p_resource_type": "free", "p_quantity": 1}, {}))
    out.append(("", {"p_idempotency_key": "prefer", "p_account_id": OWN[20], "p_resource_type": "runs",
                     "p_quantity": 1}, {"Prefer": "return=representation"}))
    assert len(out) == 32
    return out


def post(c: httpx.Client, suffix: str, token: str, body: dict | str, extra: dict) -> httpx.Response:
    headers = {**bearer(token), **extra}
    if isinstance(body, str):
        return c.post("/api/rpc/meter_consumption" + suffix, content=body,
                      headers={**headers, "Content-Type": "application/json"})
    return c.post("/api/rpc/meter_consumption" + suffix, headers=headers, json=body)


def grouped_calls(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    m = re.search(r"^mec_gateway_grouped_calls_total (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def comparable(r: httpx.Response) -> tuple:
    try:
        body = r.json()
    except ValueError:
        body = r.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "consumption_id"}
    headers = {k: r.headers.get(k) for k in ("content-type", "ratelimit-policy", "ratelimit", "retry-after")}
    # seconds until the window ends, counted when each answer was made: the two runs are apart
    seconds = [int(n) for n in re.findall(r"t=(\d+)", headers["ratelimit"] or "")]
    seconds += [int(headers["retry-after"])] if headers["retry-after"] else []
    headers["ratelimit"] = re.sub(r"t=\d+", "t=…", headers["ratelimit"] or "")
    headers["retry-after"] = "…" if headers["retry-after"] else None
    return r.status_code, body, headers, seconds


def test_grouped_calls_answer_as_they_would_alone(gateway_url: str, http: httpx.Client, secret: str):
    if "mec_gateway_grouped_calls_total" not in http.get("/metrics").text:
        pytest.skip("this gateway does not group calls (MEC_GROUP_COMMIT_US=0)")
    together, alone = namespace(http, secret), namespace(http, secret)
    todo = calls()

    # together: 32 clients released at once, each with its own connection
    results: list = [None] * len(todo)
    barrier = threading.Barrier(len(todo))
    token = make_token(secret, "mec_service", together)

    def send(i: int) -> None:
        suffix, body, extra = todo[i]
        with httpx.Client(base_url=gateway_url, timeout=30.0) as c:
            barrier.wait(timeout=30)
            results[i] = post(c, suffix, token, body, extra)

    before = grouped_calls(http)
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(todo))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in results)
    assert grouped_calls(http) > before, "no call was grouped: the test proved nothing"

    # alone: the same calls one at a time
    token = make_token(secret, "mec_service", alone)
    for i, (suffix, body, extra) in enumerate(todo):
        r = post(http, suffix, token, body, extra)
        got, want = comparable(results[i]), comparable(r)
        assert got[:3] == want[:3], (i, body, results[i].text, r.text)
        assert all(abs(a - b) <= 5 for a, b in zip(got[3], want[3])) and len(got[3]) == len(want[3]), (i, got, want)
    statuses = {r.status_code for r in results}
    assert {200, 400, 404, 409, 429} <= statuses, statuses
