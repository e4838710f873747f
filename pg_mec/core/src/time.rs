//! Instants as pg_mec writes and reads them in JSON: Unix microseconds UTC ↔ RFC 3339 text.

use crate::civil::{civil_from_days, days_from_civil};

/// Parses an RFC 3339 timestamp (`2026-11-01T12:00:00Z`, fractions and offsets allowed) into Unix µs.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
        micros = digits.parse().ok()?;
    }
    let offset_s = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && tz.is_ascii()
            && (tz.starts_with('+') || tz.starts_with('-'))
            && &tz[3..4] == ":" =>
        {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (tz[1..3].parse::<i64>().ok()? * 3600 + tz[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(((days * 86_400 + h * 3600 + mi * 60 + se - offset_s) * 1_000_000) + micros)
}

/// `2026-11-01T00:00:00Z` (microseconds shown only when present).
pub fn iso8601(us: i64) -> String {
    let days = us.div_euclid(86_400_000_000);
    let rem = us.rem_euclid(86_400_000_000);
    let (y, m, d) = civil_from_days(days);
    let secs = rem / 1_000_000;
    let micros = rem % 1_000_000;
    let (hh, mm, ss) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if micros == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOV_1: i64 = 1_793_491_200_000_000; // 2026-11-01T00:00:00Z

    #[test]
    fn parses_rfc3339_with_fractions_and_offsets() {
        assert_eq!(parse_rfc3339("2026-11-01T00:00:00Z"), Some(NOV_1));
        assert_eq!(parse_rfc3339("2026-11-01t00:00:00z"), Some(NOV_1));
        assert_eq!(
            parse_rfc3339("2026-11-01 00:00:00.5Z"),
            Some(NOV_1 + 500_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-01T00:00:00.123456789Z"),
            Some(NOV_1 + 123_456)
        );
        assert_eq!(parse_rfc3339("2026-11-01T02:00:00+02:00"), Some(NOV_1));
        assert_eq!(parse_rfc3339("2026-10-31T19:00:00-05:00"), Some(NOV_1));
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "2026-11-01",
            "2026-11-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "2026-11-01T24:00:00Z",
            "2026-11-01T00:00:00.Z",
            "2026-11-01T00:00:00+0200",
            "2026-11-01T00:00:00Zjunk",
            "２０２６-11-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn prints_iso8601_and_reads_it_back() {
        assert_eq!(iso8601(NOV_1), "2026-11-01T00:00:00Z");
        assert_eq!(iso8601(NOV_1 + 1), "2026-11-01T00:00:00.000001Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59.999999Z");
        for us in [NOV_1, NOV_1 + 987_654, 0, 951_782_400_000_000] {
            assert_eq!(parse_rfc3339(&iso8601(us)), Some(us));
        }
    }
}
