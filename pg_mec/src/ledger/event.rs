//! One usage event as a caller sent it, checked before anything is read or written.

use pg_mec_core::period::Window;
use pg_mec_core::Decimal;
use pgrx::datum::{DatumWithOid, JsonB, TimestampWithTimeZone, Uuid};
use serde_json::Value;

use crate::pg::values::{timestamptz, to_numeric};
use crate::pg::{MecError, MecResult};

/// Idempotency keys are at most this long (bytes).
const MAX_KEY_LEN: usize = 255;

/// One usage event as the caller sent it.
pub struct Event {
    pub key: String,
    pub account_id: Uuid,
    pub resource_type: String,
    pub quantity: Decimal,
    pub occurred_us: i64,
    pub metadata: Value,
    pub http_status: Option<i32>,
}

impl Event {
    /// The metadata parameter: NULL for the usual empty object (the statements write `'{}'`), so
    /// the common call converts no JSON.
    pub fn metadata_arg(&self) -> DatumWithOid<'static> {
        let empty = self.metadata.as_object().is_some_and(|m| m.is_empty());
        (!empty).then(|| JsonB(self.metadata.clone())).into()
    }

    /// `$1..$8` of every statement that writes a usage row of the ledger: `ns`, `key`,
    /// `account_id`, `resource_type`, `quantity`, `occurred_at`, `period_start`, `period_end`.
    pub fn ledger_args<'a>(&'a self, ns: Uuid, window: &Window) -> Vec<DatumWithOid<'a>> {
        let occurred: TimestampWithTimeZone = timestamptz(self.occurred_us);
        let start: TimestampWithTimeZone = timestamptz(window.start_us);
        let end: Option<TimestampWithTimeZone> = window.end_us.map(timestamptz);
        vec![
            ns.into(),
            self.key.as_str().into(),
            self.account_id.into(),
            self.resource_type.as_str().into(),
            to_numeric(self.quantity).into(),
            occurred.into(),
            start.into(),
            end.into(),
        ]
    }

    /// What can be checked before touching a table: the key, the metadata, the HTTP status.
    pub fn validate(&self) -> MecResult<()> {
        validate_key(&self.key)?;
        if !self.metadata.is_object() {
            return Err(MecError::invalid("p_metadata must be a JSON object"));
        }
        if let Some(s) = self.http_status {
            if !(100..=599).contains(&s) {
                return Err(MecError::invalid(format!(
                    "p_http_status {s} is not an HTTP status (100-599)"
                )));
            }
        }
        Ok(())
    }
}

/// An idempotency key: not blank, at most 255 bytes.
pub fn validate_key(key: &str) -> MecResult<()> {
    if key.trim().is_empty() {
        return Err(MecError::invalid_hint(
            "idempotency key must not be empty",
            "Send a key that identifies the event, e.g. the request id.",
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(MecError::invalid(format!(
            "idempotency key is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(())
}
