//! Pure logic of pg_mec — periods, enforcement decisions, billability and catalog validation —
//! with no pgrx types and no Postgres, so it can be tested with plain `cargo test`.
//!
//! * [`access`] — `check_policy`'s decision: a plan's access policy applied to one request.
//! * [`alerts`] — the usage alerts a limit has: thresholds' shares of it, and where stripes stop.
//! * [`period`] — period and rate windows in Unix microseconds UTC.
//! * [`enforcement`] — hard / soft / capped limits: [`Policy::decide`] and its stable reasons.
//! * [`entitlement`] — the entitlement in force: the plan's row, an override, grants, at a moment.
//! * [`bearer`] — shared bearer secrets (Auth0's log streams), compared in constant time.
//! * [`billing`] — which HTTP statuses make an event billable.
//! * [`catalog`] — validating a catalog document into a typed [`Catalog`], or every [`Problem`].
//! * [`quantity`] — which quantities pg_mec counts exactly, and the bound on every counter.
//! * [`civil`] — the calendar arithmetic behind [`period`].
//! * [`stripe_signature`] — Stripe's `Stripe-Signature` webhook header, verified.
//! * [`time`] — instants as RFC 3339 text and back.
//! * [`codec`] — the byte encoding of values kept in shared memory.
//! * [`sql_text`] — what `stmt!` checks of an SQL text at compile time (its highest `$n`).
//!
//! ```
//! use pg_mec_core::{catalog, period_window, Decimal};
//! use serde_json::json;
//!
//! let doc = json!({
//!     "resources": [{"resource_type": "benchmark_runs", "kind": "metered"}],
//!     "plans": [{"plan_id": "starter", "entitlements": {
//!         "benchmark_runs": {"limit": 100, "enforcement": "capped", "overage_cap": 50}}}]
//! });
//! let cat = catalog::validate(&doc).expect("valid");
//! let ent = cat.plan("starter").and_then(|p| p.entitlement("benchmark_runs")).expect("entitled");
//! let d = ent.policy().decide(Decimal::from(120), Decimal::from(10));
//! assert!(d.allowed && d.overage);
//! assert_eq!(d.reason, "overage_allowed");
//! let window = period_window(ent.period.expect("metered"), 1_795_000_000_000_000, None);
//! assert!(window.contains(1_795_000_000_000_000));
//!
//! let bad = catalog::validate(&json!({"resources": [], "plans": [{"plan_id": "X"}]}));
//! let paths: Vec<String> = bad.unwrap_err().into_iter().map(|p| p.path).collect();
//! assert_eq!(paths, ["$.resources", "$.plans[0].plan_id"]);
//! ```

pub mod access;
pub mod alerts;
pub mod bearer;
pub mod billing;
pub mod catalog;
pub mod civil;
pub mod codec;
pub mod enforcement;
pub mod entitlement;
pub mod parse;
pub mod period;
pub mod quantity;
pub mod sql_text;
pub mod stripe_signature;
pub mod time;

pub use billing::{default_billable, is_billable, StatusClass, StatusClassError};
pub use catalog::{
    canonical_json, digest, validate, Catalog, Kind, Plan, PlanEntitlement, Problem, Resource,
};
pub use enforcement::{Decision, Enforcement, Policy};
pub use parse::ParseEnumError;
pub use period::{period_window, rate_window, Period, Window};
pub use rust_decimal::Decimal;
