//! Usage counters: one row per account × resource × period (slot 0), plus the stripes of a hot
//! counter; the sliding logs of rate windows; reading usage the way the limits count it.
//!
//! Imports: `ledger`, `cache`, `pg`.

pub mod key;
pub mod rate;
pub mod stripes;
pub mod usage;

pub use key::{scoped_name, CounterKey};
