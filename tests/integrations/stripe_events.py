"""Stripe webhook deliveries as Stripe sends them: event objects in the shape of Stripe's API
(version 2026-02-25.clover, with the older fields pg_mec also reads), signed the way Stripe signs
(`Stripe-Signature: t=…,v1=…`). `signature()` is checked against the official `stripe` library by
test_stripe_webhooks.py, so these deliveries are faithful, not guessed."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from typing import Any

API_VERSION = "2026-02-25.clover"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def signature(payload: bytes, secrets: list[str], t: int | None = None) -> str:
    """The Stripe-Signature header: one v1 per secret (two while a secret is being rolled)."""
    t = int(time.time()) if t is None else t
    parts = [f"t={t}"]
    for s in secrets:
        parts.append("v1=" + hmac.new(s.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest())
    return ",".join(parts)


def event(event_type: str, obj: dict[str, Any], created: int | None = None,
          previous_attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()) if created is None else created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": new_id("req"), "idempotency_key": str(uuid.uuid4())},
        "type": event_type,
    }


def checkout_session(customer: str, client_reference_id: str | None = None,
                     subscription: str | None = None, metadata: dict | None = None) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": new_id("cs_test"),
        "object": "checkout.session",
        "amount_subtotal": 2900,
        "amount_total": 2900,
        "client_reference_id": client_reference_id,
        "created": now,
        "currency": "usd",
        "customer": customer,
        "customer_details": {"email": "jenny.rosen@example.com", "name": "Jenny Rosen"},
        "expires_at": now + 86400,
        "livemode": False,
        "metadata": metadata or {},
        "mode": "subscription",
        "payment_status": "paid",
        "status": "complete",
        "subscription": subscription,
        "success_url": "https://example.com/success",
    }


def subscription(sub_id: str, customer: str, price: str, status: str = "active",
                 metadata: dict | None = None, anchor: int | None = None) -> dict[str, Any]:
    now = int(time.time())
    anchor = now if anchor is None else anchor
    return {
        "id": sub_id,
        "object": "subscription",
        "billing_cycle_anchor": anchor,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "collection_method": "charge_automatically",
        "created": anchor,
        "currency": "usd",
        "customer": customer,
        "items": {
            "object": "list",
            "data": [{
                "id": new_id("si"),
                "object": "subscription_item",
                "current_period_start": anchor,
                "current_period_end": anchor + 30 * 86400,
                "price": {"id": price, "object": "price", "active": True, "currency": "usd",
                          "product": new_id("prod"), "recurring": {"interval": "month", "interval_count": 1},
                          "type": "recurring", "unit_amount": 2900},
                "quantity": 1,
                "subscription": sub_id,
            }],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": new_id("in"),
        "livemode": False,
        "metadata": metadata or {},
        "start_date": anchor,
        "status": status,
    }


def invoice(customer: str, subscription_id: str | None, status: str, metadata: dict | None = None) -> dict[str, Any]:
    now = int(time.time())
    parent = None
    if subscription_id is not None:
        parent = {"type": "subscription_details", "quote_details": None,
                  "subscription_details": {"metadata": metadata or {}, "subscription": subscription_id}}
    return {
        "id": new_id("in"),
        "object": "invoice",
        "amount_due": 2900,
        "amount_paid": 2900 if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else 2900,
        "attempt_count": 1,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": now,
        "currency": "usd",
        "customer": customer,
        "livemode": False,
        "parent": parent,
        "period_end": now,
        "period_start": now - 30 * 86400,
        "status": status,
    }


def customer(customer_id: str) -> dict[str, Any]:
    return {"id": customer_id, "object": "customer", "created": int(time.time()),
            "email": "jenny.rosen@example.com", "livemode": False, "metadata": {}}
