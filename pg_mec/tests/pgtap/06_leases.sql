-- 06_leases: acquire_lease / release_lease / renew_lease / expire_stale_leases on a concurrency
-- resource — up to the limit then ME429, release frees the slot (twice is fine), renew, expired
-- leases stop counting at once (ME410 on renew), idempotent acquire, unknown lease P0002.
--
-- Expiry is tested two ways: by moving a lease's expires_at into the past (deterministic, no
-- sleep), and once with a real 1-second lease and pg_sleep(1.1) inside the same transaction.
BEGIN;
SELECT plan(31);

\ir helpers.psql



DO $$ BEGIN
    PERFORM mec.create_namespace('t06_leases', '7e570000-0006-4000-8000-00000000000a');
END $$;
SET LOCAL mec.namespace_id = '7e570000-0006-4000-8000-00000000000a';
DO $$
DECLARE
    a text;
BEGIN
    PERFORM mec.load_catalog($j${
      "version": "t06", "currency": "USD",
      "resources": [
        {"resource_type": "jobs", "kind": "concurrency"},
        {"resource_type": "runs", "kind": "metered"}
      ],
      "plans": [
        {"plan_id": "p", "name": "P", "entitlements": {"jobs": {"limit": 2}, "runs": {"limit": 10}}}
      ]
    }$j$);
    FOREACH a IN ARRAY ARRAY['101', '102', '103', '104', '105'] LOOP
        PERFORM mec.provision_plan(('7e570000-0006-4000-8000-000000000' || a)::uuid, 'p');
    END LOOP;
END $$;

CREATE TEMP TABLE res (k text PRIMARY KEY, r jsonb);
CREATE FUNCTION pg_temp.lease(p_key text) RETURNS uuid LANGUAGE sql STABLE AS $f$
    SELECT (r ->> 'lease_id')::uuid FROM res WHERE k = p_key
$f$;

-- ---------------------------------------------------------------- up to the limit, then ME429
INSERT INTO res SELECT 'a1', mec.acquire_lease('7e570000-0006-4000-8000-000000000101', 'jobs', p_holder => 'worker-1');
INSERT INTO res SELECT 'a2', mec.acquire_lease('7e570000-0006-4000-8000-000000000101', 'jobs', p_holder => 'worker-2');
SELECT is(
    (SELECT jsonb_agg(pg_temp.pick(r, 'active_leases', 'max_concurrent') ORDER BY k) FROM res WHERE k IN ('a1', 'a2')),
    '[{"active_leases": 1, "max_concurrent": 2}, {"active_leases": 2, "max_concurrent": 2}]'::jsonb,
    'acquire up to the limit: active_leases 1 then 2 of max_concurrent 2');
SELECT ok(pg_temp.lease('a1') IS NOT NULL AND pg_temp.lease('a2') IS NOT NULL AND pg_temp.lease('a1') <> pg_temp.lease('a2'),
    'each acquire returns its own lease_id');
-- Expiry runs on the wall clock (clock_timestamp), so it lies between the transaction's start and now.
SELECT ok(
    (SELECT (r ->> 'expires_at')::timestamptz BETWEEN now() + interval '300 seconds' AND clock_timestamp() + interval '300 seconds'
       FROM res WHERE k = 'a1'),
    'p_ttl_seconds defaults to 300');
SELECT throws_ok($$SELECT mec.acquire_lease('7e570000-0006-4000-8000-000000000101', 'jobs')$$,
    'ME429', NULL, 'every slot held: ME429');
SELECT is(
    (SELECT pg_temp.pick((e -> 'detail') -> 'violated_policies' -> 0, 'policy', 'limit', 'current')
       FROM (SELECT pg_temp.err($$SELECT mec.acquire_lease('7e570000-0006-4000-8000-000000000101', 'jobs')$$) e) x),
    '{"policy": "jobs", "limit": 2, "current": 2}'::jsonb,
    'ME429 DETAIL names the policy, the limit and the leases held');
SELECT is(
    (SELECT ((e -> 'detail') -> 'violated_policies' -> 0 ->> 'reset_at')::timestamptz
       FROM (SELECT pg_temp.err($$SELECT mec.acquire_lease('7e570000-0006-4000-8000-000000000101', 'jobs')$$) e) x),
    (SELECT min(expires_at) FROM mec.leases WHERE account_id = '7e570000-0006-4000-8000-000000000101' AND active),
    'ME429 DETAIL: reset_at is when the soonest lease expires');
SELECT is(
    (SELECT count(*)::int FROM mec.leases WHERE account_id = '7e570000-0006-4000-8000-000000000101' AND active), 2,
    'mec.leases shows the two active leases (the refused call left none)');
SELECT is(
    (SELECT pg_temp.pick(mec.check_entitlement('7e570000-0006-4000-8000-000000000101', 'jobs'), 'decision', 'quantity_used')),
    '{"decision": "deny", "quantity_used": 2}'::jsonb,
    'check_entitlement counts held leases');

-- ---------------------------------------------------------------- release
INSERT INTO res SELECT 'rel1', mec.release_lease(pg_temp.lease('a1'));
SELECT is(
    (SELECT pg_temp.pick(r, 'released', 'already_released', 'expired') FROM res WHERE k = 'rel1'),
    '{"released": true, "already_released": false, "expired": false}'::jsonb,
    'release_lease frees the lease');
SELECT is(
    (SELECT pg_temp.pick(mec.release_lease(pg_temp.lease('a1')), 'released', 'already_released')),
    '{"released": true, "already_released": true}'::jsonb,
    'releasing twice is not an error');
INSERT INTO res SELECT 'a3', mec.acquire_lease('7e570000-0006-4000-8000-000000000101', 'jobs');
SELECT is((SELECT r -> 'active_leases' FROM res WHERE k = 'a3'), '2'::jsonb,
    'the released slot can be taken again');
SELECT is(
    (SELECT release_reason FROM mec.leases WHERE lease_id = pg_temp.lease('a1')), 'released',
    'mec.leases records the release');

-- ---------------------------------------------------------------- renew
INSERT INTO res SELECT 'ren2', mec.renew_lease(pg_temp.lease('a2'), 600);
SELECT is(
    (SELECT jsonb_build_object('renewed', r -> 'renewed', 'expires_at_ok', (r ->> 'expires_at')::timestamptz BETWEEN now() + interval '600 seconds' AND clock_timestamp() + interval '600 seconds')
       FROM res WHERE k = 'ren2'),
    '{"renewed": true, "expires_at_ok": true}'::jsonb,
    'renew_lease extends the lease to now() + p_ttl_seconds');
SELECT is(
    (SELECT expires_at FROM mec.leases WHERE lease_id = pg_temp.lease('a2')),
    (SELECT (r ->> 'expires_at')::timestamptz FROM res WHERE k = 'ren2'),
    'mec.leases shows the new expiry');
SELECT throws_ok(format('SELECT mec.renew_lease(%L)', pg_temp.lease('a1')),
    'ME410', NULL, 'renewing a released lease: ME410');

-- ---------------------------------------------------------------- unknown lease, bad input
SELECT throws_ok($$SELECT mec.renew_lease('7e570000-0006-4000-8000-0000000000ff')$$, 'P0002', NULL, 'renew an unknown lease: P0002');
SELECT throws_ok($$SELECT mec.release_lease('7e570000-0006-4000-8000-0000000000ff')$$, 'P0002', NULL, 'release an unknown lease: P0002');
SELECT throws_ok($$SELECT mec.acquire_lease('7e570000-0006-4000-8000-000000000102', 'runs')$$,
    'ME400', NULL, 'a lease on a metered resource: ME400');
SELECT throws_ok($$SELECT mec.acquire_lease('7e570000-0006-4000-8000-000000000199', 'jobs')$$,
    'ME404', NULL, 'a lease for an unknown account: ME404');
SELECT is(
    (SELECT jsonb_agg(pg_temp.err(q) -> 'sqlstate') FROM unnest(ARRAY[
        $$SELECT mec.acquire_lease('7e570000-0006-4000-8000-000000000102', 'jobs', p_ttl_seconds => 0)$$,
        $$SELECT mec.acquire_lease(NULL, 'jobs')$$,
        $$SELECT mec.acquire_lease('7e570000-0006-4000-8000-000000000102', 'jobs', p_idempotency_key => '')$$,
        $$SELECT mec.release_lease(NULL)$$]) q),
    '["22023", "22023", "22023", "22023"]'::jsonb,
    'TTL 0, NULL account, empty key, NULL lease id: 22023');

-- ---------------------------------------------------------------- idempotent acquire
INSERT INTO res SELECT 'k1', mec.acquire_lease('7e570000-0006-4000-8000-000000000102', 'jobs', p_idempotency_key => 't06-lease-key');
INSERT INTO res SELECT 'k1_replay', mec.acquire_lease('7e570000-0006-4000-8000-000000000102', 'jobs', p_idempotency_key => 't06-lease-key');
SELECT is(
    (SELECT jsonb_build_array(a.r -> 'duplicate', b.r -> 'duplicate', a.r -> 'lease_id' = b.r -> 'lease_id')
       FROM res a, res b WHERE a.k = 'k1' AND b.k = 'k1_replay'),
    '[false, true, true]'::jsonb,
    'acquire with the same key returns the same lease, flagged duplicate');
SELECT is(
    (SELECT count(*)::int FROM mec.leases WHERE account_id = '7e570000-0006-4000-8000-000000000102'), 1,
    'the replay holds no second slot');
SELECT throws_ok($$SELECT mec.acquire_lease('7e570000-0006-4000-8000-000000000103', 'jobs', p_idempotency_key => 't06-lease-key')$$,
    'ME409', NULL, 'the same key for another account: ME409');

-- ---------------------------------------------------------------- expiry (deterministic: expires_at moved into the past)
INSERT INTO res SELECT 'x1', mec.acquire_lease('7e570000-0006-4000-8000-000000000103', 'jobs');
INSERT INTO res SELECT 'x2', mec.acquire_lease('7e570000-0006-4000-8000-000000000103', 'jobs');
UPDATE mec_data.leases SET acquired_at = now() - interval '10 minutes', expires_at = now() - interval '1 second'
 WHERE namespace_id = '7e570000-0006-4000-8000-00000000000a' AND lease_id = pg_temp.lease('x1');
SELECT is(
    (SELECT pg_temp.pick(mec.check_entitlement('7e570000-0006-4000-8000-000000000103', 'jobs'), 'decision', 'quantity_used')),
    '{"decision": "allow", "quantity_used": 1}'::jsonb,
    'an expired lease stops counting at once, before expire_stale_leases runs');
SELECT is(
    (SELECT active FROM mec.leases WHERE lease_id = pg_temp.lease('x1')), false, 'mec.leases shows it inactive');
SELECT throws_ok(format('SELECT mec.renew_lease(%L)', pg_temp.lease('x1')), 'ME410', NULL, 'renewing an expired lease: ME410');
INSERT INTO res SELECT 'x3', mec.acquire_lease('7e570000-0006-4000-8000-000000000103', 'jobs');
SELECT is((SELECT r -> 'active_leases' FROM res WHERE k = 'x3'), '2'::jsonb,
    'the expired lease''s slot is taken by a new acquire');

-- ---------------------------------------------------------------- expire_stale_leases
INSERT INTO res SELECT 'y1', mec.acquire_lease('7e570000-0006-4000-8000-000000000104', 'jobs');
INSERT INTO res SELECT 'y2', mec.acquire_lease('7e570000-0006-4000-8000-000000000104', 'jobs');
UPDATE mec_data.leases SET acquired_at = now() - interval '10 minutes', expires_at = now() - interval '1 second'
 WHERE namespace_id = '7e570000-0006-4000-8000-00000000000a' AND lease_id IN (pg_temp.lease('y1'), pg_temp.lease('y2'));
SELECT is(
    (SELECT jsonb_build_array(mec.expire_stale_leases(), mec.expire_stale_leases())),
    '[{"expired": 2}, {"expired": 0}]'::jsonb,
    'expire_stale_leases counts the stale leases of the namespace, then none');
SELECT is(
    (SELECT jsonb_agg(DISTINCT release_reason) FROM mec.leases WHERE account_id = '7e570000-0006-4000-8000-000000000104'),
    '["expired"]'::jsonb, 'expired leases are marked expired');

-- ---------------------------------------------------------------- expiry in real time (one short sleep)
INSERT INTO res SELECT 'w1', mec.acquire_lease('7e570000-0006-4000-8000-000000000105', 'jobs', p_ttl_seconds => 1);
INSERT INTO res SELECT 'w2', mec.acquire_lease('7e570000-0006-4000-8000-000000000105', 'jobs', p_ttl_seconds => 300);
DO $$ BEGIN PERFORM pg_sleep(1.1); END $$;
SELECT lives_ok($$SELECT mec.acquire_lease('7e570000-0006-4000-8000-000000000105', 'jobs')$$,
    'a 1-second lease, 1.1 s later: its slot is free at once (acquire succeeds)');
SELECT throws_ok(format('SELECT mec.renew_lease(%L)', pg_temp.lease('w1')), 'ME410', NULL,
    'a 1-second lease, 1.1 s later: renew is ME410');

SELECT * FROM finish();
ROLLBACK;
