-- pg_mec: row-level security. Postgres, not the gateway, keeps tenants apart.
--
-- Every table: a RESTRICTIVE policy pins rows to mec.current_namespace() for everyone
-- (FORCE: the table owner too, unless it is a superuser), then PERMISSIVE policies say what
-- each role may do inside its namespace. mec_service is a member of mec_user and mec_admin of
-- mec_service, so policies granted to a role also serve the roles above it. The API roles only
-- read (grants.sql); pg_mec's functions change the tables as mec_owner, whose policy admits any
-- row of the caller's namespace and no other.
DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['namespaces', 'namespace_secrets', 'catalogs', 'resource_types', 'plans',
                             'plan_entitlements', 'plan_versions', 'accounts', 'entitlements', 'usage_counters',
                             'consumption', 'leases', 'reservations', 'idempotency_keys', 'audit_log',
                             'stripe_events', 'stripe_subscriptions', 'auth0_events',
                             'stripe_usage_outbox', 'stripe_usage_items', 'webhook_endpoints',
                             'alert_crossings', 'webhook_events', 'webhook_deliveries', 'consumption_rollups',
                             'rate_windows', 'rate_entries']
    LOOP
        EXECUTE format('ALTER TABLE mec_data.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE mec_data.%I FORCE ROW LEVEL SECURITY', t);
        -- (SELECT …): evaluated once per statement, not once per row (or per rescan of a lateral
        -- lookup); ~7% of a meter_consumption call, more of a batch.
        EXECUTE format($p$CREATE POLICY tenant_isolation ON mec_data.%I AS RESTRICTIVE
                           USING (namespace_id = (SELECT mec.current_namespace()))
                           WITH CHECK (namespace_id = (SELECT mec.current_namespace()))$p$, t);
        -- mec_service and mec_admin read any row of their namespace (table grants decide which verbs).
        EXECUTE format('CREATE POLICY namespace_staff ON mec_data.%I TO mec_service USING (true) WITH CHECK (true)', t);
        -- pg_mec's functions, acting as mec_owner, read and write any row of the caller's namespace.
        EXECUTE format('CREATE POLICY pg_mec_functions ON mec_data.%I TO mec_owner USING (true) WITH CHECK (true)', t);
    END LOOP;

    -- mec_user reads the catalog of its namespace ...
    FOREACH t IN ARRAY ARRAY['namespaces', 'resource_types', 'plans', 'plan_entitlements', 'plan_versions']
    LOOP
        EXECUTE format('CREATE POLICY user_read_catalog ON mec_data.%I FOR SELECT TO mec_user USING (true)', t);
    END LOOP;

    -- ... and only the rows of its own account (the account_id claim).
    FOREACH t IN ARRAY ARRAY['accounts', 'entitlements', 'usage_counters', 'consumption', 'leases', 'reservations',
                             'consumption_rollups']
    LOOP
        EXECUTE format($p$CREATE POLICY user_own_account ON mec_data.%I FOR SELECT TO mec_user
                           USING (account_id = (SELECT mec.current_account()))$p$, t);
    END LOOP;
END
$rls$;

-- Role bindings are the platform operator's (mec.bind_role, as the database owner): no API role
-- reads them, and mec_owner, which reads them to resolve a bound session's namespace, sees only
-- the session user's own. No namespace policy: they are what decides the namespace.
ALTER TABLE mec_data.role_bindings ENABLE ROW LEVEL SECURITY;
ALTER TABLE mec_data.role_bindings FORCE ROW LEVEL SECURITY;
CREATE POLICY own_bindings ON mec_data.role_bindings FOR SELECT TO mec_owner
    USING (role_name = session_user);
