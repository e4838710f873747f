-- 04_metering: mec.meter_consumption — results, idempotency, hard/soft/capped enforcement with
-- grace, unlimited and zero limits, periods, billability by HTTP status, ME429 (DETAIL, aborts the
-- caller's work), and bad input (contract SQLSTATE, nothing changed).
BEGIN;
SELECT plan(76);

\ir helpers.psql



-- What a metering call changes: ledger rows and summed counters of the test namespace.
CREATE FUNCTION pg_temp.state() RETURNS jsonb LANGUAGE sql STABLE AS $f$
    SELECT jsonb_build_object(
        'consumption', (SELECT count(*) FROM mec_data.consumption WHERE namespace_id = '7e570000-0004-4000-8000-00000000000a'),
        'counters',    (SELECT count(*) FROM mec_data.usage_counters WHERE namespace_id = '7e570000-0004-4000-8000-00000000000a'),
        'used',        (SELECT coalesce(sum(used), 0) FROM mec_data.usage_counters WHERE namespace_id = '7e570000-0004-4000-8000-00000000000a'))
$f$;

-- The usual result fields, without ids and timestamps.
CREATE FUNCTION pg_temp.res(j jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $f$
    SELECT pg_temp.pick(j, 'duplicate', 'billable', 'overage', 'quantity_used', 'quantity_allowed',
                        'quantity_remaining', 'percent_used')
$f$;

DO $$ BEGIN
    PERFORM mec.create_namespace('t04_metering', '7e570000-0004-4000-8000-00000000000a',
                                 '{"late_event_days": 60}');
END $$;
SET LOCAL mec.namespace_id = '7e570000-0004-4000-8000-00000000000a';
DO $$ BEGIN
    PERFORM mec.load_catalog($j${
      "version": "t04", "currency": "USD", "billable_statuses": ["2xx", 422],
      "resources": [
        {"resource_type": "m_hard", "kind": "metered"},
        {"resource_type": "m_graced", "kind": "metered"},
        {"resource_type": "m_big", "kind": "metered"},
        {"resource_type": "m_huge", "kind": "metered"},
        {"resource_type": "m_soft", "kind": "metered"},
        {"resource_type": "m_capped", "kind": "metered"},
        {"resource_type": "m_unlimited", "kind": "metered"},
        {"resource_type": "m_zero", "kind": "metered"},
        {"resource_type": "m_day", "kind": "metered"},
        {"resource_type": "m_hour", "kind": "metered"},
        {"resource_type": "m_life", "kind": "metered"},
        {"resource_type": "m_ok2xx", "kind": "metered", "billable_statuses": ["2xx"]},
        {"resource_type": "m_other", "kind": "metered"},
        {"resource_type": "r_rpm", "kind": "rate", "window_seconds": 60},
        {"resource_type": "g_storage", "kind": "gauge"},
        {"resource_type": "f_flag", "kind": "feature"},
        {"resource_type": "c_jobs", "kind": "concurrency"}
      ],
      "plans": [
        {"plan_id": "p", "name": "P", "default": true, "entitlements": {
          "m_hard":      {"limit": 10, "grace": 0},
          "m_graced":    {"limit": 100},
          "m_big":       {"limit": 50000},
          "m_huge":      {"limit": 1000000000000000},
          "m_soft":      {"limit": 10, "enforcement": "soft"},
          "m_capped":    {"limit": 10, "enforcement": "capped", "overage_cap": 5},
          "m_unlimited": {"limit": null},
          "m_zero":      {"limit": 0},
          "m_day":       {"limit": 100, "period": "day"},
          "m_hour":      {"limit": 100, "period": "hour"},
          "m_life":      {"limit": 100, "period": "lifetime"},
          "m_ok2xx":     {"limit": 100},
          "m_other":     {"limit": 100},
          "r_rpm":       {"limit": 60},
          "g_storage":   {"limit": 5},
          "f_flag":      true,
          "c_jobs":      {"limit": 2}}}
      ]
    }$j$);
    PERFORM mec.provision_plan('7e570000-0004-4000-8000-000000000101', 'p',
                               p_effective_at => now() - interval '59 days');
    PERFORM mec.provision_plan('7e570000-0004-4000-8000-000000000102', 'p',
                               p_effective_at => now() - interval '59 days');
END $$;

CREATE TEMP TABLE res (k text PRIMARY KEY, r jsonb);
CREATE TEMP TABLE snap (k text PRIMARY KEY, s jsonb);

-- ---------------------------------------------------------------- results, replay, ME409
INSERT INTO res SELECT 'h1', mec.meter_consumption('t04-h1', '7e570000-0004-4000-8000-000000000101', 'm_hard', 4,
                                                   p_metadata => '{"run": 1}');
SELECT is(pg_temp.res((SELECT r FROM res WHERE k = 'h1')),
    '{"duplicate": false, "billable": true, "overage": false, "quantity_used": 4, "quantity_allowed": 10,
      "quantity_remaining": 6, "percent_used": 40}'::jsonb,
    'meter 4 of 10: used 4, remaining 6, 40 percent, billable, no overage');
SELECT ok((SELECT (r ->> 'consumption_id')::uuid IS NOT NULL FROM res WHERE k = 'h1'), 'the result carries a consumption_id');
SELECT is(
    (SELECT ARRAY[(r ->> 'period_start')::timestamptz, (r ->> 'period_end')::timestamptz] FROM res WHERE k = 'h1'),
    ARRAY[date_trunc('month', now(), 'UTC'), date_trunc('month', now(), 'UTC') + interval '1 month'],
    'month period: the calendar month (UTC) of the event');
SELECT is(
    (SELECT pg_temp.pick(to_jsonb(c), 'consumption_id', 'account_id', 'resource_type', 'quantity', 'billable', 'metadata')
       FROM mec.consumption c WHERE idempotency_key = 't04-h1'),
    (SELECT jsonb_build_object('consumption_id', r -> 'consumption_id', 'account_id', '7e570000-0004-4000-8000-000000000101',
                               'resource_type', 'm_hard', 'quantity', 4, 'billable', true, 'metadata', '{"run": 1}'::jsonb)
       FROM res WHERE k = 'h1'),
    'mec.consumption has the ledger row with its metadata');

INSERT INTO snap VALUES ('before_replay', pg_temp.state());
INSERT INTO res SELECT 'h1_replay', mec.meter_consumption('t04-h1', '7e570000-0004-4000-8000-000000000101', 'm_hard', 4);
SELECT is(
    (SELECT pg_temp.pick(r, 'consumption_id', 'duplicate', 'quantity_used') FROM res WHERE k = 'h1_replay'),
    (SELECT pg_temp.pick(r, 'consumption_id', 'quantity_used') || '{"duplicate": true}' FROM res WHERE k = 'h1'),
    'a replay returns the same consumption_id and result with duplicate: true');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'before_replay'), 'the replay changes nothing');

SELECT throws_ok($$SELECT mec.meter_consumption('t04-h1', '7e570000-0004-4000-8000-000000000101', 'm_hard', 5)$$,
    'ME409', NULL, 'same key, another quantity: ME409');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-h1', '7e570000-0004-4000-8000-000000000101', 'm_soft', 4)$$,
    'ME409', NULL, 'same key, another resource: ME409');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-h1', '7e570000-0004-4000-8000-000000000102', 'm_hard', 4)$$,
    'ME409', NULL, 'same key, another account: ME409');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'before_replay'), 'ME409 changes nothing');

-- ---------------------------------------------------------------- hard limit (explicit grace 0)
INSERT INTO res SELECT 'h2', mec.meter_consumption('t04-h2', '7e570000-0004-4000-8000-000000000101', 'm_hard', 6);
SELECT is(pg_temp.res((SELECT r FROM res WHERE k = 'h2')),
    '{"duplicate": false, "billable": true, "overage": false, "quantity_used": 10, "quantity_allowed": 10,
      "quantity_remaining": 0, "percent_used": 100}'::jsonb,
    'up to the hard limit exactly: allowed, 100 percent');

INSERT INTO snap VALUES ('at_hard_limit', pg_temp.state());
SELECT throws_ok($$SELECT mec.meter_consumption('t04-h3', '7e570000-0004-4000-8000-000000000101', 'm_hard', 1)$$,
    'ME429', NULL, 'hard limit with "grace": 0: one unit past the limit is ME429');

CREATE TEMP TABLE e429 AS
SELECT pg_temp.err($$SELECT mec.meter_consumption('t04-h3', '7e570000-0004-4000-8000-000000000101', 'm_hard', 1)$$) AS e;
SELECT is(
    (SELECT pg_temp.pick((e -> 'detail') -> 'violated_policies' -> 0, 'policy', 'limit', 'current', 'window') FROM e429),
    '{"policy": "m_hard", "limit": 10, "current": 10, "window": "month"}'::jsonb,
    'ME429 DETAIL: violated_policies names the policy, limit, current usage (before the call) and window');
SELECT is(
    (SELECT ((e -> 'detail') -> 'violated_policies' -> 0 ->> 'reset_at')::timestamptz FROM e429),
    date_trunc('month', now(), 'UTC') + interval '1 month',
    'ME429 DETAIL: reset_at is the end of the period');
SELECT is(
    (SELECT jsonb_array_length((e -> 'detail') -> 'violated_policies') FROM e429), 1,
    'ME429 DETAIL lists one violated policy');
SELECT ok((SELECT e ->> 'message' LIKE '%m_hard%' AND e ->> 'hint' IS NOT NULL FROM e429),
    'ME429 message names the resource, with a HINT');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'at_hard_limit'), 'a refused call records nothing');
SELECT is(
    (SELECT count(*)::int FROM mec.consumption WHERE idempotency_key = 't04-h3'), 0, 'the refused key is not in the ledger');

SELECT is(
    (SELECT pg_temp.pick(mec.meter_consumption('t04-h2', '7e570000-0004-4000-8000-000000000101', 'm_hard', 6),
                         'duplicate', 'consumption_id')),
    (SELECT pg_temp.pick(r, 'consumption_id') || '{"duplicate": true}' FROM res WHERE k = 'h2'),
    'a replay at the limit is still answered as a duplicate, not refused');

-- ME429 is an ERROR: it undoes the caller's work back to its savepoint / transaction, so work
-- whose usage was refused cannot commit. PL/pgSQL catches it by its SQLSTATE.
CREATE FUNCTION pg_temp.meter_two() RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
    BEGIN
        PERFORM mec.meter_consumption('t04-tx-ok', '7e570000-0004-4000-8000-000000000101', 'm_other', 1);
        PERFORM mec.meter_consumption('t04-tx-over', '7e570000-0004-4000-8000-000000000101', 'm_hard', 1);
        RETURN 'not raised';
    EXCEPTION WHEN SQLSTATE 'ME429' THEN
        RETURN 'caught ME429';
    END;
END
$f$;
SELECT is(pg_temp.meter_two(), 'caught ME429', 'PL/pgSQL catches the refusal with EXCEPTION WHEN SQLSTATE ''ME429''');
SELECT is(
    (SELECT count(*)::int FROM mec.consumption WHERE idempotency_key IN ('t04-tx-ok', 't04-tx-over')), 0,
    'ME429 aborts the caller''s work: the allowed event metered before it in the same block is gone too');

-- ---------------------------------------------------------------- grace
INSERT INTO res SELECT 'g1', mec.meter_consumption('t04-g1', '7e570000-0004-4000-8000-000000000101', 'm_graced', 100);
INSERT INTO res SELECT 'g2', mec.meter_consumption('t04-g2', '7e570000-0004-4000-8000-000000000101', 'm_graced', 1);
SELECT is(pg_temp.res((SELECT r FROM res WHERE k = 'g2')),
    '{"duplicate": false, "billable": true, "overage": true, "quantity_used": 101, "quantity_allowed": 100,
      "quantity_remaining": 0, "percent_used": 101}'::jsonb,
    'default grace (1% of 100 = 1 unit): one unit past the limit is allowed, flagged overage');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-g3', '7e570000-0004-4000-8000-000000000101', 'm_graced', 1)$$,
    'ME429', NULL, 'default grace used up: ME429');
INSERT INTO res SELECT 'b1', mec.meter_consumption('t04-b1', '7e570000-0004-4000-8000-000000000101', 'm_big', 50100);
SELECT is((SELECT pg_temp.pick(r, 'overage', 'quantity_used') FROM res WHERE k = 'b1'),
    '{"overage": true, "quantity_used": 50100}'::jsonb,
    'default grace is capped at 100 units (limit 50000: 50100 allowed)');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-b2', '7e570000-0004-4000-8000-000000000101', 'm_big', 1)$$,
    'ME429', NULL, 'limit 50000: 50101 is past the 100-unit grace, ME429');

-- ---------------------------------------------------------------- soft, capped
INSERT INTO res SELECT 's1', mec.meter_consumption('t04-s1', '7e570000-0004-4000-8000-000000000101', 'm_soft', 15);
SELECT is(pg_temp.res((SELECT r FROM res WHERE k = 's1')),
    '{"duplicate": false, "billable": true, "overage": true, "quantity_used": 15, "quantity_allowed": 10,
      "quantity_remaining": 0, "percent_used": 150}'::jsonb,
    'soft: past the limit is allowed and flagged overage (150 percent)');

INSERT INTO res SELECT 'c1', mec.meter_consumption('t04-c1', '7e570000-0004-4000-8000-000000000101', 'm_capped', 10);
INSERT INTO res SELECT 'c2', mec.meter_consumption('t04-c2', '7e570000-0004-4000-8000-000000000101', 'm_capped', 5);
SELECT is(
    (SELECT jsonb_build_array(pg_temp.pick(a.r, 'overage', 'quantity_used'), pg_temp.pick(b.r, 'overage', 'billable', 'quantity_used'))
       FROM res a, res b WHERE a.k = 'c1' AND b.k = 'c2'),
    '[{"overage": false, "quantity_used": 10}, {"overage": true, "billable": true, "quantity_used": 15}]'::jsonb,
    'capped: up to overage_cap beyond the limit is allowed, flagged overage and billable');
SELECT is(
    (SELECT pg_temp.pick(c, 'overage', 'overage_quantity') FROM (SELECT to_jsonb(c) c FROM mec.consumption c WHERE idempotency_key = 't04-c2') x),
    '{"overage": true, "overage_quantity": 5}'::jsonb,
    'the ledger row records the overage quantity');
SELECT is(
    (SELECT (e ->> 'sqlstate') || ' ' || ((e -> 'detail') -> 'violated_policies' -> 0 ->> 'current')
       FROM (SELECT pg_temp.err($$SELECT mec.meter_consumption('t04-c3', '7e570000-0004-4000-8000-000000000101', 'm_capped', 1)$$) e) x),
    'ME429 15',
    'capped: past limit + overage_cap is ME429 (current 15)');

-- ---------------------------------------------------------------- unlimited, zero
INSERT INTO res SELECT 'u1', mec.meter_consumption('t04-u1', '7e570000-0004-4000-8000-000000000101', 'm_unlimited', 1000000);
SELECT is(pg_temp.res((SELECT r FROM res WHERE k = 'u1')),
    '{"duplicate": false, "billable": true, "overage": false, "quantity_used": 1000000, "quantity_allowed": null,
      "quantity_remaining": null, "percent_used": null}'::jsonb,
    'unlimited (null): quantity_allowed, quantity_remaining and percent_used are null');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-z1', '7e570000-0004-4000-8000-000000000101', 'm_zero', 1)$$,
    'ME429', NULL, 'limit 0 means zero: the first unit is ME429');

-- ---------------------------------------------------------------- periods
INSERT INTO res SELECT 'mp', mec.meter_consumption('t04-mp', '7e570000-0004-4000-8000-000000000101', 'm_hard', 3,
                                                   p_occurred_at => date_trunc('month', now(), 'UTC') - interval '10 days');
SELECT is(
    (SELECT jsonb_build_object('used', r -> 'quantity_used', 'start', (r ->> 'period_start')::timestamptz = date_trunc('month', now(), 'UTC') - interval '1 month')
       FROM res WHERE k = 'mp'),
    '{"used": 3, "start": true}'::jsonb,
    'month: an event of last month counts in last month''s counter (this month''s is full, last month''s is not)');
SELECT is(
    (SELECT quantity_used FROM mec.usage WHERE account_id = '7e570000-0004-4000-8000-000000000101'
        AND resource_type = 'm_hard' AND period_start = date_trunc('month', now(), 'UTC')),
    10::numeric, 'month: this month''s counter is untouched by last month''s event');

INSERT INTO res SELECT 'd1', mec.meter_consumption('t04-d1', '7e570000-0004-4000-8000-000000000101', 'm_day', 2);
INSERT INTO res SELECT 'd2', mec.meter_consumption('t04-d2', '7e570000-0004-4000-8000-000000000101', 'm_day', 3,
                                                   p_occurred_at => now() - interval '1 day');
INSERT INTO res SELECT 'd3', mec.meter_consumption('t04-d3', '7e570000-0004-4000-8000-000000000101', 'm_day', 1);
SELECT is(
    (SELECT jsonb_agg(r -> 'quantity_used' ORDER BY k) FROM res WHERE k IN ('d1', 'd2', 'd3')),
    '[2, 3, 3]'::jsonb, 'day: yesterday''s event has its own counter; today''s add up');
SELECT is(
    (SELECT ARRAY[(r ->> 'period_start')::timestamptz, (r ->> 'period_end')::timestamptz] FROM res WHERE k = 'd1'),
    ARRAY[date_trunc('day', now(), 'UTC'), date_trunc('day', now(), 'UTC') + interval '1 day'],
    'day: the period is the UTC day of the event');

SELECT is(
    jsonb_build_array(
        (mec.meter_consumption('t04-edge1', '7e570000-0004-4000-8000-000000000102', 'm_day', 1,
                               p_occurred_at => date_trunc('day', now(), 'UTC')) ->> 'period_start')::timestamptz
            = date_trunc('day', now(), 'UTC'),
        (mec.meter_consumption('t04-edge2', '7e570000-0004-4000-8000-000000000102', 'm_day', 1,
                               p_occurred_at => date_trunc('day', now(), 'UTC') - interval '1 microsecond') ->> 'period_start')::timestamptz
            = date_trunc('day', now(), 'UTC') - interval '1 day'),
    '[true, true]'::jsonb,
    'day boundary: an event at 00:00:00 UTC opens the new day, one microsecond before belongs to the old one');

INSERT INTO res SELECT 'hr1', mec.meter_consumption('t04-hr1', '7e570000-0004-4000-8000-000000000101', 'm_hour', 2);
INSERT INTO res SELECT 'hr2', mec.meter_consumption('t04-hr2', '7e570000-0004-4000-8000-000000000101', 'm_hour', 5,
                                                    p_occurred_at => now() - interval '1 hour');
INSERT INTO res SELECT 'hr3', mec.meter_consumption('t04-hr3', '7e570000-0004-4000-8000-000000000101', 'm_hour', 1);
SELECT is(
    (SELECT jsonb_agg(r -> 'quantity_used' ORDER BY k) FROM res WHERE k IN ('hr1', 'hr2', 'hr3')),
    '[2, 5, 3]'::jsonb, 'hour: the previous hour''s event has its own counter');
SELECT is(
    (SELECT ARRAY[(r ->> 'period_start')::timestamptz, (r ->> 'period_end')::timestamptz] FROM res WHERE k = 'hr1'),
    ARRAY[date_trunc('hour', now()), date_trunc('hour', now()) + interval '1 hour'],
    'hour: the period is the hour of the event');

INSERT INTO res SELECT 'l1', mec.meter_consumption('t04-l1', '7e570000-0004-4000-8000-000000000101', 'm_life', 2,
                                                   p_occurred_at => now() - interval '40 days');
INSERT INTO res SELECT 'l2', mec.meter_consumption('t04-l2', '7e570000-0004-4000-8000-000000000101', 'm_life', 3);
SELECT is(
    (SELECT jsonb_build_object('used', r -> 'quantity_used', 'period_end', r -> 'period_end') FROM res WHERE k = 'l2'),
    '{"used": 5, "period_end": null}'::jsonb,
    'lifetime: events of different months share one counter that never ends');

-- Billing anchor: months run from the account's anchor day (namespace setting billing_anchor).
DO $$ BEGIN
    PERFORM mec.update_namespace_settings('{"billing_anchor": 15}');
    PERFORM mec.provision_plan('7e570000-0004-4000-8000-000000000103', 'p', p_effective_at => now() - interval '59 days');
    PERFORM mec.update_namespace_settings('{"billing_anchor": null}');
END $$;
INSERT INTO res SELECT 'anchor', mec.meter_consumption('t04-anchor', '7e570000-0004-4000-8000-000000000103', 'm_hard', 1);
SELECT is(
    (SELECT ARRAY[(r ->> 'period_start')::timestamptz, (r ->> 'period_end')::timestamptz] FROM res WHERE k = 'anchor'),
    (SELECT ARRAY[a, a + interval '1 month'] FROM (
        SELECT CASE WHEN now() >= date_trunc('month', now(), 'UTC') + interval '14 days'
                    THEN date_trunc('month', now(), 'UTC') + interval '14 days'
                    ELSE date_trunc('month', now(), 'UTC') - interval '1 month' + interval '14 days' END AS a) x),
    'month with billing anchor day 15: the period runs from the latest 15th to the next');

-- Rates: events per sliding window; the DETAIL names the window in seconds.
INSERT INTO res SELECT 'rate1', mec.meter_consumption('t04-rate1', '7e570000-0004-4000-8000-000000000101', 'r_rpm', 60);
SELECT is((SELECT pg_temp.pick(r, 'quantity_used', 'quantity_allowed') FROM res WHERE k = 'rate1'),
    '{"quantity_used": 60, "quantity_allowed": 60}'::jsonb, 'rate: 60 of 60 per minute');
SELECT is(
    (SELECT (e ->> 'sqlstate') || ' ' || ((e -> 'detail') -> 'violated_policies' -> 0 ->> 'window')
       FROM (SELECT pg_temp.err($$SELECT mec.meter_consumption('t04-rate2', '7e570000-0004-4000-8000-000000000101', 'r_rpm', 1)$$) e) x),
    'ME429 60', 'rate: the 61st event in the window is ME429, window 60 (seconds)');

-- Gauges: a level that goes up and down, never below zero.
SELECT is(
    (SELECT jsonb_build_array(
        mec.meter_consumption('t04-gauge1', '7e570000-0004-4000-8000-000000000101', 'g_storage', 3) -> 'quantity_used',
        mec.meter_consumption('t04-gauge2', '7e570000-0004-4000-8000-000000000101', 'g_storage', -1) -> 'quantity_used')),
    '[3, 2]'::jsonb, 'gauge: +3 then -1 leaves 2');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-gauge3', '7e570000-0004-4000-8000-000000000101', 'g_storage', -5)$$,
    '22023', NULL, 'gauge: going below zero is 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-gauge4', '7e570000-0004-4000-8000-000000000101', 'g_storage', 4)$$,
    'ME429', NULL, 'gauge: past the max (2 + 4 > 5) is ME429');

-- ---------------------------------------------------------------- billability by HTTP status
INSERT INTO snap VALUES ('before_500', pg_temp.state());
INSERT INTO res SELECT 'st500', mec.meter_consumption('t04-st500', '7e570000-0004-4000-8000-000000000101', 'm_day', 7,
                                                      p_http_status => 500);
SELECT is(
    (SELECT pg_temp.pick(r, 'billable', 'duplicate', 'quantity_used') FROM res WHERE k = 'st500'),
    '{"billable": false, "duplicate": false, "quantity_used": 3}'::jsonb,
    'status 500: recorded with billable false, consumes no quota');
SELECT is(
    (SELECT (s -> 'consumption')::int + 1 FROM snap WHERE k = 'before_500') || ' ' || (SELECT (SELECT s -> 'used' FROM snap WHERE k = 'before_500')::text),
    (pg_temp.state() -> 'consumption')::text || ' ' || (pg_temp.state() -> 'used')::text,
    'status 500: one ledger row, no counter change');
SELECT is(
    (SELECT pg_temp.pick(mec.meter_consumption('t04-st500-full', '7e570000-0004-4000-8000-000000000101', 'm_hard', 1,
                                              p_http_status => 503), 'billable', 'quantity_used')),
    '{"billable": false, "quantity_used": 10}'::jsonb,
    'a non-billable event is recorded even when the limit is reached (it uses no quota)');
SELECT is(
    (SELECT jsonb_build_array(
        pg_temp.pick(mec.meter_consumption('t04-st200', '7e570000-0004-4000-8000-000000000101', 'm_day', 1, p_http_status => 200), 'billable', 'quantity_used'),
        pg_temp.pick(mec.meter_consumption('t04-st422', '7e570000-0004-4000-8000-000000000101', 'm_day', 1, p_http_status => 422), 'billable', 'quantity_used'),
        pg_temp.pick(mec.meter_consumption('t04-st404', '7e570000-0004-4000-8000-000000000101', 'm_day', 1, p_http_status => 404), 'billable', 'quantity_used')
    )),
    '[{"billable": true, "quantity_used": 4}, {"billable": true, "quantity_used": 5}, {"billable": false, "quantity_used": 5}]'::jsonb,
    'catalog billable_statuses ["2xx", 422]: 200 and 422 count, 404 does not');
SELECT is(
    (SELECT jsonb_build_array(
        mec.meter_consumption('t04-ok2xx-422', '7e570000-0004-4000-8000-000000000101', 'm_ok2xx', 1, p_http_status => 422) -> 'billable',
        mec.meter_consumption('t04-ok2xx-201', '7e570000-0004-4000-8000-000000000101', 'm_ok2xx', 1, p_http_status => 201) -> 'billable')),
    '[false, true]'::jsonb,
    'a resource''s own billable_statuses ["2xx"] override the catalog''s: 422 not billable, 201 billable');
SELECT is(
    (SELECT pg_temp.pick(mec.meter_consumption('t04-st500', '7e570000-0004-4000-8000-000000000101', 'm_day', 7,
                                              p_http_status => 500), 'duplicate', 'billable', 'consumption_id')),
    (SELECT pg_temp.pick(r, 'consumption_id') || '{"duplicate": true, "billable": false}' FROM res WHERE k = 'st500'),
    'a replay of a non-billable event is a duplicate, still billable false');
SELECT is(
    (SELECT billable FROM mec.consumption WHERE idempotency_key = 't04-st500'), false,
    'mec.consumption shows billable false for the 500');

-- ---------------------------------------------------------------- fractional quantities
SELECT is(
    (SELECT jsonb_build_array(
        mec.meter_consumption('t04-frac1', '7e570000-0004-4000-8000-000000000102', 'm_other', 0.1) -> 'quantity_used',
        mec.meter_consumption('t04-frac2', '7e570000-0004-4000-8000-000000000102', 'm_other', 0.2) -> 'quantity_used')),
    '[0.1, 0.3]'::jsonb, 'fractional quantities add up exactly (0.1 + 0.2 = 0.3)');
SELECT is(
    pg_temp.pick(mec.meter_consumption('t04-frac3', '7e570000-0004-4000-8000-000000000102', 'm_huge', 104.5),
                 'quantity_used', 'quantity_remaining'),
    '{"quantity_used": 104.5, "quantity_remaining": 999999999999895.5}'::jsonb,
    'a fraction next to a 16-digit limit is shown as the nearest double, not off by 0.1');
-- A quantity is recorded as sent, or refused with 22023 — never silently rounded.
CREATE TEMP TABLE digits AS
SELECT pg_temp.err($$SELECT mec.meter_consumption('t04-digits', '7e570000-0004-4000-8000-000000000102', 'm_other',
                                                 0.1234567890123456789012345678901)$$) AS e;
SELECT is(
    (SELECT CASE WHEN e ->> 'sqlstate' = '22023' OR (e ->> 'sqlstate' IS NULL AND q = 0.1234567890123456789012345678901)
                 THEN 'recorded exactly or refused with 22023'
                 ELSE coalesce(e ->> 'sqlstate', 'recorded as ' || q) END
       FROM (SELECT e, (SELECT quantity FROM mec.consumption WHERE idempotency_key = 't04-digits') AS q FROM digits) x),
    'recorded exactly or refused with 22023',
    'a quantity with 31 significant digits (0.1234567890123456789012345678901) is not silently rounded');

-- ---------------------------------------------------------------- bad input: SQLSTATE and nothing changed
INSERT INTO snap VALUES ('before_bad', pg_temp.state());
SELECT throws_ok($$SELECT mec.meter_consumption('', '7e570000-0004-4000-8000-000000000101', 'm_other', 1)$$,
    '22023', NULL, 'empty idempotency key: 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('   ', '7e570000-0004-4000-8000-000000000101', 'm_other', 1)$$,
    '22023', NULL, 'blank idempotency key: 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-neg', '7e570000-0004-4000-8000-000000000101', 'm_other', -1)$$,
    '22023', NULL, 'negative quantity: 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-zero', '7e570000-0004-4000-8000-000000000101', 'm_other', 0)$$,
    '22023', NULL, 'zero quantity: 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-nan', '7e570000-0004-4000-8000-000000000101', 'm_other', 'NaN')$$,
    '22023', NULL, 'NaN quantity: 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-text', '7e570000-0004-4000-8000-000000000101', 'm_other', 'ten')$$,
    '22P02', NULL, 'non-numeric quantity: refused by the numeric cast (22P02)');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-acct', '7e570000-0004-4000-8000-000000000199', 'm_other', 1)$$,
    'ME404', NULL, 'unknown account: ME404');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-res', '7e570000-0004-4000-8000-000000000101', 'no_such_thing', 1)$$,
    'ME404', NULL, 'unknown resource type: ME404');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-feat', '7e570000-0004-4000-8000-000000000101', 'f_flag', 1)$$,
    'ME400', NULL, 'a feature resource is not metered: ME400');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-conc', '7e570000-0004-4000-8000-000000000101', 'c_jobs', 1)$$,
    'ME400', NULL, 'a concurrency resource is not metered: ME400');
SELECT is(
    (SELECT jsonb_agg(pg_temp.err(q) -> 'sqlstate') FROM unnest(ARRAY[
        $$SELECT mec.meter_consumption(NULL, '7e570000-0004-4000-8000-000000000101', 'm_other', 1)$$,
        $$SELECT mec.meter_consumption('t04-null-a', NULL, 'm_other', 1)$$,
        $$SELECT mec.meter_consumption('t04-null-r', '7e570000-0004-4000-8000-000000000101', NULL, 1)$$,
        $$SELECT mec.meter_consumption('t04-null-q', '7e570000-0004-4000-8000-000000000101', 'm_other', NULL)$$,
        $$SELECT mec.meter_consumption('t04-null-t', '7e570000-0004-4000-8000-000000000101', 'm_other', 1, p_occurred_at => NULL)$$
    ]) AS q),
    '["22023", "22023", "22023", "22023", "22023"]'::jsonb,
    'NULL key, account, resource, quantity or occurred_at: 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-status', '7e570000-0004-4000-8000-000000000101', 'm_other', 1, p_http_status => 99)$$,
    '22023', NULL, 'an HTTP status outside 100-599: 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-future', '7e570000-0004-4000-8000-000000000101', 'm_other', 1, p_occurred_at => now() + interval '1 day')$$,
    '22023', NULL, 'an event in the future: 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-late', '7e570000-0004-4000-8000-000000000101', 'm_other', 1, p_occurred_at => now() - interval '61 days')$$,
    '22023', NULL, 'an event older than late_event_days: 22023');
SELECT throws_ok($$SELECT mec.meter_consumption('t04-bad-meta', '7e570000-0004-4000-8000-000000000101', 'm_other', 1, p_metadata => '[1]')$$,
    '22023', NULL, 'metadata that is not an object: 22023');
SELECT is(pg_temp.state(), (SELECT s FROM snap WHERE k = 'before_bad'), 'none of the bad calls changed anything');

-- A malformed timestamp in a batch (a non-ASCII offset) rejects that event with 22023; it does
-- not fail the whole call.
SELECT is(
    (SELECT jsonb_build_object('rejected', r -> 'rejected', 'code', r #> '{results,0,error,code}')
       FROM (SELECT mec.meter_consumption_batch(jsonb_build_array(jsonb_build_object(
                 'idempotency_key', 't04-batch-tz', 'account_id', '7e570000-0004-4000-8000-000000000101',
                 'resource_type', 'm_hard', 'quantity', 1, 'occurred_at', '2026-01-01T00:00:00+0é00'))) AS r) b),
    '{"rejected": 1, "code": "22023"}'::jsonb,
    'a batch event with a malformed occurred_at is rejected with 22023, the call itself succeeds');

-- Quantities are stored as the numerics their text names: whole ones with scale 0 (made without a
-- text round trip), fractions through numeric_in.
DO $$ BEGIN
    PERFORM mec.meter_consumption('t04-num-a-whole', '7e570000-0004-4000-8000-000000000101', 'm_unlimited', 3);
    PERFORM mec.meter_consumption('t04-num-b-frac', '7e570000-0004-4000-8000-000000000101', 'm_unlimited', 2.50);
    PERFORM mec.meter_consumption('t04-num-c-big', '7e570000-0004-4000-8000-000000000101', 'm_unlimited', 90000000000000000);
END $$;
SELECT is(
    (SELECT string_agg(quantity::text || ':' || scale(quantity), ',' ORDER BY idempotency_key)
       FROM mec_data.consumption WHERE idempotency_key LIKE 't04-num-%'),
    '3:0,2.5:1,90000000000000000:0',
    'quantities are stored exactly, whole ones with scale 0');
SELECT is(
    (SELECT quantity_used - lag(quantity_used) OVER (ORDER BY idempotency_key)
       FROM mec_data.consumption WHERE idempotency_key LIKE 't04-num-%' ORDER BY idempotency_key OFFSET 2),
    90000000000000000::numeric,
    'the running total counts a quantity near the largest exactly');

-- Results are built as jsonb directly: the same value jsonb_in makes of their text, keys in
-- jsonb's order (so every key is found).
SELECT is(
    (SELECT r FROM (SELECT mec.meter_consumption('t04-num-a-whole', '7e570000-0004-4000-8000-000000000101', 'm_unlimited', 3) AS r) x),
    (SELECT r::text::jsonb FROM (SELECT mec.meter_consumption('t04-num-a-whole', '7e570000-0004-4000-8000-000000000101', 'm_unlimited', 3) AS r) x),
    'a result is the jsonb its own text reads as');
SELECT is(
    (SELECT array_agg(k ORDER BY k) FILTER (WHERE r ? k)
       FROM (SELECT mec.meter_consumption('t04-num-a-whole', '7e570000-0004-4000-8000-000000000101', 'm_unlimited', 3) AS r) x,
            jsonb_object_keys(r) AS k),
    (SELECT array_agg(k ORDER BY k)
       FROM (SELECT mec.meter_consumption('t04-num-a-whole', '7e570000-0004-4000-8000-000000000101', 'm_unlimited', 3) AS r) x,
            jsonb_object_keys(r) AS k),
    'every key of a result is found by ?');

SELECT * FROM finish();
ROLLBACK;
