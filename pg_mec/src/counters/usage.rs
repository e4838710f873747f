//! How much of a resource an account has used in the window that applies: counters for metered
//! and gauge resources, the sliding window for rates (`counters/rate.rs`), held leases for
//! concurrency.

use pg_mec_core::catalog::Kind;
use pg_mec_core::period::Window;
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::cache::entitlement::Effective;
use crate::counters::rate::{self, RateKey};
use crate::pg::spi::{self, stmt};
use crate::pg::values::{iso8601, num, opt_num, timestamptz, to_decimal, ts_json};
use crate::pg::{MecError, MecResult};

stmt! {
    /// The counter's slots (one row unless the counter is striped), summed in Rust: an aggregate
    /// node would cost more to start per call than the rows cost to add.
    static COUNTER_SLOTS: read (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz) =
        "SELECT used, updated_at, has_holds
              FROM mec_data.usage_counters
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4";
}

stmt! {
    /// Quota still held by reservations that expired (given back lazily, when quota runs short).
    static EXPIRED_HOLDS: read (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz) =
        "SELECT coalesce(sum(quantity), 0)
              FROM mec_data.reservations
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4
                AND state = 'held' AND expires_at <= clock_timestamp()";
}

stmt! {
    static ACTIVE_LEASES: read (ns: uuid, account_id: uuid, resource_type: text) =
        "SELECT count(*)::int4 AS active, min(expires_at) AS soonest_expiry, max(acquired_at) AS last_acquired
              FROM mec_data.leases
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                AND released_at IS NULL AND expires_at > clock_timestamp()";
}

/// Usage in the window of `at_us`, as the limit sees it.
pub struct Usage {
    pub used: Decimal,
    pub window: Window,
    /// When usage last changed (Unix µs).
    pub updated_us: Option<i64>,
    /// When a slot frees up or the window ends: `reset_at` of denials.
    pub reset_us: Option<i64>,
}

fn counter(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    resource: &str,
    start_us: i64,
) -> MecResult<(Decimal, Option<i64>)> {
    let start: TimestampWithTimeZone = timestamptz(start_us);
    let slots = spi::read(
        client,
        &COUNTER_SLOTS,
        &[ns.into(), account.into(), resource.into(), start.into()],
    )?;
    let mut used = Decimal::ZERO;
    let mut updated: Option<i64> = None;
    let mut has_holds = false;
    for slot in slots {
        if let Some(n) = slot.get::<AnyNumeric>("used")? {
            used = used
                .checked_add(to_decimal(&n)?)
                .ok_or_else(|| MecError::invalid("usage exceeds the range pg_mec counts in"))?;
        }
        let at = slot
            .get::<TimestampWithTimeZone>("updated_at")?
            .and_then(|t| crate::pg::values::unix_us(t).ok());
        updated = updated.max(at);
        has_holds |= slot.get::<bool>("has_holds")?.unwrap_or(false);
    }
    // A read never counts a hold that expired, even before its quota is given back; only counters
    // that ever held a reservation pay for the look.
    if has_holds {
        let expired = spi::read(
            client,
            &EXPIRED_HOLDS,
            &[ns.into(), account.into(), resource.into(), start.into()],
        )?
        .one::<AnyNumeric>()?;
        if let Some(e) = expired.as_ref().map(to_decimal).transpose()? {
            used = used.saturating_sub(e);
        }
    }
    Ok((used, updated))
}

/// Reads the usage that `eff` limits, for the window containing `at_us`.
pub fn read(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    eff: &Effective,
    at_us: i64,
) -> MecResult<Usage> {
    let window = eff.window(at_us);
    match eff.kind {
        Kind::Concurrency => {
            let (count, soonest, last) = spi::read(
                client,
                &ACTIVE_LEASES,
                &[ns.into(), account.into(), eff.resource_type.as_str().into()],
            )?
            .three::<i32, TimestampWithTimeZone, TimestampWithTimeZone>(
                "active",
                "soonest_expiry",
                "last_acquired",
            )?;
            Ok(Usage {
                used: Decimal::from(count.unwrap_or(0)),
                window,
                updated_us: last.and_then(|t| crate::pg::values::unix_us(t).ok()),
                reset_us: soonest.and_then(|t| crate::pg::values::unix_us(t).ok()),
            })
        }
        Kind::Rate => {
            let key = rate_key(eff, account);
            let r = rate::used(client, ns, &key, at_us)?;
            Ok(Usage {
                used: r.used,
                window,
                updated_us: r.updated_us,
                // when this request fits is asked of rate::fit_at by the refusal that needs it
                reset_us: None,
            })
        }
        _ => {
            let (used, updated) =
                counter(client, ns, account, &eff.resource_type, window.start_us)?;
            Ok(Usage {
                used,
                window,
                updated_us: updated,
                reset_us: window.end_us,
            })
        }
    }
}

/// The sliding window a rate resource's limit counts over, for `account`.
pub fn rate_key<'a>(eff: &'a Effective, account: Uuid) -> RateKey<'a> {
    RateKey {
        account_id: account,
        resource_type: &eff.resource_type,
        scope: None,
        window_us: i64::from(eff.window_seconds.unwrap_or(1)) * 1_000_000,
    }
}

/// For a rate: when `requested` more units first fit under the ceiling if nothing else is counted
/// meanwhile (a denial's true `reset_at`); `None` for other kinds, no ceiling, or never.
pub fn rate_fit_at(
    client: &SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    eff: &Effective,
    at_us: i64,
    requested: Decimal,
) -> MecResult<Option<i64>> {
    let (Kind::Rate, Some(ceiling)) = (eff.kind, eff.policy.ceiling()) else {
        return Ok(None);
    };
    rate::fit_at(
        client,
        ns,
        &rate_key(eff, account),
        at_us,
        ceiling,
        requested,
    )
}

/// The answer of `check_entitlement` for `requested` more units.
pub fn check_result(eff: &Effective, usage: &Usage, requested: Decimal) -> Value {
    let period_start = if eff.kind == Kind::Concurrency {
        Value::Null
    } else {
        ts_json(Some(usage.window.start_us))
    };
    let period_end = if eff.kind == Kind::Concurrency {
        Value::Null
    } else {
        ts_json(usage.window.end_us)
    };
    if eff.kind == Kind::Feature {
        let on = eff.enabled && eff.entitled && !eff.blocked;
        let reason = if eff.blocked {
            "payment_overdue"
        } else if on {
            "feature_enabled"
        } else if eff.entitled {
            "feature_disabled"
        } else {
            "not_entitled"
        };
        return json!({
            "decision": if on { "allow" } else { "deny" },
            "reason": reason,
            "resource_type": eff.resource_type,
            "kind": eff.kind.as_str(),
            "quantity_allowed": if on { 1 } else { 0 },
            "quantity_used": Value::Null,
            "quantity_remaining": if on { 1 } else { 0 },
            "percent_used": Value::Null,
            "period_start": Value::Null,
            "period_end": Value::Null,
            "enforcement": eff.policy.enforcement.as_str(),
        });
    }
    let decision = eff.policy.decide(usage.used, requested);
    let allowed = decision.allowed && !eff.blocked;
    let reason = if eff.blocked {
        "payment_overdue"
    } else if !eff.entitled {
        "not_entitled"
    } else {
        decision.reason
    };
    json!({
        "decision": if allowed { "allow" } else { "deny" },
        "reason": reason,
        "resource_type": eff.resource_type,
        "kind": eff.kind.as_str(),
        "quantity_allowed": opt_num(eff.policy.limit),
        "quantity_used": num(usage.used),
        "quantity_remaining": opt_num(eff.policy.remaining(usage.used)),
        "percent_used": opt_num(eff.policy.percent_used(usage.used)),
        "overage": allowed && decision.overage,
        "period_start": period_start,
        "period_end": period_end,
        "enforcement": eff.policy.enforcement.as_str(),
    })
}

/// One entry of a denial's `violated_policies`. `ceiling` is where the caller is refused (the
/// limit plus grace or overage cap), `window_seconds` the length of the window or period the limit
/// counts over (none for lifetime limits and leases): what the gateway's RateLimit headers say.
pub fn violated_policy(eff: &Effective, usage: &Usage) -> Value {
    let window_seconds = match (eff.kind, eff.window_seconds) {
        (Kind::Rate, Some(w)) => Value::from(w),
        (Kind::Concurrency, _) => Value::Null,
        _ => usage
            .window
            .end_us
            .map(|end| Value::from((end - usage.window.start_us) / 1_000_000))
            .unwrap_or(Value::Null),
    };
    json!({
        "window_seconds": window_seconds,
        "policy": eff.resource_type,
        "kind": eff.kind.as_str(),
        "limit": opt_num(eff.policy.limit),
        "ceiling": opt_num(eff.policy.ceiling()),
        "current": num(usage.used),
        "window": eff.window_json(),
        "reset_at": usage.reset_us.map(iso8601),
        "enforcement": eff.policy.enforcement.as_str(),
    })
}
