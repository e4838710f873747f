-- METER_PLAIN (ops/metering.rs): the common case of metering, one statement. An unstriped
-- counter's slot 0 is the whole count: its guarded UPDATE (the row lock serialises callers, so
-- usage never passes the ceiling) feeds the ledger insert, keyed for idempotency.
--   $1..$8  ns, key, account_id, resource_type, quantity, occurred_at, period_start, period_end
--   $9      ceiling: the most the counter may hold (never NULL: pg_mec_core::quantity)
--   $10     overage_from: the limit past which usage is overage (NULL: none)
--   $11     floor: the least the counter may hold (gauges: 0; others NULL)
--   $12     http_status   $13  metadata (NULL: '{}')   $14  dimensions (NULL: none)
--   $15     consumption_id (made by the caller: gen_random_uuid() asks OpenSSL, several times slower)
-- Matches nothing on a striped counter, or on one still counting a reservation that expired
-- (its answer would include the hold, which reads leave out); those take the sweep, METER_SLOT0
-- and RECORD_STRIPED. The reservations are looked at only for a counter that ever held one:
-- `has_holds AND (initplan)` does not run the initplan when has_holds is false.
WITH upd AS (
    UPDATE mec_data.usage_counters
       SET used = used + $5, updated_at = now()
     WHERE namespace_id = $1 AND account_id = $3 AND resource_type = $4
       AND period_start = $7 AND slot = 0 AND NOT striped
       AND ($9::numeric IS NULL OR used + $5 <= $9)
       AND ($11::numeric IS NULL OR used + $5 >= $11)
       AND NOT (has_holds AND EXISTS (
             SELECT 1 FROM mec_data.reservations
              WHERE namespace_id = $1 AND account_id = $3 AND resource_type = $4 AND period_start = $7
                AND state = 'held' AND expires_at <= clock_timestamp()))
    RETURNING used
), ins AS (
    INSERT INTO mec_data.consumption
           (namespace_id, idempotency_key, consumption_id, account_id, resource_type, quantity,
            occurred_at, period_start, period_end, billable, overage, overage_quantity,
            quantity_used, quantity_allowed, http_status, metadata, dimensions)
    SELECT $1, $2, $15, $3, $4, $5, $6, $7, $8, true,
           coalesce(upd.used > $10, false),
           CASE WHEN $10 IS NULL THEN 0 ELSE greatest(0, least($5, upd.used - $10)) END,
           upd.used, $10, $12, coalesce($13, '{}'), $14
      FROM upd
    ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
    RETURNING consumption_id
)
SELECT upd.used, (SELECT consumption_id FROM ins) AS consumption_id FROM upd
