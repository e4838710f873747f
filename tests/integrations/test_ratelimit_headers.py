"""The RateLimit headers of a 429 say when the caller is actually refused: for a capped quota the
limit plus its overage cap, over the period's real length (a monthly quota's `w` is the month in
seconds), with `t` and Retry-After the seconds to the period's end."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from stripe_helpers import StripeNamespace

pytestmark = pytest.mark.gateway

CAPPED = {
    "resources": [{"resource_type": "renders", "kind": "metered"},
                  {"resource_type": "calls", "kind": "rate", "window_seconds": 60}],
    "plans": [{"plan_id": "p", "default": True, "entitlements": {
        "renders": {"limit": 3, "period": "month", "enforcement": "capped", "overage_cap": 2, "grace": 0},
        "calls": {"limit": 2, "grace": 0}}}],
}


def test_a_capped_monthly_quota(connect, new_namespace, rpc):
    ns_id = new_namespace(catalog=CAPPED)
    ns = StripeNamespace(ns_id, "", connect(namespace_id=ns_id))
    account = str(uuid.uuid4())
    assert rpc(ns, "provision_plan", role="mec_admin", account_id=account, plan_id="p").status_code == 200
    statuses = []
    for i in range(6):
        r = rpc(ns, "meter_consumption", idempotency_key=f"r-{i}", account_id=account,
                resource_type="renders", quantity=1)
        statuses.append(r.status_code)
    assert statuses == [200] * 5 + [429], statuses
    refused = r
    now = dt.datetime.now(dt.timezone.utc)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    month = int((end - start).total_seconds())
    assert refused.headers["ratelimit-policy"] == f'"renders";q=5;w={month}', refused.headers
    remaining, reset = refused.headers["ratelimit"].split(";")[1:]
    assert remaining == "r=0"
    t = int(reset.removeprefix("t="))
    assert abs(t - (end - now).total_seconds()) < 60 and refused.headers["retry-after"] == str(t)
    policy = refused.json()["violated-policies"][0]
    assert policy["limit"] == 3 and policy["ceiling"] == 5 and policy["window_seconds"] == month, policy
    assert json.loads(refused.json()["details"])["violated_policies"] == [policy]


def test_a_rate_window(connect, new_namespace, rpc):
    ns_id = new_namespace(catalog=CAPPED)
    ns = StripeNamespace(ns_id, "", connect(namespace_id=ns_id))
    account = str(uuid.uuid4())
    rpc(ns, "provision_plan", role="mec_admin", account_id=account, plan_id="p")
    r = None
    for i in range(4):
        r = rpc(ns, "meter_consumption", idempotency_key=f"c-{i}", account_id=account,
                resource_type="calls", quantity=1)
        if r.status_code == 429:
            break
    assert r is not None and r.status_code == 429, r.text
    assert r.headers["ratelimit-policy"] == '"calls";q=2;w=60', r.headers
