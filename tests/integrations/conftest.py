"""Fixtures of the integrations' tests: a namespace of the test's own that receives Stripe
webhooks, and a sender that posts signed deliveries to the running gateway."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import pytest

import stripe_events
from stripe_helpers import STRIPE_CATALOG, StripeNamespace


@pytest.fixture
def stripe_ns(connect, new_namespace) -> Callable[..., StripeNamespace]:
    """stripe_ns(overdue_action="flag") -> a new StripeNamespace."""

    def _make(overdue_action: str = "flag") -> StripeNamespace:
        ns = new_namespace(catalog=STRIPE_CATALOG)
        secret = "whsec_" + uuid.uuid4().hex
        conn = connect(namespace_id=ns)
        s = StripeNamespace(ns, secret, conn)
        s.settings(stripe_webhook_secret=secret, overdue_action=overdue_action)
        return s

    return _make


@dataclass
class Delivery:
    status: int
    body: dict[str, Any]
    event: dict[str, Any]


@pytest.fixture
def deliver(http, gateway_url) -> Callable[..., Delivery]:
    """deliver(ns, event, secrets=None, t=None, header=<signed>, body=None, path=None) -> Delivery.

    Posts `event` to /webhooks/stripe/<ns> signed with the namespace's secret (or `secrets`), at
    `t`; `header`/`body` override what is sent (None header: no Stripe-Signature at all)."""
    _unset = object()

    def _deliver(ns: StripeNamespace, event: dict[str, Any], secrets: list[str] | None = None,
                 t: int | None = None, header: Any = _unset, body: bytes | None = None,
                 path: str | None = None) -> Delivery:
        payload = json.dumps(event, separators=(",", ":")).encode() if body is None else body
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
        if header is _unset:
            header = stripe_events.signature(payload, secrets or [ns.secret], t)
        if header is not None:
            headers["Stripe-Signature"] = header
        url = gateway_url + (path or f"/webhooks/stripe/{ns.namespace_id}")
        r = http.post(url, data=payload, headers=headers, timeout=30)
        try:
            parsed = r.json()
        except ValueError:
            parsed = {"_text": r.text}
        return Delivery(r.status_code, parsed, event)

    return _deliver


@pytest.fixture
def rpc(http, gateway_url, make_token) -> Callable[..., Any]:
    """rpc(ns, function, role="mec_service", **args) -> requests.Response of POST /api/rpc/<function>."""

    def _rpc(ns: StripeNamespace, function: str, role: str = "mec_service", **args: Any):
        token = make_token(role=role, namespace_id=ns.namespace_id)
        body = {(k if k.startswith("p_") else f"p_{k}"): v for k, v in args.items()}
        return http.post(f"{gateway_url}/api/rpc/{function}", json=body,
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)

    return _rpc

