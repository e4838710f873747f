//! `usage_history`: an account's usage of one resource over time, from the ledger — usage events
//! and corrections, bucketed by hour, day or calendar month (UTC) of `occurred_at`, optionally
//! grouped by a key of the events' metadata (e.g. `model_class`). Read-only; one indexed scan of
//! the account's ledger rows in the range (`consumption_by_account`).

use pgrx::datum::{JsonB, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::pg::spi::{self, stmt};
use crate::pg::values::{iso8601, timestamptz};
use crate::pg::{MecError, MecResult};

/// Buckets in one answer at most (a year of hours is 8 760).
const MAX_BUCKETS: i64 = 10_000;

stmt! {
    static EXISTS: read (ns: uuid, account_id: uuid, resource_type: text) =
        "SELECT EXISTS (SELECT 1 FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2) AS account,
                EXISTS (SELECT 1 FROM mec_data.resource_types WHERE namespace_id = $1 AND resource_type = $3) AS resource";
}

stmt! {
    /// The buckets, oldest first (within a bucket by group), and the range's totals.
    static HISTORY: read (ns: uuid, account_id: uuid, resource_type: text, from: timestamptz,
                          to: timestamptz, bucket: text, group_by: text) =
        "WITH b AS (
              SELECT date_trunc($6, occurred_at AT TIME ZONE 'UTC') AS bucket,
                     CASE WHEN $7::text IS NULL THEN NULL ELSE metadata->>$7 END AS grp,
                     sum(quantity) AS quantity,
                     coalesce(sum(quantity) FILTER (WHERE billable), 0) AS billable_quantity,
                     count(*) FILTER (WHERE entry_type = 'usage') AS events,
                     count(*) FILTER (WHERE entry_type = 'adjustment') AS adjustments
                FROM mec_data.consumption
               WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                 AND occurred_at >= $4 AND occurred_at < $5
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
            "p_group_by must be a metadata key of 1 to 100 characters",
        ));
    }
    let (known_account, known_resource) = spi::read(
        client,
        &EXISTS,
        &[ns.into(), account.into(), resource.into()],
    )?
    .two::<bool, bool>("account", "resource")?;
    if known_account != Some(true) {
        return Err(MecError::unknown("account", account.to_string()));
    }
    if known_resource != Some(true) {
        return Err(MecError::unknown("resource type", resource));
    }
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
