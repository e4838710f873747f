-- 05_check_entitlement: allow/deny with reasons, features (quantity_allowed 1/0), read-only
-- (STABLE, changes no row), unknown account/resource, bad arguments.
BEGIN;
SELECT plan(27);

\ir helpers.psql

CREATE FUNCTION pg_temp.chk(p_resource text, p_qty numeric DEFAULT 1) RETURNS jsonb LANGUAGE sql AS $f$
    SELECT pg_temp.pick(mec.check_entitlement('7e570000-0005-4000-8000-000000000101', p_resource, p_qty),
                        'decision', 'reason', 'quantity_allowed', 'quantity_used', 'quantity_remaining', 'percent_used',
                        'enforcement')
$f$;

CREATE FUNCTION pg_temp.state() RETURNS jsonb LANGUAGE sql STABLE AS $f$
    SELECT jsonb_build_object(
        'consumption', (SELECT count(*) FROM mec_data.consumption WHERE namespace_id = '7e570000-0005-4000-8000-00000000000a'),
        'counters',    (SELECT jsonb_agg(ctid::text ORDER BY ctid) FROM mec_data.usage_counters WHERE namespace_id = '7e570000-0005-4000-8000-00000000000a'),
        'leases',      (SELECT jsonb_agg(ctid::text ORDER BY ctid) FROM mec_data.leases WHERE namespace_id = '7e570000-0005-4000-8000-00000000000a'),
        'accounts',    (SELECT jsonb_agg(ctid::text ORDER BY ctid) FROM mec_data.accounts WHERE namespace_id = '7e570000-0005-4000-8000-00000000000a'))
$f$;

DO $$ BEGIN
    PERFORM mec.create_namespace('t05_check', '7e570000-0005-4000-8000-00000000000a');
END $$;
SET LOCAL mec.namespace_id = '7e570000-0005-4000-8000-00000000000a';
DO $$ BEGIN
    PERFORM mec.load_catalog($j${
      "version": "t05", "currency": "USD",
      "resources": [
        {"resource_type": "m_hard", "kind": "metered"},
        {"resource_type": "m_soft", "kind": "metered"},
        {"resource_type": "m_capped", "kind": "metered"},
        {"resource_type": "m_graced", "kind": "metered"},
        {"resource_type": "m_unlimited", "kind": "metered"},
        {"resource_type": "m_zero", "kind": "metered"},
        {"resource_type": "m_absent", "kind": "metered"},
        {"resource_type": "f_on", "kind": "feature"},
        {"resource_type": "f_off", "kind": "feature"},
        {"resource_type": "f_obj", "kind": "feature"},
        {"resource_type": "c_jobs", "kind": "concurrency"}
      ],
      "plans": [
        {"plan_id": "p", "name": "P", "entitlements": {
          "m_hard":      {"limit": 10, "grace": 0},
          "m_soft":      {"limit": 10, "enforcement": "soft"},
          "m_capped":    {"limit": 10, "enforcement": "capped", "overage_cap": 5},
          "m_graced":    {"limit": 100, "grace": 5},
          "m_unlimited": {"limit": null},
          "m_zero":      {"limit": 0},
          "f_on":        true,
          "f_off":       false,
          "f_obj":       {"enabled": true},
          "c_jobs":      {"limit": 1}}}
      ]
    }$j$);
    PERFORM mec.provision_plan('7e570000-0005-4000-8000-000000000101', 'p');
    PERFORM mec.meter_consumption('t05-1', '7e570000-0005-4000-8000-000000000101', 'm_hard', 8);
    PERFORM mec.meter_consumption('t05-2', '7e570000-0005-4000-8000-000000000101', 'm_soft', 8);
    PERFORM mec.meter_consumption('t05-3', '7e570000-0005-4000-8000-000000000101', 'm_capped', 8);
    PERFORM mec.meter_consumption('t05-4', '7e570000-0005-4000-8000-000000000101', 'm_graced', 100);
    PERFORM mec.meter_consumption('t05-5', '7e570000-0005-4000-8000-000000000101', 'm_unlimited', 500);
END $$;

CREATE TEMP TABLE snap (k text PRIMARY KEY, s jsonb);
INSERT INTO snap VALUES ('before', pg_temp.state());

-- ---------------------------------------------------------------- metered: allow / deny / reasons
SELECT is(pg_temp.chk('m_hard', 2),
    '{"decision": "allow", "reason": "within_limit", "quantity_allowed": 10, "quantity_used": 8,
      "quantity_remaining": 2, "percent_used": 80, "enforcement": "hard"}'::jsonb,
    'hard, 8 of 10 used, asking 2: allow (within_limit)');
SELECT is(pg_temp.chk('m_hard', 3),
    '{"decision": "deny", "reason": "limit_exceeded", "quantity_allowed": 10, "quantity_used": 8,
      "quantity_remaining": 2, "percent_used": 80, "enforcement": "hard"}'::jsonb,
    'hard, asking 3 with 2 left: deny (limit_exceeded), an answer not an error');
SELECT is((pg_temp.chk('m_hard') ->> 'decision'), 'allow', 'p_requested_qty defaults to 1');
SELECT is(pg_temp.chk('m_hard', 0) ->> 'decision', 'allow', 'asking 0 is allowed (how much is used?)');
SELECT is(
    (SELECT pg_temp.pick(pg_temp.chk('m_soft', 5), 'decision', 'reason')),
    '{"decision": "allow", "reason": "soft_limit_exceeded"}'::jsonb,
    'soft: past the limit is allowed (soft_limit_exceeded)');
SELECT is(
    (SELECT jsonb_build_array(pg_temp.pick(pg_temp.chk('m_capped', 7), 'decision', 'reason'),
                              pg_temp.pick(pg_temp.chk('m_capped', 8), 'decision', 'reason'))),
    '[{"decision": "allow", "reason": "overage_allowed"}, {"decision": "deny", "reason": "overage_cap_reached"}]'::jsonb,
    'capped: allow up to limit + overage_cap (overage_allowed), then deny (overage_cap_reached)');
SELECT is(
    (SELECT jsonb_build_array(pg_temp.pick(pg_temp.chk('m_graced', 5), 'decision', 'reason'),
                              pg_temp.pick(pg_temp.chk('m_graced', 6), 'decision', 'reason'))),
    '[{"decision": "allow", "reason": "grace"}, {"decision": "deny", "reason": "limit_exceeded"}]'::jsonb,
    'hard with "grace": 5: allow within the grace, deny past it');
SELECT is(pg_temp.chk('m_unlimited', 1000000),
    '{"decision": "allow", "reason": "unlimited", "quantity_allowed": null, "quantity_used": 500,
      "quantity_remaining": null, "percent_used": null, "enforcement": "hard"}'::jsonb,
    'unlimited: allow, with null quantity_allowed / remaining / percent_used');
SELECT is(
    (SELECT pg_temp.pick(pg_temp.chk('m_zero'), 'decision', 'quantity_allowed', 'quantity_remaining')),
    '{"decision": "deny", "quantity_allowed": 0, "quantity_remaining": 0}'::jsonb,
    'limit 0: deny');
SELECT is(
    (SELECT pg_temp.pick(pg_temp.chk('m_absent'), 'decision', 'reason')),
    '{"decision": "deny", "reason": "not_entitled"}'::jsonb,
    'a resource of the catalog that the plan does not grant: deny (not_entitled)');
SELECT is(
    (SELECT ARRAY[(r ->> 'period_start')::timestamptz, (r ->> 'period_end')::timestamptz]
       FROM (SELECT mec.check_entitlement('7e570000-0005-4000-8000-000000000101', 'm_hard') AS r) x),
    ARRAY[date_trunc('month', now(), 'UTC'), date_trunc('month', now(), 'UTC') + interval '1 month'],
    'the answer carries the period (month)');
SELECT is(
    (SELECT pg_temp.pick(mec.check_entitlement('7e570000-0005-4000-8000-000000000101', 'c_jobs'),
                         'decision', 'quantity_allowed', 'quantity_used')),
    '{"decision": "allow", "quantity_allowed": 1, "quantity_used": 0}'::jsonb,
    'concurrency: allow while a slot is free');

-- ---------------------------------------------------------------- features
SELECT is(
    (SELECT pg_temp.pick(pg_temp.chk('f_on'), 'decision', 'quantity_allowed')),
    '{"decision": "allow", "quantity_allowed": 1}'::jsonb, 'feature true: allow with quantity_allowed 1');
SELECT is(
    (SELECT pg_temp.pick(pg_temp.chk('f_obj'), 'decision', 'quantity_allowed')),
    '{"decision": "allow", "quantity_allowed": 1}'::jsonb, 'feature {"enabled": true}: allow with quantity_allowed 1');
SELECT is(
    (SELECT pg_temp.pick(pg_temp.chk('f_off'), 'decision', 'quantity_allowed')),
    '{"decision": "deny", "quantity_allowed": 0}'::jsonb, 'feature false: deny with quantity_allowed 0');
SELECT ok(pg_temp.chk('f_off') ->> 'reason' IS NOT NULL, 'a feature denial has a reason');

-- ---------------------------------------------------------------- read-only
SELECT is(
    (SELECT provolatile FROM pg_proc WHERE oid = 'mec.check_entitlement(uuid, text, numeric, timestamptz)'::regprocedure),
    's', 'check_entitlement is declared STABLE (read-only)');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'before'),
    'the checks above changed no row (ledger, counters, leases, accounts)');

-- ---------------------------------------------------------------- errors
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0005-4000-8000-000000000199', 'm_hard')$$,
    'ME404', NULL, 'unknown account: ME404');
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0005-4000-8000-000000000101', 'no_such_thing')$$,
    'ME404', NULL, 'unknown resource type: ME404');
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0005-4000-8000-000000000101', 'm_hard', -1)$$,
    '22023', NULL, 'negative requested quantity: 22023');
SELECT throws_ok($$SELECT mec.check_entitlement(NULL, 'm_hard')$$, '22023', NULL, 'NULL account: 22023');
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0005-4000-8000-000000000101', NULL)$$, '22023', NULL, 'NULL resource: 22023');
SELECT throws_ok($$SELECT mec.check_entitlement('7e570000-0005-4000-8000-000000000101', 'm_hard', NULL)$$, '22023', NULL, 'NULL quantity: 22023');

-- PostgREST-style GET calls run in READ ONLY transactions: the read functions must work there.
SET LOCAL transaction_read_only = on;
SELECT lives_ok($$SELECT mec.check_entitlement('7e570000-0005-4000-8000-000000000101', 'm_hard')$$,
    'check_entitlement works in a READ ONLY transaction');
SELECT lives_ok($$SELECT mec.check_entitlement('7e570000-0005-4000-8000-000000000101', 'c_jobs')$$,
    'check_entitlement of a concurrency resource works in a READ ONLY transaction');
SELECT lives_ok($$SELECT mec.usage_summary('7e570000-0005-4000-8000-000000000101')$$,
    'usage_summary works in a READ ONLY transaction');

SELECT * FROM finish();
ROLLBACK;
