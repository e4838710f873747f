//! Usage alerts: the points a counter can cross — each catalog threshold's share of the limit
//! (`usage.threshold_crossed`) and the limit itself (`usage.limit_reached`).

use rust_decimal::Decimal;
use serde_json::Value;

/// One alert of a limit: its event type, its threshold (percent) and its value (units).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    pub event_type: &'static str,
    pub threshold: Decimal,
    pub value: Decimal,
}

/// Thresholds (percent) as stored in a namespace's settings: positive numbers, ascending, each
/// once; anything else is skipped.
pub fn parse_thresholds(v: Option<&Value>) -> Vec<Decimal> {
    let mut out: Vec<Decimal> = v
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| match x {
                    Value::Number(n) => n.to_string().parse::<Decimal>().ok(),
                    Value::String(s) => s.parse::<Decimal>().ok(),
                    _ => None,
                })
                .filter(|d| *d > Decimal::ZERO)
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// The alerts of `limit`: each threshold's share of it, then the limit itself. None for limits of
/// zero or below.
pub fn points(thresholds: &[Decimal], limit: Decimal) -> Vec<Point> {
    if limit <= Decimal::ZERO {
        return Vec::new();
    }
    let mut out: Vec<Point> = thresholds
        .iter()
        .filter_map(|t| {
            limit.checked_mul(*t).map(|v| Point {
                event_type: "usage.threshold_crossed",
                threshold: *t,
                value: v / Decimal::ONE_HUNDRED,
            })
        })
        .collect();
    out.push(Point {
        event_type: "usage.limit_reached",
        threshold: Decimal::ONE_HUNDRED,
        value: limit,
    });
    out
}

/// The alert values up to the limit, ascending, each once: where hot counters' stripes must stop
/// so that the event crossing one is decided on the exact total.
pub fn fences(thresholds: &[Decimal], limit: Decimal) -> Vec<Decimal> {
    let mut v: Vec<Decimal> = points(thresholds, limit)
        .into_iter()
        .map(|p| p.value)
        .filter(|v| *v <= limit)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The lowest alert value of `limit`: usage below it crosses nothing (a cheap first test).
pub fn lowest(thresholds: &[Decimal], limit: Decimal) -> Option<Decimal> {
    if limit <= Decimal::ZERO {
        return None;
    }
    let first = thresholds
        .first()
        .and_then(|t| limit.checked_mul(*t))
        .map(|v| v / Decimal::ONE_HUNDRED);
    Some(first.map_or(limit, |f| f.min(limit)))
}

/// The first fence above `upper` (the most a counter may hold with what it granted), or `limit`.
pub fn next_fence(fences: &[Decimal], upper: Decimal) -> Option<Decimal> {
    fences.iter().copied().find(|f| *f > upper)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn points_are_shares_of_the_limit_then_the_limit() {
        let p = points(&[d("50"), d("80"), d("120")], d("200"));
        let values: Vec<Decimal> = p.iter().map(|p| p.value).collect();
        assert_eq!(values, vec![d("100"), d("160"), d("240"), d("200")]);
        assert_eq!(p[3].event_type, "usage.limit_reached");
        assert_eq!(p[0].event_type, "usage.threshold_crossed");
        assert!(points(&[d("50")], Decimal::ZERO).is_empty());
    }

    #[test]
    fn fences_stop_at_the_limit() {
        let f = fences(&[d("50"), d("100"), d("120")], d("10"));
        assert_eq!(f, vec![d("5"), d("10")]);
        assert_eq!(next_fence(&f, d("4.5")), Some(d("5")));
        assert_eq!(next_fence(&f, d("5")), Some(d("10")));
        assert_eq!(next_fence(&f, d("10")), None);
    }

    #[test]
    fn lowest_is_the_first_point() {
        assert_eq!(lowest(&[d("50"), d("80")], d("200")), Some(d("100")));
        assert_eq!(lowest(&[d("120")], d("200")), Some(d("200")));
        assert_eq!(lowest(&[], d("7")), Some(d("7")));
        assert_eq!(lowest(&[d("50")], Decimal::ZERO), None);
    }

    #[test]
    fn thresholds_parse_numbers_and_skip_the_rest() {
        let v = json!([80, 50, "x", -1, 50, 12.5, null]);
        assert_eq!(
            parse_thresholds(Some(&v)),
            vec![d("12.5"), d("50"), d("80")]
        );
        assert!(parse_thresholds(None).is_empty());
        assert!(parse_thresholds(Some(&json!({"a": 1}))).is_empty());
    }
}
