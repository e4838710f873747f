-- 08_namespaces: create_namespace (idempotent, 23505 on another name) and
-- update_namespace_settings (merge, null removes, secrets masked and kept apart, validation,
-- only mec_admin and the owner).
BEGIN;
SELECT plan(23);

\ir helpers.psql

CREATE TEMP TABLE res (k text PRIMARY KEY, r jsonb);
GRANT ALL ON res TO PUBLIC;

-- ---------------------------------------------------------------- create_namespace
INSERT INTO res SELECT 'c1', mec.create_namespace('t08_namespace', '7e570000-0008-4000-8000-00000000000a');
SELECT is((SELECT r FROM res WHERE k = 'c1'),
    '{"namespace_id": "7e570000-0008-4000-8000-00000000000a", "name": "t08_namespace", "created": true}'::jsonb,
    'create_namespace returns {namespace_id, name, created: true}');
SELECT is(
    mec.create_namespace('t08_namespace', '7e570000-0008-4000-8000-00000000000a') -> 'created', 'false'::jsonb,
    'create_namespace again with the same id and name: created false (idempotent)');
SELECT is(
    (SELECT count(*)::int FROM mec_data.namespaces WHERE namespace_id = '7e570000-0008-4000-8000-00000000000a'), 1,
    'still one namespace row');
SELECT throws_ok($$SELECT mec.create_namespace('t08_other_name', '7e570000-0008-4000-8000-00000000000a')$$,
    '23505', NULL, 'the same id with another name: 23505');
SELECT is(
    (SELECT name FROM mec_data.namespaces WHERE namespace_id = '7e570000-0008-4000-8000-00000000000a'), 't08_namespace',
    'the 23505 left the name as it was');
SELECT ok(
    (SELECT (r ->> 'namespace_id')::uuid IS NOT NULL FROM (SELECT mec.create_namespace('t08_generated') AS r) x),
    'without p_namespace_id a new id is generated');
SELECT throws_ok($$SELECT mec.create_namespace('')$$, '22023', NULL, 'an empty name: 22023');
SELECT throws_ok($$SELECT mec.create_namespace('t08_bad_settings', '7e570000-0008-4000-8000-00000000000c', '{"colour": "red"}')$$,
    '22023', NULL, 'create_namespace validates its settings (unknown key: 22023)');
SELECT is(
    mec.create_namespace('t08_with_settings', '7e570000-0008-4000-8000-00000000000b', '{"late_event_days": 30}') -> 'created',
    'true'::jsonb, 'create_namespace accepts initial settings');
SELECT is(
    (SELECT settings -> 'late_event_days' FROM mec_data.namespaces WHERE namespace_id = '7e570000-0008-4000-8000-00000000000b'),
    '30'::jsonb, 'the initial settings are stored');

-- ---------------------------------------------------------------- update_namespace_settings (as mec_admin)
SET LOCAL mec.namespace_id = '7e570000-0008-4000-8000-00000000000a';
DO $$ BEGIN
    PERFORM mec.load_catalog('{"resources": [{"resource_type": "runs", "kind": "metered"}],
                               "plans": [{"plan_id": "free", "name": "Free", "entitlements": {"runs": {"limit": 5}}},
                                         {"plan_id": "pro", "name": "Pro", "entitlements": {"runs": {"limit": 50}}}]}');
END $$;

SET LOCAL ROLE mec_admin;
INSERT INTO res SELECT 'u1', mec.update_namespace_settings('{"late_event_days": 14, "default_plan_id": "free"}');
SELECT is(
    (SELECT pg_temp.pick(r, 'late_event_days', 'default_plan_id', 'key_retention_days') FROM res WHERE k = 'u1'),
    '{"late_event_days": 14, "default_plan_id": "free", "key_retention_days": 45}'::jsonb,
    'update_namespace_settings returns the settings (key_retention_days defaults to 45)');
INSERT INTO res SELECT 'u2', mec.update_namespace_settings('{"key_retention_days": 90, "billing_anchor": 15}');
SELECT is(
    (SELECT pg_temp.pick(r, 'late_event_days', 'default_plan_id', 'key_retention_days', 'billing_anchor') FROM res WHERE k = 'u2'),
    '{"late_event_days": 14, "default_plan_id": "free", "key_retention_days": 90, "billing_anchor": 15}'::jsonb,
    'a second update merges: earlier keys are kept');
INSERT INTO res SELECT 'u3', mec.update_namespace_settings('{"billing_anchor": null}');
SELECT ok((SELECT NOT (r ? 'billing_anchor') AND r ? 'late_event_days' FROM res WHERE k = 'u3'),
    'a key set to null is removed, the others kept');

INSERT INTO res SELECT 'u4', mec.update_namespace_settings('{"stripe_webhook_secret": "whsec_t08_abcdefgh1234", "auth0_secret": "t08-auth0-secret-wxyz"}');
SELECT is(
    (SELECT pg_temp.pick(r, 'stripe_webhook_secret', 'auth0_secret') FROM res WHERE k = 'u4'),
    '{"stripe_webhook_secret": "****1234", "auth0_secret": "****wxyz"}'::jsonb,
    'secrets are returned masked');
SELECT ok((SELECT r::text NOT LIKE '%abcdefgh%' AND r::text NOT LIKE '%t08-auth0%' FROM res WHERE k = 'u4'),
    'the result never contains a secret in clear');
SELECT is(
    (SELECT pg_temp.pick(to_jsonb(s), 'stripe_webhook_secret', 'auth0_secret') FROM mec_data.namespace_secrets s
      WHERE namespace_id = '7e570000-0008-4000-8000-00000000000a'),
    '{"stripe_webhook_secret": "whsec_t08_abcdefgh1234", "auth0_secret": "t08-auth0-secret-wxyz"}'::jsonb,
    'the secrets are stored (readable by mec_admin) in mec_data.namespace_secrets');
SELECT ok(
    (SELECT NOT (settings ? 'stripe_webhook_secret') AND NOT (settings ? 'auth0_secret') FROM mec_data.namespaces
      WHERE namespace_id = '7e570000-0008-4000-8000-00000000000a'),
    'secrets are not kept in the settings that mec_user may read');

SELECT throws_ok($$SELECT mec.update_namespace_settings('{"colour": "red"}')$$, '22023', NULL, 'an unknown key: 22023');
SELECT throws_ok($$SELECT mec.update_namespace_settings('{"key_retention_days": 44}')$$, '22023', NULL,
    'key_retention_days below 45: 22023');
SELECT throws_ok($$SELECT mec.update_namespace_settings('{"default_plan_id": "platinum"}')$$, 'ME404', NULL,
    'an unknown default_plan_id: ME404');
SELECT is(
    (SELECT pg_temp.pick(settings, 'key_retention_days', 'default_plan_id') FROM mec_data.namespaces
      WHERE namespace_id = '7e570000-0008-4000-8000-00000000000a'),
    '{"key_retention_days": 90, "default_plan_id": "free"}'::jsonb,
    'refused updates changed nothing');
RESET ROLE;

SET LOCAL ROLE mec_service;
SELECT throws_ok($$SELECT mec.update_namespace_settings('{"late_event_days": 1}')$$, '42501', NULL,
    'mec_service cannot call update_namespace_settings (42501)');
RESET ROLE;
SET LOCAL ROLE mec_admin;
SELECT throws_ok($$SELECT mec.create_namespace('t08_by_admin', '7e570000-0008-4000-8000-0000000000dd')$$, '42501', NULL,
    'mec_admin cannot call create_namespace (database owner only): 42501');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
