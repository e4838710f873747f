-- Records the alert crossings of one usage event ($2: one row per crossed threshold) exactly once
-- (the primary key of alert_crossings), and for each one recorded now its webhook event, its
-- deliveries and a NOTIFY mec_alerts (sent when the transaction commits). A concurrent transaction
-- recording the same crossing makes this one wait for it, then record nothing if it committed.
WITH c AS (
    SELECT * FROM jsonb_to_recordset($2) AS c(
        account_id uuid, resource_type text, period_start timestamptz, period_end timestamptz,
        event_type text, threshold numeric, quantity_limit numeric, quantity_used numeric,
        consumption_id uuid, event_id uuid, payload jsonb)
), ins AS (
    INSERT INTO mec_data.alert_crossings
           (namespace_id, account_id, resource_type, period_start, event_type, threshold, period_end,
            quantity_limit, quantity_used, consumption_id, event_id)
    SELECT $1, account_id, resource_type, period_start, event_type, threshold, period_end,
           quantity_limit, quantity_used, consumption_id, event_id
      FROM c
    ON CONFLICT DO NOTHING
    RETURNING event_id
), ev AS (
    INSERT INTO mec_data.webhook_events (namespace_id, event_id, event_type, account_id, payload)
    SELECT $1, c.event_id, c.event_type, c.account_id, c.payload
      FROM c JOIN ins USING (event_id)
    RETURNING event_id, event_type
), dl AS (
    INSERT INTO mec_data.webhook_deliveries (namespace_id, event_id, endpoint_id)
    SELECT $1, ev.event_id, e.endpoint_id
      FROM ev JOIN mec_data.webhook_endpoints e
        ON e.namespace_id = $1 AND e.enabled
       AND (cardinality(e.event_types) = 0 OR ev.event_type = ANY (e.event_types))
    RETURNING 1
), notified AS (
    -- ids only: any role may LISTEN, so the message says which event, not whose usage
    SELECT pg_notify('mec_alerts', json_build_object(
               'namespace_id', $1, 'type', ev.event_type,
               'webhook_id', 'msg_' || replace(ev.event_id::text, '-', ''))::text)
      FROM ev
)
SELECT coalesce((SELECT jsonb_agg(event_id::text) FROM ins), '[]') AS recorded,
       (SELECT count(*) FROM notified) AS notified,
       (SELECT count(*) FROM dl) AS deliveries
