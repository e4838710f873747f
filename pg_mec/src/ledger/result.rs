//! What a recorded usage event answers with: the first time, and on every replay of its key.

use pg_mec_core::enforcement::Policy;
use pg_mec_core::period::Window;
use pg_mec_core::Decimal;
use pgrx::datum::Uuid;
use serde_json::{json, Value};

use crate::ledger::Event;
use crate::pg::values::{num, opt_num, ts_json};

/// The result of `meter_consumption` (and of a batch's event, and of `commit_reservation`):
/// `{consumption_id, duplicate, billable, overage, account_id, resource_type, quantity,
/// quantity_used, quantity_allowed, quantity_remaining, percent_used, period_start, period_end}`.
pub struct UsageResult<'a> {
    pub consumption_id: Uuid,
    /// A replay of a recorded key.
    pub duplicate: bool,
    /// Counted against the quota (an HTTP status outside the billable ones is recorded but not).
    pub billable: bool,
    /// Past the limit (soft or capped enforcement let it through).
    pub overage: bool,
    /// The usage of the period after the event.
    pub used: Decimal,
    /// The limit and enforcement it was decided under (`quantity_allowed`, `remaining`, percent).
    pub policy: &'a Policy,
    pub window: &'a Window,
    pub event: &'a Event,
}

impl UsageResult<'_> {
    pub fn to_json(&self) -> Value {
        json!({
            "consumption_id": self.consumption_id.to_string(),
            "duplicate": self.duplicate,
            "billable": self.billable,
            "overage": self.overage,
            "account_id": self.event.account_id.to_string(),
            "resource_type": self.event.resource_type,
            "quantity": num(self.event.quantity),
            "quantity_used": num(self.used),
            "quantity_allowed": opt_num(self.policy.limit),
            "quantity_remaining": opt_num(self.policy.remaining(self.used)),
            "percent_used": opt_num(self.policy.percent_used(self.used)),
            "period_start": ts_json(Some(self.window.start_us)),
            "period_end": ts_json(self.window.end_us),
        })
    }
}
