-- pg_mec: privileges. Nothing is granted to PUBLIC. The API roles may read pg_mec's tables (through
-- the views of schema mec, which run as the caller) and change them only through pg_mec's
-- functions: no INSERT, UPDATE, DELETE or TRUNCATE on mec_data for any of them, so none can
-- rewrite a counter or the ledger, or lock a table against every tenant. The functions write as
-- mec_owner (pg_mec/src/pg/owner.rs); row-level security (rls.sql) narrows both to the caller's
-- namespace. See docs/security.md.

REVOKE ALL ON SCHEMA mec, mec_data FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA mec, mec_data FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA mec, mec_data FROM PUBLIC;

GRANT USAGE ON SCHEMA mec, mec_data TO mec_user;

-- Reads (row-level security narrows them).
GRANT SELECT ON ALL TABLES IN SCHEMA mec TO mec_user;
GRANT SELECT (namespace_id, name, settings, created_at, updated_at) ON mec_data.namespaces TO mec_user;
GRANT SELECT ON mec_data.resource_types, mec_data.plans, mec_data.plan_entitlements, mec_data.plan_versions,
                mec_data.accounts,
                mec_data.entitlements, mec_data.usage_counters, mec_data.consumption, mec_data.leases,
                mec_data.reservations, mec_data.consumption_rollups
      TO mec_user;

-- The vendor's backend and operator read more of their namespace (still only through RLS).
GRANT SELECT ON mec_data.catalogs TO mec_service;
GRANT SELECT ON mec_data.audit_log, mec_data.idempotency_keys, mec_data.namespace_secrets TO mec_admin;
-- Billing state from Stripe is the operator's to read.
REVOKE SELECT ON mec.stripe_events, mec.stripe_subscriptions, mec.auth0_events, mec.stripe_usage_outbox
       FROM mec_user;
GRANT SELECT ON mec.stripe_events, mec.stripe_subscriptions, mec.auth0_events, mec.stripe_usage_outbox
      TO mec_admin;
GRANT SELECT ON mec_data.stripe_events, mec_data.stripe_subscriptions, mec_data.auth0_events,
                mec_data.stripe_usage_outbox, mec_data.stripe_usage_items
      TO mec_admin;

-- pg_mec's functions, acting as mec_owner: what their statements read and write. No TRUNCATE, no
-- ownership: mec_owner is bound by row-level security like any role.
GRANT USAGE ON SCHEMA mec, mec_data TO mec_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.catalogs, mec_data.resource_types, mec_data.plans,
      mec_data.plan_entitlements, mec_data.plan_versions, mec_data.accounts, mec_data.entitlements, mec_data.usage_counters,
      mec_data.consumption, mec_data.leases, mec_data.reservations, mec_data.idempotency_keys,
      mec_data.namespace_secrets, mec_data.stripe_events, mec_data.stripe_subscriptions,
      mec_data.auth0_events, mec_data.stripe_usage_outbox, mec_data.stripe_usage_items,
      mec_data.consumption_rollups, mec_data.rate_windows, mec_data.rate_entries
      TO mec_owner;
GRANT SELECT, INSERT ON mec_data.audit_log TO mec_owner;
GRANT SELECT, UPDATE (settings, updated_at) ON mec_data.namespaces TO mec_owner;
GRANT SELECT ON mec_data.role_bindings TO mec_owner;
-- The row-level security policies call these as the current user.
GRANT EXECUTE ON FUNCTION mec.current_namespace(), mec.current_account() TO mec_owner;

-- Functions. create_namespace, bind_role and unbind_role are for the database owner only (no grant).
GRANT EXECUTE ON FUNCTION
    mec.current_namespace(), mec.current_account(),
    mec.check_entitlement(uuid, text, numeric, timestamptz),
    mec.usage_summary(uuid, timestamptz),
    mec.usage_history(uuid, text, timestamptz, timestamptz, text, text)
    TO mec_user;
GRANT EXECUTE ON FUNCTION
    mec.meter_consumption(text, uuid, text, numeric, timestamptz, jsonb, integer, jsonb),
    mec.acquire_lease(uuid, text, text, integer, text),
    mec.renew_lease(uuid, integer),
    mec.release_lease(uuid)
    TO mec_service;
GRANT EXECUTE ON FUNCTION
    mec.update_namespace_settings(jsonb),
    mec.load_catalog(jsonb),
    mec.provision_plan(uuid, text, timestamptz, text, text),
    mec.bulk_provision(jsonb, text),
    mec.expire_stale_leases()
    TO mec_admin;
GRANT EXECUTE ON FUNCTION mec.meter_consumption_batch(jsonb) TO mec_service;
GRANT EXECUTE ON FUNCTION mec.meter_usage(text, uuid, jsonb, timestamptz, jsonb, integer, jsonb) TO mec_service;
GRANT EXECUTE ON FUNCTION
    mec.set_override(uuid, text, numeric, text, timestamptz, timestamptz, text, text, numeric, numeric),
    mec.grant_credits(uuid, text, numeric, timestamptz, text, text),
    mec.adjust_consumption(text, uuid, text, numeric, text, timestamptz),
    mec.forget_account(uuid)
    TO mec_admin;
GRANT EXECUTE ON FUNCTION
    mec.reserve_consumption(text, uuid, text, numeric, integer),
    mec.commit_reservation(uuid, numeric, jsonb),
    mec.cancel_reservation(uuid)
    TO mec_service;

GRANT EXECUTE ON FUNCTION
    mec.apply_stripe_event(jsonb),
    mec.set_payment_overdue(uuid, boolean),
    mec.set_billing_anchor(uuid, integer)
    TO mec_admin;

-- Webhook receivers: they may hand a delivery to pg_mec and nothing else; pg_mec checks it against
-- the secret of the namespace it names.
GRANT USAGE ON SCHEMA mec TO mec_webhook;
GRANT EXECUTE ON FUNCTION
    mec.receive_stripe_event(uuid, text, text),
    mec.receive_auth0_events(uuid, text, text)
    TO mec_webhook;

-- Usage to Stripe: the admin runs it by hand (POST /admin/sync-usage-to-stripe), the gateway's worker
-- in the background for the namespaces that turned it on.
GRANT EXECUTE ON FUNCTION
    mec.stripe_usage_prepare(),
    mec.stripe_usage_due(integer),
    mec.stripe_usage_result(text, integer, text, integer)
    TO mec_admin, mec_worker;
GRANT EXECUTE ON FUNCTION mec.stripe_usage_retry(text) TO mec_admin;
GRANT USAGE ON SCHEMA mec, mec_data TO mec_worker;
GRANT SELECT ON mec_data.worker_namespaces TO mec_worker;

-- Alerts and outbound webhooks (pg_mec/src/events/): the admin registers endpoints and reads the
-- delivery log; the gateway's worker delivers. Secrets are read only by pg_mec's functions.
REVOKE SELECT ON mec.webhook_endpoints, mec.webhook_deliveries, mec.alert_crossings FROM mec_user;
GRANT SELECT ON mec.webhook_endpoints, mec.webhook_deliveries TO mec_admin;
GRANT SELECT ON mec.alert_crossings TO mec_service;
GRANT SELECT (namespace_id, endpoint_id, url, event_types, description, enabled, created_at, updated_at)
      ON mec_data.webhook_endpoints TO mec_admin;
GRANT SELECT ON mec_data.webhook_events, mec_data.webhook_deliveries TO mec_admin;
GRANT SELECT ON mec_data.alert_crossings TO mec_service;
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.webhook_endpoints, mec_data.alert_crossings,
      mec_data.webhook_events, mec_data.webhook_deliveries
      TO mec_owner;
GRANT EXECUTE ON FUNCTION
    mec.create_webhook_endpoint(text, text[], text, text),
    mec.update_webhook_endpoint(uuid, text, text[], text, boolean, boolean),
    mec.delete_webhook_endpoint(uuid),
    mec.retry_webhook_delivery(uuid)
    TO mec_admin;
GRANT EXECUTE ON FUNCTION
    mec.webhook_deliveries_due(integer),
    mec.webhook_delivery_result(uuid, integer, text, integer)
    TO mec_admin, mec_worker;

-- Operators: the shared entitlement cache's state (pg_mec/src/cache/shared.rs).
GRANT EXECUTE ON FUNCTION mec_data.shared_cache_stats() TO mec_admin;

-- Plan versions and access policy (issue 14).
GRANT EXECUTE ON FUNCTION mec.check_policy(uuid, jsonb) TO mec_user;
GRANT EXECUTE ON FUNCTION mec.migrate_plan_version(text, text, text, uuid) TO mec_admin;

-- Account hierarchies (issue 14).
GRANT EXECUTE ON FUNCTION mec.set_parent_account(uuid, uuid) TO mec_admin;

-- Retention (issue 14): the admin purges by hand, the gateway's worker on its schedule.
GRANT EXECUTE ON FUNCTION mec.purge_expired(timestamptz, integer) TO mec_admin, mec_worker;
