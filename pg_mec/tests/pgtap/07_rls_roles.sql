-- 07_rls_roles: tenants and roles are kept apart by PostgreSQL (RLS + grants), not by the caller.
--   * two namespaces A and B with rows in every view;
--   * mec_service of A sees only A's rows in every view and table, cannot act on B's account
--     (ME404: invisible), cannot write a row for B (RLS 42501), cannot call admin functions;
--   * mec_user with an account_id claim sees only its own account, may not ask about another
--     (42501), may not meter; cannot read mec_data.namespace_secrets;
--   * no namespace → 42501; the claims win over the GUC.
BEGIN;
SELECT plan(54);

\ir helpers.psql

-- Rows of a view as the current role sees them: {"own": any row of namespace ns, "other": rows of other namespaces}.
CREATE FUNCTION pg_temp.seen(p_view text, ns uuid) RETURNS jsonb LANGUAGE plpgsql AS $f$
DECLARE
    v_own bigint; v_other bigint;
BEGIN
    EXECUTE format('SELECT count(*) FILTER (WHERE namespace_id = $1), count(*) FILTER (WHERE namespace_id <> $1) FROM %s', p_view)
        INTO v_own, v_other USING ns;
    RETURN jsonb_build_object('own', v_own > 0, 'other', v_other);
END
$f$;

-- Rows of a view as the current role sees them, by account: {"own": rows of account a, "other": rows of other accounts}.
CREATE FUNCTION pg_temp.seen_account(p_view text, a uuid) RETURNS jsonb LANGUAGE plpgsql AS $f$
DECLARE
    v_own bigint; v_other bigint;
BEGIN
    EXECUTE format('SELECT count(*) FILTER (WHERE account_id = $1), count(*) FILTER (WHERE account_id IS DISTINCT FROM $1) FROM %s', p_view)
        INTO v_own, v_other USING a;
    RETURN jsonb_build_object('own', v_own > 0, 'other', v_other);
END
$f$;

-- ---------------------------------------------------------------- setup as the database owner
-- A = ...0a, B = ...0b; accounts A1, A2 in A and B1 in B.
DO $$
DECLARE
    ns text;
BEGIN
    PERFORM mec.create_namespace('t07_rls_a', '7e570000-0007-4000-8000-00000000000a');
    PERFORM mec.create_namespace('t07_rls_b', '7e570000-0007-4000-8000-00000000000b');
    FOREACH ns IN ARRAY ARRAY['a', 'b'] LOOP
        PERFORM set_config('mec.namespace_id', '7e570000-0007-4000-8000-00000000000' || ns, true);
        PERFORM mec.load_catalog($j${
          "version": "t07", "currency": "USD",
          "resources": [
            {"resource_type": "runs", "kind": "metered"},
            {"resource_type": "jobs", "kind": "concurrency"}
          ],
          "plans": [
            {"plan_id": "p", "name": "P", "entitlements": {"runs": {"limit": 100}, "jobs": {"limit": 5}}}
          ]
        }$j$);
        PERFORM mec.provision_plan(('7e570000-0007-4000-8000-0000000' || ns || '0101')::uuid, 'p');
        PERFORM mec.meter_consumption('t07-' || ns || '1', ('7e570000-0007-4000-8000-0000000' || ns || '0101')::uuid, 'runs', 3);
        PERFORM mec.acquire_lease(('7e570000-0007-4000-8000-0000000' || ns || '0101')::uuid, 'jobs');
    END LOOP;
    PERFORM set_config('mec.namespace_id', '7e570000-0007-4000-8000-00000000000a', true);
    PERFORM mec.provision_plan('7e570000-0007-4000-8000-0000000a0102', 'p');
    PERFORM mec.meter_consumption('t07-a2', '7e570000-0007-4000-8000-0000000a0102', 'runs', 4);
    PERFORM mec.acquire_lease('7e570000-0007-4000-8000-0000000a0102', 'jobs');
    PERFORM mec.update_namespace_settings('{"stripe_webhook_secret": "whsec_t07_secret_value"}');
END $$;

-- Idempotency keys are per namespace: A's key is new in B.
SELECT is(
    (SELECT mec.meter_consumption('t07-a1', '7e570000-0007-4000-8000-0000000b0101', 'runs', 2) -> 'duplicate'
       FROM (SELECT set_config('mec.namespace_id', '7e570000-0007-4000-8000-00000000000b', true)) x),
    'false'::jsonb,
    'an idempotency key used in namespace A is a new key in namespace B');
SET LOCAL mec.namespace_id = '7e570000-0007-4000-8000-00000000000a';

CREATE TEMP TABLE lease_b AS
SELECT lease_id FROM mec_data.leases WHERE namespace_id = '7e570000-0007-4000-8000-00000000000b';
GRANT SELECT ON lease_b TO PUBLIC;

CREATE TEMP TABLE views (v text PRIMARY KEY);
INSERT INTO views VALUES ('mec.accounts'), ('mec.entitlements'), ('mec.active_entitlements'), ('mec.consumption'),
                         ('mec.plans'), ('mec.usage'), ('mec.leases');
GRANT SELECT ON views TO PUBLIC;

SELECT is(
    (SELECT jsonb_object_agg(v, pg_temp.seen(v, '7e570000-0007-4000-8000-00000000000b') -> 'own') FROM views),
    '{"mec.accounts": true, "mec.entitlements": true, "mec.active_entitlements": true, "mec.consumption": true,
      "mec.plans": true, "mec.usage": true, "mec.leases": true}'::jsonb,
    'setup: namespace B has rows in every view (so the isolation checks below are not vacuous)');

-- ---------------------------------------------------------------- mec_service of A (namespace from the JWT claims)
SET LOCAL mec.namespace_id = '';
SET LOCAL ROLE mec_service;
DO $$ BEGIN PERFORM set_config('request.jwt.claims', '{"role": "mec_service", "namespace_id": "7e570000-0007-4000-8000-00000000000a"}', true); END $$;

SELECT is(mec.current_namespace(), '7e570000-0007-4000-8000-00000000000a'::uuid, 'mec_service: the namespace comes from the claims');
SELECT is(pg_temp.seen('mec.accounts', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_service of A: mec.accounts shows only A''s rows');
SELECT is(pg_temp.seen('mec.entitlements', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_service of A: mec.entitlements shows only A''s rows');
SELECT is(pg_temp.seen('mec.active_entitlements', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_service of A: mec.active_entitlements shows only A''s rows');
SELECT is(pg_temp.seen('mec.consumption', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_service of A: mec.consumption shows only A''s rows');
SELECT is(pg_temp.seen('mec.plans', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_service of A: mec.plans shows only A''s rows');
SELECT is(pg_temp.seen('mec.usage', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_service of A: mec.usage shows only A''s rows');
SELECT is(pg_temp.seen('mec.leases', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_service of A: mec.leases shows only A''s rows');
SELECT is(pg_temp.seen('mec_data.consumption', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_service of A: the table mec_data.consumption itself shows only A''s rows');
SELECT is(
    (SELECT jsonb_object_agg(v, pg_temp.seen(v, '7e570000-0007-4000-8000-00000000000a') -> 'other') FILTER (WHERE (pg_temp.seen(v, '7e570000-0007-4000-8000-00000000000a') ->> 'other')::int <> 0)
       FROM (SELECT format('%I.%I', c.table_schema, c.table_name) AS v FROM information_schema.columns c
              WHERE c.table_schema = 'mec' AND c.column_name = 'namespace_id') x),
    NULL,
    'mec_service of A: no view of schema mec (including any added later) shows a row of another namespace');
SELECT is((SELECT count(*)::int FROM mec.accounts WHERE account_id = '7e570000-0007-4000-8000-0000000b0101'), 0,
    'mec_service of A: B''s account is not found even by its id');

SELECT throws_ok($$SELECT mec.meter_consumption('t07-cross', '7e570000-0007-4000-8000-0000000b0101', 'runs', 1)$$,
    'ME404', NULL, 'mec_service of A cannot meter B''s account (ME404: invisible)');
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0007-4000-8000-0000000b0101', 'runs')$$,
    'ME404', NULL, 'mec_service of A cannot check B''s account (ME404)');
SELECT throws_ok($$SELECT mec.acquire_lease('7e570000-0007-4000-8000-0000000b0101', 'jobs')$$,
    'ME404', NULL, 'mec_service of A cannot take a lease for B''s account (ME404)');
SELECT throws_ok(format('SELECT mec.release_lease(%L)', (SELECT lease_id FROM lease_b)),
    'P0002', NULL, 'mec_service of A cannot release B''s lease (P0002: not found)');
SELECT throws_ok($$INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start, used)
                   VALUES ('7e570000-0007-4000-8000-00000000000b', '7e570000-0007-4000-8000-0000000b0101', 'runs', '2026-01-01', -1000)$$,
    '42501', NULL, 'mec_service of A: a direct INSERT into mec_data.usage_counters is refused (42501: no write grant)');
SELECT throws_ok(
    $$UPDATE mec_data.usage_counters SET used = 0 WHERE namespace_id = '7e570000-0007-4000-8000-00000000000b'$$,
    '42501', NULL, 'mec_service of A: a direct UPDATE of counters is refused (42501: no write grant)');

SELECT lives_ok($$SELECT mec.meter_consumption('t07-a-svc', '7e570000-0007-4000-8000-0000000a0101', 'runs', 1)$$,
    'mec_service of A meters A''s account');
SELECT is(
    (SELECT pg_temp.pick(mec.usage_summary('7e570000-0007-4000-8000-0000000a0102'), 'account_id')),
    '{"account_id": "7e570000-0007-4000-8000-0000000a0102"}'::jsonb,
    'mec_service reads the summary of any account of its namespace');

SELECT throws_ok($$SELECT mec.load_catalog('{}')$$, '42501', NULL, 'mec_service cannot call load_catalog (42501)');
SELECT throws_ok($$SELECT mec.provision_plan('7e570000-0007-4000-8000-0000000a0103', 'p')$$,
    '42501', NULL, 'mec_service cannot call provision_plan (42501)');
SELECT throws_ok($$SELECT mec.expire_stale_leases()$$, '42501', NULL, 'mec_service cannot call expire_stale_leases (42501)');
SELECT throws_ok($$SELECT mec.create_namespace('t07_evil', '7e570000-0007-4000-8000-0000000000ee')$$,
    '42501', NULL, 'mec_service cannot call create_namespace (42501)');
SELECT throws_ok($$SELECT * FROM mec_data.namespace_secrets$$, '42501', NULL, 'mec_service cannot read mec_data.namespace_secrets');

-- The claims win over the GUC.
SET LOCAL mec.namespace_id = '7e570000-0007-4000-8000-00000000000b';
SELECT is(mec.current_namespace(), '7e570000-0007-4000-8000-00000000000a'::uuid,
    'the namespace_id claim wins over the mec.namespace_id GUC');
SET LOCAL mec.namespace_id = '';

-- ---------------------------------------------------------------- no namespace
DO $$ BEGIN PERFORM set_config('request.jwt.claims', '{"role": "mec_service"}', true); END $$;
SELECT throws_ok($$SELECT mec.current_namespace()$$, '42501', NULL, 'no namespace claim and no GUC: current_namespace() is 42501');
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0007-4000-8000-0000000a0101', 'runs')$$,
    '42501', NULL, 'no namespace: check_entitlement is 42501');
SELECT throws_ok($$SELECT mec.meter_consumption('t07-none', '7e570000-0007-4000-8000-0000000a0101', 'runs', 1)$$,
    '42501', NULL, 'no namespace: meter_consumption is 42501');
SELECT throws_ok($$SELECT count(*) FROM mec.accounts$$, '42501', NULL, 'no namespace: reading a view is 42501, not every row');
DO $$ BEGIN PERFORM set_config('request.jwt.claims', '{"namespace_id": "not-a-uuid"}', true); END $$;
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0007-4000-8000-0000000a0101', 'runs')$$,
    '42501', NULL, 'a namespace_id claim that is not a uuid: 42501');

-- ---------------------------------------------------------------- mec_admin of A
RESET ROLE;
SET LOCAL ROLE mec_admin;
DO $$ BEGIN PERFORM set_config('request.jwt.claims', '{"role": "mec_admin", "namespace_id": "7e570000-0007-4000-8000-00000000000a"}', true); END $$;
SELECT lives_ok($$SELECT mec.provision_plan('7e570000-0007-4000-8000-0000000a0103', 'p')$$, 'mec_admin provisions in its namespace');
SELECT is(
    (SELECT pg_temp.pick(mec.load_catalog($j${
          "version": "t07-admin", "currency": "USD", "apply": "now",
          "resources": [
            {"resource_type": "runs", "kind": "metered"},
            {"resource_type": "jobs", "kind": "concurrency"}
          ],
          "plans": [
            {"plan_id": "p", "name": "P", "entitlements": {"runs": {"limit": 200}, "jobs": {"limit": 5}}}
          ]
        }$j$), 'unchanged', 'plans_updated', 'accounts_reprovisioned')),
    '{"unchanged": false, "plans_updated": 1, "accounts_reprovisioned": 3}'::jsonb,
    'mec_admin loads a catalog ("apply": "now" re-provisions its 3 accounts, not B''s)');
SELECT is(mec.expire_stale_leases(), '{"expired": 0}'::jsonb, 'mec_admin calls expire_stale_leases');
SELECT is(pg_temp.seen('mec.accounts', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_admin of A: mec.accounts shows only A''s rows');
SELECT throws_ok($$SELECT mec.provision_plan('7e570000-0007-4000-8000-0000000b0101', 'nonexistent_in_a')$$,
    'ME404', NULL, 'mec_admin of A sees A''s catalog only');

-- ---------------------------------------------------------------- mec_user of A, account A1
RESET ROLE;
SET LOCAL ROLE mec_user;
DO $$ BEGIN PERFORM set_config('request.jwt.claims',
    '{"role": "mec_user", "namespace_id": "7e570000-0007-4000-8000-00000000000a", "account_id": "7e570000-0007-4000-8000-0000000a0101"}', true); END $$;

SELECT is(
    (SELECT jsonb_object_agg(v, pg_temp.seen_account(v, '7e570000-0007-4000-8000-0000000a0101'))
       FROM views WHERE v <> 'mec.plans'),
    '{"mec.accounts": {"own": true, "other": 0}, "mec.entitlements": {"own": true, "other": 0},
      "mec.active_entitlements": {"own": true, "other": 0}, "mec.consumption": {"own": true, "other": 0},
      "mec.usage": {"own": true, "other": 0}, "mec.leases": {"own": true, "other": 0}}'::jsonb,
    'mec_user: every per-account view shows only its own account''s rows');
SELECT is(
    (SELECT jsonb_object_agg(v, pg_temp.seen_account(v, '7e570000-0007-4000-8000-0000000a0101') -> 'other')
              FILTER (WHERE (pg_temp.seen_account(v, '7e570000-0007-4000-8000-0000000a0101') ->> 'other')::int <> 0)
       FROM (SELECT format('%I.%I', c.table_schema, c.table_name) AS v FROM information_schema.columns c
              WHERE c.table_schema = 'mec' AND c.column_name = 'account_id') x),
    NULL,
    'mec_user: no view of schema mec with an account_id column (including any added later) shows another account''s row');
SELECT is(pg_temp.seen('mec.plans', '7e570000-0007-4000-8000-00000000000a'), '{"own": true, "other": 0}'::jsonb,
    'mec_user: mec.plans shows its namespace''s catalog only');
SELECT is(
    (SELECT pg_temp.pick(mec.check_entitlement('7e570000-0007-4000-8000-0000000a0101', 'runs'), 'decision', 'quantity_used')),
    '{"decision": "allow", "quantity_used": 4}'::jsonb,
    'mec_user checks its own account');
SELECT is(
    (mec.usage_summary('7e570000-0007-4000-8000-0000000a0101') ->> 'account_id'), '7e570000-0007-4000-8000-0000000a0101',
    'mec_user reads its own usage summary');
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0007-4000-8000-0000000a0102', 'runs')$$,
    '42501', NULL, 'mec_user: check_entitlement of another account is 42501');
SELECT throws_ok($$SELECT mec.usage_summary('7e570000-0007-4000-8000-0000000a0102')$$,
    '42501', NULL, 'mec_user: usage_summary of another account is 42501');
SELECT throws_ok($$SELECT mec.meter_consumption('t07-user', '7e570000-0007-4000-8000-0000000a0101', 'runs', 1)$$,
    '42501', NULL, 'mec_user cannot meter (no EXECUTE): 42501');
SELECT throws_ok($$SELECT mec.acquire_lease('7e570000-0007-4000-8000-0000000a0101', 'jobs')$$,
    '42501', NULL, 'mec_user cannot take leases: 42501');
SELECT throws_ok($$SELECT * FROM mec_data.namespace_secrets$$, '42501', NULL, 'mec_user cannot read mec_data.namespace_secrets');
SELECT throws_ok($$INSERT INTO mec_data.consumption (namespace_id, idempotency_key, consumption_id, account_id, resource_type,
                                                     quantity, occurred_at, period_start, billable)
                   VALUES ('7e570000-0007-4000-8000-00000000000a', 't07-forged', gen_random_uuid(),
                           '7e570000-0007-4000-8000-0000000a0101', 'runs', -100, now(), now(), true)$$,
    '42501', NULL, 'mec_user cannot write the ledger directly');

-- mec_user without an account_id claim sees no account and may ask about none.
DO $$ BEGIN PERFORM set_config('request.jwt.claims', '{"role": "mec_user", "namespace_id": "7e570000-0007-4000-8000-00000000000a"}', true); END $$;
SELECT is((SELECT count(*)::int FROM mec.accounts), 0, 'mec_user without an account_id claim sees no account');
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0007-4000-8000-0000000a0101', 'runs')$$,
    '42501', NULL, 'mec_user without an account_id claim: check_entitlement is 42501');

-- ---------------------------------------------------------------- the authenticator and strangers
RESET ROLE;
SET LOCAL ROLE mec_authenticator;
DO $$ BEGIN PERFORM set_config('request.jwt.claims',
    '{"role": "mec_service", "namespace_id": "7e570000-0007-4000-8000-00000000000a"}', true); END $$;
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0007-4000-8000-0000000a0101', 'runs')$$,
    '42501', NULL, 'mec_authenticator (NOINHERIT) cannot call the API before SET ROLE');
SELECT throws_ok($$SELECT count(*) FROM mec.accounts$$, '42501', NULL, 'mec_authenticator cannot read the views before SET ROLE');
RESET ROLE;
CREATE ROLE t07_nobody NOLOGIN;
SELECT is(
    jsonb_build_array(
        has_schema_privilege('t07_nobody', 'mec', 'USAGE'),
        has_schema_privilege('t07_nobody', 'mec_data', 'USAGE'),
        has_function_privilege('t07_nobody', 'mec.check_entitlement(uuid, text, numeric, timestamptz)', 'EXECUTE'),
        has_function_privilege('t07_nobody', 'mec.meter_consumption(text, uuid, text, numeric, timestamptz, jsonb, integer, jsonb)', 'EXECUTE'),
        has_table_privilege('t07_nobody', 'mec.accounts', 'SELECT'),
        has_table_privilege('t07_nobody', 'mec_data.consumption', 'SELECT')),
    '[false, false, false, false, false, false]'::jsonb,
    'a role without grants (PUBLIC) has no usage on mec / mec_data, no EXECUTE, no SELECT');

SELECT is(
    jsonb_build_array(
        has_function_privilege('t07_nobody', 'mec_data.shared_cache_stats()', 'EXECUTE'),
        has_function_privilege('mec_user', 'mec_data.shared_cache_stats()', 'EXECUTE'),
        has_function_privilege('mec_service', 'mec_data.shared_cache_stats()', 'EXECUTE'),
        has_function_privilege('mec_admin', 'mec_data.shared_cache_stats()', 'EXECUTE')),
    '[false, false, false, true]'::jsonb,
    'the shared cache statistics are for mec_admin (and superusers) only');

SELECT * FROM finish();
ROLLBACK;
