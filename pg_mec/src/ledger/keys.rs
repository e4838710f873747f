//! Idempotency keys of the administrative calls (`provision_plan`, `set_override`,
//! `grant_credits`): the first call claims its key before it works and stores its result; a
//! replay with the same payload (fingerprint) gets that result with `duplicate: true`, another
//! payload `ME409`. Metering keys live in the ledger itself (`replay.rs`).

use pgrx::datum::{JsonB, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::ledger::validate_key;
use crate::pg::spi::{self, stmt};
use crate::pg::{MecError, MecResult};

stmt! {
    static STORED_RESULT: read (ns: uuid, operation: text, key: text) =
        "SELECT fingerprint, result FROM mec_data.idempotency_keys
          WHERE namespace_id = $1 AND operation = $2 AND idempotency_key = $3";
}

stmt! {
    /// Claims a key before the work: a concurrent call with the same key waits here for the first
    /// to commit, then finds its stored result.
    static CLAIM_KEY: write (ns: uuid, operation: text, key: text, fingerprint: text) =
        "INSERT INTO mec_data.idempotency_keys (namespace_id, operation, idempotency_key, fingerprint, result)
         VALUES ($1, $2, $3, $4, '{}')
         ON CONFLICT (namespace_id, operation, idempotency_key) DO NOTHING
         RETURNING true";
}

stmt! {
    static STORE_RESULT: write (ns: uuid, operation: text, key: text, result: jsonb) =
        "UPDATE mec_data.idempotency_keys SET result = $4
          WHERE namespace_id = $1 AND operation = $2 AND idempotency_key = $3";
}

/// The stored result of an earlier call with `key`, with `duplicate: true`; ME409 when the
/// fingerprint differs.
pub fn stored_result(
    client: &SpiClient<'_>,
    ns: Uuid,
    operation: &str,
    key: &str,
    fingerprint: &str,
) -> MecResult<Option<Value>> {
    let Some(row) = spi::read(
        client,
        &STORED_RESULT,
        &[ns.into(), operation.into(), key.into()],
    )?
    .first() else {
        return Ok(None);
    };
    if row.get::<String>("fingerprint")?.as_deref() != Some(fingerprint) {
        return Err(MecError::IdempotencyConflict {
            key: key.to_string(),
            detail: json!({"operation": operation}).to_string(),
        });
    }
    let mut result = row
        .get::<JsonB>("result")?
        .map(|j| j.0)
        .unwrap_or(Value::Null);
    if let Some(obj) = result.as_object_mut() {
        obj.insert("duplicate".into(), Value::Bool(true));
    }
    Ok(Some(result))
}

/// Claims `key` for this call: `None` to go ahead (then [`store_result`] at the end), or the
/// stored result of an earlier call with the same key (`duplicate: true`; ME409 for another
/// payload).
pub fn claim_key(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    operation: &str,
    key: &str,
    fingerprint: &str,
) -> MecResult<Option<Value>> {
    validate_key(key)?;
    let claimed = spi::write(
        client,
        &CLAIM_KEY,
        &[ns.into(), operation.into(), key.into(), fingerprint.into()],
    )?;
    if !claimed.is_empty() {
        return Ok(None);
    }
    stored_result(client, ns, operation, key, fingerprint)
}

/// Records the result of the call that claimed `key`.
pub fn store_result(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    operation: &str,
    key: &str,
    result: &Value,
) -> MecResult<()> {
    spi::write(
        client,
        &STORE_RESULT,
        &[
            ns.into(),
            operation.into(),
            key.into(),
            JsonB(result.clone()).into(),
        ],
    )?;
    Ok(())
}
