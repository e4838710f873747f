-- 02_catalog: mec.load_catalog — counts, idempotence (no row touched on a second load),
-- updates, "apply": "now", retired plans, and invalid catalogs (ME422 with every problem and its
-- JSON path in DETAIL; nothing changed).
BEGIN;
SELECT plan(26);

\ir helpers.psql



-- Physical identity of every catalog row of a namespace: an UPDATE (even a no-op one) moves ctid.
CREATE FUNCTION pg_temp.catalog_rows(ns uuid) RETURNS jsonb LANGUAGE sql STABLE AS $f$
    SELECT jsonb_build_object(
        'catalogs',          (SELECT jsonb_agg(ctid::text || digest ORDER BY ctid) FROM mec_data.catalogs WHERE namespace_id = ns),
        'resource_types',    (SELECT jsonb_agg(ctid::text ORDER BY ctid) FROM mec_data.resource_types WHERE namespace_id = ns),
        'plans',             (SELECT jsonb_agg(ctid::text ORDER BY ctid) FROM mec_data.plans WHERE namespace_id = ns),
        'plan_entitlements', (SELECT jsonb_agg(ctid::text ORDER BY ctid) FROM mec_data.plan_entitlements WHERE namespace_id = ns),
        'namespaces',        (SELECT jsonb_agg(ctid::text ORDER BY ctid) FROM mec_data.namespaces WHERE namespace_id = ns),
        'accounts',          (SELECT jsonb_agg(ctid::text ORDER BY ctid) FROM mec_data.accounts WHERE namespace_id = ns),
        'entitlements',      (SELECT jsonb_agg(ctid::text ORDER BY ctid) FROM mec_data.entitlements WHERE namespace_id = ns))
$f$;

CREATE TEMP TABLE cat (name text PRIMARY KEY, doc jsonb NOT NULL);
INSERT INTO cat VALUES
('v1', $j${
  "version": "t02-v1", "currency": "USD", "billable_statuses": ["2xx", 422],
  "resources": [
    {"resource_type": "runs", "kind": "metered", "unit": "run"},
    {"resource_type": "jobs", "kind": "concurrency"},
    {"resource_type": "ai", "kind": "feature"}
  ],
  "plans": [
    {"plan_id": "free", "name": "Free", "default": true,
     "entitlements": {"runs": {"limit": 5, "grace": 0}, "jobs": {"limit": 1}, "ai": false}},
    {"plan_id": "starter", "name": "Starter", "price": {"amount": "29.00", "interval": "month"},
     "stripe_price_id": "price_t02_starter",
     "entitlements": {"runs": {"limit": 100, "enforcement": "capped", "overage_cap": 50},
                      "jobs": {"limit": 2}, "ai": true}}
  ]
}$j$),
-- v2: starter's limit changes, a plan is added.
('v2', $j${
  "version": "t02-v2", "currency": "USD", "billable_statuses": ["2xx", 422],
  "resources": [
    {"resource_type": "runs", "kind": "metered", "unit": "run"},
    {"resource_type": "jobs", "kind": "concurrency"},
    {"resource_type": "ai", "kind": "feature"}
  ],
  "plans": [
    {"plan_id": "free", "name": "Free", "default": true,
     "entitlements": {"runs": {"limit": 5, "grace": 0}, "jobs": {"limit": 1}, "ai": false}},
    {"plan_id": "starter", "name": "Starter", "price": {"amount": "29.00", "interval": "month"},
     "stripe_price_id": "price_t02_starter",
     "entitlements": {"runs": {"limit": 200, "enforcement": "capped", "overage_cap": 50},
                      "jobs": {"limit": 2}, "ai": true}},
    {"plan_id": "pro", "name": "Pro", "entitlements": {"runs": {"limit": 1000}, "jobs": {"limit": 5}, "ai": true}}
  ]
}$j$),
-- v3: as v2 with starter at 300, applied now to every account on the plan.
('v3', $j${
  "version": "t02-v3", "currency": "USD", "billable_statuses": ["2xx", 422], "apply": "now",
  "resources": [
    {"resource_type": "runs", "kind": "metered", "unit": "run"},
    {"resource_type": "jobs", "kind": "concurrency"},
    {"resource_type": "ai", "kind": "feature"}
  ],
  "plans": [
    {"plan_id": "free", "name": "Free", "default": true,
     "entitlements": {"runs": {"limit": 5, "grace": 0}, "jobs": {"limit": 1}, "ai": false}},
    {"plan_id": "starter", "name": "Starter", "price": {"amount": "29.00", "interval": "month"},
     "stripe_price_id": "price_t02_starter",
     "entitlements": {"runs": {"limit": 300, "enforcement": "capped", "overage_cap": 50},
                      "jobs": {"limit": 2}, "ai": true}},
    {"plan_id": "pro", "name": "Pro", "entitlements": {"runs": {"limit": 1000}, "jobs": {"limit": 5}, "ai": true}}
  ]
}$j$),
-- v4: pro is gone (retired).
('v4', $j${
  "version": "t02-v4", "currency": "USD", "billable_statuses": ["2xx", 422],
  "resources": [
    {"resource_type": "runs", "kind": "metered", "unit": "run"},
    {"resource_type": "jobs", "kind": "concurrency"},
    {"resource_type": "ai", "kind": "feature"}
  ],
  "plans": [
    {"plan_id": "free", "name": "Free", "default": true,
     "entitlements": {"runs": {"limit": 5, "grace": 0}, "jobs": {"limit": 1}, "ai": false}},
    {"plan_id": "starter", "name": "Starter", "price": {"amount": "29.00", "interval": "month"},
     "stripe_price_id": "price_t02_starter",
     "entitlements": {"runs": {"limit": 300, "enforcement": "capped", "overage_cap": 50},
                      "jobs": {"limit": 2}, "ai": true}}
  ]
}$j$),
-- Many problems at once (the same mistakes as sql/demo/catalog_invalid.json).
('invalid', $j${
  "version": "2026-11-01",
  "currency": "usd",
  "billable_statuses": ["2xx", "6xx"],
  "resources": [
    { "resource_type": "api_requests", "kind": "rate" },
    { "resource_type": "benchmark_runs", "kind": "meterd", "unit": "run" },
    { "resource_type": "storage_gb", "kind": "gauge", "unit": "GB", "window_seconds": 60 },
    { "resource_type": "storage_gb", "kind": "gauge" },
    { "resource_type": "concurrent_jobs", "kind": "concurrency" },
    { "resource_type": "code_generation", "kind": "feature" }
  ],
  "plans": [
    { "plan_id": "free", "default": true,
      "entitlements": { "concurrent_jobs": { "limit": 1.5 }, "code_generation": { "limit": 1 },
                        "gpu_hours": { "limit": 10 } } },
    { "plan_id": "Pro Plan", "default": true, "price": { "amount": "29,00", "interval": "week" },
      "entitlements": { "concurrent_jobs": { "limit": -2, "enforcment": "soft" }, "code_generation": "yes" } },
    { "plan_id": "growth", "entitlements": { "concurrent_jobs": { "limit": 5, "enforcement": "capped" } } }
  ],
  "alerts": { "thresholds": [0, 80, 100] },
  "apply": "tomorrow"
}$j$),
-- Almost valid: one bad entitlement must keep every good part out too (all or nothing).
('one_bad', $j${
  "version": "t02-bad",
  "resources": [ {"resource_type": "runs", "kind": "metered"}, {"resource_type": "ai", "kind": "feature"} ],
  "plans": [
    {"plan_id": "free", "name": "Free", "entitlements": {"runs": {"limit": 5}, "ai": true}},
    {"plan_id": "team", "name": "Team", "entitlements": {"runs": {"limit": 10, "period": "fortnight"}}}
  ]
}$j$);

DO $$ BEGIN
    PERFORM mec.create_namespace('t02_catalog_a', '7e570000-0002-4000-8000-00000000000a');
    PERFORM mec.create_namespace('t02_catalog_b', '7e570000-0002-4000-8000-00000000000b');
END $$;
SET LOCAL mec.namespace_id = '7e570000-0002-4000-8000-00000000000a';

-- ---------------------------------------------------------------- first load
CREATE TEMP TABLE res (k text PRIMARY KEY, r jsonb);
INSERT INTO res SELECT 'load1', mec.load_catalog(doc) FROM cat WHERE name = 'v1';

SELECT is(
    (SELECT pg_temp.pick(r, 'unchanged', 'plans_created', 'plans_updated', 'plans_unchanged', 'plans_retired',
                         'resources', 'resources_created', 'resources_updated', 'version') FROM res WHERE k = 'load1'),
    '{"unchanged": false, "plans_created": 2, "plans_updated": 0, "plans_unchanged": 0, "plans_retired": 0,
      "resources": 3, "resources_created": 3, "resources_updated": 0, "version": "t02-v1"}'::jsonb,
    'first load: 2 plans and 3 resources created');

SELECT is(
    (SELECT count(*)::int FROM mec.plans WHERE namespace_id = '7e570000-0002-4000-8000-00000000000a'),
    2, 'mec.plans shows the 2 plans');

SELECT is(
    (SELECT entitlements -> 'runs' FROM mec.plans WHERE namespace_id = '7e570000-0002-4000-8000-00000000000a' AND plan_id = 'starter'),
    '{"limit": 100, "period": "month", "enforcement": "capped", "overage_cap": 50, "enabled": true}'::jsonb,
    'mec.plans shows starter''s entitlement as loaded (period defaults to month)');

SELECT is(
    (SELECT (entitlements -> 'ai') ->> 'enabled' FROM mec.plans WHERE namespace_id = '7e570000-0002-4000-8000-00000000000a' AND plan_id = 'free'),
    'false', 'a feature given as false is stored disabled');

SELECT is(
    (SELECT pg_temp.pick(to_jsonb(p), 'is_default', 'price_amount', 'price_interval', 'currency', 'stripe_price_id')
       FROM mec.plans p WHERE namespace_id = '7e570000-0002-4000-8000-00000000000a' AND plan_id = 'starter'),
    '{"is_default": false, "price_amount": 29.00, "price_interval": "month", "currency": "USD",
      "stripe_price_id": "price_t02_starter"}'::jsonb,
    'price, currency and stripe_price_id are stored');

SELECT is(
    (SELECT settings ->> 'default_plan_id' FROM mec_data.namespaces
      WHERE namespace_id = '7e570000-0002-4000-8000-00000000000a'),
    'free', 'the catalog''s default plan becomes the namespace''s default_plan_id');

-- ---------------------------------------------------------------- second load of the same document
CREATE TEMP TABLE snap (k text PRIMARY KEY, s jsonb);
INSERT INTO snap VALUES ('before_reload', pg_temp.catalog_rows('7e570000-0002-4000-8000-00000000000a'));
INSERT INTO res SELECT 'load2', mec.load_catalog(doc) FROM cat WHERE name = 'v1';

SELECT is(
    (SELECT pg_temp.pick(r, 'unchanged', 'plans_created', 'plans_updated', 'plans_unchanged', 'plans_retired',
                         'resources', 'resources_created', 'resources_updated') FROM res WHERE k = 'load2'),
    '{"unchanged": true, "plans_created": 0, "plans_updated": 0, "plans_unchanged": 2, "plans_retired": 0,
      "resources": 3, "resources_created": 0, "resources_updated": 0}'::jsonb,
    'loading the same catalog twice reports unchanged');

SELECT is(
    pg_temp.catalog_rows('7e570000-0002-4000-8000-00000000000a'),
    (SELECT s FROM snap WHERE k = 'before_reload'),
    'loading the same catalog twice touches no row (every ctid unchanged)');

SELECT is(
    (SELECT r ->> 'digest' FROM res WHERE k = 'load2'), (SELECT r ->> 'digest' FROM res WHERE k = 'load1'),
    'the digest of the same document is the same');

-- ---------------------------------------------------------------- changes
INSERT INTO res SELECT 'prov', mec.provision_plan('7e570000-0002-4000-8000-000000000101', 'starter');

INSERT INTO res SELECT 'load_v2', mec.load_catalog(doc) FROM cat WHERE name = 'v2';
SELECT is(
    (SELECT pg_temp.pick(r, 'unchanged', 'plans_created', 'plans_updated', 'plans_unchanged', 'plans_retired',
                         'accounts_reprovisioned') FROM res WHERE k = 'load_v2'),
    '{"unchanged": false, "plans_created": 1, "plans_updated": 1, "plans_unchanged": 1, "plans_retired": 0,
      "accounts_reprovisioned": 0}'::jsonb,
    'a changed catalog: 1 plan created, 1 updated, 1 unchanged');

SELECT is(
    (SELECT (entitlements -> 'runs' ->> 'limit')::numeric FROM mec.plans WHERE namespace_id = '7e570000-0002-4000-8000-00000000000a' AND plan_id = 'starter'),
    200::numeric, 'mec.plans shows the new limit');

SELECT is(
    (mec.check_entitlement('7e570000-0002-4000-8000-000000000101', 'runs') ->> 'quantity_allowed')::numeric,
    100::numeric, 'without "apply": "now", an account keeps its limit until its next provisioning');

INSERT INTO res SELECT 'load_v3', mec.load_catalog(doc) FROM cat WHERE name = 'v3';
SELECT is(
    (SELECT pg_temp.pick(r, 'plans_updated', 'accounts_reprovisioned') FROM res WHERE k = 'load_v3'),
    '{"plans_updated": 1, "accounts_reprovisioned": 1}'::jsonb,
    '"apply": "now" re-provisions the accounts on the changed plan');

SELECT is(
    (mec.check_entitlement('7e570000-0002-4000-8000-000000000101', 'runs') ->> 'quantity_allowed')::numeric,
    300::numeric, 'with "apply": "now", the account has the new limit in the same transaction');

INSERT INTO res SELECT 'load_v4', mec.load_catalog(doc) FROM cat WHERE name = 'v4';
SELECT is(
    (SELECT pg_temp.pick(r, 'plans_retired', 'plans_created') FROM res WHERE k = 'load_v4'),
    '{"plans_retired": 1, "plans_created": 0}'::jsonb,
    'a plan left out of the catalog is retired');

SELECT throws_ok(
    $$SELECT mec.provision_plan('7e570000-0002-4000-8000-000000000102', 'pro')$$,
    'ME400', NULL, 'provisioning a retired plan is ME400');

-- ---------------------------------------------------------------- invalid catalogs
INSERT INTO snap VALUES ('before_invalid', pg_temp.catalog_rows('7e570000-0002-4000-8000-00000000000a'));

SELECT throws_ok(
    format('SELECT mec.load_catalog(%L::jsonb)', (SELECT doc FROM cat WHERE name = 'invalid')),
    'ME422', NULL, 'an invalid catalog is refused with ME422');

CREATE TEMP TABLE invalid_err AS
SELECT pg_temp.err(format('SELECT mec.load_catalog(%L::jsonb)', (SELECT doc FROM cat WHERE name = 'invalid'))) AS e;
CREATE TEMP TABLE problems AS
SELECT p ->> 'path' AS path, p ->> 'message' AS message
FROM invalid_err, jsonb_array_elements((e -> 'detail') -> 'problems') AS p;

SELECT cmp_ok((SELECT count(*)::int FROM problems), '>=', 15,
    'DETAIL {"problems": [...]} lists every problem (at least 15 in this document), not only the first');

SELECT is(
    ARRAY(SELECT unnest(ARRAY['$.currency', '$.billable_statuses[1]', '$.resources[0]', '$.resources[1].kind',
          '$.resources[2].window_seconds', '$.resources[3].resource_type',
          '$.plans[0].entitlements.concurrent_jobs.limit', '$.plans[0].entitlements.gpu_hours',
          '$.plans[1].plan_id', '$.plans[1].price.amount', '$.plans[1].price.interval',
          '$.plans[1].entitlements.concurrent_jobs.enforcment', '$.plans[1].entitlements.concurrent_jobs.limit',
          '$.plans[2].entitlements.concurrent_jobs', '$.alerts.thresholds[0]', '$.apply'])
          EXCEPT SELECT path FROM problems),
    '{}'::text[],
    'each problem is reported at its JSON path');

SELECT is(
    (SELECT count(*)::int FROM problems WHERE path IS NULL OR path NOT LIKE '$%' OR coalesce(message, '') = ''),
    0, 'every problem has a JSON path starting at $ and a message');

SELECT ok(
    (SELECT e ->> 'hint' IS NOT NULL AND e ->> 'message' ~ '\d' FROM invalid_err),
    'the ME422 error has a message with the problem count and a HINT');

SELECT is(
    pg_temp.catalog_rows('7e570000-0002-4000-8000-00000000000a'),
    (SELECT s FROM snap WHERE k = 'before_invalid'),
    'after an invalid load nothing changed (same rows, same digest)');

SELECT is(
    (SELECT pg_temp.pick(pg_temp.err('SELECT mec.load_catalog(''[]''::jsonb)'), 'sqlstate')),
    '{"sqlstate": "ME422"}'::jsonb, 'a catalog that is not an object is ME422');

SELECT throws_ok('SELECT mec.load_catalog(NULL)', '22023', NULL, 'a NULL catalog is 22023');

-- All or nothing on a fresh namespace: the valid parts of an invalid catalog are not applied.
SET LOCAL mec.namespace_id = '7e570000-0002-4000-8000-00000000000b';
SELECT is(
    (SELECT (e ->> 'sqlstate') || ' ' || ((e -> 'detail') -> 'problems' -> 0 ->> 'path')
       FROM (SELECT pg_temp.err(format('SELECT mec.load_catalog(%L::jsonb)', doc)) AS e
               FROM cat WHERE name = 'one_bad') x),
    'ME422 $.plans[1].entitlements.runs.period',
    'one bad value: ME422 naming its path');

SELECT is(
    (SELECT (SELECT count(*) FROM mec_data.resource_types WHERE namespace_id = '7e570000-0002-4000-8000-00000000000b')
          + (SELECT count(*) FROM mec_data.plans WHERE namespace_id = '7e570000-0002-4000-8000-00000000000b')
          + (SELECT count(*) FROM mec_data.catalogs WHERE namespace_id = '7e570000-0002-4000-8000-00000000000b'))::int,
    0, 'all or nothing: none of the valid parts of a refused catalog were applied');

SELECT * FROM finish();
ROLLBACK;
