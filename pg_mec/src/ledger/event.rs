//! One usage event as a caller sent it, checked before anything is read or written.

use std::collections::BTreeMap;

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
    /// The event's dimensions (`{"model_class": "PRO_L"}`), checked against the resource's
    /// declared ones by ops/dimensions.rs; empty: none.
    pub dimensions: BTreeMap<String, String>,
}

/// Most dimensions one event carries.
const MAX_DIMENSIONS: usize = 16;

/// `p_dimensions` (or an item's or a batch event's `dimensions`): a JSON object of non-empty
/// strings; `null` and `{}` mean none.
pub fn parse_dimensions(v: Option<&Value>, name: &str) -> MecResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let obj = match v {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(MecError::invalid_hint(
                format!("{name} must be a JSON object"),
                "Send dimensions as {\"model_class\": \"PRO_L\"}.",
            ))
        }
    };
    if obj.len() > MAX_DIMENSIONS {
        return Err(MecError::invalid(format!(
            "{name} has {} dimensions; at most {MAX_DIMENSIONS}",
            obj.len()
        )));
    }
    for (k, v) in obj {
        match v {
            Value::String(s) if !s.is_empty() && s.len() <= 255 => {
                out.insert(k.clone(), s.clone());
            }
            _ => {
                return Err(MecError::invalid(format!(
                    "{name}.{k} must be a non-empty string of at most 255 bytes, not {v}"
                )))
            }
        }
    }
    Ok(out)
}

impl Event {
    /// The metadata parameter: NULL for the usual empty object (the statements write `'{}'`), so
    /// the common call converts no JSON.
    pub fn metadata_arg(&self) -> DatumWithOid<'static> {
        let empty = self.metadata.as_object().is_some_and(|m| m.is_empty());
        (!empty).then(|| JsonB(self.metadata.clone())).into()
    }

    /// The dimensions parameter: NULL when the event carries none.
    pub fn dimensions_arg(&self) -> DatumWithOid<'static> {
        (!self.dimensions.is_empty())
            .then(|| JsonB(self.dimensions_json()))
            .into()
    }

    /// The dimensions as the ledger stores them.
    pub fn dimensions_json(&self) -> Value {
        Value::Object(
            self.dimensions
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect(),
        )
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
