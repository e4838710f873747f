//! `purge_expired`: retention. Idempotency keys of other operations past the namespace's
//! `key_retention_days`, and ledger detail past its `history_retention_days` (never less than the
//! key retention: a ledger row is also its event's idempotency key), are removed in bounded batches.
//! Ledger rows are rolled up first, per account × resource × UTC day × period × entry type ×
//! billability × dimensions (`mec_data.consumption_rollups`), so totals, day and month history and
//! as-of answers after the horizon do not change. A row Stripe still has to be sent (its outbox
//! event pending or parked) is kept. Counters are not touched: they count periods, not rows.

use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::ledger::audit::audit;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{iso8601, timestamptz};
use crate::pg::{MecError, MecResult};

/// Days of ledger detail kept when the namespace does not say.
pub const DEFAULT_HISTORY_DAYS: i32 = 400;
const DAY_US: i64 = 86_400 * 1_000_000;

stmt! {
    static RETENTION: read (ns: uuid) =
        "SELECT coalesce((settings->>'key_retention_days')::int4, 45) AS keys,
                coalesce((settings->>'history_retention_days')::int4, 400) AS history,
                coalesce((settings->>'late_event_days')::int4, 7) AS late
           FROM mec_data.namespaces WHERE namespace_id = $1";
}

stmt! {
    static PURGE_KEYS: write (ns: uuid, cutoff: timestamptz, batch: int4) =
        "WITH gone AS (
              DELETE FROM mec_data.idempotency_keys k
               WHERE k.ctid IN (SELECT ctid FROM mec_data.idempotency_keys
                                 WHERE namespace_id = $1 AND created_at < $2 LIMIT $3)
              RETURNING 1)
         SELECT count(*)::int8 FROM gone";
}

stmt! {
    /// One batch of ledger rows recorded and occurred before `$2`, rolled up and removed in one
    /// statement (with the Stripe items that carried them, all sent).
    static PURGE_LEDGER: write (ns: uuid, cutoff: timestamptz, batch: int4) =
        "WITH doomed AS (
              DELETE FROM mec_data.consumption c
               WHERE c.namespace_id = $1 AND c.idempotency_key IN (
                     SELECT x.idempotency_key FROM mec_data.consumption x
                      WHERE x.namespace_id = $1 AND x.recorded_at < $2 AND x.occurred_at < $2
                        AND NOT EXISTS (
                              SELECT 1 FROM mec_data.stripe_usage_items i
                                JOIN mec_data.stripe_usage_outbox o
                                  ON o.namespace_id = i.namespace_id AND o.identifier = i.identifier
                               WHERE i.namespace_id = $1 AND i.idempotency_key = x.idempotency_key
                                 AND o.state IN ('pending', 'parked'))
                      LIMIT $3)
              RETURNING c.account_id, c.resource_type, c.occurred_at, c.period_start, c.entry_type,
                        c.billable, coalesce(c.dimensions, '{}') AS dimensions, c.quantity, c.recorded_at,
                        c.idempotency_key),
              rolled AS (
              INSERT INTO mec_data.consumption_rollups AS r
                     (namespace_id, account_id, resource_type, day, period_start, entry_type, billable, dimensions,
                      quantity, events, recorded_until)
              SELECT $1, account_id, resource_type, (occurred_at AT TIME ZONE 'UTC')::date, period_start,
                     entry_type, billable, dimensions, sum(quantity), count(*), max(recorded_at)
                FROM doomed
               GROUP BY account_id, resource_type, (occurred_at AT TIME ZONE 'UTC')::date, period_start,
                        entry_type, billable, dimensions
              ON CONFLICT (namespace_id, account_id, resource_type, day, period_start, entry_type, billable,
                           dimensions)
              DO UPDATE SET quantity = r.quantity + excluded.quantity, events = r.events + excluded.events,
                            recorded_until = greatest(r.recorded_until, excluded.recorded_until)
              RETURNING 1),
              items AS (
              DELETE FROM mec_data.stripe_usage_items i USING doomed d
               WHERE i.namespace_id = $1 AND i.idempotency_key = d.idempotency_key
              RETURNING 1)
         SELECT (SELECT count(*) FROM doomed)::int8 AS rows, (SELECT count(*) FROM rolled)::int8 AS rollups,
                (SELECT count(*) FROM items)::int8 AS items";
}

/// Most rows one call removes of each kind (keys, ledger rows) unless told otherwise.
pub const DEFAULT_BATCH: i32 = 10_000;

pub fn purge(client: &mut SpiClient<'_>, ns: Uuid, before_us: i64, batch: i32) -> MecResult<Value> {
    if !(1..=1_000_000).contains(&batch) {
        return Err(MecError::invalid(format!(
            "p_batch_size must be 1 to 1 000 000, got {batch}"
        )));
    }
    if before_us > crate::pg::clock::now_us() {
        return Err(MecError::invalid("p_before must not be in the future"));
    }
    let (keys_days, history_days, late_days) =
        match spi::read(client, &RETENTION, &[ns.into()])?.first() {
            Some(r) => (
                r.get::<i32>("keys")?.unwrap_or(45),
                r.get::<i32>("history")?.unwrap_or(DEFAULT_HISTORY_DAYS),
                r.get::<i32>("late")?.unwrap_or(7),
            ),
            None => return Err(MecError::NoNamespace),
        };
    let key_cutoff_us = before_us - i64::from(keys_days) * DAY_US;
    // A ledger row is its event's key: it stays as long as a retry of the event could still be
    // accepted (late_event_days, plus a day for the clock tolerance) and the key is kept.
    let ledger_days = history_days.max(keys_days).max(late_days.saturating_add(1));
    let ledger_cutoff_us = before_us - i64::from(ledger_days) * DAY_US;
    let key_cutoff: TimestampWithTimeZone = timestamptz(key_cutoff_us);
    let ledger_cutoff: TimestampWithTimeZone = timestamptz(ledger_cutoff_us);
    let keys = spi::write(
        client,
        &PURGE_KEYS,
        &[ns.into(), key_cutoff.into(), batch.into()],
    )?
    .one::<i64>()?
    .unwrap_or(0);
    let (rows, rollups, items) = match spi::write(
        client,
        &PURGE_LEDGER,
        &[ns.into(), ledger_cutoff.into(), batch.into()],
    )?
    .first()
    {
        Some(r) => (
            r.get::<i64>("rows")?.unwrap_or(0),
            r.get::<i64>("rollups")?.unwrap_or(0),
            r.get::<i64>("items")?.unwrap_or(0),
        ),
        None => (0, 0, 0),
    };
    let more = keys >= i64::from(batch) || rows >= i64::from(batch);
    let result = json!({
        "before": iso8601(before_us),
        "key_cutoff": iso8601(key_cutoff_us),
        "ledger_cutoff": iso8601(ledger_cutoff_us),
        "keys_deleted": keys,
        "ledger_rows_rolled_up": rows,
        "rollup_rows_written": rollups,
        "stripe_items_deleted": items,
        "more": more,
    });
    if keys > 0 || rows > 0 {
        audit(client, ns, "purge_expired", &ns.to_string(), result.clone())?;
    }
    Ok(result)
}
