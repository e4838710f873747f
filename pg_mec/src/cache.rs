//! Per-backend caching of what rarely changes (entitlements, resource types, account anchors),
//! kept fresh by PostgreSQL's own invalidation messages, the way its catalog caches are.
//!
//! A statement-level trigger on each watched table (`sql/cache.sql`) calls
//! `CacheInvalidateRelcacheByRelid` for that table. PostgreSQL queues the message with the
//! transaction: the writing backend processes it at its next command, every other backend when
//! the transaction has committed (at its next transaction start or lock acquisition), and an
//! aborted transaction's messages undo what the writer cached meanwhile. Each backend's callback
//! bumps [`epoch`]; a cache compares the epoch it was filled under with the current one.
//!
//! The callback only touches a `Cell`, so it can neither fail nor re-enter a cache that is in use.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::prelude::*;

/// The tables whose changes invalidate the caches (schema `mec_data`).
const WATCHED: [&std::ffi::CStr; 3] = [c"entitlements", c"resource_types", c"accounts"];

thread_local! {
    static EPOCH: Cell<u64> = const { Cell::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// The watched tables' oids; all-invalid until looked up (and again after one was dropped).
    static OIDS: Cell<[pg_sys::Oid; 3]> = const { Cell::new([pg_sys::InvalidOid; 3]) };
}

/// Invalidation callback: any message for a watched table, or a reset of the whole relcache
/// (`InvalidOid`, e.g. after the invalidation queue overflowed), starts a new epoch. The oids are
/// looked up again afterwards, so a dropped and re-created extension is followed too.
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let oids = OIDS.with(Cell::get);
    if relid == pg_sys::InvalidOid || oids.contains(&relid) {
        EPOCH.with(|e| e.set(e.get().wrapping_add(1)));
        OIDS.with(|o| o.set([pg_sys::InvalidOid; 3]));
    }
}

/// The current epoch. Registers the callback on first use in this backend and looks up the
/// watched tables' oids when they are not known (normal transaction context: catalog access is
/// allowed here, unlike in the callback).
pub fn epoch() -> u64 {
    if !REGISTERED.with(Cell::get) {
        // SAFETY: registering a callback with a static function; done once per backend.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(
                Some(on_relcache_invalidation),
                pg_sys::Datum::from(0),
            )
        };
        REGISTERED.with(|r| r.set(true));
    }
    if OIDS.with(Cell::get)[0] == pg_sys::InvalidOid {
        // SAFETY: catalog lookups by name in a transaction; InvalidOid when absent.
        let oids = unsafe {
            let schema = pg_sys::get_namespace_oid(c"mec_data".as_ptr(), true);
            WATCHED.map(|t| pg_sys::get_relname_relid(t.as_ptr(), schema))
        };
        OIDS.with(|o| o.set(oids));
        // Whatever was cached before the oids were known belongs to an older epoch.
        EPOCH.with(|e| e.set(e.get().wrapping_add(1)));
    }
    EPOCH.with(Cell::get)
}

/// `mec_data.invalidate_cache()`: the statement-level trigger on the watched tables. Sends a
/// relcache invalidation for the table it fired on; the SQL is in `sql/cache.sql`.
#[pg_trigger(sql = false)]
fn invalidate_cache<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let relid = trigger.relid()?;
    // SAFETY: queues an invalidation message for an existing relation in this transaction.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(None)
}
