-- pg_mec: the public read API (schema mec). security_invoker: row-level security of the
-- tables applies to the caller, so every view shows only the caller's namespace (and, for
-- mec_user, only its own account).

CREATE VIEW mec.plans WITH (security_invoker = true) AS
SELECT p.namespace_id, p.plan_id, p.name, p.price_amount, p.currency, p.price_interval,
       p.stripe_price_id, p.is_default, p.active,
       coalesce((SELECT jsonb_object_agg(pe.resource_type, jsonb_strip_nulls(jsonb_build_object(
                    'limit', pe.quantity_limit, 'period', pe.period, 'enforcement', pe.enforcement,
                    'overage_cap', pe.overage_cap, 'grace', pe.grace, 'enabled', pe.enabled,
                    'dimension_limits', pe.dimension_limits))
                     || jsonb_build_object('limit', pe.quantity_limit))
                 FROM mec_data.plan_entitlements pe
                 WHERE pe.namespace_id = p.namespace_id AND pe.plan_id = p.plan_id), '{}') AS entitlements,
       p.created_at, p.updated_at, p.version, p.policy
FROM mec_data.plans p;

CREATE VIEW mec.plan_versions WITH (security_invoker = true) AS
SELECT namespace_id, plan_id, version, entitlements, policy, explicit, loaded_at
FROM mec_data.plan_versions;

CREATE VIEW mec.resource_types WITH (security_invoker = true) AS
SELECT namespace_id, resource_type, kind, unit, description, window_seconds, billable_statuses,
       stripe_meter_event, dimensions
FROM mec_data.resource_types;

CREATE VIEW mec.accounts WITH (security_invoker = true) AS
SELECT namespace_id, account_id, external_id, plan_id, plan_effective_at, stripe_customer_id,
       payment_overdue, billing_anchor_day, created_at, updated_at, plan_version, parent_account_id
FROM mec_data.accounts;

CREATE VIEW mec.entitlements WITH (security_invoker = true) AS
SELECT e.namespace_id, e.entitlement_id, e.account_id, e.resource_type, r.kind, e.source, e.plan_id,
       e.quantity_limit, e.period, e.enforcement, e.overage_cap, e.grace, e.enabled,
       e.valid_from, e.valid_until, e.reason, e.created_at, e.plan_version, e.dimension_limits
FROM mec_data.entitlements e
JOIN mec_data.resource_types r USING (namespace_id, resource_type);

-- Rows in force now. An override replaces the plan's row for its resource; grants add to it.
CREATE VIEW mec.active_entitlements WITH (security_invoker = true) AS
SELECT e.namespace_id, e.entitlement_id, e.account_id, e.resource_type, e.kind, e.source, e.plan_id,
       e.quantity_limit, e.period, e.enforcement, e.overage_cap, e.grace, e.enabled,
       e.valid_from, e.valid_until, e.reason
FROM mec.entitlements e
WHERE e.valid_from <= now() AND (e.valid_until IS NULL OR e.valid_until > now());

CREATE VIEW mec.consumption WITH (security_invoker = true) AS
SELECT namespace_id, consumption_id, idempotency_key::text AS idempotency_key, account_id, resource_type,
       entry_type::text AS entry_type, quantity,
       occurred_at, recorded_at, period_start, period_end, billable, overage, overage_quantity,
       quantity_used, quantity_allowed, http_status, metadata, reason, dimensions
FROM mec_data.consumption;

-- Current usage per account, resource and period (stripes of hot counters summed).
CREATE VIEW mec.usage WITH (security_invoker = true) AS
SELECT namespace_id, account_id, resource_type, period_start, period_end,
       sum(used) AS quantity_used, max(updated_at) AS updated_at
FROM mec_data.usage_counters
GROUP BY namespace_id, account_id, resource_type, period_start, period_end;

CREATE VIEW mec.leases WITH (security_invoker = true) AS
SELECT namespace_id, lease_id, account_id, resource_type, holder, acquired_at, expires_at, released_at,
       release_reason, (released_at IS NULL AND expires_at > now()) AS active
FROM mec_data.leases;

CREATE VIEW mec.reservations WITH (security_invoker = true) AS
SELECT namespace_id, reservation_id, idempotency_key::text AS idempotency_key, account_id, resource_type, quantity, actual_quantity,
       period_start, period_end, expires_at, state, created_at, settled_at,
       (state = 'held' AND expires_at > now()) AS active
FROM mec_data.reservations;

-- The Stripe inbox (mec_admin only, grants.sql): every event received, what it did, and why.
CREATE VIEW mec.stripe_events WITH (security_invoker = true) AS
SELECT namespace_id, event_id, event_type, created, livemode, customer_id, account_id, outcome,
       detail, received_at, applied_at, payload
FROM mec_data.stripe_events;

-- The Stripe subscriptions pg_mec follows (mec_admin only).
CREATE VIEW mec.stripe_subscriptions WITH (security_invoker = true) AS
SELECT namespace_id, subscription_id, account_id, customer_id, status, price_id, plan_id, anchor_day,
       event_id, event_created, updated_at
FROM mec_data.stripe_subscriptions;

-- Auth0 sign-ups and deletions acted on (mec_admin only).
CREATE VIEW mec.auth0_events WITH (security_invoker = true) AS
SELECT namespace_id, log_id, event_type, user_id, account_id, outcome, detail, received_at
FROM mec_data.auth0_events;

-- Usage sent, or to be sent, to Stripe (mec_admin only): parked rows need the admin.
CREATE VIEW mec.stripe_usage_outbox WITH (security_invoker = true) AS
SELECT namespace_id, identifier, kind, account_id, resource_type, period_start, event_name,
       stripe_customer_id, value, event_timestamp, cancels, waits_for, state, attempts,
       next_attempt_at, last_status, last_error, created_at, sent_at
FROM mec_data.stripe_usage_outbox;

-- The namespaces the gateway's background worker serves (pg_mec/src/ops/stripe_usage.rs): the only
-- view that spans namespaces, so it shows ids and nothing else, to mec_worker only. It runs as its
-- owner (no security_invoker): the extension's owner, a superuser, whom row-level security does
-- not narrow.
CREATE VIEW mec_data.worker_namespaces AS
SELECT n.namespace_id, coalesce((n.settings->>'stripe_usage_sync')::boolean, false) AS stripe_usage_sync,
       EXISTS (SELECT 1 FROM mec_data.webhook_deliveries d
               WHERE d.namespace_id = n.namespace_id AND d.state = 'pending'
                 AND d.next_attempt_at <= now()) AS webhooks_due
FROM mec_data.namespaces n
WHERE coalesce((n.settings->>'stripe_usage_sync')::boolean, false)
   OR EXISTS (SELECT 1 FROM mec_data.webhook_deliveries d
              WHERE d.namespace_id = n.namespace_id AND d.state = 'pending' AND d.next_attempt_at <= now());

-- Outbound webhooks (mec_admin only): the endpoints, without their secrets (the secret is shown
-- once, by create_webhook_endpoint), and the delivery log (GET /admin/deliveries).
CREATE VIEW mec.webhook_endpoints WITH (security_invoker = true) AS
SELECT namespace_id, endpoint_id, url, event_types, description, enabled, created_at, updated_at
FROM mec_data.webhook_endpoints;

CREATE VIEW mec.webhook_deliveries WITH (security_invoker = true) AS
SELECT d.namespace_id, d.delivery_id, 'msg_' || replace(d.event_id::text, '-', '') AS webhook_id,
       e.event_type, e.account_id, d.endpoint_id, p.url, d.state, d.attempts, d.next_attempt_at,
       d.last_attempt_at, d.last_status, d.last_error, d.delivered_at, d.created_at, e.payload
FROM mec_data.webhook_deliveries d
JOIN mec_data.webhook_events e ON e.namespace_id = d.namespace_id AND e.event_id = d.event_id
JOIN mec_data.webhook_endpoints p ON p.namespace_id = d.namespace_id AND p.endpoint_id = d.endpoint_id;

-- Usage alerts that fired (mec_service and mec_admin): one row per account × resource × period ×
-- threshold.
CREATE VIEW mec.alert_crossings WITH (security_invoker = true) AS
SELECT namespace_id, account_id, resource_type, period_start, period_end, event_type, threshold,
       quantity_limit, quantity_used, consumption_id,
       'msg_' || replace(event_id::text, '-', '') AS webhook_id, crossed_at
FROM mec_data.alert_crossings;
