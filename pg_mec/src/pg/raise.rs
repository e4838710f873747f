//! Raising a [`MecError`] as a PostgreSQL ERROR with its own SQLSTATE.
//!
//! pgrx's error API only knows the standard codes (anything else arrives as `XX000`), so [`raise`]
//! calls Postgres's `errstart`/`errfinish` directly. `errfinish` jumps out past the Rust frames, so
//! every value with a destructor is dropped, and the strings are copied into Postgres memory,
//! before it is called.

use std::ffi::{c_char, c_int, CString};

use pgrx::pg_sys;

use crate::pg::{MecError, MecResult};

/// Unwraps an entry point's result, raising the error as a Postgres ERROR.
pub fn finish<T>(result: MecResult<T>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => raise(e),
    }
}

/// `MAKE_SQLSTATE` from Postgres's `elog.h`: six bits per character.
pub fn make_sqlstate(code: &str) -> c_int {
    code.bytes().take(5).enumerate().fold(0, |acc, (i, c)| {
        acc + ((((c as c_int) - ('0' as c_int)) & 0x3F) << (6 * i))
    })
}

/// `ERROR` from Postgres's `elog.h` (21 since PostgreSQL 14).
const ERROR_LEVEL: c_int = 21;

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errdetail(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// A copy of `s` in the current Postgres memory context (freed by Postgres on abort).
fn palloc_cstr(s: &str) -> *mut c_char {
    let owned = CString::new(s.replace('\0', " ")).unwrap_or_default();
    // SAFETY: pstrdup copies the NUL-terminated string into palloc'd memory.
    unsafe { pg_sys::pstrdup(owned.as_ptr()) }
}

/// Raises `err` as a Postgres ERROR with its SQLSTATE, DETAIL and HINT. Never returns.
#[cold]
#[inline(never)]
pub fn raise(err: MecError) -> ! {
    let code = make_sqlstate(err.sqlstate());
    let (message, detail, hint) = err.parts();
    drop(err);
    let message_p = palloc_cstr(&message);
    let detail_p = detail.as_deref().map(palloc_cstr);
    let hint_p = hint.as_deref().map(palloc_cstr);
    drop((message, detail, hint));
    // SAFETY: only raw pointers into Postgres memory are alive from here on; errfinish longjmps
    // to the innermost PG_TRY (the caller's statement), as any ereport(ERROR) does.
    unsafe {
        if errstart(ERROR_LEVEL, std::ptr::null()) {
            errcode(code);
            errmsg(c"%s".as_ptr(), message_p);
            if let Some(d) = detail_p {
                errdetail(c"%s".as_ptr(), d);
            }
            if let Some(h) = hint_p {
                errhint(c"%s".as_ptr(), h);
            }
            errfinish(c"pg_mec".as_ptr(), 0, c"pg_mec".as_ptr());
        }
    }
    // errstart returns false only for levels below the reporting threshold, never for ERROR.
    unreachable!("ereport(ERROR) returned")
}
