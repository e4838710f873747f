-- pg_mec 0.2.0 -> 0.3.0: plan versions and access policy (issue 14; docs/CONTRACT.md).
--   * mec_data.plan_versions: every version of a plan loaded, as loaded; plans.version and .policy;
--     accounts.plan_version and entitlements.plan_version (grandfathering).
--   * mec.migrate_plan_version (mec_admin) and mec.check_policy (mec_user and up).
--   * Dimensions: resource_types.dimensions, plan_entitlements/entitlements.dimension_limits,
--     consumption.dimensions; p_dimensions on mec.meter_consumption and mec.meter_usage.
--   * Account hierarchies: accounts.parent_account_id, mec.set_parent_account (mec_admin).
--   * Retention: mec_data.consumption_rollups, mec.purge_expired (mec_admin, mec_worker).
--   * p_items on mec.commit_reservation.
-- Kept equal to a fresh 0.3.0 install by tests/upgrade/test_extension_upgrade.py.
\echo Use "ALTER EXTENSION pg_mec UPDATE TO '0.3.0'" to load this file. \quit

-- ---------------------------------------------------------------- plan versions (sql/schema.sql)
ALTER TABLE mec_data.plans
    ADD COLUMN version text NOT NULL DEFAULT '1' CHECK (version <> ''),
    ADD COLUMN policy jsonb;
ALTER TABLE mec_data.accounts ADD COLUMN plan_version text;
ALTER TABLE mec_data.entitlements ADD COLUMN plan_version text;

-- ---------------------------------------------------------------- dimensions (sql/schema.sql)
ALTER TABLE mec_data.resource_types ADD COLUMN dimensions jsonb;
ALTER TABLE mec_data.plan_entitlements ADD COLUMN dimension_limits jsonb;
ALTER TABLE mec_data.entitlements ADD COLUMN dimension_limits jsonb;
ALTER TABLE mec_data.consumption ADD COLUMN dimensions jsonb;

-- ---------------------------------------------------------------- hierarchies (sql/schema.sql)
ALTER TABLE mec_data.accounts
    ADD COLUMN parent_account_id uuid CHECK (parent_account_id <> account_id),
    ADD FOREIGN KEY (namespace_id, parent_account_id) REFERENCES mec_data.accounts (namespace_id, account_id)
        ON DELETE SET NULL (parent_account_id);
CREATE INDEX accounts_children ON mec_data.accounts (namespace_id, parent_account_id)
    WHERE parent_account_id IS NOT NULL;
-- A cached entitlement knows the account's parent: a new parent (or none, when the parent is
-- forgotten) must reach every backend's cache as the account's other cached columns do (sql/cache.sql).
DROP TRIGGER invalidate_cache ON mec_data.accounts;
DROP TRIGGER invalidate_cache_before ON mec_data.accounts;
DROP TRIGGER invalidate_cache_rows ON mec_data.accounts;
CREATE TRIGGER invalidate_cache AFTER UPDATE OF namespace_id, account_id, billing_anchor_day, payment_overdue,
    parent_account_id OR DELETE OR TRUNCATE ON mec_data.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION mec_data.invalidate_cache('rows');
CREATE TRIGGER invalidate_cache_before BEFORE UPDATE OF namespace_id, account_id, billing_anchor_day, payment_overdue,
    parent_account_id OR DELETE OR TRUNCATE ON mec_data.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION mec_data.invalidate_cache('rows');
CREATE TRIGGER invalidate_cache_rows AFTER UPDATE OF namespace_id, account_id, billing_anchor_day, payment_overdue,
    parent_account_id OR DELETE ON mec_data.accounts
    FOR EACH ROW EXECUTE FUNCTION mec_data.invalidate_cache_rows();
ALTER TABLE mec_data.accounts ENABLE ALWAYS TRIGGER invalidate_cache;
ALTER TABLE mec_data.accounts ENABLE ALWAYS TRIGGER invalidate_cache_before;
ALTER TABLE mec_data.accounts ENABLE ALWAYS TRIGGER invalidate_cache_rows;

CREATE TABLE mec_data.plan_versions (
    namespace_id uuid        NOT NULL,
    plan_id      text        NOT NULL,
    version      text        NOT NULL CHECK (version <> ''),
    entitlements jsonb       NOT NULL,
    policy       jsonb,
    explicit     boolean     NOT NULL,
    loaded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, plan_id, version),
    FOREIGN KEY (namespace_id, plan_id) REFERENCES mec_data.plans (namespace_id, plan_id) ON DELETE CASCADE
);

-- What 0.2.0 held is version "1" of each plan: the accounts on a plan are on it.
INSERT INTO mec_data.plan_versions (namespace_id, plan_id, version, entitlements, policy, explicit)
SELECT p.namespace_id, p.plan_id, '1',
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'resource_type', pe.resource_type, 'quantity_limit', pe.quantity_limit, 'period', pe.period,
                   'enforcement', pe.enforcement, 'overage_cap', pe.overage_cap, 'grace', pe.grace,
                   'enabled', pe.enabled, 'dimension_limits', pe.dimension_limits) ORDER BY pe.resource_type), '[]')
          FROM mec_data.plan_entitlements pe
         WHERE pe.namespace_id = p.namespace_id AND pe.plan_id = p.plan_id),
       NULL, false
  FROM mec_data.plans p;
UPDATE mec_data.accounts SET plan_version = '1' WHERE plan_id IS NOT NULL;
UPDATE mec_data.entitlements SET plan_version = '1' WHERE source = 'plan';

-- ---------------------------------------------------------------- row-level security (sql/rls.sql)
ALTER TABLE mec_data.plan_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE mec_data.plan_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON mec_data.plan_versions AS RESTRICTIVE
    USING (namespace_id = mec.current_namespace())
    WITH CHECK (namespace_id = mec.current_namespace());
CREATE POLICY namespace_staff ON mec_data.plan_versions TO mec_service USING (true) WITH CHECK (true);
CREATE POLICY pg_mec_functions ON mec_data.plan_versions TO mec_owner USING (true) WITH CHECK (true);
CREATE POLICY user_read_catalog ON mec_data.plan_versions FOR SELECT TO mec_user USING (true);

-- ---------------------------------------------------------------- views (sql/views.sql)
CREATE OR REPLACE VIEW mec.plans WITH (security_invoker = true) AS
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

CREATE OR REPLACE VIEW mec.accounts WITH (security_invoker = true) AS
SELECT namespace_id, account_id, external_id, plan_id, plan_effective_at, stripe_customer_id,
       payment_overdue, billing_anchor_day, created_at, updated_at, plan_version, parent_account_id
FROM mec_data.accounts;

CREATE OR REPLACE VIEW mec.entitlements WITH (security_invoker = true) AS
SELECT e.namespace_id, e.entitlement_id, e.account_id, e.resource_type, r.kind, e.source, e.plan_id,
       e.quantity_limit, e.period, e.enforcement, e.overage_cap, e.grace, e.enabled,
       e.valid_from, e.valid_until, e.reason, e.created_at, e.plan_version, e.dimension_limits
FROM mec_data.entitlements e
JOIN mec_data.resource_types r USING (namespace_id, resource_type);

CREATE OR REPLACE VIEW mec.resource_types WITH (security_invoker = true) AS
SELECT namespace_id, resource_type, kind, unit, description, window_seconds, billable_statuses,
       stripe_meter_event, dimensions
FROM mec_data.resource_types;

CREATE OR REPLACE VIEW mec.consumption WITH (security_invoker = true) AS
SELECT namespace_id, consumption_id, idempotency_key::text AS idempotency_key, account_id, resource_type,
       entry_type::text AS entry_type, quantity,
       occurred_at, recorded_at, period_start, period_end, billable, overage, overage_quantity,
       quantity_used, quantity_allowed, http_status, metadata, reason, dimensions
FROM mec_data.consumption;

-- ---------------------------------------------------------------- privileges (sql/grants.sql)
REVOKE ALL ON mec_data.plan_versions, mec.plan_versions FROM PUBLIC;
GRANT SELECT ON mec.plan_versions TO mec_user;
GRANT SELECT ON mec_data.plan_versions TO mec_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.plan_versions TO mec_owner;

-- ---------------------------------------------------------------- functions (pg_mec/src/api/)
CREATE FUNCTION mec."check_policy"(
	"p_account_id" uuid, /* Option < Uuid > */
	"p_request" jsonb /* Option < crate :: pg :: jsonb :: JsonbArg > */
) RETURNS jsonb /* Jsonb */
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_policy_wrapper';
REVOKE ALL ON FUNCTION mec.check_policy(uuid, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.check_policy(uuid, jsonb) TO mec_user;

CREATE FUNCTION mec."migrate_plan_version"(
	"p_plan_id" TEXT, /* Option < & str > */
	"p_from_version" TEXT, /* Option < & str > */
	"p_to_version" TEXT, /* Option < & str > */
	"p_account_id" uuid DEFAULT NULL /* Option < Uuid > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'migrate_plan_version_wrapper';
REVOKE ALL ON FUNCTION mec.migrate_plan_version(text, text, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.migrate_plan_version(text, text, text, uuid) TO mec_admin;

-- ---------------------------------------------------------------- p_dimensions (pg_mec/src/api/metering.rs)
DROP FUNCTION mec.meter_consumption(text, uuid, text, numeric, timestamptz, jsonb, integer);
CREATE FUNCTION mec."meter_consumption"(
	"p_idempotency_key" TEXT, /* Option < & str > */
	"p_account_id" uuid, /* Option < Uuid > */
	"p_resource_type" TEXT, /* Option < & str > */
	"p_quantity" NUMERIC, /* Option < AnyNumeric > */
	"p_occurred_at" timestamp with time zone DEFAULT now(), /* Option < TimestampWithTimeZone > */
	"p_metadata" jsonb DEFAULT '{}', /* Option < JsonbArg > */
	"p_http_status" INT DEFAULT NULL, /* Option < i32 > */
	"p_dimensions" jsonb DEFAULT '{}' /* Option < JsonbArg > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'meter_consumption_wrapper';
REVOKE ALL ON FUNCTION mec.meter_consumption(text, uuid, text, numeric, timestamptz, jsonb, integer, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.meter_consumption(text, uuid, text, numeric, timestamptz, jsonb, integer, jsonb) TO mec_service;

DROP FUNCTION mec.meter_usage(text, uuid, jsonb, timestamptz, jsonb, integer);
CREATE FUNCTION mec."meter_usage"(
	"p_idempotency_key" TEXT, /* Option < & str > */
	"p_account_id" uuid, /* Option < Uuid > */
	"p_items" jsonb, /* Option < JsonbArg > */
	"p_occurred_at" timestamp with time zone DEFAULT now(), /* Option < TimestampWithTimeZone > */
	"p_metadata" jsonb DEFAULT '{}', /* Option < JsonbArg > */
	"p_http_status" INT DEFAULT NULL, /* Option < i32 > */
	"p_dimensions" jsonb DEFAULT '{}' /* Option < JsonbArg > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'meter_usage_wrapper';
REVOKE ALL ON FUNCTION mec.meter_usage(text, uuid, jsonb, timestamptz, jsonb, integer, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.meter_usage(text, uuid, jsonb, timestamptz, jsonb, integer, jsonb) TO mec_service;

-- ---------------------------------------------------------------- hierarchies (pg_mec/src/api/provisioning.rs)
CREATE FUNCTION mec."set_parent_account"(
	"p_account_id" uuid, /* Option < Uuid > */
	"p_parent_account_id" uuid /* Option < Uuid > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_parent_account_wrapper';
REVOKE ALL ON FUNCTION mec.set_parent_account(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.set_parent_account(uuid, uuid) TO mec_admin;

-- ---------------------------------------------------------------- retention (sql/schema.sql, rls.sql, grants.sql)
CREATE INDEX consumption_recorded ON mec_data.consumption USING brin (recorded_at);
CREATE TABLE mec_data.consumption_rollups (
    namespace_id   uuid        NOT NULL,
    account_id     uuid        NOT NULL,
    resource_type  text        NOT NULL,
    day            date        NOT NULL,
    period_start   timestamptz NOT NULL,
    entry_type     mec_data.entry_type NOT NULL,
    billable       boolean     NOT NULL,
    dimensions     jsonb       NOT NULL DEFAULT '{}',
    quantity       numeric     NOT NULL,
    events         bigint      NOT NULL CHECK (events > 0),
    recorded_until timestamptz NOT NULL,
    PRIMARY KEY (namespace_id, account_id, resource_type, day, period_start, entry_type, billable, dimensions)
);
ALTER TABLE mec_data.consumption_rollups ENABLE ROW LEVEL SECURITY;
ALTER TABLE mec_data.consumption_rollups FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON mec_data.consumption_rollups AS RESTRICTIVE
    USING (namespace_id = mec.current_namespace())
    WITH CHECK (namespace_id = mec.current_namespace());
CREATE POLICY namespace_staff ON mec_data.consumption_rollups TO mec_service USING (true) WITH CHECK (true);
CREATE POLICY pg_mec_functions ON mec_data.consumption_rollups TO mec_owner USING (true) WITH CHECK (true);
CREATE POLICY user_own_account ON mec_data.consumption_rollups FOR SELECT TO mec_user
    USING (account_id = mec.current_account());
REVOKE ALL ON mec_data.consumption_rollups FROM PUBLIC;
GRANT SELECT ON mec_data.consumption_rollups TO mec_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.consumption_rollups TO mec_owner;
CREATE FUNCTION mec."purge_expired"(
	"p_before" timestamp with time zone DEFAULT now(), /* Option < TimestampWithTimeZone > */
	"p_batch_size" INT DEFAULT 10000 /* Option < i32 > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'purge_expired_wrapper';
REVOKE ALL ON FUNCTION mec.purge_expired(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.purge_expired(timestamptz, integer) TO mec_admin, mec_worker;

-- ---------------------------------------------------------------- commit_reservation with items (pg_mec/src/api/reservations.rs)
DROP FUNCTION mec.commit_reservation(uuid, numeric);
CREATE FUNCTION mec."commit_reservation"(
	"p_reservation_id" uuid, /* Option < Uuid > */
	"p_actual_quantity" NUMERIC DEFAULT NULL, /* Option < AnyNumeric > */
	"p_items" jsonb DEFAULT NULL /* Option < JsonbArg > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'commit_reservation_wrapper';
REVOKE ALL ON FUNCTION mec.commit_reservation(uuid, numeric, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.commit_reservation(uuid, numeric, jsonb) TO mec_service;
