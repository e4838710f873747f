//! The operations of the SQL API, one module per contract group: each decides and records what
//! its entry point (`api/`) was asked, with the rooms below.
//!
//! Imports: `events`, `counters`, `ledger`, `cache`, `pg`.

pub mod auth0;
pub mod batch;
pub mod batch_setwise;
pub mod bindings;
pub mod bulk;
pub mod catalog;
pub mod corrections;
pub mod dimensions;
pub mod hierarchy;
pub mod history;
pub mod leases;
pub mod metering;
pub mod namespaces;
pub mod plan_versions;
pub mod policy;
pub mod provisioning;
pub mod reservations;
pub mod retention;
pub mod stripe;
pub mod stripe_usage;
pub mod summary;
pub mod usage_items;
pub mod webhooks;
