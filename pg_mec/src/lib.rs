//! pg_mec — metering, entitlements and controls inside PostgreSQL.
//!
//! `api/` holds the `#[pg_extern]` entry points; the modules beside it hold the logic, and
//! `pg_mec_core` the pure parts (periods, enforcement, catalog validation). DDL, row-level
//! security, views and grants are the `.sql` files of `sql/`, included in order below.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod api;
mod args;
mod batch;
mod bindings;
mod cache;
mod catalog_load;
mod context;
mod corrections;
mod counters;
mod entitlement;
mod errors;
mod jsonb;
mod leases;
mod metering;
mod namespaces;
mod owner;
mod provisioning;
mod reservations;
mod shared_cache;
mod spi;
mod stripes;
mod summary;
mod usage;
mod values;

/// Loaded from `shared_preload_libraries`, pg_mec sets up its shared entitlement cache
/// (`shared_cache.rs`); loaded on first use, it keeps a per-backend cache only.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    shared_cache::init();
}

extension_sql_file!("../../sql/roles.sql", bootstrap);
extension_sql_file!("../../sql/schema.sql", requires = ["roles"]);
extension_sql_file!("../../sql/views.sql", requires = ["schema"]);
extension_sql_file!("../../sql/cache.sql", requires = ["schema"]);
extension_sql_file!(
    "../../sql/rls.sql",
    requires = [
        "views",
        api::namespaces::current_namespace,
        api::namespaces::current_account
    ]
);
extension_sql_file!("../../sql/grants.sql", finalize);

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
