//! Counting periods (`month`, `day`, `hour`, `lifetime`) and rate windows, in Unix microseconds UTC.
//!
//! A period resets by moving to a new counter key: the key of the period that contains an instant is
//! [`Window::start_us`] of [`period_window`] for that instant. Nothing here reads the clock.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::civil::{
    civil_from_days, day_start_us, days_from_civil, days_in_month, next_month, prev_month,
    US_PER_DAY, US_PER_HOUR, US_PER_SECOND,
};
use crate::parse::ParseEnumError;

/// How often a counted quantity resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// A calendar month UTC, or from an anchor day to the same day of the next month.
    Month,
    /// A UTC day.
    Day,
    /// A UTC hour.
    Hour,
    /// Never resets (one window from the epoch on).
    Lifetime,
}

impl Period {
    /// All periods, in the order of [`Period::EXPECTED`].
    pub const ALL: [Period; 4] = [Period::Month, Period::Day, Period::Hour, Period::Lifetime];
    /// The accepted spellings, for messages.
    pub const EXPECTED: &'static str = "month, day, hour, lifetime";

    /// The catalog / SQL spelling: `"month"`, `"day"`, `"hour"` or `"lifetime"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Period::Month => "month",
            Period::Day => "day",
            Period::Hour => "hour",
            Period::Lifetime => "lifetime",
        }
    }
}

impl FromStr for Period {
    type Err = ParseEnumError;

    /// Parses the exact lowercase spelling (`"month"`, `"day"`, `"hour"`, `"lifetime"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Period::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParseEnumError::new("period", s, Period::EXPECTED))
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A half-open span of time `[start_us, end_us)` in Unix microseconds UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Window {
    /// First instant inside the window; also the counter key of the period.
    pub start_us: i64,
    /// First instant after the window; `None` means the window never ends.
    pub end_us: Option<i64>,
}

impl Window {
    /// Whether `at_us` lies inside the window.
    pub fn contains(&self, at_us: i64) -> bool {
        at_us >= self.start_us && self.end_us.is_none_or(|end| at_us < end)
    }

    /// The window's length in microseconds, `None` when it never ends.
    pub fn len_us(&self) -> Option<i64> {
        self.end_us.map(|end| end.saturating_sub(self.start_us))
    }
}

/// The period window of kind `period` that contains `at_us`.
///
/// * `Month` without an anchor: the calendar month UTC. With `anchor_day = Some(d)`, periods start on
///   day `d` of each month at 00:00 UTC, clamped to the month's last day (anchor 31 → Feb 28/29, then
///   Mar 31, Apr 30, …). Anchors outside 1..=31 are clamped into that range (0 acts as 1).
/// * `Day` / `Hour`: the UTC day / hour. `anchor_day` is ignored.
/// * `Lifetime`: `Window { start_us: 0, end_us: None }`.
///
/// Instants before 1970 (negative) are handled; bounds that would overflow `i64` saturate.
pub fn period_window(period: Period, at_us: i64, anchor_day: Option<u8>) -> Window {
    match period {
        Period::Lifetime => Window {
            start_us: 0,
            end_us: None,
        },
        Period::Hour => fixed_window(US_PER_HOUR, at_us),
        Period::Day => fixed_window(US_PER_DAY, at_us),
        Period::Month => month_window(at_us, anchor_day.map(|d| d.clamp(1, 31))),
    }
}

/// The fixed bucket of `window_seconds` (aligned to the epoch) that contains `at_us`.
///
/// `window_seconds = 0` is treated as 1 second.
pub fn rate_window(window_seconds: u32, at_us: i64) -> Window {
    fixed_window(i64::from(window_seconds.max(1)) * US_PER_SECOND, at_us)
}

fn fixed_window(len_us: i64, at_us: i64) -> Window {
    let start = at_us.saturating_sub(at_us.rem_euclid(len_us));
    Window {
        start_us: start,
        end_us: Some(start.saturating_add(len_us)),
    }
}

/// Day number of the anchored period start within `(year, month)`.
fn anchored_start(year: i64, month: u32, anchor: u32) -> i64 {
    days_from_civil(year, month, anchor.min(days_in_month(year, month)))
}

fn month_window(at_us: i64, anchor: Option<u8>) -> Window {
    let anchor = u32::from(anchor.unwrap_or(1));
    let today = at_us.div_euclid(US_PER_DAY);
    let (y, m, _) = civil_from_days(today);
    let this_start = anchored_start(y, m, anchor);
    let (start, end) = if today >= this_start {
        let (ny, nm) = next_month(y, m);
        (this_start, anchored_start(ny, nm, anchor))
    } else {
        let (py, pm) = prev_month(y, m);
        (anchored_start(py, pm, anchor), this_start)
    };
    Window {
        start_us: day_start_us(start),
        end_us: Some(day_start_us(end)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(y: i64, m: u32, d: u32, h: i64, min: i64) -> i64 {
        day_start_us(days_from_civil(y, m, d)) + h * US_PER_HOUR + min * 60 * US_PER_SECOND
    }

    fn w(start: i64, end: i64) -> Window {
        Window {
            start_us: start,
            end_us: Some(end),
        }
    }

    #[test]
    fn parse_and_print() {
        for p in Period::ALL {
            assert_eq!(p.as_str().parse::<Period>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        let err = "weekly".parse::<Period>().unwrap_err();
        assert!(err.to_string().contains("weekly"));
        assert!("Month".parse::<Period>().is_err());
    }

    #[test]
    fn calendar_month() {
        let at = ts(2026, 11, 23, 16, 30);
        assert_eq!(
            period_window(Period::Month, at, None),
            w(ts(2026, 11, 1, 0, 0), ts(2026, 12, 1, 0, 0))
        );
        let dec = ts(2026, 12, 31, 23, 59);
        assert_eq!(
            period_window(Period::Month, dec, None),
            w(ts(2026, 12, 1, 0, 0), ts(2027, 1, 1, 0, 0))
        );
        // the first instant of a month belongs to it
        let first = ts(2026, 3, 1, 0, 0);
        assert_eq!(period_window(Period::Month, first, None).start_us, first);
        assert_eq!(
            period_window(Period::Month, first - 1, None),
            w(ts(2026, 2, 1, 0, 0), first)
        );
    }

    #[test]
    fn month_before_1970() {
        let at = ts(1969, 12, 15, 5, 0);
        assert!(at < 0);
        assert_eq!(
            period_window(Period::Month, at, None),
            w(ts(1969, 12, 1, 0, 0), 0)
        );
        assert_eq!(
            period_window(Period::Month, -1, None),
            w(ts(1969, 12, 1, 0, 0), 0)
        );
        assert_eq!(
            period_window(Period::Month, ts(1900, 2, 27, 23, 0), Some(31)),
            w(ts(1900, 1, 31, 0, 0), ts(1900, 2, 28, 0, 0)),
        );
        // 1900 is not a leap year
        assert_eq!(
            period_window(Period::Month, ts(1900, 2, 28, 23, 0), Some(31)),
            w(ts(1900, 2, 28, 0, 0), ts(1900, 3, 31, 0, 0)),
        );
    }

    #[test]
    fn anchored_month_mid_month() {
        // anchor 15: Nov 23 lies in [Nov 15, Dec 15)
        assert_eq!(
            period_window(Period::Month, ts(2026, 11, 23, 0, 0), Some(15)),
            w(ts(2026, 11, 15, 0, 0), ts(2026, 12, 15, 0, 0))
        );
        // Nov 10 lies in [Oct 15, Nov 15)
        assert_eq!(
            period_window(Period::Month, ts(2026, 11, 10, 0, 0), Some(15)),
            w(ts(2026, 10, 15, 0, 0), ts(2026, 11, 15, 0, 0))
        );
        // across a year boundary
        assert_eq!(
            period_window(Period::Month, ts(2027, 1, 3, 0, 0), Some(15)),
            w(ts(2026, 12, 15, 0, 0), ts(2027, 1, 15, 0, 0))
        );
    }

    #[test]
    fn anchored_month_clamps_to_month_end() {
        // anchor 31, non-leap year: Jan 31 → Feb 28 → Mar 31 → Apr 30
        let a = Some(31);
        assert_eq!(
            period_window(Period::Month, ts(2026, 2, 10, 0, 0), a),
            w(ts(2026, 1, 31, 0, 0), ts(2026, 2, 28, 0, 0))
        );
        assert_eq!(
            period_window(Period::Month, ts(2026, 2, 28, 12, 0), a),
            w(ts(2026, 2, 28, 0, 0), ts(2026, 3, 31, 0, 0))
        );
        assert_eq!(
            period_window(Period::Month, ts(2026, 3, 30, 0, 0), a),
            w(ts(2026, 2, 28, 0, 0), ts(2026, 3, 31, 0, 0))
        );
        assert_eq!(
            period_window(Period::Month, ts(2026, 4, 15, 0, 0), a),
            w(ts(2026, 3, 31, 0, 0), ts(2026, 4, 30, 0, 0))
        );
        // leap year: Feb 29
        assert_eq!(
            period_window(Period::Month, ts(2028, 2, 29, 1, 0), Some(30)),
            w(ts(2028, 2, 29, 0, 0), ts(2028, 3, 30, 0, 0))
        );
    }

    #[test]
    fn anchor_one_equals_calendar_month_and_out_of_range_is_clamped() {
        let at = ts(2026, 5, 17, 3, 0);
        let cal = period_window(Period::Month, at, None);
        assert_eq!(period_window(Period::Month, at, Some(1)), cal);
        assert_eq!(period_window(Period::Month, at, Some(0)), cal);
        assert_eq!(
            period_window(Period::Month, at, Some(200)),
            period_window(Period::Month, at, Some(31))
        );
    }

    #[test]
    fn windows_tile_time_for_every_anchor() {
        for anchor in 1..=31u8 {
            let mut at = ts(2023, 12, 1, 0, 0);
            let mut win = period_window(Period::Month, at, Some(anchor));
            for _ in 0..30 {
                let end = win.end_us.unwrap();
                assert!(win.contains(at));
                assert!(!win.contains(end));
                let next = period_window(Period::Month, end, Some(anchor));
                assert_eq!(next.start_us, end, "anchor {anchor}");
                assert_eq!(period_window(Period::Month, end - 1, Some(anchor)), win);
                at = end;
                win = next;
            }
        }
    }

    #[test]
    fn day_and_hour() {
        let at = ts(2026, 11, 23, 16, 45);
        assert_eq!(
            period_window(Period::Day, at, Some(5)),
            w(ts(2026, 11, 23, 0, 0), ts(2026, 11, 24, 0, 0))
        );
        assert_eq!(
            period_window(Period::Hour, at, None),
            w(ts(2026, 11, 23, 16, 0), ts(2026, 11, 23, 17, 0))
        );
        assert_eq!(period_window(Period::Day, -1, None), w(-US_PER_DAY, 0));
        assert_eq!(period_window(Period::Hour, -1, None), w(-US_PER_HOUR, 0));
    }

    #[test]
    fn lifetime() {
        let lw = period_window(Period::Lifetime, 123_456, None);
        assert_eq!(
            lw,
            Window {
                start_us: 0,
                end_us: None
            }
        );
        assert_eq!(lw.len_us(), None);
        assert!(lw.contains(i64::MAX));
    }

    #[test]
    fn extremes_do_not_panic() {
        for p in Period::ALL {
            for at in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
                let _ = period_window(p, at, Some(31));
                let _ = period_window(p, at, None);
            }
        }
        let _ = rate_window(86_400, i64::MAX);
        let _ = rate_window(86_400, i64::MIN);
    }

    #[test]
    fn rate_buckets() {
        let s = US_PER_SECOND;
        assert_eq!(rate_window(60, 0), w(0, 60 * s));
        assert_eq!(rate_window(60, 61 * s), w(60 * s, 120 * s));
        assert_eq!(rate_window(60, -1), w(-60 * s, 0));
        assert_eq!(rate_window(0, 5 * s + 3), w(5 * s, 6 * s));
    }
}
