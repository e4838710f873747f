-- STRIPE_METER (counters/stripes.rs): meters on this backend's stripe of a hot counter, within
-- the quota slot 0 granted the stripe, and records the event with the counter's total.
--   $1..$8  ns, key, account_id, resource_type, quantity, occurred_at, period_start, period_end
--   $9      slot: this backend's stripe
--   $10     limit: the limit in force (the quota must have been granted under it)
--   $11     http_status   $12  metadata (NULL: '{}')
--   $13     bound: the most one counter row holds (pg_mec_core::quantity::counter_ceiling)
--   $14     dimensions (NULL: none)
WITH upd AS (
    UPDATE mec_data.usage_counters
       SET used = used + $5, updated_at = clock_timestamp()
     WHERE namespace_id = $1 AND account_id = $3 AND resource_type = $4
       AND period_start = $7 AND slot = $9
       AND (quota IS NULL OR used + $5 <= quota)
       -- no row passes pg_mec's bound, unbounded stripes neither
       AND used + $5 <= $13
       -- the quota was granted under the limit in force now (limits change with time: grants
       -- expire, scheduled plans start); otherwise fold and decide on slot 0
       AND EXISTS (SELECT 1 FROM mec_data.usage_counters h
                    WHERE h.namespace_id = $1 AND h.account_id = $3 AND h.resource_type = $4
                      AND h.period_start = $7 AND h.slot = 0 AND h.striped
                      AND h.stripe_limit IS NOT DISTINCT FROM $10::numeric)
    RETURNING used
), total AS (
    SELECT upd.used + (SELECT coalesce(sum(c.used), 0) FROM mec_data.usage_counters c
                        WHERE c.namespace_id = $1 AND c.account_id = $3 AND c.resource_type = $4
                          AND c.period_start = $7 AND c.slot <> $9) AS used
      FROM upd
), ins AS (
    INSERT INTO mec_data.consumption
           (namespace_id, idempotency_key, consumption_id, account_id, resource_type, quantity,
            occurred_at, period_start, period_end, billable, overage, overage_quantity,
            quantity_used, quantity_allowed, http_status, metadata, dimensions)
    SELECT $1, $2, gen_random_uuid(), $3, $4, $5, $6, $7, $8, true,
           false, 0, total.used, $10, $11, coalesce($12, '{}'), $14
      FROM total
    ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
    RETURNING consumption_id
)
SELECT (SELECT used FROM total) AS used, (SELECT consumption_id FROM ins) AS consumption_id
