"""meter_usage: several resources in one decision under one key, all or nothing — over SQL and
over HTTP, under concurrency, with replays and refusals. See docs/CONTRACT.md."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

CATALOG = {
    "resources": [
        {"resource_type": "input_tokens", "kind": "metered", "unit": "token"},
        {"resource_type": "output_tokens", "kind": "metered", "unit": "token"},
        {"resource_type": "requests", "kind": "metered", "unit": "request"},
        {"resource_type": "vision", "kind": "feature"},
    ],
    "plans": [{"plan_id": "p", "default": True, "entitlements": {
        "input_tokens": {"limit": 10000, "grace": 0},
        "output_tokens": {"limit": 2000, "grace": 0},
        "requests": {"limit": 1000, "grace": 0},
        "vision": False}}],
}


@pytest.fixture
def llm(new_namespace, connect):
    ns = new_namespace(catalog=CATALOG)
    conn = connect(namespace_id=ns)

    def account() -> str:
        a = str(uuid.uuid4())
        conn.execute("SELECT mec.provision_plan(p_account_id => %s::uuid, p_plan_id => 'p')", (a,))
        return a

    return ns, conn, account


def usage(conn, key, account, items, **extra):
    args = "".join(f", p_{k} => %({k})s" for k in extra)
    return conn.execute(f"SELECT mec.meter_usage(p_idempotency_key => %(key)s, p_account_id => %(a)s::uuid, "
                        f"p_items => %(items)s{args})",
                        {"key": key, "a": account, "items": Jsonb(items), **extra}).fetchone()[0]


def used(conn, account, resource):
    return conn.execute("SELECT coalesce(sum(quantity), 0) FROM mec.consumption WHERE account_id = %s::uuid "
                        "AND resource_type = %s", (account, resource)).fetchone()[0]


ITEMS = [{"resource_type": "input_tokens", "quantity": 1200}, {"resource_type": "output_tokens", "quantity": 350},
         {"resource_type": "requests", "quantity": 1}]


def test_items_are_recorded_together_and_replayed_once(llm):
    _, conn, new = llm
    a = new()
    r = usage(conn, "req-1", a, ITEMS)
    assert r["duplicate"] is False and [i["resource_type"] for i in r["items"]] == [
        "input_tokens", "output_tokens", "requests"]
    assert [i["quantity_used"] for i in r["items"]] == [1200, 350, 1]
    assert [i["index"] for i in r["items"]] == [0, 1, 2]
    again = usage(conn, "req-1", a, ITEMS)
    assert again["duplicate"] is True and again["items"] == r["items"]
    assert (used(conn, a, "input_tokens"), used(conn, a, "output_tokens"), used(conn, a, "requests")) == (1200, 350, 1)
    keys = {row[0] for row in conn.execute("SELECT idempotency_key FROM mec.consumption WHERE account_id = %s::uuid",
                                           (a,)).fetchall()}
    assert keys == {"req-1/input_tokens", "req-1/output_tokens", "req-1/requests"}


def test_a_refused_second_item_records_nothing(llm, expect_sqlstate):
    _, conn, new = llm
    a = new()
    usage(conn, "fill", a, [{"resource_type": "output_tokens", "quantity": 1900}])
    with expect_sqlstate("ME429") as err:
        usage(conn, "req-2", a, [{"resource_type": "input_tokens", "quantity": 100},
                                 {"resource_type": "output_tokens", "quantity": 101}])
    assert "output_tokens" in str(err.value)
    assert used(conn, a, "input_tokens") == 0 and used(conn, a, "output_tokens") == 1900
    # the key was not used up: the call that fits goes through under it
    ok = usage(conn, "req-2", a, [{"resource_type": "input_tokens", "quantity": 100},
                                  {"resource_type": "output_tokens", "quantity": 100}])
    assert [i["quantity_used"] for i in ok["items"]] == [100, 2000]


def test_bad_items_and_a_reused_key_are_refused(llm, expect_sqlstate):
    _, conn, new = llm
    a = new()
    usage(conn, "k", a, ITEMS)
    with expect_sqlstate("ME409"):
        usage(conn, "k", a, ITEMS[:2])
    for items, needle in [([], "1 to 100"), ({"resource_type": "requests"}, "JSON array"),
                          ([{"resource_type": "requests", "quantity": 0}], "positive"),
                          ([{"resource_type": "requests", "quantity": 1}, {"resource_type": "requests", "quantity": 2}],
                           "already item 0"),
                          ([{"resource_type": "requests", "quantity": 1, "model": "x"}], "unknown field"),
                          ([{"resource_type": "requests", "quantity": "1.00000000001"}], "decimal places")]:
        with expect_sqlstate("22023") as err:
            usage(conn, str(uuid.uuid4()), a, items)
        assert needle in str(err.value), (items, str(err.value))
    with expect_sqlstate("ME400"):
        usage(conn, "feature", a, [{"resource_type": "vision", "quantity": 1}])
    with expect_sqlstate("ME404"):
        usage(conn, "unknown", a, [{"resource_type": "nope", "quantity": 1}])
    assert used(conn, a, "requests") == 1


def test_32_clients_never_pass_any_items_limit(llm, connect):
    ns, conn, new = llm
    a = new()
    outcomes: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        c = connect(namespace_id=ns)
        for i in range(20):
            try:
                usage(c, f"c{n}-{i}", a, [{"resource_type": "input_tokens", "quantity": 300},
                                          {"resource_type": "output_tokens", "quantity": 70}])
                out = "ok"
            except psycopg.Error as e:
                out = e.sqlstate
            with lock:
                outcomes.append(out)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = outcomes.count("ok")
    # input allows 33 calls (9 900), output 28 (1 960): the tighter one decides, for both items
    assert ok == 28 and set(outcomes) == {"ok", "ME429"}, sorted(set(outcomes))
    assert used(conn, a, "input_tokens") == 300 * ok and used(conn, a, "output_tokens") == 70 * ok


def test_over_http(http, gateway_url, make_token, llm):
    ns, _, new = llm
    a = new()
    token = make_token(role="mec_service", namespace_id=ns)
    body = {"p_idempotency_key": "h-1", "p_account_id": a, "p_items": ITEMS}
    r = http.post(f"{gateway_url}/api/rpc/meter_usage", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and len(r.json()["items"]) == 3, r.text
    body["p_items"] = [{"resource_type": "output_tokens", "quantity": 5000}]
    body["p_idempotency_key"] = "h-2"
    r = http.post(f"{gateway_url}/api/rpc/meter_usage", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 429 and r.headers["content-type"].startswith("application/problem+json"), r.text
    user = make_token(role="mec_user", namespace_id=ns, account_id=a)
    r = http.post(f"{gateway_url}/api/rpc/meter_usage", json=body, headers={"Authorization": f"Bearer {user}"})
    assert r.status_code in (401, 403, 404), r.text


# ---------------------------------------------------------------- commit_reservation with items

def reserve(conn, key, account, resource, qty):
    return conn.execute("SELECT mec.reserve_consumption(p_idempotency_key => %s, p_account_id => %s::uuid, "
                        "p_resource_type => %s, p_quantity => %s)", (key, account, resource, qty)).fetchone()[0]


def commit_items(conn, reservation, items):
    return conn.execute("SELECT mec.commit_reservation(p_reservation_id => %s::uuid, p_items => %s)",
                        (reservation, Jsonb(items))).fetchone()[0]


def summary_used(conn, account, resource):
    return conn.execute("SELECT mec.usage_summary(p_account_id => %s::uuid)", (account,)).fetchone()[0][
        "features"][resource]["current"]


def test_a_reserved_budget_is_committed_as_its_actual_split(llm, expect_sqlstate):
    """Reserve a token budget, commit the actual split of input and output tokens and the request in
    one decision: the hold is given back, every item recorded under the reservation's key, once."""
    _, conn, new = llm
    a = new()
    r = reserve(conn, "job-1", a, "output_tokens", 1500)
    assert summary_used(conn, a, "output_tokens") == 1500  # the hold counts
    split = [{"resource_type": "input_tokens", "quantity": 900},
             {"resource_type": "output_tokens", "quantity": 420},
             {"resource_type": "requests", "quantity": 1}]
    first = commit_items(conn, r["reservation_id"], split)
    assert first["duplicate"] is False and first["reservation_id"] == r["reservation_id"], first
    assert first["quantity_reserved"] == 1500 and len(first["items"]) == 3, first
    assert [i["quantity"] for i in first["items"]] == [900, 420, 1]
    assert (summary_used(conn, a, "output_tokens"), used(conn, a, "input_tokens"), used(conn, a, "requests")) == (
        420, 900, 1)  # the hold is gone, the actual counted
    keys = {row[0] for row in conn.execute("SELECT idempotency_key FROM mec.consumption WHERE account_id = %s::uuid",
                                           (a,))}
    assert keys == {"job-1/input_tokens", "job-1/output_tokens", "job-1/requests"}
    assert conn.execute("SELECT state, actual_quantity FROM mec.reservations WHERE reservation_id = %s::uuid",
                        (r["reservation_id"],)).fetchone() == ("committed", 420)
    # again: the first result, nothing counted twice; other items or a plain commit: ME409
    again = commit_items(conn, r["reservation_id"], split)
    assert again["duplicate"] is True, again
    assert [i["consumption_id"] for i in again["items"]] == [i["consumption_id"] for i in first["items"]]
    assert summary_used(conn, a, "output_tokens") == 420
    with expect_sqlstate("ME409"):
        commit_items(conn, r["reservation_id"], split[:2])
    with expect_sqlstate("ME409"):
        conn.execute("SELECT mec.commit_reservation(p_reservation_id => %s::uuid)", (r["reservation_id"],))


def test_an_item_over_its_limit_commits_nothing_and_keeps_the_hold(llm, expect_sqlstate):
    _, conn, new = llm
    a = new()
    r = reserve(conn, "job-2", a, "output_tokens", 500)
    with expect_sqlstate("ME429"):
        commit_items(conn, r["reservation_id"], [{"resource_type": "output_tokens", "quantity": 400},
                                                 {"resource_type": "input_tokens", "quantity": 10001}])
    assert summary_used(conn, a, "output_tokens") == 500  # still held
    assert used(conn, a, "output_tokens") == 0 and used(conn, a, "input_tokens") == 0
    assert conn.execute("SELECT state FROM mec.reservations WHERE reservation_id = %s::uuid",
                        (r["reservation_id"],)).fetchone()[0] == "held"
    with expect_sqlstate("22023"):
        conn.execute("SELECT mec.commit_reservation(p_reservation_id => %s::uuid, p_actual_quantity => 1, "
                     "p_items => %s)", (r["reservation_id"], Jsonb([{"resource_type": "requests", "quantity": 1}])))
    # a plain commit still works afterwards
    done = conn.execute("SELECT mec.commit_reservation(p_reservation_id => %s::uuid, p_actual_quantity => 300)",
                        (r["reservation_id"],)).fetchone()[0]
    assert done["quantity_used"] == 300
    with expect_sqlstate("ME409"):
        commit_items(conn, r["reservation_id"], [{"resource_type": "requests", "quantity": 1}])
