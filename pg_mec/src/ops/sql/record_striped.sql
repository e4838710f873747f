-- RECORD_STRIPED (ops/metering.rs): the ledger half of metering a striped (or new) counter, run
-- after METER_SLOT0 in its own statement: its snapshot is taken while this transaction holds
-- slot 0's lock, so no fold can move stripe usage into slot 0 between the two reads, and the
-- total counts every unit once.
--   $1..$15 as METER_PLAIN (meter_plain.sql); $16 slot_used: slot 0's usage after the update
INSERT INTO mec_data.consumption
       (namespace_id, idempotency_key, consumption_id, account_id, resource_type, quantity,
        occurred_at, period_start, period_end, billable, overage, overage_quantity,
        quantity_used, quantity_allowed, http_status, metadata, dimensions)
SELECT $1, $2, $15, $3, $4, $5, $6, $7, $8, true,
       coalesce(t.used > $10, false),
       CASE WHEN $10 IS NULL THEN 0 ELSE greatest(0, least($5, t.used - $10)) END,
       t.used, $10, $12, coalesce($13, '{}'), $14
  FROM (SELECT $16::numeric + coalesce(sum(c.used), 0) AS used
          FROM mec_data.usage_counters c
         WHERE c.namespace_id = $1 AND c.account_id = $3 AND c.resource_type = $4
           AND c.period_start = $7 AND c.slot > 0) t
ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
RETURNING quantity_used, consumption_id
