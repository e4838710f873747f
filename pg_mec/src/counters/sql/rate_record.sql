-- RECORD (counters/rate.rs): a rate event's ledger row, keyed for idempotency, and — when the key is
-- new — its entry in the window the caller locked and decided on (rate::lock), in one statement.
-- The window part is APPEND's (counters/rate.rs), gated on the ledger row being new.
--   $1..$8  ns, key, account_id, resource_type, quantity, occurred_at, period_start, period_end
--   $9      quantity_used: the window's usage with the event   $10  quantity_allowed (the limit)
--   $11     http_status   $12  metadata (NULL: '{}')   $13  dimensions (NULL: none)
--   $14     counter: the window's name (the resource)
WITH ins AS (
    INSERT INTO mec_data.consumption
           (namespace_id, idempotency_key, consumption_id, account_id, resource_type, quantity,
            occurred_at, period_start, period_end, billable, quantity_used, quantity_allowed,
            http_status, metadata, dimensions)
    VALUES ($1, $2, gen_random_uuid(), $3, $4, $5, $6, $7, $8, true, $9, $10, $11, coalesce($12, '{}'), $13)
    ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
    RETURNING consumption_id
), head AS (
    SELECT base, kept_from, seq FROM mec_data.rate_windows
     WHERE namespace_id = $1 AND account_id = $3 AND counter = $14 AND EXISTS (SELECT 1 FROM ins)
), shifted AS (
    UPDATE mec_data.rate_entries SET cum = cum + $5
     WHERE namespace_id = $1 AND account_id = $3 AND counter = $14 AND at > $6 AND EXISTS (SELECT 1 FROM ins)
), entry AS (
    INSERT INTO mec_data.rate_entries (namespace_id, account_id, counter, at, seq, quantity, cum)
    SELECT $1, $3, $14, $6, head.seq + 1, $5,
           coalesce((SELECT cum FROM mec_data.rate_entries
                      WHERE namespace_id = $1 AND account_id = $3 AND counter = $14 AND at <= $6
                      ORDER BY at DESC, seq DESC LIMIT 1), head.base) + $5
      FROM head WHERE $6 > head.kept_from
), counted AS (
    UPDATE mec_data.rate_windows
       SET total = total + $5, seq = seq + 1, updated_at = now(),
           base = base + CASE WHEN $6 <= kept_from THEN $5 ELSE 0 END
     WHERE namespace_id = $1 AND account_id = $3 AND counter = $14 AND EXISTS (SELECT 1 FROM ins)
)
SELECT consumption_id FROM ins
