//! A key seen before: the original answer (`duplicate: true`), or `ME409` for another payload.

use pg_mec_core::enforcement::{Enforcement, Policy};
use pg_mec_core::period::Window;
use pgrx::datum::{AnyNumeric, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::ledger::{Event, UsageResult};
use crate::pg::spi::{self, stmt};
use crate::pg::values::{num, opt_num, to_decimal, unix_us};
use crate::pg::{MecError, MecResult};

stmt! {
    /// The ledger row of an idempotency key.
    static RECORDED: read (ns: uuid, key: text) =
        "SELECT consumption_id, account_id, resource_type, quantity, billable, overage,
                quantity_used, quantity_allowed, period_start, period_end, entry_type,
                coalesce(dimensions, '{}') AS dimensions
           FROM mec_data.consumption
          WHERE namespace_id = $1 AND idempotency_key = $2";
}

/// The original result of `ev.key` with `duplicate: true`; `None` when the key is new; `ME409`
/// when it was recorded with another account, resource, quantity or dimensions, or as a correction.
pub fn replay_if_recorded(
    client: &SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
) -> MecResult<Option<Value>> {
    let Some(row) = spi::read(client, &RECORDED, &[ns.into(), ev.key.as_str().into()])?.first()
    else {
        return Ok(None);
    };
    let decimal = |column: &str| -> MecResult<_> {
        row.get::<AnyNumeric>(column)?
            .as_ref()
            .map(to_decimal)
            .transpose()
    };
    let account = row.get::<Uuid>("account_id")?;
    let resource = row.get::<String>("resource_type")?;
    let quantity = decimal("quantity")?;
    let entry_type = row.get::<String>("entry_type")?;
    let dimensions = row
        .get::<pgrx::JsonB>("dimensions")?
        .map(|j| j.0)
        .unwrap_or_else(|| json!({}));
    if account != Some(ev.account_id)
        || resource.as_deref() != Some(ev.resource_type.as_str())
        || quantity != Some(ev.quantity)
        || entry_type.as_deref() != Some("usage")
        || dimensions != ev.dimensions_json()
    {
        let detail = json!({
            "idempotency_key": ev.key,
            "recorded_entry_type": entry_type,
            "recorded": {"account_id": account.map(|a| a.to_string()), "resource_type": resource, "quantity": opt_num(quantity), "dimensions": dimensions},
            "sent": {"account_id": ev.account_id.to_string(), "resource_type": ev.resource_type, "quantity": num(ev.quantity), "dimensions": ev.dimensions_json()},
        });
        return Err(MecError::IdempotencyConflict {
            key: ev.key.clone(),
            detail: detail.to_string(),
        });
    }
    let instant = |column: &str| -> MecResult<Option<i64>> {
        row.get::<TimestampWithTimeZone>(column)?
            .map(unix_us)
            .transpose()
    };
    let window = Window {
        start_us: instant("period_start")?.unwrap_or_default(),
        end_us: instant("period_end")?,
    };
    let policy = Policy::new(decimal("quantity_allowed")?, Enforcement::Hard);
    let consumption_id = row
        .get::<Uuid>("consumption_id")?
        .ok_or_else(|| MecError::Internal("ledger row without id".into()))?;
    Ok(Some(
        UsageResult {
            consumption_id,
            duplicate: true,
            billable: row.get::<bool>("billable")?.unwrap_or(true),
            overage: row.get::<bool>("overage")?.unwrap_or(false),
            used: decimal("quantity_used")?.unwrap_or_default(),
            policy: &policy,
            window: &window,
            event: ev,
        }
        .to_json(),
    ))
}

/// [`replay_if_recorded`] for a key known to be recorded (an insert just conflicted on it).
pub fn replay(client: &SpiClient<'_>, ns: Uuid, ev: &Event) -> MecResult<Value> {
    replay_if_recorded(client, ns, ev)?.ok_or_else(|| {
        MecError::Internal("idempotency key conflicted but no ledger row is visible".into())
    })
}
