//! Per-backend caching of what rarely changes (entitlements, resource types, account anchors),
//! kept fresh by PostgreSQL's own invalidation messages, the way its catalog caches are.
//!
//! A statement-level trigger on each table the caches read (`sql/cache.sql`) calls
//! `CacheInvalidateRelcacheByRelid` for `mec_data.cache_signal`, a sequence that exists only to
//! carry these messages: no plan depends on it and neither VACUUM nor ANALYZE touches it, so
//! nothing but a real change starts a new epoch. PostgreSQL queues the message with the
//! transaction: the writing backend processes it at its next command, every other backend when
//! the transaction has committed (at its next transaction start or lock acquisition), and an
//! aborted transaction's messages undo what the writer cached meanwhile. Each backend's callback
//! bumps [`epoch`]; a cache compares the epoch it was filled under with the current one.
//!
//! The callback only touches a `Cell`, so it can neither fail nor re-enter a cache that is in use.

use std::cell::Cell;

use pgrx::pg_sys;

/// The relation whose invalidation messages start a new epoch (schema `mec_data`).
const SIGNAL: &std::ffi::CStr = c"cache_signal";

thread_local! {
    static EPOCH: Cell<u64> = const { Cell::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// The signal relation's oid; invalid until looked up (and again after it was dropped).
    static SIGNAL_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// Invalidation callback: a message for the signal relation, or a reset of the whole relcache
/// (`InvalidOid`, e.g. after the invalidation queue overflowed), starts a new epoch. The oid is
/// looked up again afterwards, so a dropped and re-created extension is followed too.
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || relid == SIGNAL_OID.with(Cell::get) {
        EPOCH.with(|e| e.set(e.get().wrapping_add(1)));
        SIGNAL_OID.with(|o| o.set(pg_sys::InvalidOid));
    }
}

/// Registers [`on_relcache_invalidation`] once per backend: before any oid is cached, so that a
/// dropped signal relation (DROP EXTENSION) is never used again by its old oid.
fn register_callback() {
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
}

/// The signal relation's oid, looked up when not known (normal transaction context only).
fn signal_oid() -> pg_sys::Oid {
    register_callback();
    let known = SIGNAL_OID.with(Cell::get);
    if known != pg_sys::InvalidOid {
        return known;
    }
    // SAFETY: catalog lookups by name in a transaction; InvalidOid when absent.
    let oid = unsafe {
        let schema = pg_sys::get_namespace_oid(c"mec_data".as_ptr(), true);
        pg_sys::get_relname_relid(SIGNAL.as_ptr(), schema)
    };
    SIGNAL_OID.with(|o| o.set(oid));
    // Whatever was cached before the oid was known belongs to an older epoch.
    EPOCH.with(|e| e.set(e.get().wrapping_add(1)));
    oid
}

/// The current epoch, after taking in every invalidation message queued so far (PostgreSQL
/// would otherwise take them in only at the next transaction start or new lock, and a long
/// transaction or a batch would keep using entries another backend's commit made stale; the
/// call costs a shared-counter read when nothing is queued). Registers the callback on first use
/// in this backend and looks up the signal relation when it is not known (normal transaction
/// context: catalog access is allowed here, unlike in the callback).
pub fn epoch() -> u64 {
    // SAFETY: processes pending invalidation messages in a transaction, as LockRelationOid does.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    signal_oid();
    EPOCH.with(Cell::get)
}

/// Whether this transaction reads one snapshot throughout (REPEATABLE READ, SERIALIZABLE): what
/// it reads may be older than the epoch, so it must neither fill nor use a cache.
pub fn snapshot_per_transaction() -> bool {
    // SAFETY: reads the isolation level of the current transaction.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as std::ffi::c_int }
}

/// Runs `load` under a snapshot taken now, after [`epoch`] was read, so that what it reads is at
/// least as new as every invalidation that epoch reflects (a read-only SPI statement would
/// otherwise use the calling statement's snapshot, which may be older).
pub fn with_fresh_snapshot<T>(load: impl FnOnce() -> T) -> T {
    // SAFETY: pushes a copy of the latest snapshot and pops it again; if `load` raises a
    // PostgreSQL error, the (sub)transaction abort pops it as part of its cleanup.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let out = load();
    unsafe { pg_sys::PopActiveSnapshot() };
    out
}

/// Queues the invalidation message of the signal relation with this transaction: every
/// backend's caches start a new epoch when it commits (this backend's at its next command).
pub fn signal() {
    let oid = signal_oid();
    if oid != pg_sys::InvalidOid {
        // SAFETY: queues an invalidation message for an existing relation in this transaction.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oid) };
    }
}
