//! The cluster-wide second level of the entitlement cache: a fixed-size table in shared memory,
//! so that a new backend finds the lookups another backend already made instead of warming up
//! from nothing (each fresh connection used to pay ~14 µs per account it met, ~140 ms for 10 000
//! accounts). Present only when pg_mec is in `shared_preload_libraries`; without it every
//! function here answers "no shared cache" and each backend keeps its own cache (`entitlement.rs`).
//!
//! **Freshness.** Every entry carries the stamp it was read under: the generation and the
//! sequence. The triggers on the tables the cache reads (`cache.rs`, `sql/cache.sql`) mark the
//! writing transaction and note which accounts its rows belong to. When that transaction commits
//! — after its changes are visible, before its invalidation messages go out — it takes the next
//! sequence number and raises the *mark* of each account it changed to it (a mark is one of
//! `MARKS` counters an account hashes to), so that entries of those accounts read under an older
//! sequence are never served again, while every other account's entries stay valid: a sign-up or
//! a plan change costs one reload of that account, not of the whole cluster. A change that is
//! not one account's (a resource type, a `TRUNCATE`, a very large statement) bumps the
//! generation instead, and no entry of an older generation is served. A loader reads the stamp
//! *before* it takes its snapshot and tags what it read with it, so a load that raced a commit is
//! tagged as older than that commit and never served. A transaction that
//! changed those tables itself neither reads nor fills the shared table until it ends (it sees
//! rows no one else may see yet; the trigger marks it before its statement too). A hot standby
//! (no triggers run in recovery) never uses the table, and neither does a server that allows
//! prepared transactions (`max_prepared_transactions > 0`): a prepared change commits later, in
//! a backend where no trigger fires, possibly after a restart or a promotion.
//!
//! **Layout.** A header — the generation first, on a cache line of its own and at a fixed
//! offset (so any build of pg_mec loaded later in a backend can still bump it), then the
//! sequence, the layout signature and per-partition counters — then the `MARKS` account marks,
//! then `PARTITIONS` regions of slots, one LWLock each. A
//! key probes `PROBES` slots of its region; a full window evicts one of them. Values are opaque
//! bytes (`entitlement.rs` encodes them); a value too big for a slot is simply not shared.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Bytes of one encoded value.
pub const VALUE_BYTES: usize = 320;
/// Bytes of a resource type name that can be shared (longer names are not).
const RESOURCE_BYTES: usize = 64;
/// Regions, each behind its own LWLock.
const PARTITIONS: usize = 16;
/// Slots a key may occupy in its region.
const PROBES: usize = 8;
/// Account marks: an account's entries are stale once its mark passes their sequence. More
/// marks, fewer accounts sharing one (512 KiB).
const MARKS: usize = 1 << 16;
/// Accounts one transaction notes before it invalidates everything instead (a bulk change).
const MAX_PENDING: usize = 8192;
/// Bumped whenever the header, the slots, the key hash or the value encoding change.
const FORMAT_VERSION: u64 = 2;
/// The header's layout signature: a backend running a build with another layout (possible only
/// if a different `pg_mec.so` is loaded beside the preloaded one) leaves the table alone, but
/// still bumps the generation.
const LAYOUT: u64 = (0x006d_6563 << 40)
    | (FORMAT_VERSION << 32)
    | ((std::mem::size_of::<Header>() as u64) << 16)
    | (std::mem::size_of::<Slot>() as u64);

const SHMEM_NAME: &CStr = c"pg_mec shared entitlement cache";
const TRANCHE: &CStr = c"pg_mec_shared_cache";
const RENDEZVOUS: &CStr = c"pg_mec.shared_cache";

/// `pg_mec.shared_cache_entries`: slots in the shared table (0 turns it off).
static ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(32768);

/// Hits, misses and stores of one partition, on a cache line of their own.
#[repr(C, align(64))]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stores: AtomicU64,
}

#[repr(C)]
struct Header {
    /// Must stay the first field (see the module docs). 0 is never a valid generation.
    generation: Generation,
    /// The last sequence number a commit took; account marks hold such numbers.
    sequence: Generation,
    layout: u64,
    slots_per_partition: u64,
    locks: *mut pg_sys::LWLockPadded,
    counters: [Counters; PARTITIONS],
}

/// A counter alone on its cache line: read by every lookup, written only by commits.
#[repr(C, align(64))]
struct Generation(AtomicU64);

/// When a value was read: the generation and the sequence just before its snapshot was taken.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    generation: u64,
    sequence: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    /// The generation the value was read under; 0 = empty.
    generation: u64,
    /// The sequence the value was read under.
    sequence: u64,
    hash: u64,
    database: u32,
    /// The account's mark (index into the marks).
    mark: u32,
    resource_len: u16,
    value_len: u16,
    namespace: [u8; 16],
    account: [u8; 16],
    resource: [u8; RESOURCE_BYTES],
    value: [u8; VALUE_BYTES],
}

/// What identifies one cached lookup: (namespace, account, resource type) of this database.
pub struct Key<'a> {
    pub namespace: &'a [u8; 16],
    pub account: &'a [u8; 16],
    pub resource: &'a str,
}

/// FNV-1a, continued from `h`: the same in every backend and every build.
fn fnv1a(mut h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The hash of one account of this database (it picks the account's mark): FNV-1a of
/// (database, namespace, account).
fn account_hash(database: u32, namespace: &[u8; 16], account: &[u8; 16]) -> u64 {
    let bytes = database
        .to_le_bytes()
        .into_iter()
        .chain(namespace.iter().copied())
        .chain(account.iter().copied());
    fnv1a(FNV_OFFSET, bytes)
}

fn mark_of(account_hash: u64) -> u32 {
    (account_hash % MARKS as u64) as u32
}

impl Key<'_> {
    /// The account's hash (which picks its mark) and the key's (which picks its slots): FNV-1a
    /// over (database, namespace, account), continued over the resource type.
    fn hashes(&self, database: u32) -> (u64, u64) {
        let account = account_hash(database, self.namespace, self.account);
        (account, fnv1a(account, self.resource.bytes()))
    }

    fn matches(&self, slot: &Slot, hash: u64, database: u32) -> bool {
        slot.hash == hash
            && slot.database == database
            && &slot.namespace == self.namespace
            && &slot.account == self.account
            && slot.resource[..usize::from(slot.resource_len)] == *self.resource.as_bytes()
    }
}

static mut PREV_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

thread_local! {
    /// The header as found through the rendezvous variable: `Some(null)` when there is none.
    static HEADER: Cell<Option<*mut Header>> = const { Cell::new(None) };
    /// This transaction changed a table the cache reads.
    static WROTE: Cell<bool> = const { Cell::new(false) };
    /// ... in a way that is not one account's: its commit bumps the generation.
    static CHANGED_ALL: Cell<bool> = const { Cell::new(false) };
    /// ... for these accounts (their marks): its commit raises their marks.
    static CHANGED_MARKS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static XACT_CALLBACK: Cell<bool> = const { Cell::new(false) };
    /// `max_prepared_transactions > 0`, read once (it is fixed at server start).
    static PREPARED_ALLOWED: Cell<Option<bool>> = const { Cell::new(None) };
}

fn slots_total() -> usize {
    usize::try_from(ENTRIES.get()).unwrap_or(0) / PARTITIONS * PARTITIONS
}

fn shmem_size(slots: usize) -> usize {
    header_bytes() + MARKS * std::mem::size_of::<AtomicU64>() + slots * std::mem::size_of::<Slot>()
}

/// The header rounded up to a cache line, so the slots start aligned.
fn header_bytes() -> usize {
    std::mem::size_of::<Header>().div_ceil(64) * 64
}

/// Called from `_PG_init`: when pg_mec is being preloaded, defines the size setting and asks
/// for the shared memory and locks. Otherwise nothing (the shared table stays off).
pub fn init() {
    // SAFETY: a flag of the postmaster's startup, read in _PG_init.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    GucRegistry::define_int_guc(
        c"pg_mec.shared_cache_entries",
        c"Slots of pg_mec's shared entitlement cache (about 450 bytes each; 0 turns it off).",
        c"Each slot holds one (account, resource type) lookup for every backend of the cluster.",
        &ENTRIES,
        0,
        1 << 22,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    // SAFETY: hooks are chained in the postmaster while it loads libraries, single-threaded.
    unsafe {
        PREV_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_shmem);
        PREV_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_shmem);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn request_shmem() {
    // SAFETY: the previous hook, if any, was installed by another preloaded library.
    unsafe {
        if let Some(prev) = PREV_REQUEST_HOOK {
            prev();
        }
    }
    let slots = slots_total();
    if slots == 0 {
        return;
    }
    // SAFETY: called from shmem_request_hook, where these requests are allowed.
    unsafe {
        pg_sys::RequestAddinShmemSpace(shmem_size(slots));
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), PARTITIONS as i32);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup_shmem() {
    // SAFETY: as in request_shmem.
    unsafe {
        if let Some(prev) = PREV_STARTUP_HOOK {
            prev();
        }
    }
    let slots = slots_total();
    if slots == 0 {
        return;
    }
    // SAFETY: the documented way to create an add-in's shared memory: under AddinShmemInitLock
    // (MainLWLockArray[21] in PostgreSQL 15), ShmemInitStruct, initialize when not found.
    unsafe {
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base = pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), shmem_size(slots), &mut found);
        let header = base.cast::<Header>();
        if !header.is_aligned() {
            // PostgreSQL aligns shared allocations to cache lines; if not, go without the table.
            pg_sys::LWLockRelease(init_lock);
            return;
        }
        if !found {
            std::ptr::write_bytes(base.cast::<u8>(), 0, shmem_size(slots));
            header.write(Header {
                generation: Generation(AtomicU64::new(1)),
                sequence: Generation(AtomicU64::new(1)),
                layout: LAYOUT,
                slots_per_partition: (slots / PARTITIONS) as u64,
                locks: pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr()),
                counters: std::array::from_fn(|_| Counters {
                    hits: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                    stores: AtomicU64::new(0),
                }),
            });
        }
        // Backends forked from here inherit the pointer, also ones that load another build.
        *pg_sys::find_rendezvous_variable(RENDEZVOUS.as_ptr()) = base;
        pg_sys::LWLockRelease(init_lock);
    }
}

/// The shared header, if this cluster has one (whatever build of pg_mec created it).
fn header() -> Option<&'static Header> {
    let ptr = HEADER.with(|h| match h.get() {
        Some(p) => p,
        None => {
            // SAFETY: a per-process rendezvous slot; set by the postmaster before forking us.
            let p = unsafe { *pg_sys::find_rendezvous_variable(RENDEZVOUS.as_ptr()) }.cast();
            h.set(Some(p));
            p
        }
    });
    // SAFETY: shared memory mapped for the life of the process, at the same address everywhere.
    unsafe { ptr.as_ref() }
}

/// Whether the server allows prepared transactions (read once per backend).
fn prepared_transactions_allowed() -> bool {
    PREPARED_ALLOWED.with(|c| {
        if let Some(known) = c.get() {
            return known;
        }
        // SAFETY: reads a GUC's current value; NULL when unknown.
        let p =
            unsafe { pg_sys::GetConfigOption(c"max_prepared_transactions".as_ptr(), true, false) };
        // Unknown or unreadable: assume allowed (the table stays off).
        let allowed = p.is_null()
            || unsafe { CStr::from_ptr(p) }
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .is_none_or(|n| n > 0);
        c.set(Some(allowed));
        allowed
    })
}

/// The header when the table may be read and filled now: present, of this build's layout, no
/// prepared transactions possible, not on a standby, and this transaction has not changed what
/// the cache reads.
fn usable() -> Option<&'static Header> {
    let h = header()?;
    if h.layout != LAYOUT || WROTE.with(Cell::get) || prepared_transactions_allowed() {
        return None;
    }
    // SAFETY: a plain check of the recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return None;
    }
    Some(h)
}

/// The stamp a load should be tagged with, read before the load takes its snapshot; `None` when
/// the shared table may not be used now.
pub fn stamp() -> Option<Stamp> {
    usable().map(|h| Stamp {
        generation: h.generation.0.load(Ordering::Acquire),
        sequence: h.sequence.0.load(Ordering::Acquire),
    })
}

impl Header {
    /// The account marks, right after the header.
    fn marks(&self) -> &[AtomicU64] {
        // SAFETY: MARKS zero-initialized atomics follow the header (see `shmem_size`), mapped
        // for the life of the process.
        unsafe {
            let first = (self as *const Header as *const u8)
                .add(header_bytes())
                .cast::<AtomicU64>();
            std::slice::from_raw_parts(first, MARKS)
        }
    }

    fn mark(&self, mark: u32) -> u64 {
        self.marks()[mark as usize].load(Ordering::Acquire)
    }

    /// Whether a slot's value is still current: read under this generation and not older than
    /// the last committed change of its account.
    fn is_current(&self, slot: &Slot, generation: u64) -> bool {
        slot.generation == generation && self.mark(slot.mark) <= slot.sequence
    }
}

fn partition(hash: u64) -> usize {
    (hash % PARTITIONS as u64) as usize
}

/// The slots of `key`'s region to probe, and the region's lock.
///
/// # Safety
/// `h` is the live header of this layout.
unsafe fn window(h: &Header, hash: u64) -> (*mut Slot, usize, *mut pg_sys::LWLock) {
    let per = h.slots_per_partition as usize;
    let partition = partition(hash);
    let start = ((hash >> 8) % per as u64) as usize;
    // SAFETY: slots follow the header and the marks; the region and lock indexes are in range.
    unsafe {
        let slots = (h as *const Header as *mut u8)
            .add(header_bytes() + MARKS * std::mem::size_of::<AtomicU64>())
            .cast::<Slot>()
            .add(partition * per);
        let lock = &raw mut (*h.locks.add(partition)).lock;
        (slots, start, lock)
    }
}

/// The current value stored for `key`, copied out.
pub fn get(key: &Key<'_>) -> Option<Vec<u8>> {
    let h = usable()?;
    // SAFETY: plain backend state.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let (_, hash) = key.hashes(database);
    let generation = h.generation.0.load(Ordering::Acquire);
    let per = h.slots_per_partition as usize;
    let mut out = None;
    // SAFETY: slots of the region are read under its lock in shared mode; nothing in the loop
    // can raise an error while the lock is held.
    unsafe {
        let (slots, start, lock) = window(h, hash);
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_SHARED);
        for i in 0..PROBES.min(per) {
            let slot = &*slots.add((start + i) % per);
            if key.matches(slot, hash, database) && h.is_current(slot, generation) {
                out = Some(slot.value[..usize::from(slot.value_len)].to_vec());
                break;
            }
        }
        pg_sys::LWLockRelease(lock);
    }
    let counters = &h.counters[partition(hash)];
    let counter = if out.is_some() {
        &counters.hits
    } else {
        &counters.misses
    };
    counter.fetch_add(1, Ordering::Relaxed);
    out
}

/// Stores `value` for `key`, read under `stamp`; dropped when a commit made it stale since (a
/// new generation, or a change of the account), or when the value or the resource name does not
/// fit.
pub fn put(stamp: Stamp, key: &Key<'_>, value: &[u8]) {
    let Some(h) = usable() else { return };
    if value.len() > VALUE_BYTES || key.resource.len() > RESOURCE_BYTES {
        return;
    }
    // SAFETY: plain backend state.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let (account_hash, hash) = key.hashes(database);
    let mark = mark_of(account_hash);
    let per = h.slots_per_partition as usize;
    let probes = PROBES.min(per);
    // SAFETY: the region's slots are written under its lock in exclusive mode; nothing in the
    // block can raise an error while the lock is held.
    unsafe {
        let (slots, start, lock) = window(h, hash);
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let current = h.generation.0.load(Ordering::Acquire);
        if current == stamp.generation && h.mark(mark) <= stamp.sequence {
            let at = |i: usize| slots.add((start + i) % per);
            // The key's own slot, else a free or stale one, else one evicted by the hash.
            let pick = (0..probes)
                .find(|&i| key.matches(&*at(i), hash, database))
                .or_else(|| (0..probes).find(|&i| !h.is_current(&*at(i), current)))
                .unwrap_or(((hash >> 40) % probes as u64) as usize);
            let slot = &mut *at(pick);
            slot.generation = stamp.generation;
            slot.sequence = stamp.sequence;
            slot.hash = hash;
            slot.database = database;
            slot.mark = mark;
            slot.namespace = *key.namespace;
            slot.account = *key.account;
            slot.resource_len = key.resource.len() as u16;
            slot.resource[..key.resource.len()].copy_from_slice(key.resource.as_bytes());
            slot.value_len = value.len() as u16;
            slot.value[..value.len()].copy_from_slice(value);
            h.counters[partition(hash)]
                .stores
                .fetch_add(1, Ordering::Relaxed);
        }
        pg_sys::LWLockRelease(lock);
    }
}

/// Called by the statement triggers: this transaction changes what the cache reads. Until it
/// ends, it leaves the shared table alone; what its commit invalidates is noted by
/// [`mark_account_changed`] and [`mark_all_changed`].
pub fn mark_written() {
    if header().is_none() {
        return;
    }
    if !XACT_CALLBACK.with(Cell::get) {
        // SAFETY: registers a static callback once per backend.
        unsafe { pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut()) };
        XACT_CALLBACK.with(|c| c.set(true));
    }
    WROTE.with(|w| w.set(true));
}

/// This transaction changed something that is not one account's: its commit bumps the
/// generation, and every entry is read again.
pub fn mark_all_changed() {
    if header().is_none() {
        return;
    }
    mark_written();
    CHANGED_ALL.with(|c| c.set(true));
    CHANGED_MARKS.with(|m| m.borrow_mut().clear());
}

/// This transaction changed a row of account `account` of namespace `namespace` (row trigger):
/// its commit makes that account's entries stale. A transaction that changes more than
/// `MAX_PENDING` rows this way bumps the generation instead.
pub fn mark_account_changed(namespace: &[u8; 16], account: &[u8; 16]) {
    if header().is_none() {
        return;
    }
    mark_written();
    if CHANGED_ALL.with(Cell::get) {
        return;
    }
    // SAFETY: plain backend state.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let mark = mark_of(account_hash(database, namespace, account));
    let overflow = CHANGED_MARKS.with(|m| {
        let mut m = m.borrow_mut();
        if m.last() != Some(&mark) {
            m.push(mark);
        }
        m.len() > MAX_PENDING
    });
    if overflow {
        mark_all_changed();
    }
}

/// What a commit makes stale: everything (a new generation, also when another layout's build
/// wrote), or the marks of the accounts it changed (one new sequence number).
fn publish(h: &Header) {
    let marks = CHANGED_MARKS.with(|m| std::mem::take(&mut *m.borrow_mut()));
    if CHANGED_ALL.with(Cell::get) || h.layout != LAYOUT {
        h.generation.0.fetch_add(1, Ordering::AcqRel);
    } else if !marks.is_empty() {
        let sequence = h.sequence.0.fetch_add(1, Ordering::AcqRel) + 1;
        let all = h.marks();
        for mark in marks {
            all[mark as usize].fetch_max(sequence, Ordering::AcqRel);
        }
    }
}

fn forget_changes() {
    WROTE.with(|w| w.set(false));
    CHANGED_ALL.with(|c| c.set(false));
    CHANGED_MARKS.with(|m| m.borrow_mut().clear());
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if !WROTE.with(Cell::get) {
        return;
    }
    match event {
        // After the commit is visible, before its invalidation messages go out. (A PREPARE can
        // only happen where prepared transactions are allowed, and there the table is off.)
        XACT_EVENT_COMMIT | XACT_EVENT_PREPARE => {
            if let Some(h) = header() {
                publish(h);
            }
            forget_changes();
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => forget_changes(),
        _ => {}
    }
}

/// The shared cache's state: whether it is in use, its generation and sequence, slots holding
/// current entries, and hits / misses / stores since the server started.
pub fn stats() -> serde_json::Value {
    let Some(h) = header().filter(|h| h.layout == LAYOUT) else {
        return serde_json::json!({"enabled": false});
    };
    let generation = h.generation.0.load(Ordering::Acquire);
    let per = h.slots_per_partition as usize;
    let mut live = 0u64;
    for p in 0..PARTITIONS {
        // SAFETY: each region is read under its lock in shared mode (`window` of hash `p` is
        // partition `p`).
        unsafe {
            let (slots, _, lock) = window(h, p as u64);
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_SHARED);
            live += (0..per)
                .filter(|&i| h.is_current(&*slots.add(i), generation))
                .count() as u64;
            pg_sys::LWLockRelease(lock);
        }
    }
    let sum = |f: fn(&Counters) -> &AtomicU64| -> u64 {
        h.counters
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .sum()
    };
    // SAFETY: a plain check of the recovery state.
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    serde_json::json!({
        "enabled": !standby && !prepared_transactions_allowed(),
        "slots": per * PARTITIONS,
        "generation": generation,
        "sequence": h.sequence.0.load(Ordering::Acquire),
        "entries": live,
        "hits": sum(|c| &c.hits),
        "misses": sum(|c| &c.misses),
        "stores": sum(|c| &c.stores),
    })
}
