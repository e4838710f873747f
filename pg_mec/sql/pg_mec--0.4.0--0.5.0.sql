-- pg_mec 0.4.0 -> 0.5.0: row-level security asks for the caller's namespace once per statement.
--   * Every mec_data table's tenant_isolation policy compares namespace_id with
--     (SELECT mec.current_namespace()) and every user_own_account policy account_id with
--     (SELECT mec.current_account()): an InitPlan, evaluated once per statement, where the bare call
--     was evaluated for every row (and every rescan of a lateral lookup). Which rows each role sees
--     and may write is unchanged (sql/rls.sql).
-- Kept equal to a fresh 0.5.0 install by tests/upgrade/test_extension_upgrade.py.
\echo Use "ALTER EXTENSION pg_mec UPDATE TO '0.5.0'" to load this file. \quit

DO $upgrade$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT c.relname FROM pg_policy p
               JOIN pg_class c ON c.oid = p.polrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'mec_data' AND p.polname = 'tenant_isolation'
    LOOP
        EXECUTE format($p$ALTER POLICY tenant_isolation ON mec_data.%I
                           USING (namespace_id = (SELECT mec.current_namespace()))
                           WITH CHECK (namespace_id = (SELECT mec.current_namespace()))$p$, t);
    END LOOP;
    FOR t IN SELECT c.relname FROM pg_policy p
               JOIN pg_class c ON c.oid = p.polrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'mec_data' AND p.polname = 'user_own_account'
    LOOP
        EXECUTE format($p$ALTER POLICY user_own_account ON mec_data.%I
                           USING (account_id = (SELECT mec.current_account()))$p$, t);
    END LOOP;
END
$upgrade$;
