-- 11_corrections: the operator's corrections (mec_admin) — set_override replaces the plan's limit,
-- grant_credits adds to it while valid, adjust_consumption appends a signed ledger row and moves
-- the counter, forget_account removes an account and leaves an audit entry without personal data;
-- each idempotent on its key, each refusing bad input with nothing changed, none for mec_service.
BEGIN;
SELECT plan(31);

\ir helpers.psql

CREATE FUNCTION pg_temp.state() RETURNS jsonb LANGUAGE sql STABLE AS $f$
    SELECT jsonb_build_object(
        'entitlements', (SELECT count(*) FROM mec_data.entitlements WHERE namespace_id = '7e570000-0011-4000-8000-00000000000a'),
        'consumption',  (SELECT count(*) FROM mec_data.consumption WHERE namespace_id = '7e570000-0011-4000-8000-00000000000a'),
        'used',         (SELECT coalesce(sum(used), 0) FROM mec_data.usage_counters WHERE namespace_id = '7e570000-0011-4000-8000-00000000000a'))
$f$;
CREATE FUNCTION pg_temp.allowed(p_account text) RETURNS jsonb LANGUAGE sql STABLE AS $f$
    SELECT pg_temp.pick(mec.check_entitlement(p_account::uuid, 'runs'), 'quantity_allowed', 'quantity_used')
$f$;

DO $$ BEGIN
    PERFORM mec.create_namespace('t11_corrections', '7e570000-0011-4000-8000-00000000000a');
END $$;
SET LOCAL mec.namespace_id = '7e570000-0011-4000-8000-00000000000a';
DO $$
DECLARE
    a text;
BEGIN
    PERFORM mec.load_catalog($j${
      "version": "t11",
      "resources": [{"resource_type": "runs", "kind": "metered"}],
      "plans": [{"plan_id": "p", "entitlements": {"runs": {"limit": 10, "grace": 0}}}]
    }$j$);
    FOREACH a IN ARRAY ARRAY['101', '102', '103', '104'] LOOP
        PERFORM mec.provision_plan(('7e570000-0011-4000-8000-000000000' || a)::uuid, 'p',
                                   p_external_id => 'ext-t11-' || a);
    END LOOP;
    PERFORM mec.meter_consumption('t11-m1', '7e570000-0011-4000-8000-000000000101', 'runs', 4);
    PERFORM mec.meter_consumption('t11-m2', '7e570000-0011-4000-8000-000000000104', 'runs', 2);
END $$;

CREATE TEMP TABLE res (k text PRIMARY KEY, r jsonb);
CREATE TEMP TABLE snap (k text PRIMARY KEY, s jsonb);
GRANT ALL ON res, snap TO PUBLIC;

SET LOCAL ROLE mec_admin;

-- ---------------------------------------------------------------- set_override
INSERT INTO res SELECT 'o1', mec.set_override('7e570000-0011-4000-8000-000000000101', 'runs', 50,
                                             p_reason => 'pilot', p_idempotency_key => 't11-o1');
SELECT is(pg_temp.pick((SELECT r FROM res WHERE k = 'o1'), 'source', 'quantity_limit', 'reason'),
    '{"source": "override", "quantity_limit": 50, "reason": "pilot"}'::jsonb, 'set_override returns the entitlement row');
SELECT is(pg_temp.allowed('7e570000-0011-4000-8000-000000000101'), '{"quantity_allowed": 50, "quantity_used": 4}'::jsonb,
    'the override replaces the plan''s limit; usage is kept');
INSERT INTO snap VALUES ('after_o1', pg_temp.state());
SELECT is((SELECT r ->> 'entitlement_id' FROM (SELECT mec.set_override('7e570000-0011-4000-8000-000000000101', 'runs', 50,
                                                   p_reason => 'pilot', p_idempotency_key => 't11-o1') AS r) x),
          (SELECT r ->> 'entitlement_id' FROM res WHERE k = 'o1'), 'the same key again: the same row');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'after_o1'), 'the replay changes nothing');
SELECT throws_ok($$SELECT mec.set_override('7e570000-0011-4000-8000-000000000101', 'runs', 60, p_idempotency_key => 't11-o1')$$,
    'ME409', NULL, 'the same key with another limit: ME409');
SELECT lives_ok($$SELECT mec.set_override('7e570000-0011-4000-8000-000000000102', 'runs', NULL)$$,
    'p_limit NULL: unlimited');
SELECT is(pg_temp.allowed('7e570000-0011-4000-8000-000000000102') -> 'quantity_allowed', 'null'::jsonb,
    'an unlimited override shows quantity_allowed null');
SELECT throws_ok($$SELECT mec.set_override('7e570000-0011-4000-8000-000000000101', 'runs', 5, p_enforcement => 'strict')$$,
    '22023', NULL, 'an unknown enforcement: 22023');
SELECT throws_ok($$SELECT mec.set_override('7e570000-0011-4000-8000-000000000101', 'runs', -1)$$,
    '22023', NULL, 'a negative limit: 22023');
SELECT throws_ok($$SELECT mec.set_override('7e570000-0011-4000-8000-000000000199', 'runs', 5)$$,
    'ME404', NULL, 'an unknown account: ME404');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'after_o1') || jsonb_build_object('entitlements',
          (SELECT s -> 'entitlements' FROM snap WHERE k = 'after_o1')::int + 1),
    'only the unlimited override added a row');

-- ---------------------------------------------------------------- grant_credits
INSERT INTO res SELECT 'g1', mec.grant_credits('7e570000-0011-4000-8000-000000000103', 'runs', 5,
                                              p_expires_at => now() + interval '30 days', p_idempotency_key => 't11-g1');
SELECT is(pg_temp.pick((SELECT r FROM res WHERE k = 'g1'), 'source', 'quantity_limit', 'duplicate'),
    '{"source": "grant", "quantity_limit": 5, "duplicate": false}'::jsonb, 'grant_credits returns the grant''s row');
SELECT is(pg_temp.allowed('7e570000-0011-4000-8000-000000000103') -> 'quantity_allowed', '15'::jsonb,
    'a grant adds to the plan''s limit while valid');
SELECT is((SELECT r ->> 'entitlement_id' FROM (SELECT mec.grant_credits('7e570000-0011-4000-8000-000000000103', 'runs', 5,
                                                   p_expires_at => now() + interval '30 days', p_idempotency_key => 't11-g1') AS r) x),
          (SELECT r ->> 'entitlement_id' FROM res WHERE k = 'g1'), 'the same key again: the same grant');
SELECT is(pg_temp.allowed('7e570000-0011-4000-8000-000000000103') -> 'quantity_allowed', '15'::jsonb, 'granted once');
SELECT throws_ok($$SELECT mec.grant_credits('7e570000-0011-4000-8000-000000000103', 'runs', 0)$$,
    '22023', NULL, 'a zero grant: 22023');
SELECT throws_ok($$SELECT mec.grant_credits('7e570000-0011-4000-8000-000000000103', 'runs', 5, p_expires_at => now() - interval '1 day')$$,
    '22023', NULL, 'an expiry in the past: 22023');

-- ---------------------------------------------------------------- adjust_consumption
INSERT INTO res SELECT 'a1', mec.adjust_consumption('t11-a1', '7e570000-0011-4000-8000-000000000101', 'runs', -3, 'failed runs refunded');
SELECT is(pg_temp.pick((SELECT r FROM res WHERE k = 'a1'), 'entry_type', 'quantity', 'reason', 'duplicate'),
    '{"entry_type": "adjustment", "quantity": -3, "reason": "failed runs refunded", "duplicate": false}'::jsonb,
    'adjust_consumption returns the ledger row it appended');
SELECT is(pg_temp.allowed('7e570000-0011-4000-8000-000000000101') -> 'quantity_used', '1'::jsonb,
    'the counter moved by the correction');
SELECT is((SELECT count(*)::int FROM mec.consumption WHERE account_id = '7e570000-0011-4000-8000-000000000101'), 2,
    'a new ledger row; the original event is untouched');
INSERT INTO snap VALUES ('after_a1', pg_temp.state());
SELECT is((SELECT r ->> 'duplicate' FROM (SELECT mec.adjust_consumption('t11-a1', '7e570000-0011-4000-8000-000000000101', 'runs', -3,
                                              'failed runs refunded') AS r) x), 'true', 'the same key again: duplicate');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'after_a1'), 'the replay changes nothing');
SELECT throws_ok($$SELECT mec.adjust_consumption('t11-a1', '7e570000-0011-4000-8000-000000000101', 'runs', -2, 'again')$$,
    'ME409', NULL, 'the same key with another quantity: ME409');
SELECT throws_ok($$SELECT mec.adjust_consumption('t11-a2', '7e570000-0011-4000-8000-000000000101', 'runs', -5, 'too much')$$,
    '22023', NULL, 'a correction below zero: 22023');
SELECT throws_ok($$SELECT mec.adjust_consumption('t11-a3', '7e570000-0011-4000-8000-000000000101', 'runs', 1, '  ')$$,
    '22023', NULL, 'an empty reason: 22023');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'after_a1'), 'the refused corrections changed nothing');

-- ---------------------------------------------------------------- forget_account
INSERT INTO res SELECT 'f1', mec.forget_account('7e570000-0011-4000-8000-000000000104');
SELECT is(pg_temp.pick((SELECT r FROM res WHERE k = 'f1'), 'forgotten', 'existed', 'ledger_rows_deleted'),
    '{"forgotten": true, "existed": true, "ledger_rows_deleted": 1}'::jsonb, 'forget_account removes the account and its ledger');
RESET ROLE;
SELECT is((SELECT count(*)::int FROM mec_data.accounts a WHERE a.namespace_id = '7e570000-0011-4000-8000-00000000000a'
              AND a.account_id = '7e570000-0011-4000-8000-000000000104')
        + (SELECT count(*)::int FROM mec_data.usage_counters u WHERE u.namespace_id = '7e570000-0011-4000-8000-00000000000a'
              AND u.account_id = '7e570000-0011-4000-8000-000000000104'), 0, 'no row about the account is left');
SELECT is((SELECT count(*)::int FROM mec_data.audit_log WHERE namespace_id = '7e570000-0011-4000-8000-00000000000a'
              AND action = 'forget_account' AND details::text NOT LIKE '%ext-t11-104%' AND actor = 'mec_admin'), 1,
    'one audit entry, by mec_admin, without the external id');
SET LOCAL ROLE mec_admin;
SELECT is((SELECT r ->> 'existed' FROM (SELECT mec.forget_account('7e570000-0011-4000-8000-000000000104') AS r) x), 'false',
    'forgetting again is not an error');

SET LOCAL ROLE mec_service;
SELECT throws_ok($$SELECT mec.set_override('7e570000-0011-4000-8000-000000000101', 'runs', 99)$$,
    '42501', NULL, 'mec_service cannot set overrides (42501)');

RESET ROLE;
SELECT * FROM finish();
ROLLBACK;
