//! Usage counters: one row per account × resource × period start (slot 0). The primitives that
//! metering, reservations and corrections share.

use pg_mec_core::period::Window;
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, DatumWithOid, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;

use crate::pg::spi::{self, stmt};
use crate::pg::values::{timestamptz, to_decimal, to_numeric};
use crate::pg::MecResult;

/// The counter name of the usage of `resource` carrying `value` of `dimension`. No resource type
/// contains `@`, so it never names a resource's own counter.
pub fn scoped_name(resource: &str, dimension: &str, value: &str) -> String {
    format!("{resource}@{dimension}={value}")
}

/// Which counter: an account's resource in one period.
pub struct CounterKey<'a> {
    pub account_id: Uuid,
    pub resource_type: &'a str,
    pub window: Window,
}

stmt! {
    static CREATE: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, period_end: timestamptz) =
        "INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start, slot, period_end)
              VALUES ($1, $2, $3, $4, 0, $5)
              ON CONFLICT DO NOTHING
              RETURNING true";
}

stmt! {
    static ADD: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, delta: numeric) =
        "UPDATE mec_data.usage_counters SET used = used + $5, updated_at = now()
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0
              RETURNING used";
}

stmt! {
    static HOLD: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, quantity: numeric, ceiling: numeric) =
        "UPDATE mec_data.usage_counters SET used = used + $5, updated_at = now(), has_holds = true
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0
                AND ($6::numeric IS NULL OR used + $5 <= $6) AND NOT striped
              RETURNING used";
}

stmt! {
    static SWEEP_EXPIRED_HOLDS: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, except_id: uuid) =
        "WITH gone AS (
                  UPDATE mec_data.reservations SET state = 'expired', settled_at = now()
                  WHERE ctid IN (SELECT ctid FROM mec_data.reservations
                                 WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                                   AND period_start = $4 AND state = 'held' AND expires_at <= clock_timestamp()
                                   AND reservation_id IS DISTINCT FROM $5
                                 FOR UPDATE SKIP LOCKED)
                  RETURNING quantity)
              UPDATE mec_data.usage_counters
                 SET used = used - (SELECT sum(quantity) FROM gone), updated_at = now()
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0
                AND EXISTS (SELECT 1 FROM gone)
              RETURNING used";
}

stmt! {
    static HELD: read (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz) =
        "SELECT coalesce(sum(quantity), 0) AS held FROM mec_data.reservations
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4
                AND state = 'held'";
}

impl<'a> CounterKey<'a> {
    /// `$1..$4` of every counter statement: namespace, account, resource, period start; with
    /// `with_end`, `$5` is the period end.
    pub fn args(&self, ns: Uuid, with_end: bool) -> Vec<DatumWithOid<'a>> {
        let start: TimestampWithTimeZone = timestamptz(self.window.start_us);
        let mut args: Vec<DatumWithOid<'a>> = vec![
            ns.into(),
            self.account_id.into(),
            self.resource_type.into(),
            start.into(),
        ];
        if with_end {
            let end: Option<TimestampWithTimeZone> = self.window.end_us.map(timestamptz);
            args.push(end.into());
        }
        args
    }

    /// Creates the counter row if missing; true when this call created it.
    pub fn create(&self, client: &mut SpiClient<'_>, ns: Uuid) -> MecResult<bool> {
        let rows = spi::write(client, &CREATE, &self.args(ns, true))?;
        Ok(!rows.is_empty())
    }

    /// Adds `delta` (either sign) without a limit check: undoing, cancelling, correcting.
    pub fn add(
        &self,
        client: &mut SpiClient<'_>,
        ns: Uuid,
        delta: Decimal,
    ) -> MecResult<Option<Decimal>> {
        let mut args = self.args(ns, false);
        args.push(to_numeric(delta).into());
        let used = spi::write(client, &ADD, &args)?.one::<AnyNumeric>()?;
        used.as_ref().map(to_decimal).transpose()
    }

    /// Adds `qty` if the total stays within `ceiling` (None = no ceiling), under the row lock.
    /// Returns the new total, or None when refused, when the row does not exist, or while the
    /// counter is striped (fold it first: then slot 0 holds the exact total).
    pub fn hold(
        &self,
        client: &mut SpiClient<'_>,
        ns: Uuid,
        qty: Decimal,
        ceiling: Option<Decimal>,
    ) -> MecResult<Option<Decimal>> {
        let mut args = self.args(ns, false);
        args.extend([to_numeric(qty).into(), ceiling.map(to_numeric).into()]);
        let used = spi::write(client, &HOLD, &args)?.one::<AnyNumeric>()?;
        used.as_ref().map(to_decimal).transpose()
    }

    /// What this counter's held reservations (live or expired, not yet settled or swept) add to
    /// it: the counter less this is the recorded usage. Exact while the caller holds the counter's
    /// row lock, as every change of a hold also takes it.
    pub fn held(&self, client: &SpiClient<'_>, ns: Uuid) -> MecResult<Decimal> {
        let held = spi::read(client, &HELD, &self.args(ns, false))?.one::<AnyNumeric>()?;
        Ok(held
            .as_ref()
            .map(to_decimal)
            .transpose()?
            .unwrap_or_default())
    }

    /// Gives back the quota of this counter's reservations that expired; true when any did.
    /// A write decides and reports on the counter only after this: an expired hold no longer
    /// counts for reads, so it must not for writes either (`except`: a reservation the caller has
    /// locked and is settling, which is not the sweep's to expire).
    pub fn sweep_expired_holds(
        &self,
        client: &mut SpiClient<'_>,
        ns: Uuid,
        except: Option<Uuid>,
    ) -> MecResult<bool> {
        let mut args = self.args(ns, false);
        args.push(except.into());
        let rows = spi::write(client, &SWEEP_EXPIRED_HOLDS, &args)?;
        Ok(!rows.is_empty())
    }
}
