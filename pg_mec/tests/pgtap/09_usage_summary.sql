-- 09_usage_summary: the shape of mec.usage_summary(p_account_id):
-- {account_id, plan, payment_overdue, features: {<resource>: {current, limit, remaining, reset_date, last_updated}}}
BEGIN;
SELECT plan(17);

\ir helpers.psql

DO $$ BEGIN
    PERFORM mec.create_namespace('t09_usage_summary', '7e570000-0009-4000-8000-00000000000a');
END $$;
SET LOCAL mec.namespace_id = '7e570000-0009-4000-8000-00000000000a';
DO $$ BEGIN
    PERFORM mec.load_catalog($j${
      "version": "t09", "currency": "USD",
      "resources": [
        {"resource_type": "runs", "kind": "metered"},
        {"resource_type": "daily", "kind": "metered"},
        {"resource_type": "tokens", "kind": "metered"},
        {"resource_type": "jobs", "kind": "concurrency"},
        {"resource_type": "storage", "kind": "gauge"},
        {"resource_type": "ai", "kind": "feature"},
        {"resource_type": "sso", "kind": "feature"},
        {"resource_type": "extra", "kind": "metered"}
      ],
      "plans": [
        {"plan_id": "team", "name": "Team", "entitlements": {
          "runs": {"limit": 10},
          "daily": {"limit": 20, "period": "day"},
          "tokens": {"limit": null},
          "jobs": {"limit": 3},
          "storage": {"limit": 5},
          "ai": true,
          "sso": false}}
      ]
    }$j$);
    PERFORM mec.provision_plan('7e570000-0009-4000-8000-000000000101', 'team', p_external_id => 't09-ws');
    PERFORM mec.provision_plan('7e570000-0009-4000-8000-000000000102', 'team');
    PERFORM mec.meter_consumption('t09-1', '7e570000-0009-4000-8000-000000000101', 'runs', 3);
    PERFORM mec.meter_consumption('t09-2', '7e570000-0009-4000-8000-000000000101', 'tokens', 1234);
    PERFORM mec.acquire_lease('7e570000-0009-4000-8000-000000000101', 'jobs');
END $$;

CREATE TEMP TABLE s AS SELECT mec.usage_summary('7e570000-0009-4000-8000-000000000101') AS r;

SELECT ok((SELECT r ?& ARRAY['account_id', 'plan', 'payment_overdue', 'features'] FROM s),
    'usage_summary has account_id, plan, payment_overdue and features');
SELECT is(
    (SELECT pg_temp.pick(r, 'account_id', 'plan', 'payment_overdue') FROM s),
    '{"account_id": "7e570000-0009-4000-8000-000000000101", "plan": "team", "payment_overdue": false}'::jsonb,
    'account_id, plan and payment_overdue');
SELECT is(jsonb_typeof((SELECT r -> 'features' FROM s)), 'object', 'features is an object keyed by resource type');
SELECT is(
    (SELECT jsonb_agg(k ORDER BY k) FROM s, jsonb_object_keys(r -> 'features') k),
    '["ai", "daily", "jobs", "runs", "sso", "storage", "tokens"]'::jsonb,
    'features lists every resource the plan grants (not the ungranted one)');
SELECT is(
    (SELECT jsonb_agg(k ORDER BY k) FROM s, jsonb_each(r -> 'features') f(k, v)
      WHERE NOT v ?& ARRAY['current', 'limit', 'remaining', 'reset_date', 'last_updated']),
    NULL, 'every entry has current, limit, remaining, reset_date and last_updated');
SELECT is(
    (SELECT pg_temp.pick(r -> 'features' -> 'runs', 'current', 'limit', 'remaining') FROM s),
    '{"current": 3, "limit": 10, "remaining": 7}'::jsonb,
    'metered: current, limit and remaining');
SELECT is(
    (SELECT (r -> 'features' -> 'runs' ->> 'reset_date')::timestamptz FROM s),
    date_trunc('month', now(), 'UTC') + interval '1 month',
    'metered (month): reset_date is the end of the period');
SELECT is(
    (SELECT (r -> 'features' -> 'daily' ->> 'reset_date')::timestamptz FROM s),
    date_trunc('day', now(), 'UTC') + interval '1 day',
    'metered (day): reset_date is the end of the day');
SELECT is(
    (SELECT (r -> 'features' -> 'runs' ->> 'last_updated')::timestamptz FROM s), now(),
    'last_updated is when usage last changed');
SELECT is(
    (SELECT pg_temp.pick(r -> 'features' -> 'daily', 'current', 'last_updated') FROM s),
    '{"current": 0, "last_updated": null}'::jsonb,
    'a resource never used: current 0, last_updated null');
SELECT is(
    (SELECT pg_temp.pick(r -> 'features' -> 'tokens', 'current', 'limit', 'remaining') FROM s),
    '{"current": 1234, "limit": null, "remaining": null}'::jsonb,
    'unlimited: limit and remaining are null');
SELECT is(
    (SELECT pg_temp.pick(r -> 'features' -> 'jobs', 'current', 'limit', 'remaining') FROM s),
    '{"current": 1, "limit": 3, "remaining": 2}'::jsonb,
    'concurrency: current counts held leases');
SELECT is(
    (SELECT jsonb_build_array(r -> 'features' -> 'ai' -> 'limit', r -> 'features' -> 'sso' -> 'limit') FROM s),
    '[1, 0]'::jsonb,
    'features: limit 1 when on, 0 when off');

UPDATE mec_data.accounts SET payment_overdue = true
 WHERE namespace_id = '7e570000-0009-4000-8000-00000000000a' AND account_id = '7e570000-0009-4000-8000-000000000102';
SELECT is(mec.usage_summary('7e570000-0009-4000-8000-000000000102') -> 'payment_overdue', 'true'::jsonb,
    'payment_overdue reflects the account');

SELECT is(
    (SELECT provolatile FROM pg_proc WHERE oid = 'mec.usage_summary(uuid, timestamptz)'::regprocedure),
    's', 'usage_summary is declared STABLE (read-only)');
SELECT throws_ok($$SELECT mec.usage_summary('7e570000-0009-4000-8000-000000000199')$$, 'ME404', NULL, 'unknown account: ME404');
SELECT throws_ok($$SELECT mec.usage_summary(NULL)$$, '22023', NULL, 'NULL account: 22023');

SELECT * FROM finish();
ROLLBACK;
