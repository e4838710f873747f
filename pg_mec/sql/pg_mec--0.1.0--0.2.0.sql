-- pg_mec 0.1.0 -> 0.2.0: the security release (docs/security.md).
--   * mec_owner: pg_mec's functions change the tables as this role; the API roles only read them.
--   * mec_data.role_bindings, mec.bind_role, mec.unbind_role: a login role other than the
--     gateway's authenticator acts only in the namespace the database owner bound it to.
-- Kept equal to a fresh 0.2.0 install by tests/upgrade/test_extension_upgrade.py.
\echo Use "ALTER EXTENSION pg_mec UPDATE TO '0.2.0'" to load this file. \quit

-- ---------------------------------------------------------------- roles (sql/roles.sql)
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_owner') THEN
        CREATE ROLE mec_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
END
$roles$;
ALTER ROLE mec_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
DO $owner$
DECLARE
    m text;
BEGIN
    FOR m IN SELECT r.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.member
             WHERE a.roleid = 'mec_owner'::regrole
    LOOP
        EXECUTE format('REVOKE mec_owner FROM %I', m);
        RAISE WARNING 'pg_mec: revoked mec_owner from %: nobody may act as mec_owner but pg_mec''s functions', m;
    END LOOP;
END
$owner$;

-- ---------------------------------------------------------------- role bindings (sql/schema.sql)
CREATE TABLE mec_data.role_bindings (
    namespace_id uuid        NOT NULL,
    role_name    text        NOT NULL CHECK (role_name <> ''),
    api_role     text        NOT NULL CHECK (api_role IN ('mec_user', 'mec_service', 'mec_admin')),
    account_id   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((api_role = 'mec_user') = (account_id IS NOT NULL)),
    PRIMARY KEY (namespace_id, role_name),
    FOREIGN KEY (namespace_id) REFERENCES mec_data.namespaces (namespace_id) ON DELETE CASCADE,
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX role_bindings_by_role ON mec_data.role_bindings (role_name);

-- sql/cache.sql
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON mec_data.role_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION mec_data.invalidate_cache('bindings');
ALTER TABLE mec_data.role_bindings ENABLE ALWAYS TRIGGER invalidate_cache;

-- ---------------------------------------------------------------- functions (pg_mec/src/api/namespaces.rs)
CREATE FUNCTION mec."bind_role"(
	"p_role" TEXT, /* Option < & str > */
	"p_namespace_id" uuid, /* Option < Uuid > */
	"p_api_role" TEXT DEFAULT 'mec_service', /* Option < & str > */
	"p_account_id" uuid DEFAULT NULL /* Option < Uuid > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bind_role_wrapper';

CREATE FUNCTION mec."unbind_role"(
	"p_role" TEXT, /* Option < & str > */
	"p_namespace_id" uuid DEFAULT NULL /* Option < Uuid > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'unbind_role_wrapper';

-- ---------------------------------------------------------------- row-level security (sql/rls.sql)
DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['namespaces', 'namespace_secrets', 'catalogs', 'resource_types', 'plans',
                             'plan_entitlements', 'accounts', 'entitlements', 'usage_counters',
                             'consumption', 'leases', 'reservations', 'idempotency_keys', 'audit_log']
    LOOP
        EXECUTE format('CREATE POLICY pg_mec_functions ON mec_data.%I TO mec_owner USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$rls$;
ALTER TABLE mec_data.role_bindings ENABLE ROW LEVEL SECURITY;
ALTER TABLE mec_data.role_bindings FORCE ROW LEVEL SECURITY;
CREATE POLICY own_bindings ON mec_data.role_bindings FOR SELECT TO mec_owner
    USING (role_name = session_user);

-- ---------------------------------------------------------------- privileges (sql/grants.sql)
-- The API roles lose every write on mec_data (column privileges are revoked on their own).
REVOKE ALL ON ALL TABLES IN SCHEMA mec_data FROM mec_user, mec_service, mec_admin;
REVOKE UPDATE (settings, updated_at) ON mec_data.namespaces FROM mec_admin;
REVOKE ALL ON mec_data.role_bindings FROM PUBLIC;
REVOKE ALL ON FUNCTION mec.bind_role(text, uuid, text, uuid), mec.unbind_role(text, uuid) FROM PUBLIC;

GRANT SELECT (namespace_id, name, settings, created_at, updated_at) ON mec_data.namespaces TO mec_user;
GRANT SELECT ON mec_data.resource_types, mec_data.plans, mec_data.plan_entitlements, mec_data.accounts,
                mec_data.entitlements, mec_data.usage_counters, mec_data.consumption, mec_data.leases,
                mec_data.reservations
      TO mec_user;
GRANT SELECT ON mec_data.catalogs TO mec_service;
GRANT SELECT ON mec_data.audit_log, mec_data.idempotency_keys, mec_data.namespace_secrets TO mec_admin;

GRANT USAGE ON SCHEMA mec, mec_data TO mec_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.catalogs, mec_data.resource_types, mec_data.plans,
      mec_data.plan_entitlements, mec_data.accounts, mec_data.entitlements, mec_data.usage_counters,
      mec_data.consumption, mec_data.leases, mec_data.reservations, mec_data.idempotency_keys,
      mec_data.namespace_secrets
      TO mec_owner;
GRANT SELECT, INSERT ON mec_data.audit_log TO mec_owner;
GRANT SELECT, UPDATE (settings, updated_at) ON mec_data.namespaces TO mec_owner;
GRANT SELECT ON mec_data.role_bindings TO mec_owner;
GRANT EXECUTE ON FUNCTION mec.current_namespace(), mec.current_account() TO mec_owner;
