//! Argument handling shared by the entry points: NULL checks and conversions that give a clear
//! `22023` instead of a silent NULL result.

use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, TimestampWithTimeZone};

use crate::pg::values::{to_decimal, unix_us};
use crate::pg::{MecError, MecResult};

/// The argument's value, or `22023` naming it.
pub fn required<T>(value: Option<T>, name: &str) -> MecResult<T> {
    value.ok_or_else(|| MecError::invalid(format!("{name} must not be null")))
}

pub fn text(value: Option<&str>, name: &str) -> MecResult<String> {
    let s = required(value, name)?;
    if s.trim().is_empty() {
        return Err(MecError::invalid(format!("{name} must not be empty")));
    }
    Ok(s.to_string())
}

/// A quantity pg_mec can count exactly (`pg_mec_core::quantity`), or `22023` naming it.
pub fn quantity(value: Option<AnyNumeric>, name: &str) -> MecResult<Decimal> {
    exact_quantity(to_decimal(&required(value, name)?)?, name)
}

/// `d`, if pg_mec can count it exactly: at most 10 decimal places and below 10^17 in magnitude.
pub fn exact_quantity(d: Decimal, name: &str) -> MecResult<Decimal> {
    pg_mec_core::quantity::check(d, name).map_err(|e| {
        MecError::invalid_hint(
            e.0,
            "Quantities have at most 10 decimal places and stay below 10^17: count in a larger unit if needed.",
        )
    })
}

pub fn instant(value: Option<TimestampWithTimeZone>, name: &str) -> MecResult<i64> {
    unix_us(required(value, name)?)
        .map_err(|_| MecError::invalid(format!("{name} must be a finite timestamp")))
}

/// A TTL in seconds, 1 s to 1 day.
pub fn ttl_seconds(value: Option<i32>, name: &str) -> MecResult<i32> {
    let ttl = required(value, name)?;
    if !(1..=86_400).contains(&ttl) {
        return Err(MecError::invalid(format!(
            "{name} must be between 1 and 86400 seconds, got {ttl}"
        )));
    }
    Ok(ttl)
}
