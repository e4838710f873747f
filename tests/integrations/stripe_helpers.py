"""What the integrations' tests share (a module of its own: another folder's conftest.py cannot
shadow it): the catalog with Stripe prices, and a namespace that receives Stripe webhooks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# Prices the catalog maps to plans, as a vendor sets them up in Stripe.
PRICE_STARTER = "price_1QstarterMonthly"
PRICE_GROWTH = "price_1QgrowthMonthly"

STRIPE_CATALOG = {
    "version": "stripe-tests-1",
    "currency": "USD",
    "resources": [
        {"resource_type": "api_calls", "kind": "metered", "unit": "call", "stripe_meter_event": "api_calls"},
        {"resource_type": "exports", "kind": "feature"},
    ],
    "plans": [
        {"plan_id": "free", "name": "Free", "default": True,
         "entitlements": {"api_calls": {"limit": 10, "grace": 0}, "exports": False}},
        {"plan_id": "starter", "name": "Starter", "stripe_price_id": PRICE_STARTER,
         "price": {"amount": "29.00", "interval": "month"},
         "entitlements": {"api_calls": {"limit": 100, "grace": 0}, "exports": True}},
        {"plan_id": "growth", "name": "Growth", "stripe_price_id": PRICE_GROWTH,
         "price": {"amount": "99.00", "interval": "month"},
         "entitlements": {"api_calls": {"limit": 1000, "grace": 0}, "exports": True}},
    ],
}


@dataclass
class StripeNamespace:
    """A namespace with the catalog above and its own Stripe signing secret."""

    namespace_id: str
    secret: str
    conn: Any  # a superuser connection with mec.namespace_id set to this namespace

    def sql(self, query: str, *params: Any) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def account(self, account_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT plan_id, stripe_customer_id, payment_overdue, billing_anchor_day "
            "FROM mec.accounts WHERE account_id = %s::uuid", (account_id,)).fetchone()
        if row is None:
            return None
        return {"plan_id": row[0], "stripe_customer_id": row[1], "payment_overdue": row[2],
                "billing_anchor_day": row[3]}

    def inbox(self, event_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT outcome, account_id::text, detail FROM mec.stripe_events WHERE event_id = %s",
            (event_id,)).fetchone()
        return None if row is None else {"outcome": row[0], "account_id": row[1], "detail": row[2]}

    def inbox_count(self) -> int:
        # The connection is a superuser's, which row-level security does not narrow.
        return self.sql("SELECT count(*) FROM mec.stripe_events WHERE namespace_id = %s::uuid",
                        self.namespace_id)

    def settings(self, **settings: Any) -> None:
        from psycopg.types.json import Jsonb

        self.conn.execute("SELECT mec.update_namespace_settings(p_settings => %s)", (Jsonb(settings),))


def now() -> int:
    return int(time.time())
