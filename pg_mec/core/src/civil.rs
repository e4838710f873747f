//! Proleptic Gregorian calendar arithmetic on day numbers (days since 1970-01-01, UTC).
//!
//! The algorithms are Howard Hinnant's `days_from_civil` / `civil_from_days`; they are exact for
//! every date whose day number fits in an `i64` divided by 146 097, far beyond what an `i64` count of
//! microseconds can reach, and they handle dates before 1970 (negative day numbers).

/// Microseconds in one second.
pub const US_PER_SECOND: i64 = 1_000_000;
/// Microseconds in one hour.
pub const US_PER_HOUR: i64 = 3_600 * US_PER_SECOND;
/// Microseconds in one day.
pub const US_PER_DAY: i64 = 24 * US_PER_HOUR;

/// Day number (days since 1970-01-01) of the civil date `year-month-day`.
///
/// `month` is 1..=12 and `day` 1..=31; out-of-range days roll over (day 0 is the last day of the
/// previous month), which callers here never rely on.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(month);
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Civil date `(year, month, day)` of a day number (days since 1970-01-01).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both values are bounded by the comments above, so the conversions cannot fail.
    (year, month as u32, day as u32)
}

/// Whether `year` is a leap year in the proleptic Gregorian calendar.
pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Number of days in `month` (1..=12) of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The month after `(year, month)`.
pub fn next_month(year: i64, month: u32) -> (i64, u32) {
    if month >= 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

/// The month before `(year, month)`.
pub fn prev_month(year: i64, month: u32) -> (i64, u32) {
    if month <= 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

/// Microseconds since the epoch of midnight UTC on day number `days`, saturating at the `i64` range.
pub fn day_start_us(days: i64) -> i64 {
    days.saturating_mul(US_PER_DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 23), 20_780);
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(days_from_civil(1900, 1, 1), -25_567);
        assert_eq!(civil_from_days(-25_567), (1900, 1, 1));
    }

    #[test]
    fn round_trip_over_a_wide_range() {
        let mut prev = civil_from_days(-800_000);
        for d in -799_999..800_000 {
            let (y, m, day) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, day), d);
            // consecutive days advance by exactly one calendar day
            if day == 1 {
                assert_eq!(prev.2, days_in_month(prev.0, prev.1));
            } else {
                assert_eq!(day, prev.2 + 1);
            }
            prev = (y, m, day);
        }
    }

    #[test]
    fn leap_years_and_month_lengths() {
        assert!(is_leap_year(2000));
        assert!(is_leap_year(2024));
        assert!(!is_leap_year(1900));
        assert!(!is_leap_year(2026));
        assert!(is_leap_year(-4));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2026, 2), 28);
        assert_eq!(days_in_month(2026, 4), 30);
        assert_eq!(days_in_month(2026, 12), 31);
    }

    #[test]
    fn month_steps() {
        assert_eq!(next_month(2026, 12), (2027, 1));
        assert_eq!(next_month(2026, 3), (2026, 4));
        assert_eq!(prev_month(2026, 1), (2025, 12));
        assert_eq!(prev_month(2026, 3), (2026, 2));
    }

    #[test]
    fn day_start_saturates() {
        assert_eq!(day_start_us(1), US_PER_DAY);
        assert_eq!(day_start_us(-1), -US_PER_DAY);
        assert_eq!(day_start_us(i64::MAX), i64::MAX);
    }
}
