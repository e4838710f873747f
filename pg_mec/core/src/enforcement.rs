//! Limit enforcement: what happens when usage would pass an entitlement's limit.
//!
//! [`Policy::decide`] is the single place where allow/deny is decided; the extension calls it under
//! the row lock of the account's counter with the usage it just read.
//!
//! Stable `reason` strings of a [`Decision`]:
//!
//! | reason | allowed | overage | when |
//! |---|---|---|---|
//! | `unlimited` | yes | no | the limit is `null` |
//! | `within_limit` | yes | no | `used + requested <= limit` |
//! | `soft_limit_exceeded` | yes | yes | soft, `used + requested > limit` |
//! | `grace` | yes | yes | hard, over the limit but within `limit + grace` |
//! | `overage_allowed` | yes | yes | capped, over the limit but within `limit + overage_cap + grace` |
//! | `limit_exceeded` | no | no | hard, `used + requested > limit + grace` |
//! | `overage_cap_reached` | no | no | capped, `used + requested > limit + overage_cap + grace` |

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use crate::parse::ParseEnumError;

/// How a limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Deny when usage would pass `limit + grace`.
    #[default]
    Hard,
    /// Always allow; usage past the limit is flagged as overage.
    Soft,
    /// Allow overage (flagged, billable) up to `overage_cap` beyond the limit, then deny.
    Capped,
}

impl Enforcement {
    /// All enforcements, in the order of [`Enforcement::EXPECTED`].
    pub const ALL: [Enforcement; 3] = [Enforcement::Hard, Enforcement::Soft, Enforcement::Capped];
    /// The accepted spellings, for messages.
    pub const EXPECTED: &'static str = "hard, soft, capped";

    /// The catalog / SQL spelling: `"hard"`, `"soft"` or `"capped"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Enforcement::Hard => "hard",
            Enforcement::Soft => "soft",
            Enforcement::Capped => "capped",
        }
    }
}

impl FromStr for Enforcement {
    type Err = ParseEnumError;

    /// Parses the exact lowercase spelling (`"hard"`, `"soft"`, `"capped"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Enforcement::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| ParseEnumError::new("enforcement", s, Enforcement::EXPECTED))
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reason: the entitlement has no limit.
pub const REASON_UNLIMITED: &str = "unlimited";
/// Reason: the request fits under the limit.
pub const REASON_WITHIN_LIMIT: &str = "within_limit";
/// Reason: soft enforcement, over the limit, allowed as overage.
pub const REASON_SOFT_LIMIT_EXCEEDED: &str = "soft_limit_exceeded";
/// Reason: hard enforcement, over the limit but within the grace, allowed as overage.
pub const REASON_GRACE: &str = "grace";
/// Reason: capped enforcement, over the limit but within the overage cap, allowed as overage.
pub const REASON_OVERAGE_ALLOWED: &str = "overage_allowed";
/// Reason: hard enforcement, the request would pass `limit + grace`; denied.
pub const REASON_LIMIT_EXCEEDED: &str = "limit_exceeded";
/// Reason: capped enforcement, the request would pass `limit + overage_cap`; denied.
pub const REASON_OVERAGE_CAP_REACHED: &str = "overage_cap_reached";

/// One entitlement's limit and how it is enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The limit; `None` = unlimited. Zero means zero.
    pub limit: Option<Decimal>,
    /// How the limit is enforced.
    pub enforcement: Enforcement,
    /// Extra units a hard limit tolerates; `None` = the default (see [`Policy::effective_grace`]).
    pub grace: Option<Decimal>,
    /// Units a capped limit allows beyond the limit; `None` = 0.
    pub overage_cap: Option<Decimal>,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Whether the request is allowed and takes usage past the limit.
    pub overage: bool,
    /// One of the stable reason strings in the module documentation.
    pub reason: &'static str,
}

impl Decision {
    fn allow(overage: bool, reason: &'static str) -> Self {
        Self {
            allowed: true,
            overage,
            reason,
        }
    }

    fn deny(reason: &'static str) -> Self {
        Self {
            allowed: false,
            overage: false,
            reason,
        }
    }
}

/// Upper bound of the default grace, in units.
const DEFAULT_GRACE_MAX: Decimal = Decimal::ONE_HUNDRED;

impl Policy {
    /// A policy with the given limit and enforcement, default grace and no overage cap.
    pub fn new(limit: Option<Decimal>, enforcement: Enforcement) -> Self {
        Self {
            limit,
            enforcement,
            grace: None,
            overage_cap: None,
        }
    }

    /// The grace in units: the configured `grace`, else `min(1% of limit, 100)`; zero when unlimited.
    ///
    /// Hard and capped enforcement use it (see [`Policy::ceiling`]); soft never denies.
    pub fn effective_grace(&self) -> Decimal {
        let Some(limit) = self.limit else {
            return Decimal::ZERO;
        };
        match self.grace {
            Some(g) => g,
            None => (limit / Decimal::ONE_HUNDRED)
                .min(DEFAULT_GRACE_MAX)
                .max(Decimal::ZERO)
                .normalize(),
        }
    }

    /// The highest total usage ever allowed: hard → `limit + grace`; capped → `limit + overage_cap +
    /// grace` (the contract's "hard overage cap with grace"); soft or unlimited → `None`.
    pub fn ceiling(&self) -> Option<Decimal> {
        let limit = self.limit?;
        match self.enforcement {
            Enforcement::Soft => None,
            Enforcement::Hard => Some(limit.saturating_add(self.effective_grace())),
            Enforcement::Capped => Some(
                limit
                    .saturating_add(self.overage_cap.unwrap_or(Decimal::ZERO))
                    .saturating_add(self.effective_grace()),
            ),
        }
    }

    /// Decides whether `requested` more units may be used on top of `used`.
    ///
    /// Denies when `used + requested > ceiling`; flags overage when allowed and
    /// `used + requested > limit`. Neither argument is checked for sign: a zero request on usage
    /// already past the ceiling is denied, which is what a read-only check should report.
    pub fn decide(&self, used: Decimal, requested: Decimal) -> Decision {
        let Some(limit) = self.limit else {
            return Decision::allow(false, REASON_UNLIMITED);
        };
        let total = used.saturating_add(requested);
        if total <= limit {
            return Decision::allow(false, REASON_WITHIN_LIMIT);
        }
        let within_ceiling = self.ceiling().is_none_or(|c| total <= c);
        match (self.enforcement, within_ceiling) {
            (Enforcement::Soft, _) => Decision::allow(true, REASON_SOFT_LIMIT_EXCEEDED),
            (Enforcement::Hard, true) => Decision::allow(true, REASON_GRACE),
            (Enforcement::Hard, false) => Decision::deny(REASON_LIMIT_EXCEEDED),
            (Enforcement::Capped, true) => Decision::allow(true, REASON_OVERAGE_ALLOWED),
            (Enforcement::Capped, false) => Decision::deny(REASON_OVERAGE_CAP_REACHED),
        }
    }

    /// Units left before the limit: `limit - used` clamped at 0; `None` when unlimited.
    ///
    /// Grace and overage cap are not counted as remaining.
    pub fn remaining(&self, used: Decimal) -> Option<Decimal> {
        self.limit
            .map(|limit| limit.saturating_sub(used).max(Decimal::ZERO))
    }

    /// `used / limit * 100`, truncated to 2 decimal places (so 100 only at the limit: 19 999.9 of
    /// 20 000 is 99.99, not 100); `None` when unlimited.
    ///
    /// Not clamped: overage gives values above 100. A limit of 0 gives 100 when `used > 0`, else 0.
    pub fn percent_used(&self, used: Decimal) -> Option<Decimal> {
        let limit = self.limit?;
        if limit.is_zero() {
            return Some(if used > Decimal::ZERO {
                Decimal::ONE_HUNDRED
            } else {
                Decimal::ZERO
            });
        }
        let pct = used
            .checked_mul(Decimal::ONE_HUNDRED)
            .and_then(|u| u.checked_div(limit))
            .or_else(|| {
                used.checked_div(limit)
                    .and_then(|r| r.checked_mul(Decimal::ONE_HUNDRED))
            })
            .unwrap_or(Decimal::MAX);
        Some(pct.round_dp_with_strategy(2, RoundingStrategy::ToZero))
    }
}

/// Which field of an entitlement a [`check_fields`] problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Entitlement,
    Grace,
    OverageCap,
}

/// The rules of `enforcement`, `overage_cap` and `grace` together, for the catalog and for
/// `set_override` alike: `capped` needs an overage cap and only `capped` has one; a soft limit never
/// denies, so its grace can only be 0 (an explicit 0 is never an error).
pub fn check_fields(
    enforcement: Enforcement,
    overage_cap: Option<Decimal>,
    grace: Option<Decimal>,
) -> Vec<(Field, String)> {
    let mut out = Vec::new();
    match (enforcement, overage_cap) {
        (Enforcement::Capped, None) => out.push((
            Field::Entitlement,
            "capped enforcement needs 'overage_cap' (units allowed beyond the limit)".to_string(),
        )),
        (e, Some(_)) if e != Enforcement::Capped => out.push((
            Field::OverageCap,
            format!("overage_cap applies only to capped enforcement, not to {e} (add \"enforcement\": \"capped\")"),
        )),
        _ => {}
    }
    if enforcement == Enforcement::Soft && grace.is_some_and(|g| !g.is_zero()) {
        out.push((
            Field::Grace,
            "grace applies only to hard and capped enforcement, not to soft".to_string(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn pol(limit: Option<&str>, e: Enforcement) -> Policy {
        Policy::new(limit.map(d), e)
    }

    #[test]
    fn parse_and_print() {
        for e in Enforcement::ALL {
            assert_eq!(e.as_str().parse::<Enforcement>(), Ok(e));
            assert_eq!(e.to_string(), e.as_str());
        }
        assert!("HARD".parse::<Enforcement>().is_err());
        assert_eq!(Enforcement::default(), Enforcement::Hard);
    }

    #[test]
    fn default_grace() {
        assert_eq!(
            pol(Some("100"), Enforcement::Hard).effective_grace(),
            d("1")
        );
        assert_eq!(
            pol(Some("5"), Enforcement::Hard).effective_grace(),
            d("0.05")
        );
        assert_eq!(
            pol(Some("50000"), Enforcement::Hard).effective_grace(),
            d("100")
        );
        assert_eq!(pol(Some("0"), Enforcement::Hard).effective_grace(), d("0"));
        assert_eq!(pol(None, Enforcement::Hard).effective_grace(), d("0"));
        let mut p = pol(Some("100"), Enforcement::Hard);
        p.grace = Some(d("7"));
        assert_eq!(p.effective_grace(), d("7"));
        p.limit = None;
        assert_eq!(p.effective_grace(), d("0"));
    }

    #[test]
    fn fields_follow_one_rule() {
        let cap = Some(Decimal::ONE);
        assert!(check_fields(Enforcement::Capped, cap, Some(d("2"))).is_empty());
        assert_eq!(
            check_fields(Enforcement::Capped, None, None)[0].0,
            Field::Entitlement
        );
        assert_eq!(
            check_fields(Enforcement::Hard, cap, None)[0].0,
            Field::OverageCap
        );
        assert_eq!(
            check_fields(Enforcement::Soft, None, Some(d("1")))[0].0,
            Field::Grace
        );
        assert!(check_fields(Enforcement::Soft, None, Some(Decimal::ZERO)).is_empty());
    }

    #[test]
    fn ceilings() {
        assert_eq!(
            pol(Some("100"), Enforcement::Hard).ceiling(),
            Some(d("101"))
        );
        assert_eq!(pol(Some("100"), Enforcement::Soft).ceiling(), None);
        assert_eq!(pol(None, Enforcement::Hard).ceiling(), None);
        // capped: limit + overage_cap + grace (default grace min(1% of the limit, 100))
        let mut c = pol(Some("100"), Enforcement::Capped);
        c.overage_cap = Some(d("50"));
        assert_eq!(c.ceiling(), Some(d("151")));
        c.grace = Some(d("10"));
        assert_eq!(c.ceiling(), Some(d("160")));
        c.grace = Some(Decimal::ZERO);
        assert_eq!(c.ceiling(), Some(d("150")));
    }

    #[test]
    fn decide_unlimited_and_within() {
        let p = pol(None, Enforcement::Hard);
        assert_eq!(
            p.decide(d("1000000"), d("5")),
            Decision {
                allowed: true,
                overage: false,
                reason: "unlimited"
            }
        );
        let p = pol(Some("10"), Enforcement::Hard);
        let dec = p.decide(d("9"), d("1"));
        assert!(dec.allowed && !dec.overage);
        assert_eq!(dec.reason, "within_limit");
    }

    #[test]
    fn decide_hard_with_grace() {
        let mut p = pol(Some("100"), Enforcement::Hard);
        let g = p.decide(d("100"), d("1"));
        assert_eq!((g.allowed, g.overage, g.reason), (true, true, "grace"));
        let n = p.decide(d("100"), d("2"));
        assert_eq!(
            (n.allowed, n.overage, n.reason),
            (false, false, "limit_exceeded")
        );
        p.grace = Some(Decimal::ZERO);
        assert_eq!(p.decide(d("100"), d("1")).reason, "limit_exceeded");
        assert_eq!(p.decide(d("99"), d("1")).reason, "within_limit");
    }

    #[test]
    fn decide_soft_and_capped() {
        let s = pol(Some("10"), Enforcement::Soft);
        let r = s.decide(d("1000"), d("1"));
        assert_eq!(
            (r.allowed, r.overage, r.reason),
            (true, true, "soft_limit_exceeded")
        );
        let mut c = pol(Some("100"), Enforcement::Capped);
        c.overage_cap = Some(d("50"));
        let r = c.decide(d("120"), d("30"));
        assert_eq!(
            (r.allowed, r.overage, r.reason),
            (true, true, "overage_allowed")
        );
        // the cap's grace (default 1 % of the limit): 151 is the most
        let r = c.decide(d("120"), d("31"));
        assert_eq!((r.allowed, r.reason), (true, "overage_allowed"));
        let r = c.decide(d("120"), d("32"));
        assert_eq!(
            (r.allowed, r.overage, r.reason),
            (false, false, "overage_cap_reached")
        );
        c.grace = Some(Decimal::ZERO);
        assert_eq!(c.decide(d("120"), d("31")).reason, "overage_cap_reached");
        c.overage_cap = None;
        assert_eq!(c.decide(d("100"), d("0.5")).reason, "overage_cap_reached");
    }

    #[test]
    fn decide_zero_limit_and_zero_request() {
        let p = pol(Some("0"), Enforcement::Hard);
        assert!(p.decide(d("0"), d("0")).allowed);
        assert!(!p.decide(d("0"), d("1")).allowed);
        // a read-only check (0 requested) past the ceiling reports deny
        let p = pol(Some("10"), Enforcement::Hard);
        assert!(!p.decide(d("20"), d("0")).allowed);
    }

    #[test]
    fn decide_does_not_overflow() {
        let p = pol(Some("10"), Enforcement::Hard);
        assert!(!p.decide(Decimal::MAX, Decimal::MAX).allowed);
        let p = pol(Some(&Decimal::MAX.to_string()), Enforcement::Hard);
        assert_eq!(p.ceiling(), Some(Decimal::MAX));
    }

    #[test]
    fn remaining_and_percent() {
        let p = pol(Some("200"), Enforcement::Hard);
        assert_eq!(p.remaining(d("50")), Some(d("150")));
        assert_eq!(p.remaining(d("250")), Some(d("0")));
        assert_eq!(p.percent_used(d("50")), Some(d("25")));
        assert_eq!(p.percent_used(d("300")), Some(d("150")));
        let p = pol(Some("3"), Enforcement::Hard);
        assert_eq!(p.percent_used(d("1")), Some(d("33.33")));
        assert_eq!(p.percent_used(d("2")), Some(d("66.66")));
        // never 100 before the limit
        let big = pol(Some("20000"), Enforcement::Hard);
        assert_eq!(big.percent_used(d("19999.9")), Some(d("99.99")));
        assert_eq!(big.percent_used(d("20000")), Some(d("100")));
        let z = pol(Some("0"), Enforcement::Hard);
        assert_eq!(z.percent_used(d("0")), Some(d("0")));
        assert_eq!(z.percent_used(d("1")), Some(d("100")));
        assert_eq!(z.remaining(d("0")), Some(d("0")));
        let u = pol(None, Enforcement::Soft);
        assert_eq!(u.remaining(d("5")), None);
        assert_eq!(u.percent_used(d("5")), None);
        let tiny = pol(Some("0.0000000000000000000000001"), Enforcement::Hard);
        assert!(tiny.percent_used(Decimal::MAX).is_some());
    }
}
