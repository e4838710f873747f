-- pg_mec: privileges. Nothing is granted to PUBLIC; each API role gets what its functions and
-- views need, and row-level security (rls.sql) narrows it to the caller's namespace.

REVOKE ALL ON SCHEMA mec, mec_data FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA mec, mec_data FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA mec, mec_data FROM PUBLIC;

GRANT USAGE ON SCHEMA mec, mec_data TO mec_user;

-- Reads (row-level security narrows them).
GRANT SELECT ON ALL TABLES IN SCHEMA mec TO mec_user;
GRANT SELECT (namespace_id, name, settings, created_at, updated_at) ON mec_data.namespaces TO mec_user;
GRANT SELECT ON mec_data.resource_types, mec_data.plans, mec_data.plan_entitlements, mec_data.accounts,
                mec_data.entitlements, mec_data.usage_counters, mec_data.consumption, mec_data.leases,
                mec_data.reservations
      TO mec_user;

-- The vendor's backend records usage and holds leases.
GRANT SELECT ON mec_data.catalogs TO mec_service;
GRANT INSERT, UPDATE ON mec_data.usage_counters, mec_data.leases, mec_data.reservations TO mec_service;
GRANT INSERT ON mec_data.consumption, mec_data.audit_log TO mec_service;

-- The vendor's operator manages the catalog, accounts and corrections.
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.catalogs, mec_data.resource_types, mec_data.plans,
      mec_data.plan_entitlements, mec_data.accounts, mec_data.entitlements, mec_data.idempotency_keys,
      mec_data.namespace_secrets
      TO mec_admin;
GRANT UPDATE (settings, updated_at) ON mec_data.namespaces TO mec_admin;
GRANT SELECT ON mec_data.audit_log TO mec_admin;
GRANT DELETE ON mec_data.usage_counters, mec_data.consumption, mec_data.leases, mec_data.reservations TO mec_admin;

-- Functions. create_namespace is for the database owner only (no grant).
GRANT EXECUTE ON FUNCTION
    mec.current_namespace(), mec.current_account(),
    mec.check_entitlement(uuid, text, numeric),
    mec.usage_summary(uuid)
    TO mec_user;
GRANT EXECUTE ON FUNCTION
    mec.meter_consumption(text, uuid, text, numeric, timestamptz, jsonb, integer),
    mec.acquire_lease(uuid, text, text, integer, text),
    mec.renew_lease(uuid, integer),
    mec.release_lease(uuid)
    TO mec_service;
GRANT EXECUTE ON FUNCTION
    mec.update_namespace_settings(jsonb),
    mec.load_catalog(jsonb),
    mec.provision_plan(uuid, text, timestamptz, text, text),
    mec.expire_stale_leases()
    TO mec_admin;
GRANT EXECUTE ON FUNCTION mec.meter_consumption_batch(jsonb) TO mec_service;
GRANT EXECUTE ON FUNCTION
    mec.set_override(uuid, text, numeric, text, timestamptz, timestamptz, text, text),
    mec.grant_credits(uuid, text, numeric, timestamptz, text, text),
    mec.adjust_consumption(text, uuid, text, numeric, text, timestamptz),
    mec.forget_account(uuid)
    TO mec_admin;
GRANT EXECUTE ON FUNCTION
    mec.reserve_consumption(text, uuid, text, numeric, integer),
    mec.commit_reservation(uuid, numeric),
    mec.cancel_reservation(uuid)
    TO mec_service;


-- Operators: the shared entitlement cache's state (pg_mec/src/shared_cache.rs).
GRANT EXECUTE ON FUNCTION mec_data.shared_cache_stats() TO mec_admin;
