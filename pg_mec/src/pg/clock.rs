//! The clock pg_mec decides by: the start of the current transaction, as `now()` is.

use pgrx::datum::TimestampWithTimeZone;

use crate::pg::values::unix_us;

/// `now()`: the start of the current transaction, in Unix microseconds.
pub fn now_us() -> i64 {
    // SAFETY: reads the transaction start timestamp.
    let ts = unsafe { pgrx::pg_sys::GetCurrentTransactionStartTimestamp() };
    TimestampWithTimeZone::try_from(ts)
        .ok()
        .and_then(|t| unix_us(t).ok())
        .unwrap_or_default()
}
