//! Subtransactions: run a step so that it can be taken back, as PL/pgSQL's exception blocks do.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgSqlErrorCode;

use crate::pg::MecResult;

/// How a step run in a subtransaction ended: its result, or the payload of the ERROR (a panic
/// through pgrx's guard) it raised.
type Outcome<T> = std::thread::Result<MecResult<T>>;

/// Runs `f` in a subtransaction, released when `keep` says so of how it ended and rolled back
/// otherwise.
fn run<T>(f: impl FnOnce() -> MecResult<T>, keep: impl FnOnce(&Outcome<T>) -> bool) -> Outcome<T> {
    // SAFETY: the pattern PL/pgSQL uses for exception blocks: begin, run, release or roll back,
    // then restore the caller's memory context and resource owner. An ERROR inside `f` reaches us
    // as a panic (pgrx's guard has copied and flushed the error): the subtransaction is rolled
    // back before the panic goes further, so a caller's own exception block rolls back its
    // subtransaction, not ours.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        if keep(&outcome) {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        outcome
    }
}

/// Runs `f` in a subtransaction that is kept when `keep` says so of its result, and rolled back
/// otherwise (and on any error, which then goes on to the caller).
pub fn kept_if<T>(f: impl FnOnce() -> MecResult<T>, keep: impl FnOnce(&T) -> bool) -> MecResult<T> {
    match run(f, |o| matches!(o, Ok(Ok(v)) if keep(v))) {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `f` in a subtransaction: `None` when it raised an ERROR with SQLSTATE `code`, after
/// rolling back what it did. Any other error rolls it back too and goes on to the caller.
pub fn unless_raised<T>(
    code: PgSqlErrorCode,
    f: impl FnOnce() -> MecResult<T>,
) -> MecResult<Option<T>> {
    match run(f, |o| matches!(o, Ok(Ok(_)))) {
        Ok(result) => result.map(Some),
        Err(panic) => match panic.downcast_ref::<CaughtError>() {
            Some(CaughtError::PostgresError(e)) if e.sql_error_code() == code => Ok(None),
            _ => std::panic::resume_unwind(panic),
        },
    }
}
