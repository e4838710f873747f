"""A namespace's data as one comparable value: the rows of every table that has a namespace_id."""

from __future__ import annotations

TABLES = ["accounts", "entitlements", "usage_counters", "consumption", "consumption_rollups", "leases", "reservations",
          "idempotency_keys", "audit_log", "webhook_endpoints", "webhook_events", "webhook_deliveries",
          "alert_crossings", "namespace_secrets", "catalogs", "plans", "plan_entitlements", "plan_versions",
          "resource_types",
          "stripe_events", "stripe_subscriptions", "auth0_events", "stripe_usage_outbox", "stripe_usage_items",
          "role_bindings", "rate_windows", "rate_entries"]


def fingerprint(conn, namespace: str) -> list:
    out = []
    for t in TABLES:
        out.append(conn.execute(f"SELECT count(*), coalesce(sum(hashtext(t::text)), 0) FROM mec_data.{t} t "
                                "WHERE namespace_id = %s", (namespace,)).fetchone())
    return out
