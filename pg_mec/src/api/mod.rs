//! The SQL API: `#[pg_extern]` entry points only, one file per contract group. Each converts its
//! arguments, calls the logic module, and raises any error at this boundary.

pub mod catalog;
pub mod corrections;
pub mod entitlements;
pub mod leases;
pub mod metering;
pub mod namespaces;
pub mod provisioning;
pub mod reservations;
