//! The ledger: the append-only record of what was metered, and what makes every write exactly
//! once — the events as callers send them, the results a replay answers with, the idempotency
//! keys of the administrative calls and the audit log.
//!
//! Imports: `cache`, `pg` (and `pg_mec_core`). Nothing here decides a limit.

pub mod audit;
pub mod event;
pub mod keys;
pub mod replay;
pub mod result;

pub use event::{validate_key, Event};
pub use result::UsageResult;
