"""Security issue, finding 1: one GET with a deeply nested logic tree aborted the gateway.

A logic tree nested past the gateway's bound (`MAX_LOGIC_DEPTH`, 32 levels) is a 400 in
PostgREST's error shape, the request that the security report sent (4000 levels) included, and
the gateway keeps serving afterwards. Depth up to the bound is still served."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gateway

MAX_LOGIC_DEPTH = 32  # gateway/src/request/query.rs


def _tree(levels: int) -> str:
    """or=(and(and(…(resource_type.eq.x)…))): `or=(…)` is level 1, each and( one more."""
    inner = "and(" * (levels - 1) + "resource_type.eq.x" + ")" * (levels - 1)
    return f"({inner})"


def _get(http, gateway_url, token, tree: str):
    return http.get(f"{gateway_url}/api/consumption", params={"or": tree},
                    headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _assert_pgrst_400(r) -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"code", "message", "details", "hint"}, body
    assert body["code"] == "PGRST100", body
    assert "logic tree" in body["message"], body


def test_the_reported_request_is_a_400_and_the_gateway_keeps_serving(
        http, gateway_url, make_token, demo_account_id):
    # An end user's token is enough to send it.
    token = make_token(role="mec_user", account_id=demo_account_id)
    _assert_pgrst_400(_get(http, gateway_url, token, _tree(4000)))
    _assert_pgrst_400(_get(http, gateway_url, token, _tree(MAX_LOGIC_DEPTH + 1)))
    # Still up, and still answering reads.
    assert http.get(f"{gateway_url}/health", timeout=10).status_code == 200
    ok = _get(http, gateway_url, token, _tree(MAX_LOGIC_DEPTH))
    assert ok.status_code == 200, ok.text
    assert ok.json() == []


def test_many_nested_requests_in_a_row_leave_it_up(http, gateway_url, make_token):
    token = make_token(role="mec_service")
    for levels in (2500, 5000, 6000):
        _assert_pgrst_400(_get(http, gateway_url, token, _tree(levels)))
    # Past 64 KiB of URI, hyper answers 414 URI Too Long before the gateway sees the request.
    assert _get(http, gateway_url, token, _tree(20_000)).status_code == 414
    assert http.get(f"{gateway_url}/health", timeout=10).status_code == 200
