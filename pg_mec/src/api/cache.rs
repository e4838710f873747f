//! The triggers that keep pg_mec's caches fresh (`sql/cache.sql`) and the operators' view of the
//! shared cache.

use pgrx::prelude::*;

use crate::cache::shared;
use crate::pg::invalidation;
use crate::pg::jsonb::Jsonb;

/// `mec_data.invalidate_cache(scope)`: the statement-level trigger on the tables the caches read.
/// Queues a relcache invalidation of the signal relation (this backend's and every other
/// backend's cache) and marks the transaction for the shared cache (`cache/shared.rs`): with the
/// argument `rows` (tables whose row trigger [`invalidate_cache_rows`] names the accounts
/// changed) only as a writer, with `bindings` (role bindings, which no shared entry depends on)
/// not at all, otherwise — and for a `TRUNCATE` — as a change to everything, which its commit
/// turns into a new generation. The SQL is in `sql/cache.sql`.
#[pg_trigger(sql = false)]
fn invalidate_cache<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let scope = trigger.extra_args()?.first().cloned();
    let truncate = matches!(trigger.op()?, pgrx::PgTriggerOperation::Truncate);
    match scope.as_deref() {
        // Role bindings: only the per-backend caches that read them (pg/context.rs).
        Some("bindings") => {}
        Some("rows") if !truncate => shared::mark_written(),
        _ => shared::mark_all_changed(),
    }
    invalidation::signal();
    Ok(None)
}

/// `mec_data.invalidate_cache_rows()`: the row-level trigger on `accounts` and `entitlements`.
/// Notes the account of the old and the new row, whose shared-cache entries the transaction's
/// commit makes stale (`cache/shared.rs`); the per-backend caches follow the statement trigger.
#[pg_trigger(sql = false)]
fn invalidate_cache_rows<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    for row in [trigger.old(), trigger.new()].into_iter().flatten() {
        let ids = (
            row.get_by_name::<pgrx::Uuid>("namespace_id"),
            row.get_by_name::<pgrx::Uuid>("account_id"),
        );
        match ids {
            (Ok(Some(ns)), Ok(Some(account))) => {
                shared::mark_account_changed(ns.as_bytes(), account.as_bytes())
            }
            // Not a table this trigger knows: treat the change as everyone's.
            _ => shared::mark_all_changed(),
        }
    }
    Ok(None)
}

/// `mec_data.shared_cache_stats()` (declared in `sql/cache.sql`, for `mec_admin`):
/// `{enabled, slots, generation, sequence, entries, hits, misses, stores}`.
#[pg_extern(sql = false)]
fn shared_cache_stats() -> Jsonb {
    Jsonb(shared::stats())
}
