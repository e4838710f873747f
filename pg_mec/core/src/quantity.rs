//! The quantities pg_mec counts, and the bound that keeps every count exact.
//!
//! Quantities are decimals. PostgreSQL stores any `numeric`, but pg_mec decides in
//! [`Decimal`] (96-bit mantissa, at most 28 digits), so a counter that grew past what a `Decimal`
//! holds could be written and then never read again: every later check, meter and summary of that
//! account would fail. Two rules keep every stored value readable:
//!
//! * every quantity a caller sends (metered, reserved, granted, corrected) has at most
//!   [`MAX_SCALE`] decimal places and a magnitude below [`MAX_MAGNITUDE`] (10^17), checked by
//!   [`check`] before anything is written (a bad one is `22023`, and in a batch that one event is
//!   rejected with no trace);
//! * a counter row never passes [`MAX_MAGNITUDE`] either: the guard of every statement that adds to
//!   a counter includes [`counter_ceiling`]. A hot counter spread over stripes holds at most
//!   [`MAX_SLOTS`] rows, so its total stays below 17 × 10^17 with 10 decimal places: within a
//!   `Decimal` by far (7.9 × 10^28 / 10^10).

use rust_decimal::Decimal;

/// Decimal places a quantity may have.
pub const MAX_SCALE: u32 = 10;
/// Quantities and counter rows stay below this in magnitude: 10^17.
pub const MAX_MAGNITUDE: Decimal = Decimal::from_parts(0x5D8A_0000, 0x0163_4578, 0, false, 0);
/// The rows one counter may have (slot 0 and 16 stripes, see the extension's stripes.rs).
pub const MAX_SLOTS: u32 = 17;

/// Why a quantity was refused; the message names the argument or field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(pub String);

/// `d` if pg_mec can count it exactly: at most [`MAX_SCALE`] decimal places (trailing zeros do
/// not count) and `|d| < 10^17`. `name` is what a message calls it (`p_quantity`).
pub fn check(d: Decimal, name: &str) -> Result<Decimal, QuantityError> {
    let d = d.normalize();
    if d.scale() > MAX_SCALE {
        return Err(QuantityError(format!(
            "{name} {d} has {} decimal places; pg_mec counts at most {MAX_SCALE}",
            d.scale()
        )));
    }
    if d.abs() >= MAX_MAGNITUDE {
        return Err(QuantityError(format!(
            "{name} {d} is too large: pg_mec counts quantities below 10^17 exactly"
        )));
    }
    Ok(d)
}

/// The most a counter row may hold: the policy's `ceiling` (None: unlimited), and never
/// [`MAX_MAGNITUDE`] or more.
pub fn counter_ceiling(ceiling: Option<Decimal>) -> Decimal {
    let bound = MAX_MAGNITUDE - Decimal::new(1, MAX_SCALE);
    ceiling.map_or(bound, |c| c.min(bound))
}

/// Whether `used + quantity` would pass what a counter may hold.
pub fn passes_bound(used: Decimal, quantity: Decimal) -> bool {
    used.saturating_add(quantity).abs() >= MAX_MAGNITUDE
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn the_bound_is_ten_to_the_seventeenth() {
        assert_eq!(MAX_MAGNITUDE, dec("100000000000000000"));
    }

    #[test]
    fn accepts_what_it_counts_exactly() {
        for ok in [
            "0",
            "1",
            "0.1",
            "-5",
            "99999999999999999.9999999999",
            "1.5000000000000",
        ] {
            assert!(check(dec(ok), "q").is_ok(), "{ok}");
        }
        // Trailing zeros are not decimal places.
        assert_eq!(check(dec("2.50000000000000"), "q").unwrap().scale(), 1);
    }

    #[test]
    fn refuses_too_many_places_or_too_large() {
        let e = check(dec("0.12345678901"), "p_quantity").unwrap_err();
        assert!(e.0.contains("11 decimal places"), "{e:?}");
        let e = check(dec("9999999999999999999999999999"), "quantity").unwrap_err();
        assert!(e.0.contains("too large"), "{e:?}");
        assert!(check(dec("100000000000000000"), "q").is_err());
        assert!(check(dec("-100000000000000000"), "q").is_err());
    }

    #[test]
    fn counter_ceiling_never_reaches_the_bound() {
        assert_eq!(counter_ceiling(None), dec("99999999999999999.9999999999"));
        assert_eq!(counter_ceiling(Some(dec("500"))), dec("500"));
        assert_eq!(
            counter_ceiling(Some(dec("1000000000000000000"))),
            counter_ceiling(None)
        );
    }

    #[test]
    fn every_total_of_bounded_rows_is_a_decimal() {
        // The largest total of a striped counter, at the finest scale, still fits.
        let row = counter_ceiling(None);
        let total = (0..MAX_SLOTS).try_fold(Decimal::ZERO, |acc, _| acc.checked_add(row));
        assert_eq!(total.map(|t| t.scale()), Some(MAX_SCALE));
        assert!(passes_bound(row, Decimal::new(1, MAX_SCALE)));
        assert!(!passes_bound(row, Decimal::ZERO));
    }
}
