"""Auth0 in, over real HTTP: POST /webhooks/auth0/<namespace> with the log stream's Authorization
token. Sign-ups become accounts on the default plan, deleted users are forgotten, every other log
type is counted and dropped, and a redelivered batch changes nothing. See docs/integrations.md."""

from __future__ import annotations

import json
import uuid

import pytest

import auth0_events as ae

pytestmark = pytest.mark.gateway


@pytest.fixture
def auth0_ns(stripe_ns):
    ns = stripe_ns()
    token = "auth0-" + uuid.uuid4().hex
    ns.settings(auth0_secret=token)
    ns.token = token
    return ns


@pytest.fixture
def post(http, gateway_url):
    def _post(ns, body: bytes, authorization: str | None = "bearer", path: str | None = None):
        headers = {"Content-Type": "application/json"}
        if authorization == "bearer":
            headers["Authorization"] = f"Bearer {ns.token}"
        elif authorization is not None:
            headers["Authorization"] = authorization
        r = http.post(gateway_url + (path or f"/webhooks/auth0/{ns.namespace_id}"), data=body,
                      headers=headers, timeout=30)
        return r.status_code, r.json()

    return _post


def _account_of(ns, user):
    row = ns.conn.execute("SELECT account_id::text, plan_id FROM mec.accounts WHERE external_id = %s",
                          (user,)).fetchone()
    return None if row is None else {"account_id": row[0], "plan_id": row[1]}


def test_a_batch_with_duplicates_and_other_types(auth0_ns, post):
    ns = auth0_ns
    alice, bob = ae.user_id(), ae.user_id()
    sign_alice = ae.signup(alice)
    batch = [ae.login(alice), sign_alice, ae.record("fp", bob, "Wrong password"), ae.signup(bob),
             sign_alice, ae.record("sapi", None, "Update a client")]
    status, body = post(ns, ae.json_array(batch))
    assert status == 200, body
    assert body["received"] == 6 and body["applied"] == 2 and body["duplicates"] == 1, body
    assert body["ignored"] == 3, body
    assert _account_of(ns, alice)["plan_id"] == "free"
    assert _account_of(ns, bob)["plan_id"] == "free"
    # Auth0 retries the whole batch: nothing changes.
    status, again = post(ns, ae.json_array(batch))
    assert status == 200 and again["applied"] == 0 and again["duplicates"] == 3, again
    assert ns.sql("SELECT count(*) FROM mec.accounts WHERE namespace_id = %s::uuid", ns.namespace_id) == 2
    assert ns.sql("SELECT count(*) FROM mec.auth0_events WHERE namespace_id = %s::uuid", ns.namespace_id) == 2


def test_json_lines_and_single_objects(auth0_ns, post):
    ns = auth0_ns
    a, b, c = ae.user_id(), ae.user_id(), ae.user_id()
    status, body = post(ns, ae.json_lines([ae.signup(a), ae.signup(b)]))
    assert status == 200 and body["applied"] == 2, body
    status, body = post(ns, json.dumps(ae.signup(c)).encode())
    assert status == 200 and body["applied"] == 1, body
    assert all(_account_of(ns, u) for u in (a, b, c))


def test_a_post_user_registration_action(auth0_ns, post):
    ns = auth0_ns
    user = ae.user_id()
    payload = json.dumps(ae.action_registration(user)).encode()
    status, body = post(ns, payload)
    assert status == 200 and body["applied"] == 1, body
    assert body["results"][0]["log_id"] == f"action:{user}"
    status, again = post(ns, payload)
    assert again["duplicates"] == 1 and again["applied"] == 0, again
    # A sign-up log of the same user afterwards finds the account.
    status, body = post(ns, ae.json_array([ae.signup(user)]))
    assert body["results"][0]["detail"] == "the account exists already", body
    assert ns.sql("SELECT count(*) FROM mec.accounts WHERE external_id = %s", user) == 1


def test_a_deleted_user_is_forgotten(auth0_ns, post, rpc):
    ns = auth0_ns
    user = ae.user_id()
    post(ns, ae.json_array([ae.signup(user)]))
    account = _account_of(ns, user)["account_id"]
    metered = rpc(ns, "meter_consumption", idempotency_key="a0-1", account_id=account,
                  resource_type="api_calls", quantity=1)
    assert metered.status_code == 200, metered.text
    status, body = post(ns, ae.json_array([ae.deleted(user)]))
    assert status == 200 and body["applied"] == 1, body
    assert _account_of(ns, user) is None
    assert ns.sql("SELECT count(*) FROM mec.consumption WHERE account_id = %s::uuid", account) == 0
    # No row keeps who the user was.
    assert ns.sql("SELECT count(*) FROM mec.auth0_events WHERE user_id = %s", user) == 0
    status, body = post(ns, ae.json_array([ae.deleted(ae.user_id())]))
    assert body["ignored"] == 1 and body["results"][0]["outcome"] == "ignored", body


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic abc", "wrong"])
def test_a_wrong_token_is_400_and_records_nothing(auth0_ns, post, authorization):
    ns = auth0_ns
    user = ae.user_id()
    status, body = post(ns, ae.json_array([ae.signup(user)]), authorization=authorization)
    assert status == 400 and body["code"] == "ME400", body
    assert _account_of(ns, user) is None
    assert ns.sql("SELECT count(*) FROM mec.auth0_events WHERE namespace_id = %s::uuid", ns.namespace_id) == 0


def test_the_bare_token_and_another_namespaces_token(auth0_ns, stripe_ns, post):
    ns, other = auth0_ns, stripe_ns()
    other.token = "auth0-" + uuid.uuid4().hex
    other.settings(auth0_secret=other.token)
    status, body = post(ns, ae.json_array([ae.signup(ae.user_id())]), authorization=ns.token)
    assert status == 200 and body["applied"] == 1, body
    status, body = post(ns, ae.json_array([ae.signup(ae.user_id())]), authorization=f"Bearer {other.token}")
    assert status == 400, body


def test_bodies_that_are_not_auth0s(auth0_ns, post):
    ns = auth0_ns
    for body in [b"not json at all", b"42", json.dumps([{"data": {"type": "ss"}}]).encode()]:
        status, answer = post(ns, body)
        assert status == 400 and answer["code"] == "ME400", answer
    assert ns.sql("SELECT count(*) FROM mec.auth0_events WHERE namespace_id = %s::uuid", ns.namespace_id) == 0


def test_no_secret_no_webhooks(stripe_ns, post):
    ns = stripe_ns()
    ns.token = "anything"
    status, body = post(ns, ae.json_array([ae.signup(ae.user_id())]))
    assert status == 400 and "no auth0_secret" in body["message"], body
