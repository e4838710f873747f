-- 01_schema_keys: the distribution rule and the security plumbing of the schema.
--   * every PRIMARY KEY, UNIQUE and FOREIGN KEY constraint (and every unique index) of every
--     table of mec_data leads with namespace_id; FKs also reference namespace_id first;
--   * the check finds the keys it claims to check (> 0), and flags a table that breaks the rule;
--   * every mec_data table has RLS enabled and forced; every view of mec is security_invoker.
BEGIN;
SELECT plan(15);

-- Keys of mec_data tables that do not lead with namespace_id (on either side of an FK).
CREATE FUNCTION pg_temp.key_offenders() RETURNS SETOF text LANGUAGE sql STABLE AS $f$
    SELECT format('%s.%s (%s)', c.conrelid::regclass, c.conname, c.contype)
    FROM pg_constraint c
    JOIN pg_class t ON t.oid = c.conrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    WHERE n.nspname = 'mec_data'
      AND c.contype IN ('p', 'u', 'f')
      AND (
            (SELECT attname FROM pg_attribute WHERE attrelid = c.conrelid AND attnum = c.conkey[1])
                IS DISTINCT FROM 'namespace_id'
         OR (c.contype = 'f' AND
             (SELECT attname FROM pg_attribute WHERE attrelid = c.confrelid AND attnum = c.confkey[1])
                IS DISTINCT FROM 'namespace_id')
      )
    ORDER BY 1
$f$;

-- Unique indexes (with or without a constraint) that do not lead with namespace_id.
CREATE FUNCTION pg_temp.unique_index_offenders() RETURNS SETOF text LANGUAGE sql STABLE AS $f$
    SELECT i.indexrelid::regclass::text
    FROM pg_index i
    JOIN pg_class t ON t.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    WHERE n.nspname = 'mec_data' AND i.indisunique
      AND (SELECT attname FROM pg_attribute WHERE attrelid = i.indrelid AND attnum = i.indkey[0])
              IS DISTINCT FROM 'namespace_id'
    ORDER BY 1
$f$;

SELECT cmp_ok(
    (SELECT count(*)::int FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
      WHERE n.nspname = 'mec_data' AND t.relkind IN ('r', 'p')),
    '>=', 13,
    'mec_data holds the pg_mec tables (at least 13)');

SELECT cmp_ok(
    (SELECT count(*)::int FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
      WHERE n.nspname = 'mec_data' AND c.contype IN ('p', 'u', 'f')),
    '>=', 20,
    'the key check sees the PRIMARY KEY, UNIQUE and FOREIGN KEY constraints of mec_data (so it is not vacuous)');

SELECT cmp_ok(
    (SELECT count(*)::int FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
      WHERE n.nspname = 'mec_data' AND c.contype = 'f'),
    '>', 0,
    'the key check sees foreign keys too');

SELECT is(
    (SELECT count(*)::int FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
      WHERE n.nspname = 'mec_data' AND t.relkind IN ('r', 'p')
        AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = t.oid AND c.contype = 'p')),
    0,
    'every mec_data table has a primary key');

SELECT is(
    ARRAY(SELECT pg_temp.key_offenders()), '{}'::text[],
    'every PRIMARY KEY, UNIQUE and FOREIGN KEY of mec_data leads with namespace_id (FKs on both sides)');

SELECT is(
    ARRAY(SELECT pg_temp.unique_index_offenders()), '{}'::text[],
    'every unique index of mec_data leads with namespace_id');

SELECT is(
    ARRAY(SELECT t.relname::text FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
           WHERE n.nspname = 'mec_data' AND t.relkind IN ('r', 'p')
             AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                              WHERE a.attrelid = t.oid AND a.attname = 'namespace_id' AND a.attnotnull
                                AND a.atttypid = 'uuid'::regtype)
           ORDER BY 1),
    '{}'::text[],
    'every mec_data table has a NOT NULL uuid namespace_id column');

SELECT is(
    ARRAY(SELECT t.relname::text FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
           WHERE n.nspname = 'mec_data' AND t.relkind IN ('r', 'p') AND NOT t.relrowsecurity ORDER BY 1),
    '{}'::text[],
    'every mec_data table has row-level security enabled');

SELECT is(
    ARRAY(SELECT t.relname::text FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
           WHERE n.nspname = 'mec_data' AND t.relkind IN ('r', 'p') AND NOT t.relforcerowsecurity ORDER BY 1),
    '{}'::text[],
    'every mec_data table has FORCE ROW LEVEL SECURITY');

SELECT is(
    ARRAY(SELECT t.relname::text FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
           WHERE n.nspname = 'mec_data' AND t.relkind IN ('r', 'p')
             AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid AND NOT p.polpermissive
                              AND pg_get_expr(p.polqual, p.polrelid) LIKE '%current_namespace()%')
           ORDER BY 1),
    '{role_bindings}'::text[],
    'every mec_data table but role_bindings (what decides the namespace) has a restrictive policy pinning rows to mec.current_namespace()');
SELECT is(
    ARRAY(SELECT format('%s %s %s %s', p.polname, p.polcmd, array_to_string(ARRAY(SELECT rolname FROM pg_roles WHERE oid = ANY (p.polroles) ORDER BY 1), ','),
                        pg_get_expr(p.polqual, p.polrelid))
            FROM pg_policy p WHERE p.polrelid = 'mec_data.role_bindings'::regclass),
    ARRAY['own_bindings r mec_owner (role_name = SESSION_USER)'],
    'role_bindings: only mec_owner reads them, and only the session user''s own rows');

SELECT set_eq(
    $$SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'mec' AND c.relkind = 'v'
         AND c.relname IN ('plans', 'accounts', 'entitlements', 'active_entitlements', 'consumption')$$,
    ARRAY['plans', 'accounts', 'entitlements', 'active_entitlements', 'consumption'],
    'the contract views exist in schema mec');

SELECT is(
    ARRAY(SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'mec' AND c.relkind IN ('v', 'm')
             AND NOT coalesce(c.reloptions @> ARRAY['security_invoker=true']
                           OR c.reloptions @> ARRAY['security_invoker=on'], false)
           ORDER BY 1),
    '{}'::text[],
    'every view of mec is security_invoker');

-- The check must fail for a table that breaks the rule (self-test; rolled back with the rest).
CREATE TABLE mec_data.zz_keys_selftest (
    id           int  PRIMARY KEY,
    namespace_id uuid NOT NULL,
    code         text,
    UNIQUE (code, namespace_id)
);
SELECT set_eq(
    $$SELECT * FROM pg_temp.key_offenders()$$,
    ARRAY['mec_data.zz_keys_selftest.zz_keys_selftest_code_namespace_id_key (u)',
          'mec_data.zz_keys_selftest.zz_keys_selftest_pkey (p)'],
    'self-test: the key check flags a primary key and a unique key that do not lead with namespace_id');
DROP TABLE mec_data.zz_keys_selftest;

CREATE TABLE mec_data.zz_fk_selftest (
    namespace_id uuid NOT NULL,
    plan_id      text NOT NULL,
    PRIMARY KEY (namespace_id, plan_id),
    FOREIGN KEY (plan_id, namespace_id) REFERENCES mec_data.plans (plan_id, namespace_id)
);
SELECT set_eq(
    $$SELECT * FROM pg_temp.key_offenders()$$,
    ARRAY['mec_data.zz_fk_selftest.zz_fk_selftest_plan_id_namespace_id_fkey (f)'],
    'self-test: the key check flags a foreign key whose columns do not lead with namespace_id');
DROP TABLE mec_data.zz_fk_selftest;

SELECT * FROM finish();
ROLLBACK;
