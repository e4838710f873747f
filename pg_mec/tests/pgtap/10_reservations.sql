-- 10_reservations: reserve_consumption / commit_reservation / cancel_reservation — a hold counts
-- at once, commit records the actual quantity in the ledger (less, or more within the limit), a
-- replay is a duplicate, cancel gives the hold back, expired or cancelled holds cannot be
-- committed (ME410), and bad input changes nothing.
BEGIN;
SELECT plan(30);

\ir helpers.psql

-- What a reservation call changes in the test namespace: ledger rows, counters, reservations.
CREATE FUNCTION pg_temp.state() RETURNS jsonb LANGUAGE sql STABLE AS $f$
    SELECT jsonb_build_object(
        'consumption', (SELECT count(*) FROM mec_data.consumption WHERE namespace_id = '7e570000-0010-4000-8000-00000000000a'),
        'used',        (SELECT coalesce(sum(used), 0) FROM mec_data.usage_counters WHERE namespace_id = '7e570000-0010-4000-8000-00000000000a'),
        'held',        (SELECT count(*) FROM mec_data.reservations WHERE namespace_id = '7e570000-0010-4000-8000-00000000000a' AND state = 'held'))
$f$;

DO $$ BEGIN
    PERFORM mec.create_namespace('t10_reservations', '7e570000-0010-4000-8000-00000000000a');
END $$;
SET LOCAL mec.namespace_id = '7e570000-0010-4000-8000-00000000000a';
DO $$
DECLARE
    a text;
BEGIN
    PERFORM mec.load_catalog($j${
      "version": "t10",
      "resources": [
        {"resource_type": "tokens", "kind": "metered"},
        {"resource_type": "jobs", "kind": "concurrency"},
        {"resource_type": "sso", "kind": "feature"}
      ],
      "plans": [
        {"plan_id": "p", "entitlements": {"tokens": {"limit": 100, "grace": 0}, "jobs": {"limit": 1}, "sso": true}}
      ]
    }$j$);
    FOREACH a IN ARRAY ARRAY['101', '102', '103', '104'] LOOP
        PERFORM mec.provision_plan(('7e570000-0010-4000-8000-000000000' || a)::uuid, 'p');
    END LOOP;
END $$;

CREATE TEMP TABLE res (k text PRIMARY KEY, r jsonb);
CREATE TEMP TABLE snap (k text PRIMARY KEY, s jsonb);
GRANT ALL ON res, snap TO PUBLIC;
CREATE FUNCTION pg_temp.rid(p_key text) RETURNS uuid LANGUAGE sql STABLE AS $f$
    SELECT (r ->> 'reservation_id')::uuid FROM res WHERE k = p_key
$f$;
CREATE FUNCTION pg_temp.used(p_account text) RETURNS numeric LANGUAGE sql STABLE AS $f$
    SELECT (mec.check_entitlement(p_account::uuid, 'tokens') ->> 'quantity_used')::numeric
$f$;

SET LOCAL ROLE mec_service;

-- ---------------------------------------------------------------- a hold counts at once
INSERT INTO res SELECT 'r1', mec.reserve_consumption('t10-r1', '7e570000-0010-4000-8000-000000000101', 'tokens', 40);
SELECT is(pg_temp.pick((SELECT r FROM res WHERE k = 'r1'), 'duplicate', 'quantity_reserved', 'quantity_used',
                       'quantity_allowed', 'quantity_remaining'),
    '{"duplicate": false, "quantity_reserved": 40, "quantity_used": 40, "quantity_allowed": 100, "quantity_remaining": 60}'::jsonb,
    'reserve: the hold counts toward usage at once');
SELECT ok((SELECT (r ->> 'expires_at')::timestamptz BETWEEN now() + interval '300 seconds'
                                                        AND clock_timestamp() + interval '300 seconds' FROM res WHERE k = 'r1'),
    'p_ttl_seconds defaults to 300');
SELECT is(pg_temp.used('7e570000-0010-4000-8000-000000000101'), 40::numeric, 'check_entitlement sees the hold');
INSERT INTO snap VALUES ('after_r1', pg_temp.state());
INSERT INTO res SELECT 'r1_replay', mec.reserve_consumption('t10-r1', '7e570000-0010-4000-8000-000000000101', 'tokens', 40);
SELECT is((SELECT pg_temp.pick(r, 'duplicate') || jsonb_build_object('same', pg_temp.rid('r1_replay') = pg_temp.rid('r1'))
             FROM res WHERE k = 'r1_replay'),
    '{"duplicate": true, "same": true}'::jsonb, 'the same key again: duplicate, the same reservation');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'after_r1'), 'the replay changes nothing');
SELECT throws_ok($$SELECT mec.reserve_consumption('t10-r1', '7e570000-0010-4000-8000-000000000101', 'tokens', 41)$$,
    'ME409', NULL, 'the same key with another quantity: ME409');

-- ---------------------------------------------------------------- over the limit: ME429, nothing held
SELECT throws_ok($$SELECT mec.reserve_consumption('t10-over', '7e570000-0010-4000-8000-000000000101', 'tokens', 61)$$,
    'ME429', NULL, 'a hold past the hard limit: ME429');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'after_r1'), 'a refused hold changes nothing');
SELECT lives_ok($$SELECT mec.reserve_consumption('t10-fits', '7e570000-0010-4000-8000-000000000102', 'tokens', 100)$$,
    'a hold of exactly the limit is allowed (another account)');

-- ---------------------------------------------------------------- commit: the actual quantity
INSERT INTO res SELECT 'c1', mec.commit_reservation(pg_temp.rid('r1'), 25);
SELECT is(pg_temp.pick((SELECT r FROM res WHERE k = 'c1'), 'duplicate', 'billable', 'quantity', 'quantity_reserved', 'quantity_used'),
    '{"duplicate": false, "billable": true, "quantity": 25, "quantity_reserved": 40, "quantity_used": 25}'::jsonb,
    'commit below the hold: 25 recorded, the other 15 given back');
SELECT is((SELECT jsonb_build_object('quantity', quantity, 'entry_type', entry_type)
             FROM mec.consumption WHERE idempotency_key = 't10-r1'),
    '{"quantity": 25, "entry_type": "usage"}'::jsonb, 'the ledger row is under the reservation''s key');
SELECT is((SELECT state FROM mec.reservations WHERE reservation_id = pg_temp.rid('r1')), 'committed', 'the reservation is committed');
SELECT is((SELECT r ->> 'duplicate' FROM (SELECT mec.commit_reservation(pg_temp.rid('r1'), 25) AS r) x), 'true',
    'committing again: duplicate');
SELECT is(pg_temp.used('7e570000-0010-4000-8000-000000000101'), 25::numeric, 'counted once');

INSERT INTO res SELECT 'r2', mec.reserve_consumption('t10-r2', '7e570000-0010-4000-8000-000000000101', 'tokens', 10);
INSERT INTO res SELECT 'c2', mec.commit_reservation(pg_temp.rid('r2'), 30);
SELECT is(pg_temp.pick((SELECT r FROM res WHERE k = 'c2'), 'quantity', 'quantity_used'),
    '{"quantity": 30, "quantity_used": 55}'::jsonb, 'commit above the hold, within the limit: the actual 30');
INSERT INTO res SELECT 'r3', mec.reserve_consumption('t10-r3', '7e570000-0010-4000-8000-000000000101', 'tokens', 10);
INSERT INTO snap VALUES ('before_c3', pg_temp.state());
SELECT throws_ok(format('SELECT mec.commit_reservation(%L, 50)', pg_temp.rid('r3')),
    'ME429', NULL, 'commit above the hold and past the limit: ME429');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'before_c3'), 'the refused commit changes nothing (the hold stays)');

-- ---------------------------------------------------------------- cancel
INSERT INTO res SELECT 'x3', mec.cancel_reservation(pg_temp.rid('r3'));
SELECT is(pg_temp.pick((SELECT r FROM res WHERE k = 'x3'), 'cancelled', 'already_settled', 'quantity_released'),
    '{"cancelled": true, "already_settled": false, "quantity_released": 10}'::jsonb, 'cancel gives the hold back');
SELECT is(pg_temp.used('7e570000-0010-4000-8000-000000000101'), 55::numeric, 'usage without the cancelled hold');
SELECT is((SELECT r ->> 'already_settled' FROM (SELECT mec.cancel_reservation(pg_temp.rid('r3')) AS r) x), 'true',
    'cancelling twice is not an error');
SELECT throws_ok(format('SELECT mec.commit_reservation(%L)', pg_temp.rid('r3')), 'ME410', NULL,
    'a cancelled reservation cannot be committed: ME410');
SELECT throws_ok(format('SELECT mec.cancel_reservation(%L)', pg_temp.rid('r1')), 'ME400', NULL,
    'a committed reservation cannot be cancelled: ME400');

-- ---------------------------------------------------------------- expiry
INSERT INTO res SELECT 'r4', mec.reserve_consumption('t10-r4', '7e570000-0010-4000-8000-000000000103', 'tokens', 70);
RESET ROLE;
UPDATE mec_data.reservations SET expires_at = now() - interval '1 second' WHERE reservation_id = pg_temp.rid('r4');
SET LOCAL ROLE mec_service;
SELECT throws_ok(format('SELECT mec.commit_reservation(%L)', pg_temp.rid('r4')), 'ME410', NULL,
    'an expired reservation cannot be committed: ME410');
SELECT lives_ok($$SELECT mec.reserve_consumption('t10-r5', '7e570000-0010-4000-8000-000000000103', 'tokens', 80)$$,
    'an expired hold gives its quota back when quota runs short');

-- ---------------------------------------------------------------- bad input: SQLSTATE, nothing changed
INSERT INTO snap VALUES ('before_bad', pg_temp.state());
SELECT throws_ok($$SELECT mec.reserve_consumption('t10-bad1', '7e570000-0010-4000-8000-000000000104', 'tokens', 0)$$,
    '22023', NULL, 'a zero quantity: 22023');
SELECT throws_ok($$SELECT mec.reserve_consumption('t10-bad2', '7e570000-0010-4000-8000-000000000104', 'tokens', 0.12345678901)$$,
    '22023', NULL, 'a quantity with 11 decimal places: 22023');
SELECT throws_ok($$SELECT mec.reserve_consumption('t10-bad3', '7e570000-0010-4000-8000-000000000104', 'jobs', 1)$$,
    'ME400', NULL, 'a concurrency resource takes leases, not reservations: ME400');
SELECT throws_ok($$SELECT mec.reserve_consumption('t10-bad4', '7e570000-0010-4000-8000-000000000199', 'tokens', 1)$$,
    'ME404', NULL, 'an unknown account: ME404');
SELECT throws_ok($$SELECT mec.commit_reservation('7e570000-0010-4000-8000-0000000000ff')$$,
    'P0002', NULL, 'an unknown reservation: P0002');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'before_bad'), 'the refused calls changed nothing');

RESET ROLE;
SELECT * FROM finish();
ROLLBACK;
