-- pg_mec: keeping each backend's entitlement cache fresh (pg_mec/src/pg/invalidation.rs).
--
-- meter_consumption and check_entitlement resolve an account's entitlement from a per-backend
-- cache instead of querying three tables per call. Every statement that changes a table the cache
-- reads queues a relcache invalidation of mec_data.cache_signal; PostgreSQL delivers it to every
-- backend when the transaction commits (and undoes the writer's own cache when it aborts),
-- exactly as it keeps its catalog caches fresh.

-- Carries the messages and nothing else: no plan depends on it and VACUUM / ANALYZE never touch
-- it, so only a real change empties the caches. Never used as a sequence.
CREATE SEQUENCE mec_data.cache_signal;
REVOKE ALL ON SEQUENCE mec_data.cache_signal FROM PUBLIC;
COMMENT ON SEQUENCE mec_data.cache_signal IS
    'pg_mec: its relcache invalidations tell every backend to drop its cached entitlements';
CREATE FUNCTION mec_data.invalidate_cache() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'invalidate_cache_wrapper';
REVOKE ALL ON FUNCTION mec_data.invalidate_cache() FROM PUBLIC;
COMMENT ON FUNCTION mec_data.invalidate_cache() IS
    'Trigger: tells every backend that its cached entitlements are stale (see mec_data.cache_signal).';

CREATE FUNCTION mec_data.invalidate_cache_rows() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'invalidate_cache_rows_wrapper';
REVOKE ALL ON FUNCTION mec_data.invalidate_cache_rows() FROM PUBLIC;
COMMENT ON FUNCTION mec_data.invalidate_cache_rows() IS
    'Trigger: notes which accounts a transaction changed, whose shared cache entries its commit makes stale.';

-- New accounts and resource types need no message: nothing is cached for a lookup that found
-- nothing. Updates count only for the columns the cache reads, so that e.g. renaming an account
-- does not empty every backend's cache.
--
-- Each table gets the statement trigger twice, with the same events: AFTER each such statement
-- (the message, and the shared cache's invalidation when the transaction commits), and BEFORE
-- it, which marks the transaction as a writer from the start, so that a lookup made during the
-- statement itself (a function called from a data-modifying CTE) neither uses nor fills the
-- shared cache (pg_mec/src/cache/shared.rs). On accounts and entitlements (scope 'rows') an AFTER
-- row trigger also notes each changed row's account: the commit makes only those accounts'
-- shared entries stale, so a sign-up or a plan change does not send the whole cluster back to
-- the tables. A change of a resource type, of a namespace's settings, of a plan's entitlements
-- (a catalog load), or a TRUNCATE, makes every entry stale.
--
-- ENABLE ALWAYS: they also fire on a logical-replication subscriber, whose apply worker runs with
-- session_replication_role = replica (ordinary triggers do not fire there).
DO $$
DECLARE
    t record;
    timing text;
BEGIN
    FOR t IN
        SELECT * FROM (VALUES
            ('accounts',       'UPDATE OF namespace_id, account_id, billing_anchor_day, payment_overdue,'
                               ' parent_account_id OR DELETE', 'rows'),
            ('entitlements',   'INSERT OR UPDATE OR DELETE', 'rows'),
            ('resource_types', 'UPDATE OF namespace_id, resource_type, kind, window_seconds, billable_statuses'
                               ' OR DELETE', 'all'),
            -- overdue_action and default_plan_id, and the default plan's rows, which an overdue
            -- account gets under overdue_action = default_plan
            ('namespaces',     'UPDATE OF settings', 'all'),
            ('plan_entitlements', 'INSERT OR UPDATE OR DELETE', 'all')
        ) AS v(tab, events, scope)
    LOOP
        FOREACH timing IN ARRAY ARRAY['AFTER', 'BEFORE'] LOOP
            EXECUTE format(
                'CREATE TRIGGER %I %s %s OR TRUNCATE ON mec_data.%I
                     FOR EACH STATEMENT EXECUTE FUNCTION mec_data.invalidate_cache(%L)',
                CASE timing WHEN 'AFTER' THEN 'invalidate_cache' ELSE 'invalidate_cache_before' END,
                timing, t.events, t.tab, t.scope);
            EXECUTE format('ALTER TABLE mec_data.%I ENABLE ALWAYS TRIGGER %I', t.tab,
                CASE timing WHEN 'AFTER' THEN 'invalidate_cache' ELSE 'invalidate_cache_before' END);
        END LOOP;
        IF t.scope = 'rows' THEN
            EXECUTE format(
                'CREATE TRIGGER invalidate_cache_rows AFTER %s ON mec_data.%I
                     FOR EACH ROW EXECUTE FUNCTION mec_data.invalidate_cache_rows()',
                t.events, t.tab);
            EXECUTE format('ALTER TABLE mec_data.%I ENABLE ALWAYS TRIGGER invalidate_cache_rows', t.tab);
        END IF;
    END LOOP;
END $$;

-- A change of role bindings (mec.bind_role) reaches every backend by the same message: a bound
-- session reads its bindings again (pg_mec/src/pg/context.rs). The shared cache is not touched.
CREATE TRIGGER invalidate_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON mec_data.role_bindings
    FOR EACH STATEMENT EXECUTE FUNCTION mec_data.invalidate_cache('bindings');
ALTER TABLE mec_data.role_bindings ENABLE ALWAYS TRIGGER invalidate_cache;

-- The shared entitlement cache (pg_mec/src/cache/shared.rs), present when pg_mec is in
-- shared_preload_libraries: its state, for operators (granted to mec_admin in grants.sql).
CREATE FUNCTION mec_data.shared_cache_stats() RETURNS jsonb
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'shared_cache_stats_wrapper';
COMMENT ON FUNCTION mec_data.shared_cache_stats() IS
    'pg_mec shared entitlement cache: {enabled, slots, generation, sequence, entries, hits, misses, stores}';
