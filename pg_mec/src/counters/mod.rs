//! Usage counters: one row per account × resource × period (slot 0), plus the stripes of a hot
//! counter; reading usage the way the limits count it.
//!
//! Imports: `ledger`, `cache`, `pg`.

pub mod key;
pub mod stripes;
pub mod usage;

pub use key::CounterKey;
