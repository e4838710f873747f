//! Events pg_mec tells the product about: usage alerts (`alerts.rs`) and the outbox of signed
//! webhooks the gateway delivers (`outbox.rs`). Each is written in the transaction that caused it,
//! so an event exists exactly when its cause committed.
//!
//! Imports: `counters`, `ledger`, `cache`, `pg`.

pub mod alerts;
pub mod outbox;
