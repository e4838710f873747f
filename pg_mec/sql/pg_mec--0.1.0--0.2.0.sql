-- pg_mec 0.1.0 -> 0.2.0: the security release (docs/security.md).
--   * mec_owner: pg_mec's functions change the tables as this role; the API roles only read them.
--   * mec_data.role_bindings, mec.bind_role, mec.unbind_role: a login role other than the
--     gateway's authenticator acts only in the namespace the database owner bound it to.
--   * Stripe in: mec_webhook, mec_data.stripe_events / stripe_subscriptions, payment standing
--     (accounts.payment_event_at, overdue_action), mec.receive_stripe_event and its admin levers.
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

-- ================================================================ billing state from Stripe
-- (docs/integrations.md): the webhook role, the Stripe inbox and subscriptions, payment standing.

-- ---------------------------------------------------------------- roles (sql/roles.sql)
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_webhook') THEN
        CREATE ROLE mec_webhook NOLOGIN;
    END IF;
END
$roles$;
GRANT mec_webhook TO mec_authenticator;

-- ---------------------------------------------------------------- tables (sql/schema.sql)
ALTER TABLE mec_data.accounts ADD COLUMN payment_event_at timestamptz;

CREATE TABLE mec_data.stripe_events (
    namespace_id uuid        NOT NULL,
    event_id     text        NOT NULL CHECK (event_id <> '' AND length(event_id) <= 255),
    event_type   text        NOT NULL,
    created      timestamptz NOT NULL,
    livemode     boolean     NOT NULL DEFAULT false,
    customer_id  text,
    account_id   uuid,
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'stale', 'ignored', 'unmatched')),
    detail       text,
    payload      jsonb       NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    applied_at   timestamptz,
    PRIMARY KEY (namespace_id, event_id)
);
CREATE INDEX stripe_events_unmatched
    ON mec_data.stripe_events (namespace_id, customer_id, created) WHERE outcome = 'unmatched';
CREATE INDEX stripe_events_by_account ON mec_data.stripe_events (namespace_id, account_id);

CREATE TABLE mec_data.stripe_subscriptions (
    namespace_id    uuid        NOT NULL,
    subscription_id text        NOT NULL CHECK (subscription_id <> ''),
    account_id      uuid        NOT NULL,
    customer_id     text,
    status          text        NOT NULL,
    price_id        text,
    plan_id         text,
    anchor_day      smallint CHECK (anchor_day BETWEEN 1 AND 31),
    event_id        text        NOT NULL,
    event_created   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, subscription_id),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX stripe_subscriptions_by_account ON mec_data.stripe_subscriptions (namespace_id, account_id);

-- ---------------------------------------------------------------- views (sql/views.sql)
CREATE VIEW mec.stripe_events WITH (security_invoker = true) AS
SELECT namespace_id, event_id, event_type, created, livemode, customer_id, account_id, outcome,
       detail, received_at, applied_at, payload
FROM mec_data.stripe_events;

CREATE VIEW mec.stripe_subscriptions WITH (security_invoker = true) AS
SELECT namespace_id, subscription_id, account_id, customer_id, status, price_id, plan_id, anchor_day,
       event_id, event_created, updated_at
FROM mec_data.stripe_subscriptions;

-- ---------------------------------------------------------------- cache invalidation (sql/cache.sql)
-- accounts: payment_overdue now decides entitlements too.
DROP TRIGGER invalidate_cache ON mec_data.accounts;
DROP TRIGGER invalidate_cache_before ON mec_data.accounts;
DROP TRIGGER invalidate_cache_rows ON mec_data.accounts;
DO $cache$
DECLARE
    t record;
    timing text;
BEGIN
    FOR t IN
        SELECT * FROM (VALUES
            ('accounts',       'UPDATE OF namespace_id, account_id, billing_anchor_day, payment_overdue'
                               ' OR DELETE', 'rows'),
            ('namespaces',     'UPDATE OF settings', 'all'),
            ('plan_entitlements', 'INSERT OR UPDATE OR DELETE', 'all')
        ) AS v(tab, events, scope)
    LOOP
        FOREACH timing IN ARRAY ARRAY['AFTER', 'BEFORE'] LOOP
            EXECUTE format(
                'CREATE TRIGGER %I %s %s OR TRUNCATE ON mec_data.%I
                     FOR EACH STATEMENT EXECUTE FUNCTION mec_data.invalidate_cache(%L)',
                CASE timing WHEN 'AFTER' THEN 'invalidate_cache' ELSE 'invalidate_cache_before' END,
                timing, t.events, t.tab, t.scope);
            EXECUTE format('ALTER TABLE mec_data.%I ENABLE ALWAYS TRIGGER %I', t.tab,
                CASE timing WHEN 'AFTER' THEN 'invalidate_cache' ELSE 'invalidate_cache_before' END);
        END LOOP;
        IF t.scope = 'rows' THEN
            EXECUTE format(
                'CREATE TRIGGER invalidate_cache_rows AFTER %s ON mec_data.%I
                     FOR EACH ROW EXECUTE FUNCTION mec_data.invalidate_cache_rows()',
                t.events, t.tab);
            EXECUTE format('ALTER TABLE mec_data.%I ENABLE ALWAYS TRIGGER invalidate_cache_rows', t.tab);
        END IF;
    END LOOP;
END
$cache$;

-- ---------------------------------------------------------------- row-level security (sql/rls.sql)
DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['stripe_events', 'stripe_subscriptions']
    LOOP
        EXECUTE format('ALTER TABLE mec_data.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE mec_data.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON mec_data.%I AS RESTRICTIVE
                           USING (namespace_id = mec.current_namespace())
                           WITH CHECK (namespace_id = mec.current_namespace())$p$, t);
        EXECUTE format('CREATE POLICY namespace_staff ON mec_data.%I TO mec_service USING (true) WITH CHECK (true)', t);
        EXECUTE format('CREATE POLICY pg_mec_functions ON mec_data.%I TO mec_owner USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$rls$;

-- ---------------------------------------------------------------- functions (pg_mec/src/api/billing.rs)
CREATE FUNCTION mec."receive_stripe_event"(
	"p_namespace_id" uuid, /* Option < Uuid > */
	"p_payload" TEXT, /* Option < & str > */
	"p_signature" TEXT /* Option < & str > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'receive_stripe_event_wrapper';

CREATE FUNCTION mec."apply_stripe_event"(
	"p_event" jsonb /* Option < JsonbArg > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'apply_stripe_event_wrapper';

CREATE FUNCTION mec."set_payment_overdue"(
	"p_account_id" uuid, /* Option < Uuid > */
	"p_overdue" bool /* Option < bool > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_payment_overdue_wrapper';

CREATE FUNCTION mec."set_billing_anchor"(
	"p_account_id" uuid, /* Option < Uuid > */
	"p_anchor_day" INT /* Option < i32 > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_billing_anchor_wrapper';

-- ---------------------------------------------------------------- privileges (sql/grants.sql)
REVOKE ALL ON mec.stripe_events, mec.stripe_subscriptions, mec_data.stripe_events,
              mec_data.stripe_subscriptions FROM PUBLIC;
REVOKE ALL ON FUNCTION mec.receive_stripe_event(uuid, text, text), mec.apply_stripe_event(jsonb),
              mec.set_payment_overdue(uuid, boolean), mec.set_billing_anchor(uuid, integer) FROM PUBLIC;
GRANT SELECT ON mec.stripe_events, mec.stripe_subscriptions TO mec_admin;
GRANT SELECT ON mec_data.stripe_events, mec_data.stripe_subscriptions TO mec_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.stripe_events, mec_data.stripe_subscriptions TO mec_owner;
GRANT EXECUTE ON FUNCTION
    mec.apply_stripe_event(jsonb),
    mec.set_payment_overdue(uuid, boolean),
    mec.set_billing_anchor(uuid, integer)
    TO mec_admin;
GRANT USAGE ON SCHEMA mec TO mec_webhook;
GRANT EXECUTE ON FUNCTION mec.receive_stripe_event(uuid, text, text) TO mec_webhook;

-- ================================================================ identity from Auth0, admin endpoints
-- ---------------------------------------------------------------- tables (sql/schema.sql)
CREATE TABLE mec_data.auth0_events (
    namespace_id uuid        NOT NULL,
    log_id       text        NOT NULL CHECK (log_id <> '' AND length(log_id) <= 255),
    event_type   text        NOT NULL,
    user_id      text,
    account_id   uuid,
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'ignored')),
    detail       text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, log_id)
);
CREATE INDEX auth0_events_by_account ON mec_data.auth0_events (namespace_id, account_id);

-- ---------------------------------------------------------------- views (sql/views.sql)
CREATE VIEW mec.auth0_events WITH (security_invoker = true) AS
SELECT namespace_id, log_id, event_type, user_id, account_id, outcome, detail, received_at
FROM mec_data.auth0_events;

-- ---------------------------------------------------------------- row-level security (sql/rls.sql)
ALTER TABLE mec_data.auth0_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE mec_data.auth0_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON mec_data.auth0_events AS RESTRICTIVE
    USING (namespace_id = mec.current_namespace())
    WITH CHECK (namespace_id = mec.current_namespace());
CREATE POLICY namespace_staff ON mec_data.auth0_events TO mec_service USING (true) WITH CHECK (true);
CREATE POLICY pg_mec_functions ON mec_data.auth0_events TO mec_owner USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------- functions (pg_mec/src/api/identity.rs, provisioning.rs)
CREATE FUNCTION mec."receive_auth0_events"(
	"p_namespace_id" uuid, /* Option < Uuid > */
	"p_payload" TEXT, /* Option < & str > */
	"p_authorization" TEXT /* Option < & str > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'receive_auth0_events_wrapper';

CREATE FUNCTION mec."bulk_provision"(
	"p_rows" jsonb, /* Option < JsonbArg > */
	"p_idempotency_key" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bulk_provision_wrapper';

-- ---------------------------------------------------------------- privileges (sql/grants.sql)
REVOKE ALL ON mec.auth0_events, mec_data.auth0_events FROM PUBLIC;
REVOKE ALL ON FUNCTION mec.receive_auth0_events(uuid, text, text), mec.bulk_provision(jsonb, text) FROM PUBLIC;
GRANT SELECT ON mec.auth0_events, mec_data.auth0_events TO mec_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.auth0_events TO mec_owner;
GRANT EXECUTE ON FUNCTION mec.bulk_provision(jsonb, text) TO mec_admin;
GRANT EXECUTE ON FUNCTION mec.receive_auth0_events(uuid, text, text) TO mec_webhook;

-- ================================================================ usage to Stripe
-- ---------------------------------------------------------------- roles (sql/roles.sql)
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mec_worker') THEN
        CREATE ROLE mec_worker NOLOGIN;
    END IF;
END
$roles$;
GRANT mec_worker TO mec_authenticator;

-- ---------------------------------------------------------------- tables (sql/schema.sql)
ALTER TABLE mec_data.resource_types
    ADD COLUMN stripe_meter_event text CHECK (length(stripe_meter_event) BETWEEN 1 AND 100);
ALTER TABLE mec_data.namespace_secrets ADD COLUMN stripe_api_key text;

CREATE TABLE mec_data.stripe_usage_outbox (
    namespace_id       uuid        NOT NULL,
    identifier         text        NOT NULL CHECK (identifier <> '' AND length(identifier) <= 100),
    kind               text        NOT NULL CHECK (kind IN ('meter_event', 'cancel')),
    account_id         uuid        NOT NULL,
    resource_type      text        NOT NULL,
    period_start       timestamptz NOT NULL,
    event_name         text        NOT NULL,
    stripe_customer_id text        NOT NULL,
    value              numeric     NOT NULL,
    event_timestamp    timestamptz NOT NULL,
    cancels            text,
    waits_for          text,
    state              text        NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'sent', 'parked', 'cancelled', 'nothing_to_send')),
    attempts           integer     NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    last_status        integer,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    CHECK ((kind = 'cancel') = (cancels IS NOT NULL)),
    PRIMARY KEY (namespace_id, identifier),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX stripe_usage_due
    ON mec_data.stripe_usage_outbox (namespace_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX stripe_usage_by_counter
    ON mec_data.stripe_usage_outbox (namespace_id, account_id, resource_type, period_start);

CREATE TABLE mec_data.stripe_usage_items (
    namespace_id    uuid NOT NULL,
    idempotency_key mec_data.idempotency_key NOT NULL,
    identifier      text NOT NULL,
    PRIMARY KEY (namespace_id, idempotency_key),
    FOREIGN KEY (namespace_id, identifier) REFERENCES mec_data.stripe_usage_outbox (namespace_id, identifier) ON DELETE CASCADE
);
CREATE INDEX stripe_usage_items_by_event ON mec_data.stripe_usage_items (namespace_id, identifier);

-- ---------------------------------------------------------------- views (sql/views.sql)
CREATE OR REPLACE VIEW mec.resource_types WITH (security_invoker = true) AS
SELECT namespace_id, resource_type, kind, unit, description, window_seconds, billable_statuses,
       stripe_meter_event
FROM mec_data.resource_types;

CREATE VIEW mec.stripe_usage_outbox WITH (security_invoker = true) AS
SELECT namespace_id, identifier, kind, account_id, resource_type, period_start, event_name,
       stripe_customer_id, value, event_timestamp, cancels, waits_for, state, attempts,
       next_attempt_at, last_status, last_error, created_at, sent_at
FROM mec_data.stripe_usage_outbox;

CREATE VIEW mec_data.worker_namespaces AS
SELECT n.namespace_id, coalesce((n.settings->>'stripe_usage_sync')::boolean, false) AS stripe_usage_sync
FROM mec_data.namespaces n
WHERE coalesce((n.settings->>'stripe_usage_sync')::boolean, false);

-- ---------------------------------------------------------------- row-level security (sql/rls.sql)
DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['stripe_usage_outbox', 'stripe_usage_items']
    LOOP
        EXECUTE format('ALTER TABLE mec_data.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE mec_data.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON mec_data.%I AS RESTRICTIVE
                           USING (namespace_id = mec.current_namespace())
                           WITH CHECK (namespace_id = mec.current_namespace())$p$, t);
        EXECUTE format('CREATE POLICY namespace_staff ON mec_data.%I TO mec_service USING (true) WITH CHECK (true)', t);
        EXECUTE format('CREATE POLICY pg_mec_functions ON mec_data.%I TO mec_owner USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$rls$;

-- ---------------------------------------------------------------- functions (pg_mec/src/api/billing.rs)
CREATE FUNCTION mec."stripe_usage_prepare"() RETURNS jsonb /* Jsonb */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stripe_usage_prepare_wrapper';

CREATE FUNCTION mec."stripe_usage_due"(
	"p_limit" INT DEFAULT 100 /* Option < i32 > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stripe_usage_due_wrapper';

CREATE FUNCTION mec."stripe_usage_result"(
	"p_identifier" TEXT, /* Option < & str > */
	"p_status" INT, /* Option < i32 > */
	"p_error" TEXT DEFAULT NULL, /* Option < & str > */
	"p_retry_after" INT DEFAULT NULL /* Option < i32 > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stripe_usage_result_wrapper';

CREATE FUNCTION mec."stripe_usage_retry"(
	"p_identifier" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stripe_usage_retry_wrapper';

-- ---------------------------------------------------------------- privileges (sql/grants.sql)
REVOKE ALL ON mec.stripe_usage_outbox, mec_data.stripe_usage_outbox, mec_data.stripe_usage_items,
              mec_data.worker_namespaces FROM PUBLIC;
REVOKE ALL ON FUNCTION mec.stripe_usage_prepare(), mec.stripe_usage_due(integer),
              mec.stripe_usage_result(text, integer, text, integer), mec.stripe_usage_retry(text) FROM PUBLIC;
GRANT SELECT ON mec.stripe_usage_outbox TO mec_admin;
GRANT SELECT ON mec_data.stripe_usage_outbox, mec_data.stripe_usage_items TO mec_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.stripe_usage_outbox, mec_data.stripe_usage_items TO mec_owner;
GRANT EXECUTE ON FUNCTION
    mec.stripe_usage_prepare(),
    mec.stripe_usage_due(integer),
    mec.stripe_usage_result(text, integer, text, integer)
    TO mec_admin, mec_worker;
GRANT EXECUTE ON FUNCTION mec.stripe_usage_retry(text) TO mec_admin;
GRANT USAGE ON SCHEMA mec, mec_data TO mec_worker;
GRANT SELECT ON mec_data.worker_namespaces TO mec_worker;

-- ================================================================ alerts and outbound webhooks
-- ---------------------------------------------------------------- tables (sql/schema.sql)
-- Outbound webhooks (pg_mec/src/events/): the endpoints a namespace registered, the events pg_mec
-- emitted, one delivery per event and endpoint. An event and its deliveries are written in the
-- transaction that caused them (the usage that crossed a threshold, the plan change), so a rolled
-- back call emits nothing and a committed one is delivered even if the gateway was down.
CREATE TABLE mec_data.webhook_endpoints (
    namespace_id uuid        NOT NULL,
    endpoint_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    url          text        NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    -- Standard Webhooks: "whsec_" + base64 of the key
    secret       text        NOT NULL CHECK (secret LIKE 'whsec\_%'),
    -- empty: every event type
    event_types  text[]      NOT NULL DEFAULT '{}',
    description  text        CHECK (length(description) <= 500),
    enabled      boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, endpoint_id),
    FOREIGN KEY (namespace_id) REFERENCES mec_data.namespaces (namespace_id) ON DELETE CASCADE
);

-- Each crossing of a usage alert (a catalog threshold in percent of the limit, or the limit itself
-- for usage.limit_reached), once per account × resource × period × threshold: the primary key.
CREATE TABLE mec_data.alert_crossings (
    namespace_id   uuid        NOT NULL,
    account_id     uuid        NOT NULL,
    resource_type  text        NOT NULL,
    period_start   timestamptz NOT NULL,
    event_type     text        NOT NULL CHECK (event_type IN ('usage.threshold_crossed', 'usage.limit_reached')),
    threshold      numeric     NOT NULL,
    period_end     timestamptz,
    quantity_limit numeric     NOT NULL,
    quantity_used  numeric     NOT NULL,
    consumption_id uuid,
    event_id       uuid        NOT NULL,
    crossed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, account_id, resource_type, period_start, event_type, threshold),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);

CREATE TABLE mec_data.webhook_events (
    namespace_id uuid        NOT NULL,
    -- webhook-id is "msg_" + this id without dashes
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL,
    account_id   uuid,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, event_id),
    FOREIGN KEY (namespace_id, account_id) REFERENCES mec_data.accounts (namespace_id, account_id) ON DELETE CASCADE
);
CREATE INDEX webhook_events_by_time ON mec_data.webhook_events (namespace_id, created_at);

CREATE TABLE mec_data.webhook_deliveries (
    namespace_id    uuid        NOT NULL,
    delivery_id     uuid        NOT NULL DEFAULT gen_random_uuid(),
    event_id        uuid        NOT NULL,
    endpoint_id     uuid        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, delivery_id),
    UNIQUE (namespace_id, event_id, endpoint_id),
    FOREIGN KEY (namespace_id, event_id) REFERENCES mec_data.webhook_events (namespace_id, event_id) ON DELETE CASCADE,
    FOREIGN KEY (namespace_id, endpoint_id) REFERENCES mec_data.webhook_endpoints (namespace_id, endpoint_id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_due
    ON mec_data.webhook_deliveries (namespace_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON mec_data.webhook_deliveries (namespace_id, endpoint_id);

-- ---------------------------------------------------------------- views (sql/views.sql)
CREATE OR REPLACE VIEW mec_data.worker_namespaces AS
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

-- ---------------------------------------------------------------- row-level security (sql/rls.sql)
DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['webhook_endpoints', 'alert_crossings', 'webhook_events', 'webhook_deliveries']
    LOOP
        EXECUTE format('ALTER TABLE mec_data.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE mec_data.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON mec_data.%I AS RESTRICTIVE
                           USING (namespace_id = mec.current_namespace())
                           WITH CHECK (namespace_id = mec.current_namespace())$p$, t);
        EXECUTE format('CREATE POLICY namespace_staff ON mec_data.%I TO mec_service USING (true) WITH CHECK (true)', t);
        EXECUTE format('CREATE POLICY pg_mec_functions ON mec_data.%I TO mec_owner USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$rls$;

-- ---------------------------------------------------------------- functions (pg_mec/src/api/webhooks.rs)
CREATE FUNCTION mec."create_webhook_endpoint"(
	"p_url" TEXT, /* Option < & str > */
	"p_event_types" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"p_description" TEXT DEFAULT NULL, /* Option < & str > */
	"p_secret" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_webhook_endpoint_wrapper';

CREATE FUNCTION mec."update_webhook_endpoint"(
	"p_endpoint_id" uuid, /* Option < Uuid > */
	"p_url" TEXT DEFAULT NULL, /* Option < & str > */
	"p_event_types" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"p_description" TEXT DEFAULT NULL, /* Option < & str > */
	"p_enabled" bool DEFAULT NULL, /* Option < bool > */
	"p_rotate_secret" bool DEFAULT false /* Option < bool > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'update_webhook_endpoint_wrapper';

CREATE FUNCTION mec."delete_webhook_endpoint"(
	"p_endpoint_id" uuid /* Option < Uuid > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'delete_webhook_endpoint_wrapper';

CREATE FUNCTION mec."retry_webhook_delivery"(
	"p_delivery_id" uuid DEFAULT NULL /* Option < Uuid > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'retry_webhook_delivery_wrapper';

CREATE FUNCTION mec."webhook_deliveries_due"(
	"p_limit" INT DEFAULT 100 /* Option < i32 > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'webhook_deliveries_due_wrapper';

CREATE FUNCTION mec."webhook_delivery_result"(
	"p_delivery_id" uuid, /* Option < Uuid > */
	"p_status" INT, /* Option < i32 > */
	"p_error" TEXT DEFAULT NULL, /* Option < & str > */
	"p_retry_after" INT DEFAULT NULL /* Option < i32 > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'webhook_delivery_result_wrapper';

-- ---------------------------------------------------------------- privileges (sql/grants.sql)
REVOKE ALL ON mec.webhook_endpoints, mec.webhook_deliveries, mec.alert_crossings, mec_data.webhook_endpoints,
              mec_data.alert_crossings, mec_data.webhook_events, mec_data.webhook_deliveries FROM PUBLIC;
REVOKE ALL ON FUNCTION mec.create_webhook_endpoint(text, text[], text, text),
              mec.update_webhook_endpoint(uuid, text, text[], text, boolean, boolean),
              mec.delete_webhook_endpoint(uuid), mec.retry_webhook_delivery(uuid),
              mec.webhook_deliveries_due(integer), mec.webhook_delivery_result(uuid, integer, text, integer)
       FROM PUBLIC;
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

-- ================================================================ controls: overrides follow the catalog's rule
-- set_override takes p_overage_cap and p_grace (pg_mec/src/api/corrections.rs)
DROP FUNCTION mec.set_override(uuid, text, numeric, text, timestamptz, timestamptz, text, text);
CREATE FUNCTION mec."set_override"(
	"p_account_id" uuid, /* Option < Uuid > */
	"p_resource_type" TEXT, /* Option < & str > */
	"p_limit" NUMERIC, /* Option < AnyNumeric > */
	"p_enforcement" TEXT DEFAULT NULL, /* Option < & str > */
	"p_valid_from" timestamp with time zone DEFAULT now(), /* Option < TimestampWithTimeZone > */
	"p_valid_until" timestamp with time zone DEFAULT NULL, /* Option < TimestampWithTimeZone > */
	"p_reason" TEXT DEFAULT NULL, /* Option < & str > */
	"p_idempotency_key" TEXT DEFAULT NULL, /* Option < & str > */
	"p_overage_cap" NUMERIC DEFAULT NULL, /* Option < AnyNumeric > */
	"p_grace" NUMERIC DEFAULT NULL /* Option < AnyNumeric > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_override_wrapper';
REVOKE ALL ON FUNCTION mec.set_override(uuid, text, numeric, text, timestamptz, timestamptz, text, text, numeric, numeric) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.set_override(uuid, text, numeric, text, timestamptz, timestamptz, text, text, numeric, numeric) TO mec_admin;

-- ---------------------------------------------------------------- meter_usage (pg_mec/src/api/metering.rs)
CREATE FUNCTION mec."meter_usage"(
	"p_idempotency_key" TEXT, /* Option < & str > */
	"p_account_id" uuid, /* Option < Uuid > */
	"p_items" jsonb, /* Option < JsonbArg > */
	"p_occurred_at" timestamp with time zone DEFAULT now(), /* Option < TimestampWithTimeZone > */
	"p_metadata" jsonb DEFAULT '{}', /* Option < JsonbArg > */
	"p_http_status" INT DEFAULT NULL /* Option < i32 > */
) RETURNS jsonb /* Jsonb */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'meter_usage_wrapper';
REVOKE ALL ON FUNCTION mec.meter_usage(text, uuid, jsonb, timestamptz, jsonb, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.meter_usage(text, uuid, jsonb, timestamptz, jsonb, integer) TO mec_service;

-- ---------------------------------------------------------------- usage_history (pg_mec/src/api/entitlements.rs)
CREATE FUNCTION mec."usage_history"(
	"p_account_id" uuid, /* Option < Uuid > */
	"p_resource_type" TEXT, /* Option < & str > */
	"p_from" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"p_to" timestamp with time zone DEFAULT now(), /* Option < TimestampWithTimeZone > */
	"p_bucket" TEXT DEFAULT 'day', /* Option < & str > */
	"p_group_by" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS jsonb /* Jsonb */
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'usage_history_wrapper';
REVOKE ALL ON FUNCTION mec.usage_history(uuid, text, timestamptz, timestamptz, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.usage_history(uuid, text, timestamptz, timestamptz, text, text) TO mec_user;

-- ---------------------------------------------------------------- as-of reads (pg_mec/src/api/entitlements.rs)
DROP FUNCTION mec.check_entitlement(uuid, text, numeric);
DROP FUNCTION mec.usage_summary(uuid);
CREATE FUNCTION mec."check_entitlement"(
	"p_account_id" uuid, /* Option < Uuid > */
	"p_resource_type" TEXT, /* Option < & str > */
	"p_requested_qty" NUMERIC DEFAULT 1, /* Option < AnyNumeric > */
	"p_as_of" timestamp with time zone DEFAULT NULL /* Option < TimestampWithTimeZone > */
) RETURNS jsonb /* Jsonb */
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_entitlement_wrapper';

CREATE FUNCTION mec."usage_summary"(
	"p_account_id" uuid, /* Option < Uuid > */
	"p_as_of" timestamp with time zone DEFAULT NULL /* Option < TimestampWithTimeZone > */
) RETURNS jsonb /* Jsonb */
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'usage_summary_wrapper';

REVOKE ALL ON FUNCTION mec.check_entitlement(uuid, text, numeric, timestamptz), mec.usage_summary(uuid, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mec.check_entitlement(uuid, text, numeric, timestamptz), mec.usage_summary(uuid, timestamptz) TO mec_user;

-- ---------------------------------------------------------------- reads leave out expired holds (sql/schema.sql)
ALTER TABLE mec_data.usage_counters ADD COLUMN has_holds boolean NOT NULL DEFAULT false;
UPDATE mec_data.usage_counters c SET has_holds = true
 WHERE c.slot = 0 AND EXISTS (SELECT 1 FROM mec_data.reservations r
                              WHERE r.namespace_id = c.namespace_id AND r.account_id = c.account_id
                                AND r.resource_type = c.resource_type AND r.period_start = c.period_start);
