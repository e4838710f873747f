//! The entitlement in force for one account and resource at one moment, from the rows that grant
//! it: the plan's row, replaced by an override, raised by grants, each valid over a window.
//!
//! The extension reads the rows once per account and resource ([`Entitlements`]), caches them
//! (they encode to bytes for the shared cache), and folds them with [`combine`] at the moment of
//! each call.

use std::str::FromStr;

use rust_decimal::Decimal;

use crate::billing::StatusClass;
use crate::catalog::Kind;
use crate::codec::{Reader, Writer};
use crate::enforcement::{Enforcement, Policy};
use crate::period::{period_window, rate_window, Period, Window};

/// What governs one account's use of one resource at one moment.
#[derive(Debug, Clone)]
pub struct Effective {
    pub resource_type: String,
    pub kind: Kind,
    pub window_seconds: Option<u32>,
    pub policy: Policy,
    pub period: Period,
    /// Features: on or off. Other kinds: true.
    pub enabled: bool,
    /// Whether any entitlement row applies (none: limit 0, reason `not_entitled`).
    pub entitled: bool,
    pub anchor_day: Option<u8>,
    pub billable: Vec<StatusClass>,
    /// The account is overdue and its namespace blocks overdue accounts: every use is refused
    /// (`ME402`), every check denies with reason `payment_overdue`.
    pub blocked: bool,
    /// The account's parent in its hierarchy (uuid text); `None` for a top-level account.
    pub parent: Option<String>,
    /// The ancestor whose entitlement this is, when the account has none of its own (uuid text).
    pub inherited_from: Option<String>,
    /// The account is overdue under `overdue_action = default_plan`: it has the default plan's
    /// entitlement (or none), and inherits nothing from its ancestors.
    pub downgraded: bool,
}

impl Effective {
    /// The counter window that an event at `at_us` falls into.
    pub fn window(&self, at_us: i64) -> Window {
        match (self.kind, self.window_seconds) {
            (Kind::Rate, Some(w)) => rate_window(w, at_us),
            _ => period_window(self.period, at_us, self.anchor_day),
        }
    }

    /// The window as the policy names it in denials: seconds for rates, the period otherwise.
    pub fn window_json(&self) -> serde_json::Value {
        match (self.kind, self.window_seconds) {
            (Kind::Rate, Some(w)) => serde_json::Value::from(w),
            _ => serde_json::Value::from(self.period.as_str()),
        }
    }
}

/// One entitlement row (source plan / override / grant) and its validity window.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub source: String,
    pub limit: Option<Decimal>,
    pub period: Option<String>,
    pub enforcement: Option<String>,
    pub overage_cap: Option<Decimal>,
    pub grace: Option<Decimal>,
    pub enabled: bool,
    pub valid_from_us: i64,
    pub valid_until_us: Option<i64>,
}

impl Row {
    /// Whether the row is in force at `at_us`.
    pub fn in_force(&self, at_us: i64) -> bool {
        self.valid_from_us <= at_us && self.valid_until_us.is_none_or(|u| u > at_us)
    }
}

/// Where an account stands on payment, as its entitlements see it: the account's
/// `payment_overdue` under its namespace's `overdue_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Standing {
    /// Paid up, or overdue under `overdue_action = flag` (reported, nothing else changes).
    #[default]
    Good,
    /// Overdue under `default_plan`: the namespace's default plan's row (source
    /// [`OVERDUE_PLAN`]) replaces the plan and any override; grants still add.
    DefaultPlan,
    /// Overdue under `block`: every use is refused.
    Blocked,
}

impl Standing {
    /// From the account's flag and the namespace's `overdue_action` (unknown actions: `flag`).
    pub fn new(payment_overdue: bool, overdue_action: Option<&str>) -> Standing {
        match (payment_overdue, overdue_action) {
            (true, Some("default_plan")) => Standing::DefaultPlan,
            (true, Some("block")) => Standing::Blocked,
            _ => Standing::Good,
        }
    }

    fn code(self) -> u8 {
        match self {
            Standing::Good => 0,
            Standing::DefaultPlan => 1,
            Standing::Blocked => 2,
        }
    }

    fn from_code(c: u8) -> Option<Standing> {
        match c {
            0 => Some(Standing::Good),
            1 => Some(Standing::DefaultPlan),
            2 => Some(Standing::Blocked),
            _ => None,
        }
    }
}

/// The source of the row an overdue account gets from the namespace's default plan.
pub const OVERDUE_PLAN: &str = "overdue_plan";

/// What the extension read for one account and resource: everything [`combine`] needs at any
/// moment from `since_us` on.
#[derive(Debug, Clone, PartialEq)]
pub struct Entitlements {
    pub kind: Kind,
    pub window_seconds: Option<i32>,
    pub billable: Vec<StatusClass>,
    /// The account's billing anchor day.
    pub anchor: Option<i32>,
    /// Newest first (the newest override wins).
    pub rows: Vec<Row>,
    /// The rows are complete for every moment from this one on.
    pub since_us: i64,
    pub standing: Standing,
    /// The account's parent (uuid text), if it has one.
    pub parent: Option<String>,
}

impl Row {
    fn encode(&self, w: &mut Writer) -> bool {
        let dec = |w: &mut Writer, d: Decimal| {
            w.decimal(d);
            true
        };
        let text = |w: &mut Writer, s: &String| w.str(s);
        w.str(&self.source)
            && w.opt(self.limit, dec)
            && w.opt(self.period.as_ref(), text)
            && w.opt(self.enforcement.as_ref(), text)
            && w.opt(self.overage_cap, dec)
            && w.opt(self.grace, dec)
            && {
                w.bool(self.enabled);
                w.i64(self.valid_from_us);
                w.opt(self.valid_until_us, |w, u| {
                    w.i64(u);
                    true
                })
            }
    }

    fn decode(r: &mut Reader<'_>) -> Option<Row> {
        Some(Row {
            source: r.string()?,
            limit: r.opt(Reader::decimal)?,
            period: r.opt(Reader::string)?,
            enforcement: r.opt(Reader::string)?,
            overage_cap: r.opt(Reader::decimal)?,
            grace: r.opt(Reader::decimal)?,
            enabled: r.bool()?,
            valid_from_us: r.i64()?,
            valid_until_us: r.opt(Reader::i64)?,
        })
    }
}

impl Entitlements {
    /// The bytes kept in the shared cache; `None` when a string does not fit the encoding.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut w = Writer::default();
        let int = |w: &mut Writer, v: i32| {
            w.i32(v);
            true
        };
        let ok = w.str(self.kind.as_str())
            && w.opt(self.window_seconds, int)
            && w.opt(self.anchor, int)
            && {
                w.i64(self.since_us);
                w.u8(self.standing.code());
                w.u8(u8::try_from(self.billable.len()).ok()?);
                for b in &self.billable {
                    match *b {
                        StatusClass::Exact(code) => {
                            w.u8(0);
                            w.i32(i32::from(code));
                        }
                        StatusClass::Class(digit) => {
                            w.u8(1);
                            w.i32(i32::from(digit));
                        }
                    }
                }
                w.u8(u8::try_from(self.rows.len()).ok()?);
                self.rows.iter().all(|row| row.encode(&mut w))
            }
            && w.opt(self.parent.as_ref(), |w, p| w.str(p));
        ok.then_some(w.0)
    }

    pub fn decode(bytes: &[u8]) -> Option<Entitlements> {
        let mut r = Reader(bytes);
        let kind = Kind::from_str(&r.string()?).ok()?;
        let window_seconds = r.opt(Reader::i32)?;
        let anchor = r.opt(Reader::i32)?;
        let since_us = r.i64()?;
        let standing = Standing::from_code(r.u8()?)?;
        let billable = (0..r.u8()?)
            .map(|_| match (r.u8()?, r.i32()?) {
                (0, code) => u16::try_from(code).ok().map(StatusClass::Exact),
                (1, digit) => u8::try_from(digit).ok().map(StatusClass::Class),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let rows = (0..r.u8()?)
            .map(|_| Row::decode(&mut r))
            .collect::<Option<Vec<_>>>()?;
        let parent = r.opt(Reader::string)?;
        r.is_empty().then_some(Entitlements {
            kind,
            window_seconds,
            billable,
            anchor,
            rows,
            since_us,
            standing,
            parent,
        })
    }
}

/// Folds the rows in force at `at_us` (newest first) into one policy: the newest override
/// replaces the plan row; grants add their quantity to a finite limit. An overdue account under
/// [`Standing::DefaultPlan`] gets the default plan's row instead of its plan and overrides.
pub fn combine(resource_type: &str, f: &Entitlements, at_us: i64) -> Result<Effective, OutOfRange> {
    let kind = f.kind;
    let on_default_plan = f.standing == Standing::DefaultPlan;
    let in_force = || {
        f.rows
            .iter()
            .filter(|r| r.in_force(at_us))
            .filter(move |r| (r.source == OVERDUE_PLAN) == on_default_plan || r.source == "grant")
    };
    let base = if on_default_plan {
        in_force().find(|r| r.source == OVERDUE_PLAN)
    } else {
        in_force()
            .find(|r| r.source == "override")
            .or_else(|| in_force().find(|r| r.source == "plan"))
    };
    let grants = in_force()
        .filter(|r| r.source == "grant")
        .filter_map(|r| r.limit)
        .try_fold(Decimal::ZERO, Decimal::checked_add)
        .ok_or_else(out_of_range)?;
    let entitled = in_force().next().is_some();
    let default_period = kind.default_period().unwrap_or(Period::Month);
    let (policy, period, enabled) = match base {
        Some(b) => {
            let enforcement = b
                .enforcement
                .as_deref()
                .and_then(|e| Enforcement::from_str(e).ok());
            let limit = b
                .limit
                .map(|l| l.checked_add(grants).ok_or_else(out_of_range))
                .transpose()?;
            let mut policy = Policy::new(limit, enforcement.unwrap_or(Enforcement::Hard));
            // Leases are whole slots: no grace unless the catalog asks for it.
            policy.grace = b
                .grace
                .or((kind == Kind::Concurrency).then_some(Decimal::ZERO));
            policy.overage_cap = b.overage_cap;
            let period = b
                .period
                .as_deref()
                .and_then(|p| Period::from_str(p).ok())
                .unwrap_or(default_period);
            (policy, period, b.enabled)
        }
        None => (
            Policy::new(Some(grants), Enforcement::Hard),
            default_period,
            false,
        ),
    };
    Ok(Effective {
        resource_type: resource_type.to_string(),
        kind,
        window_seconds: f.window_seconds.and_then(|w| u32::try_from(w).ok()),
        policy,
        period,
        enabled: enabled || (kind != Kind::Feature && base.is_some()),
        entitled,
        anchor_day: f.anchor.and_then(|a| u8::try_from(a).ok()),
        billable: f.billable.clone(),
        blocked: f.standing == Standing::Blocked,
        parent: f.parent.clone(),
        inherited_from: None,
        downgraded: on_default_plan,
    })
}

/// The limit and the grants in force add up beyond what a [`Decimal`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange;

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the limit and grants in force add up beyond the range pg_mec counts in")
    }
}

fn out_of_range() -> OutOfRange {
    OutOfRange
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::default_billable;

    const DAY: i64 = 86_400_000_000;

    fn row(source: &str, limit: Option<i64>, from: i64, until: Option<i64>) -> Row {
        Row {
            source: source.into(),
            limit: limit.map(Decimal::from),
            period: Some("month".into()),
            enforcement: Some("hard".into()),
            overage_cap: None,
            grace: None,
            enabled: true,
            valid_from_us: from,
            valid_until_us: until,
        }
    }

    fn ents(kind: Kind, mut rows: Vec<Row>) -> Entitlements {
        rows.sort_by_key(|r| std::cmp::Reverse(r.valid_from_us));
        Entitlements {
            kind,
            window_seconds: None,
            billable: default_billable(),
            anchor: None,
            rows,
            since_us: 0,
            standing: Standing::Good,
            parent: None,
        }
    }

    #[test]
    fn the_plan_row_in_force_decides() {
        let e = ents(
            Kind::Metered,
            vec![
                row("plan", Some(100), 0, Some(10 * DAY)),
                row("plan", Some(500), 10 * DAY, None),
            ],
        );
        assert_eq!(
            combine("r", &e, 5 * DAY).unwrap().policy.limit,
            Some(Decimal::from(100))
        );
        assert_eq!(
            combine("r", &e, 10 * DAY).unwrap().policy.limit,
            Some(Decimal::from(500))
        );
    }

    #[test]
    fn an_override_replaces_the_plan_and_grants_add() {
        let e = ents(
            Kind::Metered,
            vec![
                row("plan", Some(100), 0, None),
                row("override", Some(40), DAY, Some(3 * DAY)),
                row("grant", Some(5), 2 * DAY, Some(4 * DAY)),
            ],
        );
        let at = |d: i64| combine("r", &e, d * DAY).unwrap().policy.limit;
        assert_eq!(at(0), Some(Decimal::from(100)));
        assert_eq!(at(1), Some(Decimal::from(40)));
        assert_eq!(at(2), Some(Decimal::from(45)));
        assert_eq!(
            at(3),
            Some(Decimal::from(105)),
            "the override expired, the grant still adds"
        );
        assert_eq!(at(4), Some(Decimal::from(100)));
    }

    #[test]
    fn unlimited_stays_unlimited_with_grants() {
        let e = ents(
            Kind::Metered,
            vec![row("plan", None, 0, None), row("grant", Some(5), 0, None)],
        );
        assert_eq!(combine("r", &e, DAY).unwrap().policy.limit, None);
    }

    #[test]
    fn no_row_in_force_is_not_entitled() {
        let e = ents(Kind::Metered, vec![row("plan", Some(100), 5 * DAY, None)]);
        let eff = combine("r", &e, DAY).unwrap();
        assert!(!eff.entitled);
        assert_eq!(eff.policy.limit, Some(Decimal::ZERO));
        let feature = ents(Kind::Feature, vec![]);
        assert!(!combine("f", &feature, DAY).unwrap().enabled);
    }

    #[test]
    fn concurrency_has_no_grace_unless_asked() {
        let e = ents(Kind::Concurrency, vec![row("plan", Some(2), 0, None)]);
        assert_eq!(
            combine("jobs", &e, DAY).unwrap().policy.grace,
            Some(Decimal::ZERO)
        );
    }

    #[test]
    fn grants_beyond_a_decimal_are_out_of_range() {
        let huge = Decimal::MAX;
        let mut g = row("grant", None, 0, None);
        g.limit = Some(huge);
        let e = ents(Kind::Metered, vec![row("plan", Some(1), 0, None), g]);
        assert_eq!(combine("r", &e, DAY).unwrap_err(), OutOfRange);
    }

    #[test]
    fn an_overdue_account_on_the_default_plan_keeps_only_its_grants() {
        let mut e = ents(
            Kind::Metered,
            vec![
                row("plan", Some(1000), 0, None),
                row("override", Some(5000), 0, None),
                row("grant", Some(5), 0, None),
                row(OVERDUE_PLAN, Some(10), 0, None),
            ],
        );
        let limit = |e: &Entitlements| combine("r", e, DAY).unwrap().policy.limit;
        assert_eq!(limit(&e), Some(Decimal::from(5005)), "in good standing");
        e.standing = Standing::DefaultPlan;
        assert_eq!(limit(&e), Some(Decimal::from(15)));
        e.rows
            .retain(|r| r.source != OVERDUE_PLAN && r.source != "grant");
        let eff = combine("r", &e, DAY).unwrap();
        assert!(!eff.entitled, "the default plan lacks the resource");
        assert_eq!(eff.policy.limit, Some(Decimal::ZERO));
        e.standing = Standing::Blocked;
        let eff = combine("r", &e, DAY).unwrap();
        assert!(eff.blocked && eff.entitled);
        assert_eq!(eff.policy.limit, Some(Decimal::from(5000)));
    }

    #[test]
    fn standing_follows_the_overdue_action() {
        assert_eq!(Standing::new(false, Some("block")), Standing::Good);
        assert_eq!(Standing::new(true, None), Standing::Good);
        assert_eq!(Standing::new(true, Some("flag")), Standing::Good);
        assert_eq!(Standing::new(true, Some("block")), Standing::Blocked);
        assert_eq!(
            Standing::new(true, Some("default_plan")),
            Standing::DefaultPlan
        );
    }

    #[test]
    fn encodes_and_decodes_for_the_shared_cache() {
        let e = ents(
            Kind::Metered,
            vec![
                row("plan", Some(100), 0, None),
                row("grant", Some(5), DAY, Some(2 * DAY)),
            ],
        );
        let bytes = e.encode().unwrap();
        assert_eq!(Entitlements::decode(&bytes), Some(e.clone()));
        assert_eq!(Entitlements::decode(&bytes[..bytes.len() - 1]), None);
        let mut blocked = e;
        blocked.standing = Standing::Blocked;
        blocked.parent = Some("0a0a0a0a-0000-4000-8000-00000000a001".into());
        let bytes = blocked.encode().unwrap();
        assert_eq!(Entitlements::decode(&bytes), Some(blocked.clone()));
        let eff = combine("x", &blocked, DAY / 2).unwrap();
        assert_eq!(eff.parent, blocked.parent);
    }
}
