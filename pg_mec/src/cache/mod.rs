//! What rarely changes, kept close: the entitlement in force for an account and resource, looked
//! up once and then answered from this backend's cache and from the cluster's shared cache in
//! shared memory, both kept exact by invalidation messages (`pg::invalidation`).
//!
//! Imports: `pg`.

pub mod entitlement;
pub mod shared;
