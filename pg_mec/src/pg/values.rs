//! Conversions between Postgres values and the pure types of `pg_mec_core`: numeric ↔ Decimal,
//! timestamptz ↔ Unix microseconds, and the JSON forms used in results.

use std::str::FromStr;

pub use pg_mec_core::time::iso8601;
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, FromDatum, TimestampWithTimeZone, Uuid};
use pgrx::pg_sys;
use serde_json::Value;

use crate::pg::{MecError, MecResult};

/// Microseconds between 1970-01-01 (Unix) and 2000-01-01 (Postgres's epoch).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The significant digits of a plain decimal literal (`-0012.3400` → `1234`).
fn significant_digits(text: &str) -> String {
    let t = text.trim_start_matches('-');
    let t = if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.')
    } else {
        t
    };
    t.replace('.', "").trim_start_matches('0').to_string()
}

/// A fresh random (version 4) uuid, made in the backend: Postgres's `gen_random_uuid()` asks
/// OpenSSL for each one, several times slower.
pub fn new_uuid() -> Uuid {
    Uuid::from_bytes(*uuid::Uuid::new_v4().as_bytes())
}

/// A numeric as a Decimal, exactly: values Decimal cannot hold exactly (more than 28 significant
/// digits, NaN, infinities) are refused with `22023` rather than rounded.
pub fn to_decimal(n: &AnyNumeric) -> MecResult<Decimal> {
    let text = n.to_string();
    // At most 28 digits always fit exactly: the common case skips the comparison below.
    if text.bytes().filter(u8::is_ascii_digit).count() <= 28 {
        if let Ok(d) = Decimal::from_str(&text) {
            return Ok(d.normalize());
        }
    }
    let refuse = || {
        MecError::invalid(format!(
            "quantity {text} cannot be represented exactly (at most 28 significant digits)"
        ))
    };
    let d = Decimal::from_str(&text).map_err(|_| refuse())?.normalize();
    if significant_digits(&d.to_string()) != significant_digits(&text) {
        return Err(refuse());
    }
    Ok(d)
}

pub fn to_numeric(d: Decimal) -> AnyNumeric {
    // Whole quantities (the common case) directly: numeric_in on their text gives the same value,
    // scale 0, but through a PG_TRY and a text round trip.
    if d.scale() == 0 {
        if let Ok(i) = i64::try_from(d) {
            // SAFETY: int64_to_numeric cannot fail; from_datum copies the numeric into Rust memory,
            // so the palloc'd one can go.
            unsafe {
                let n = pg_sys::int64_to_numeric(i);
                let copy = AnyNumeric::from_datum(pg_sys::Datum::from(n), false);
                pg_sys::pfree(n.cast());
                if let Some(copy) = copy {
                    return copy;
                }
            }
        }
    }
    // A Decimal always prints as a valid numeric literal.
    AnyNumeric::try_from(d.to_string().as_str()).unwrap_or_default()
}

pub fn unix_us(ts: TimestampWithTimeZone) -> MecResult<i64> {
    if !ts.is_finite() {
        return Err(MecError::invalid("timestamp must be finite"));
    }
    Ok(ts.into_inner() + PG_EPOCH_OFFSET_US)
}

pub fn timestamptz(us: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(us - PG_EPOCH_OFFSET_US)
        .unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity())
}

pub fn ts_json(us: Option<i64>) -> Value {
    us.map(|u| Value::String(iso8601(u))).unwrap_or(Value::Null)
}

/// A JSON number for a quantity: integers exactly, fractions as the nearest double.
pub fn num(d: Decimal) -> Value {
    let d = d.normalize();
    if d.fract().is_zero() {
        if let Ok(i) = i64::try_from(d) {
            return Value::from(i);
        }
    }
    // Through the decimal text: correctly rounded (Decimal's own f64 conversion is not, and
    // printed 999999999999895.5 as 999999999999895.6).
    d.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

pub fn opt_num(d: Option<Decimal>) -> Value {
    d.map(num).unwrap_or(Value::Null)
}

/// A JSON number or a decimal string, as an exact decimal.
pub fn json_decimal(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => Decimal::from_str(&n.to_string())
            .or_else(|_| Decimal::from_scientific(&n.to_string()))
            .ok(),
        Value::String(s) => Decimal::from_str(s.trim()).ok(),
        _ => None,
    }
}
