-- 03_provisioning: mec.provision_plan — creates the account, previous_plan_id, same plan twice,
-- upgrade/downgrade mid-period keeps the usage counted, unknown plan, idempotency keys, external ids.
BEGIN;
SELECT plan(28);

\ir helpers.psql

DO $$ BEGIN
    PERFORM mec.create_namespace('t03_provisioning', '7e570000-0003-4000-8000-00000000000a');
END $$;
SET LOCAL mec.namespace_id = '7e570000-0003-4000-8000-00000000000a';
DO $$ BEGIN
    PERFORM mec.load_catalog($j${
      "version": "t03", "currency": "USD",
      "resources": [
        {"resource_type": "runs", "kind": "metered"},
        {"resource_type": "jobs", "kind": "concurrency"},
        {"resource_type": "ai", "kind": "feature"}
      ],
      "plans": [
        {"plan_id": "free", "name": "Free", "default": true,
         "entitlements": {"runs": {"limit": 10, "period": "month", "grace": 0}, "jobs": {"limit": 1}, "ai": false}},
        {"plan_id": "growth", "name": "Growth",
         "entitlements": {"runs": {"limit": 1000, "period": "month"}, "jobs": {"limit": 5}, "ai": true}}
      ]
    }$j$);
END $$;

CREATE TEMP TABLE res (k text PRIMARY KEY, r jsonb);
CREATE TEMP TABLE cnt (k text PRIMARY KEY, n bigint);

-- ---------------------------------------------------------------- creation
-- effective from the start of the month, so that the upgrade below happens mid-period
INSERT INTO res SELECT 'p1', mec.provision_plan('7e570000-0003-4000-8000-000000000101', 'free',
                                                p_effective_at => date_trunc('month', now(), 'UTC'),
                                                p_external_id => 't03-user-1');
SELECT is(
    (SELECT pg_temp.pick(r, 'account_id', 'plan_id', 'previous_plan_id', 'created', 'changed') FROM res WHERE k = 'p1'),
    '{"account_id": "7e570000-0003-4000-8000-000000000101", "plan_id": "free", "previous_plan_id": null,
      "created": true, "changed": true}'::jsonb,
    'provision_plan creates a missing account; previous_plan_id is null');

SELECT is(
    (SELECT jsonb_agg(e ->> 'resource_type' ORDER BY e ->> 'resource_type') FROM res, jsonb_array_elements(r -> 'entitlements') e
      WHERE k = 'p1'),
    '["ai", "jobs", "runs"]'::jsonb,
    'the result lists the plan''s entitlements');

SELECT is(
    (SELECT pg_temp.pick(to_jsonb(a), 'account_id', 'external_id', 'plan_id', 'payment_overdue') FROM mec.accounts a
      WHERE account_id = '7e570000-0003-4000-8000-000000000101'),
    '{"account_id": "7e570000-0003-4000-8000-000000000101", "external_id": "t03-user-1", "plan_id": "free",
      "payment_overdue": false}'::jsonb,
    'mec.accounts shows the account with its external_id and plan');

SELECT is(
    (SELECT jsonb_object_agg(resource_type, jsonb_build_object('limit', quantity_limit, 'source', source, 'plan', plan_id))
       FROM mec.active_entitlements WHERE account_id = '7e570000-0003-4000-8000-000000000101'),
    '{"runs": {"limit": 10, "source": "plan", "plan": "free"},
      "jobs": {"limit": 1, "source": "plan", "plan": "free"},
      "ai":   {"limit": null, "source": "plan", "plan": "free"}}'::jsonb,
    'mec.active_entitlements holds one plan row per resource of the plan');

-- ---------------------------------------------------------------- same plan twice
INSERT INTO cnt SELECT 'ent_before_same', count(*) FROM mec_data.entitlements
 WHERE namespace_id = '7e570000-0003-4000-8000-00000000000a' AND account_id = '7e570000-0003-4000-8000-000000000101';
INSERT INTO res SELECT 'p1_again', mec.provision_plan('7e570000-0003-4000-8000-000000000101', 'free');
SELECT is(
    (SELECT pg_temp.pick(r, 'plan_id', 'previous_plan_id', 'created', 'changed') FROM res WHERE k = 'p1_again'),
    '{"plan_id": "free", "previous_plan_id": "free", "created": false, "changed": false}'::jsonb,
    'provisioning the current plan again: changed false, created false');
SELECT is(
    (SELECT count(*) FROM mec_data.entitlements
      WHERE namespace_id = '7e570000-0003-4000-8000-00000000000a' AND account_id = '7e570000-0003-4000-8000-000000000101'),
    (SELECT n FROM cnt WHERE k = 'ent_before_same'),
    'provisioning the current plan again adds no entitlement rows');
SELECT is(
    (SELECT external_id FROM mec.accounts WHERE account_id = '7e570000-0003-4000-8000-000000000101'),
    't03-user-1', 'provisioning without p_external_id keeps the external_id');

-- ---------------------------------------------------------------- upgrade mid-period keeps usage
DO $$ BEGIN
    PERFORM mec.meter_consumption('t03-use-1', '7e570000-0003-4000-8000-000000000101', 'runs', 7);
END $$;
INSERT INTO res SELECT 'up', mec.provision_plan('7e570000-0003-4000-8000-000000000101', 'growth');
SELECT is(
    (SELECT pg_temp.pick(r, 'plan_id', 'previous_plan_id', 'created', 'changed') FROM res WHERE k = 'up'),
    '{"plan_id": "growth", "previous_plan_id": "free", "created": false, "changed": true}'::jsonb,
    'upgrade: previous_plan_id names the old plan');
SELECT is(
    (SELECT pg_temp.pick(mec.check_entitlement('7e570000-0003-4000-8000-000000000101', 'runs'),
                         'quantity_used', 'quantity_allowed', 'quantity_remaining')),
    '{"quantity_used": 7, "quantity_allowed": 1000, "quantity_remaining": 993}'::jsonb,
    'upgrade mid-period keeps quantity_used and applies the new limit');
SELECT is(
    (SELECT pg_temp.pick(mec.meter_consumption('t03-use-2', '7e570000-0003-4000-8000-000000000101', 'runs', 5),
                         'quantity_used', 'quantity_allowed')),
    '{"quantity_used": 12, "quantity_allowed": 1000}'::jsonb,
    'metering after the upgrade counts on from the kept usage, past the old limit');
SELECT is(
    (SELECT mec.check_entitlement('7e570000-0003-4000-8000-000000000101', 'ai') ->> 'decision'),
    'allow', 'the upgrade switches the feature on');
SELECT is(
    (SELECT jsonb_agg(DISTINCT plan_id) FROM mec.active_entitlements
      WHERE account_id = '7e570000-0003-4000-8000-000000000101'),
    '["growth"]'::jsonb,
    'after the upgrade only the new plan''s rows are in force');

INSERT INTO res SELECT 'down', mec.provision_plan('7e570000-0003-4000-8000-000000000101', 'free');
SELECT is(
    (SELECT pg_temp.pick(mec.check_entitlement('7e570000-0003-4000-8000-000000000101', 'runs'),
                         'decision', 'quantity_used', 'quantity_allowed')),
    '{"decision": "deny", "quantity_used": 12, "quantity_allowed": 10}'::jsonb,
    'downgrade mid-period keeps the usage: now over the smaller limit, checks deny');
SELECT throws_ok(
    $$SELECT mec.meter_consumption('t03-use-3', '7e570000-0003-4000-8000-000000000101', 'runs', 1)$$,
    'ME429', NULL, 'after the downgrade metering is refused (usage kept, hard limit)');

-- ---------------------------------------------------------------- unknown plan, bad input
SELECT throws_ok(
    $$SELECT mec.provision_plan('7e570000-0003-4000-8000-000000000102', 'platinum')$$,
    'ME404', NULL, 'an unknown plan is ME404');
SELECT is(
    (SELECT count(*)::int FROM mec.accounts WHERE account_id = '7e570000-0003-4000-8000-000000000102'),
    0, 'an unknown plan creates no account');
SELECT throws_ok(
    $$SELECT mec.provision_plan(NULL, 'free')$$, '22023', NULL, 'a NULL account is 22023');
SELECT throws_ok(
    $$SELECT mec.provision_plan('7e570000-0003-4000-8000-000000000102', NULL)$$, '22023', NULL, 'a NULL plan is 22023');

-- ---------------------------------------------------------------- idempotency keys
INSERT INTO res SELECT 'k1', mec.provision_plan('7e570000-0003-4000-8000-000000000103', 'free',
                                                p_idempotency_key => 't03-prov-key');
INSERT INTO cnt SELECT 'ent_before_replay', count(*) FROM mec_data.entitlements
 WHERE namespace_id = '7e570000-0003-4000-8000-00000000000a';
INSERT INTO res SELECT 'k1_replay', mec.provision_plan('7e570000-0003-4000-8000-000000000103', 'free',
                                                       p_idempotency_key => 't03-prov-key');
SELECT is(
    (SELECT r - 'duplicate' FROM res WHERE k = 'k1_replay'),
    (SELECT r - 'duplicate' FROM res WHERE k = 'k1'),
    'replaying a provisioning key returns the original result');
SELECT is(
    (SELECT (SELECT r -> 'duplicate' FROM res WHERE k = 'k1') || (SELECT r -> 'duplicate' FROM res WHERE k = 'k1_replay')),
    '[false, true]'::jsonb,
    'the replay is flagged duplicate: true (the first call false)');
SELECT is(
    (SELECT count(*) FROM mec_data.entitlements WHERE namespace_id = '7e570000-0003-4000-8000-00000000000a'),
    (SELECT n FROM cnt WHERE k = 'ent_before_replay'),
    'the replay changes nothing');
SELECT throws_ok(
    $$SELECT mec.provision_plan('7e570000-0003-4000-8000-000000000103', 'growth', p_idempotency_key => 't03-prov-key')$$,
    'ME409', NULL, 'the same key with another payload is ME409');
SELECT is(
    (SELECT plan_id FROM mec.accounts WHERE account_id = '7e570000-0003-4000-8000-000000000103'),
    'free', 'after ME409 the account is still on its plan');

-- forget_account takes the account's idempotency keys with it: provisioning it again with the
-- same key creates it anew instead of answering with the forgotten result.
SELECT is(
    (SELECT mec.forget_account('7e570000-0003-4000-8000-000000000103') -> 'existed'),
    'true'::jsonb, 'forget_account removes the account');
SELECT is(
    (SELECT count(*)::int FROM mec_data.idempotency_keys
      WHERE namespace_id = '7e570000-0003-4000-8000-00000000000a'
        AND fingerprint LIKE '7e570000-0003-4000-8000-000000000103|%'),
    0, 'forget_account removes the idempotency keys naming the account');
INSERT INTO res SELECT 'k1_after_forget', mec.provision_plan('7e570000-0003-4000-8000-000000000103', 'free',
                                                             p_idempotency_key => 't03-prov-key');
SELECT is(
    (SELECT jsonb_build_object('duplicate', r -> 'duplicate', 'created', r -> 'created') FROM res WHERE k = 'k1_after_forget'),
    '{"duplicate": false, "created": true}'::jsonb,
    'after forget_account the same key provisions the account anew');

-- ---------------------------------------------------------------- external ids
SELECT throws_ok(
    $$SELECT mec.provision_plan('7e570000-0003-4000-8000-000000000104', 'free', p_external_id => 't03-user-1')$$,
    '23505', NULL, 'an external_id that belongs to another account is 23505');
SELECT is(
    (SELECT count(*)::int FROM mec.accounts WHERE account_id = '7e570000-0003-4000-8000-000000000104'),
    0, 'the 23505 creates no account');

SELECT * FROM finish();
ROLLBACK;
