//! PostgreSQL plumbing with no business rules: SPI statements, errors and how they are raised,
//! values and arguments, `jsonb` in and out, who is calling (the namespace and its trust),
//! running as `mec_owner`, and the invalidation messages that keep every cache fresh.
//!
//! The bottom room: it imports nothing else of the crate.

pub mod args;
pub mod clock;
pub mod context;
pub mod errors;
pub mod invalidation;
pub mod jsonb;
pub mod owner;
pub mod raise;
pub mod spi;
pub mod subtransaction;
pub mod values;

pub use errors::{MecError, MecResult};
