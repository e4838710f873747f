//! Usage in the past, from the ledger: `usage_history` (an account's usage of one resource over
//! time — usage events and corrections, bucketed by hour, day or calendar month (UTC) of
//! `occurred_at`, optionally grouped by a dimension or metadata key of the events) and the usage an
//! `as of` answer counts ([`usage_at`]: what was recorded by that instant). Read-only; indexed
//! scans of the account's ledger rows in a range (`consumption_by_account`).

use pgrx::datum::{JsonB, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use pg_mec_core::catalog::Kind;
use pg_mec_core::Decimal;
use pgrx::datum::AnyNumeric;

use crate::cache::entitlement::{self, Effective};
use crate::counters::usage::Usage;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{iso8601, timestamptz, to_decimal, unix_us};
use crate::pg::{MecError, MecResult};

/// Buckets in one answer at most (a year of hours is 8 760).
const MAX_BUCKETS: i64 = 10_000;

stmt! {
    /// The buckets, oldest first (within a bucket by group), and the range's totals.
    static HISTORY: read (ns: uuid, account_id: uuid, resource_type: text, from: timestamptz,
                          to: timestamptz, bucket: text, group_by: text) =
        "WITH rows AS (
              SELECT occurred_at AT TIME ZONE 'UTC' AS at,
                     -- the event's dimension of that name, else its metadata key of that name
                     CASE WHEN $7::text IS NULL THEN NULL ELSE coalesce(dimensions->>$7, metadata->>$7) END AS grp,
                     quantity, billable, entry_type, 1::int8 AS n
                FROM mec_data.consumption
               WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                 AND occurred_at >= $4 AND occurred_at < $5
              UNION ALL
              -- detail purged past the history retention: one row per day (mec.purge_expired)
              SELECT day::timestamp, CASE WHEN $7::text IS NULL THEN NULL ELSE dimensions->>$7 END,
                     quantity, billable, entry_type, events
                FROM mec_data.consumption_rollups
               WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                 AND day >= ($4 AT TIME ZONE 'UTC')::date AND day::timestamp < ($5 AT TIME ZONE 'UTC')),
              b AS (
              SELECT date_trunc($6, at) AS bucket, grp,
                     sum(quantity) AS quantity,
                     coalesce(sum(quantity) FILTER (WHERE billable), 0) AS billable_quantity,
                     coalesce(sum(n) FILTER (WHERE entry_type = 'usage'), 0) AS events,
                     coalesce(sum(n) FILTER (WHERE entry_type = 'adjustment'), 0) AS adjustments
                FROM rows
               GROUP BY 1, 2)
         SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                    'start', to_char(bucket, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    'group', grp, 'quantity', quantity, 'billable_quantity', billable_quantity,
                    'events', events, 'adjustments', adjustments))
                  ORDER BY bucket, grp NULLS FIRST), '[]') AS buckets,
                coalesce(sum(quantity), 0)::text AS total,
                coalesce(sum(billable_quantity), 0)::text AS billable_total
           FROM b";
}

stmt! {
    /// What the ledger held for one counter at `$6`: billable rows of the period recorded by then
    /// (late events and corrections recorded later were not known yet).
    static RECORDED_BY: read (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz,
                              period_end: timestamptz, at: timestamptz) =
        "SELECT coalesce(sum(quantity), 0) AS used, max(recorded) AS updated FROM (
              SELECT quantity, recorded_at AS recorded FROM mec_data.consumption
               WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                 AND occurred_at >= $4 AND ($5::timestamptz IS NULL OR occurred_at < $5)
                 AND period_start = $4 AND billable AND recorded_at <= $6
              UNION ALL
              -- purged detail (mec.purge_expired): a rolled-up day counts once all of it was recorded
              SELECT quantity, recorded_until FROM mec_data.consumption_rollups
               WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                 AND period_start = $4 AND billable AND recorded_until <= $6) u";
}

stmt! {
    /// Leases held at `$4` (by their acquisition and release; a renewal's earlier expiry is not kept).
    static LEASES_AT: read (ns: uuid, account_id: uuid, resource_type: text, at: timestamptz) =
        "SELECT count(*)::int4 AS active, max(acquired_at) AS last_acquired, min(expires_at) AS soonest_expiry
           FROM mec_data.leases
          WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
            AND acquired_at <= $4 AND (released_at IS NULL OR released_at > $4) AND expires_at > $4";
}

fn recorded_by(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    resource: &str,
    window: &pg_mec_core::period::Window,
    at_us: i64,
) -> MecResult<(Decimal, Option<i64>)> {
    let start: TimestampWithTimeZone = timestamptz(window.start_us);
    let end: Option<TimestampWithTimeZone> = window.end_us.map(timestamptz);
    let at: TimestampWithTimeZone = timestamptz(at_us);
    let (used, updated) = spi::read(
        client,
        &RECORDED_BY,
        &[
            ns.into(),
            account.into(),
            resource.into(),
            start.into(),
            end.into(),
            at.into(),
        ],
    )?
    .two::<AnyNumeric, TimestampWithTimeZone>("used", "updated")?;
    Ok((
        used.as_ref()
            .map(to_decimal)
            .transpose()?
            .unwrap_or_default(),
        updated.and_then(|t| unix_us(t).ok()),
    ))
}

/// The usage `eff` limited at `at_us`, as the ledger knew it then (the `as of` answers).
pub fn usage_at(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    eff: &Effective,
    at_us: i64,
) -> MecResult<Usage> {
    let window = eff.window(at_us);
    let resource = eff.resource_type.as_str();
    match eff.kind {
        Kind::Concurrency => {
            let at: TimestampWithTimeZone = timestamptz(at_us);
            let (count, last, soonest) = spi::read(
                client,
                &LEASES_AT,
                &[ns.into(), account.into(), resource.into(), at.into()],
            )?
            .three::<i32, TimestampWithTimeZone, TimestampWithTimeZone>(
                "active",
                "last_acquired",
                "soonest_expiry",
            )?;
            Ok(Usage {
                used: Decimal::from(count.unwrap_or(0)),
                window,
                updated_us: last.and_then(|t| unix_us(t).ok()),
                reset_us: soonest.and_then(|t| unix_us(t).ok()),
            })
        }
        Kind::Rate => {
            // The sliding window from the ledger, as recorded by then.
            let key = crate::counters::usage::rate_key(eff, account);
            let r = crate::counters::rate::ledger_used(client, ns, &key, at_us, Some(at_us))?;
            Ok(Usage {
                used: r.used,
                window,
                updated_us: r.updated_us,
                reset_us: None,
            })
        }
        _ => {
            let (used, updated) = recorded_by(client, ns, account, resource, &window, at_us)?;
            Ok(Usage {
                used,
                window,
                updated_us: updated,
                reset_us: window.end_us,
            })
        }
    }
}

fn bucket_seconds(bucket: &str) -> Option<i64> {
    match bucket {
        "hour" => Some(3_600),
        "day" => Some(86_400),
        "month" => Some(28 * 86_400),
        _ => None,
    }
}

/// Returns `{account_id, resource_type, from, to, bucket, group_by, total, billable_total,
/// buckets: [{start, group?, quantity, billable_quantity, events, adjustments}]}`. Buckets with
/// no rows are left out.
#[allow(clippy::too_many_arguments)]
pub fn usage_history(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    resource: &str,
    from_us: i64,
    to_us: i64,
    bucket: &str,
    group_by: Option<&str>,
) -> MecResult<Value> {
    let Some(len) = bucket_seconds(bucket) else {
        return Err(MecError::invalid_hint(
            format!("p_bucket must be hour, day or month, got \"{bucket}\""),
            "Buckets are UTC hours, days or calendar months of occurred_at.",
        ));
    };
    if to_us <= from_us {
        return Err(MecError::invalid("p_to must be after p_from"));
    }
    if (to_us - from_us) / 1_000_000 / len > MAX_BUCKETS {
        return Err(MecError::invalid_hint(
            format!("the range holds more than {MAX_BUCKETS} {bucket}s"),
            "Ask for a larger p_bucket, or a shorter range.",
        ));
    }
    if group_by.is_some_and(|g| g.trim().is_empty() || g.len() > 100) {
        return Err(MecError::invalid(
            "p_group_by must be a dimension or metadata key of 1 to 100 characters",
        ));
    }
    entitlement::require_exists(client, ns, account, resource)?;
    let from: TimestampWithTimeZone = timestamptz(from_us);
    let to: TimestampWithTimeZone = timestamptz(to_us);
    let row = spi::read(
        client,
        &HISTORY,
        &[
            ns.into(),
            account.into(),
            resource.into(),
            from.into(),
            to.into(),
            bucket.into(),
            group_by.into(),
        ],
    )?
    .first()
    .ok_or_else(|| MecError::Internal("usage history returned no row".into()))?;
    let buckets = row
        .get::<JsonB>("buckets")?
        .map(|j| j.0)
        .unwrap_or(Value::Array(vec![]));
    let number = |text: Option<String>| -> Value {
        text.and_then(|t| t.parse::<pg_mec_core::Decimal>().ok())
            .map(crate::pg::values::num)
            .unwrap_or(Value::from(0))
    };
    Ok(json!({
        "account_id": account.to_string(),
        "resource_type": resource,
        "from": iso8601(from_us),
        "to": iso8601(to_us),
        "bucket": bucket,
        "group_by": group_by,
        "total": number(row.get::<String>("total")?),
        "billable_total": number(row.get::<String>("billable_total")?),
        "buckets": buckets,
    }))
}
