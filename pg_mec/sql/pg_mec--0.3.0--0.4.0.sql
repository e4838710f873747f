-- pg_mec 0.3.0 -> 0.4.0: exact rate windows that write no WAL (issue 14; docs/CONTRACT.md).
--   * mec_data.rate_windows and mec_data.rate_entries (UNLOGGED): the sliding log of each rate
--     window. They start empty: the first event of each window builds it from the ledger.
--   * Rate resources no longer count in mec_data.usage_counters; the rows they had there are left
--     as they were (nothing reads them any more).
-- Kept equal to a fresh 0.4.0 install by tests/upgrade/test_extension_upgrade.py.
\echo Use "ALTER EXTENSION pg_mec UPDATE TO '0.4.0'" to load this file. \quit

-- ---------------------------------------------------------------- rate windows (sql/schema.sql)
CREATE UNLOGGED TABLE mec_data.rate_windows (
    namespace_id uuid        NOT NULL,
    account_id   uuid        NOT NULL,
    counter      text        NOT NULL,
    -- every quantity counted since the window was built
    total        numeric     NOT NULL DEFAULT 0,
    -- the running total of the entries dropped (at or before kept_from)
    base         numeric     NOT NULL DEFAULT 0,
    -- entries after this instant are all kept; earlier events are summed from the ledger
    kept_from    timestamptz NOT NULL,
    -- entries numbered so far (rate_entries.seq)
    seq          bigint      NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, account_id, counter)
);
CREATE UNLOGGED TABLE mec_data.rate_entries (
    namespace_id uuid        NOT NULL,
    account_id   uuid        NOT NULL,
    counter      text        NOT NULL,
    at           timestamptz NOT NULL,
    -- in the order entries of the window came: among entries at one instant, a later one has the
    -- larger running total, so (at, seq) orders cum
    seq          bigint      NOT NULL,
    quantity     numeric     NOT NULL,
    cum          numeric     NOT NULL,
    PRIMARY KEY (namespace_id, account_id, counter, at, seq)
);

-- ---------------------------------------------------------------- row-level security (sql/rls.sql)
DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rate_windows', 'rate_entries']
    LOOP
        EXECUTE format('ALTER TABLE mec_data.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE mec_data.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON mec_data.%I AS RESTRICTIVE
                           USING (namespace_id = mec.current_namespace())
                           WITH CHECK (namespace_id = mec.current_namespace())$p$, t);
        EXECUTE format('CREATE POLICY namespace_staff ON mec_data.%I TO mec_service USING (true) WITH CHECK (true)', t);
        EXECUTE format('CREATE POLICY pg_mec_functions ON mec_data.%I TO mec_owner USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$rls$;

-- ---------------------------------------------------------------- privileges (sql/grants.sql)
REVOKE ALL ON mec_data.rate_windows, mec_data.rate_entries FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON mec_data.rate_windows, mec_data.rate_entries TO mec_owner;

-- ---------------------------------------------------------------- a ledger fix
-- Events metered under no limit (quantity_allowed NULL: unlimited, and rate resources before
-- 0.4.0) recorded their whole quantity as overage_quantity (least() skips a NULL limit) while
-- overage was false. Nothing is over no limit: those rows say 0 now, as the metering does.
UPDATE mec_data.consumption SET overage_quantity = 0
 WHERE quantity_allowed IS NULL AND overage_quantity <> 0;
