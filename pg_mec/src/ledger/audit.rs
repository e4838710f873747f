//! The audit log: what an operator did, by which role, without personal data.

use pgrx::datum::{JsonB, Uuid};
use pgrx::spi::SpiClient;
use serde_json::Value;

use crate::pg::owner::caller_role;
use crate::pg::spi::{self, stmt};
use crate::pg::MecResult;

stmt! {
    static AUDIT: write (ns: uuid, action: text, subject: text, details: jsonb, actor: text) =
        "INSERT INTO mec_data.audit_log (namespace_id, action, subject, details, actor)
         VALUES ($1, $2, $3, $4, $5)";
}

/// Appends `action` on `subject` with `details`; the actor is the API role that called pg_mec.
pub fn audit(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    action: &str,
    subject: &str,
    details: Value,
) -> MecResult<()> {
    spi::write(
        client,
        &AUDIT,
        &[
            ns.into(),
            action.into(),
            subject.into(),
            JsonB(details).into(),
            caller_role().into(),
        ],
    )?;
    Ok(())
}
