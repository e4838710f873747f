//! Running pg_mec's own statements as `mec_owner`, immune to the caller's `search_path`.
//!
//! The API roles (`mec_user`, `mec_service`, `mec_admin`) may read pg_mec's tables through
//! row-level security but change them only through pg_mec's functions: they hold no INSERT,
//! UPDATE, DELETE or TRUNCATE grant on `mec_data`. While an entry point works, [`AsOwner`] makes
//! `mec_owner` (NOLOGIN, not a superuser, no BYPASSRLS, no members; row-level security applies to
//! it like to anyone) the current user, the way a `SECURITY DEFINER` function switches to its
//! owner, and pins the search path to `pg_catalog` alone, so no name in a statement can resolve to
//! an object the caller put in its own schemas. Both are restored when the guard is dropped, and
//! by PostgreSQL itself when an error aborts the (sub)transaction. See `docs/security.md`.

use std::cell::Cell;

use pgrx::pg_sys;

use crate::pg::{MecError, MecResult};

thread_local! {
    /// `mec_owner`'s oid, looked up once per backend.
    static OWNER: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// The user the innermost [`AsOwner`] switched from: the caller, for the audit log.
    static CALLER: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// The name of the role that called the running entry point (not `mec_owner`), for the audit
/// log; the current user outside an entry point.
pub fn caller_role() -> String {
    let caller = CALLER.with(Cell::get);
    if caller == pg_sys::InvalidOid {
        // SAFETY: reads the current user.
        return role_name(unsafe { pg_sys::GetUserId() });
    }
    role_name(caller)
}

/// A role's name (`oid N` for a role that no longer exists).
pub fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId(noerr) returns a palloc'd name or NULL.
    let p = unsafe { pg_sys::GetUserNameFromId(oid, true) };
    if p.is_null() {
        return format!("oid {}", u32::from(oid));
    }
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

fn owner_oid() -> MecResult<pg_sys::Oid> {
    let known = OWNER.with(Cell::get);
    if known != pg_sys::InvalidOid {
        return Ok(known);
    }
    // SAFETY: a catalog lookup by name in a transaction; InvalidOid when the role is missing.
    let oid = unsafe { pg_sys::get_role_oid(c"mec_owner".as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        return Err(MecError::Internal(
            "role mec_owner does not exist: run ALTER EXTENSION pg_mec UPDATE".into(),
        ));
    }
    OWNER.with(|o| o.set(oid));
    Ok(oid)
}

/// While alive: names resolve in `pg_catalog` only (no schema of the caller's, no `pg_temp`).
#[must_use = "the guard restores the caller's search path when dropped"]
pub struct FixedSearchPath(());

impl FixedSearchPath {
    pub fn enter() -> FixedSearchPath {
        let mut path = pg_sys::OverrideSearchPath {
            schemas: std::ptr::null_mut(),
            addCatalog: true,
            addTemp: false,
            generation: 0,
        };
        // SAFETY: PushOverrideSearchPath copies the path into TopMemoryContext; the
        // (sub)transaction abort of an error pops it.
        unsafe { pg_sys::PushOverrideSearchPath(&mut path) };
        FixedSearchPath(())
    }
}

impl Drop for FixedSearchPath {
    fn drop(&mut self) {
        // While a PostgreSQL error unwinds (pgrx turns it into a panic), the override is left to
        // the abort that follows, which pops it; popping here could raise a second error.
        if !std::thread::panicking() {
            // SAFETY: pops the entry `enter` pushed, at the same transaction nesting level.
            unsafe { pg_sys::PopOverrideSearchPath() };
        }
    }
}

/// While alive: the current user is `mec_owner` and the search path is fixed.
#[must_use = "the guard restores the caller's user and search path when dropped"]
pub struct AsOwner {
    user: pg_sys::Oid,
    sec_context: std::ffi::c_int,
    outer_caller: pg_sys::Oid,
    _path: FixedSearchPath,
}

impl AsOwner {
    pub fn enter() -> MecResult<AsOwner> {
        let owner = owner_oid()?;
        let mut user = pg_sys::InvalidOid;
        let mut sec_context = 0;
        // SAFETY: the pattern of fmgr_security_definer: save the user and security context,
        // switch, restore on the way out (Drop); an error's (sub)transaction abort restores them too.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut user, &mut sec_context);
            pg_sys::SetUserIdAndSecContext(
                owner,
                sec_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as std::ffi::c_int,
            );
        }
        let outer_caller = CALLER.with(|c| c.replace(user));
        Ok(AsOwner {
            user,
            sec_context,
            outer_caller,
            _path: FixedSearchPath::enter(),
        })
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        CALLER.with(|c| c.set(self.outer_caller));
        // SAFETY: restores what `enter` saved (the search path follows when `_path` drops).
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.sec_context) };
    }
}
