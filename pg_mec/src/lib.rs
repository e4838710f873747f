//! pg_mec — metering, entitlements and controls inside PostgreSQL.
//!
//! The code lives in rooms, each a folder, each importing only the rooms below it:
//!
//! | room | what |
//! |---|---|
//! | `api/` | every `#[pg_extern]` and `#[pg_trigger]`: arguments in, one entry shape, errors raised |
//! | `ops/` | the operations: metering, batches, reservations, leases, corrections, provisioning, catalog, namespaces, bindings, summaries |
//! | `events/` | what pg_mec tells the product: usage alerts, the outbox of signed webhooks |
//! | `counters/` | usage counters: their keys, hot counters' stripes, reading usage |
//! | `ledger/` | the append-only ledger: events, results and replays, idempotency keys, audit |
//! | `cache/` | the entitlement in force, cached per backend and in shared memory |
//! | `pg/` | PostgreSQL plumbing: SPI statements, errors and raising, values, arguments, jsonb, the caller, `mec_owner`, invalidation |
//!
//! `pg_mec_core` holds the pure parts (periods, enforcement, quantities, catalog validation,
//! entitlements). DDL, row-level security, views and grants are the `.sql` files of `sql/`,
//! included in order below.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

// The rooms, from the top down; each imports only the rooms below it (scripts/dev/check-layers.py).
mod api;
mod cache;
mod counters;
mod events;
mod ledger;
mod ops;
mod pg;

/// Loaded from `shared_preload_libraries`, pg_mec sets up its shared entitlement cache
/// (`cache/shared.rs`); loaded on first use, it keeps a per-backend cache only.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    cache::shared::init();
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
