//! Account hierarchies: `parent_account_id` (organisation → team → member or API key, at most four
//! levels, no cycles) and the ancestors' pools.
//!
//! An account without an entitlement of its own inherits its nearest entitled ancestor's
//! (`cache::entitlement::resolve`). Metered and gauge usage of an account also counts against
//! every ancestor that has an entitlement of its own to the resource — its *pool*, the ancestor's
//! own counter, in the ancestor's period. Metering decides every level at once: the pools' counter
//! rows are locked and checked (nearest ancestor first, always in that order) before the account's
//! own counter, so a refusal at any level records nothing at any level, and concurrent members never
//! pass a pool's limit. A busy organisation's pool is a hot counter: a backend that keeps waiting
//! on it takes its share of each event on its own stripe of the pool (`counters/stripes.rs`),
//! given back if the event is then refused or replayed. Rate and concurrency limits are not pooled:
//! a member without its own inherits the ancestor's limit for its own use.

use std::time::Instant;

use pg_mec_core::catalog::Kind;
use pg_mec_core::period::Window;
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::cache::entitlement::{self, Effective, MAX_ANCESTORS};
use crate::counters::{stripes, usage, CounterKey};
use crate::ledger::audit::audit;
use crate::ledger::Event;
use crate::ops::provisioning;
use crate::pg::context::parse_uuid;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{iso8601, num, opt_num, timestamptz, to_decimal, to_numeric};
use crate::pg::{MecError, MecResult};

stmt! {
    static ENSURE_COUNTER: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, period_end: timestamptz) =
        "INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start, slot, period_end)
              VALUES ($1, $2, $3, $4, 0, $5)
              ON CONFLICT DO NOTHING";
}

stmt! {
    /// Slot 0 of a pool's counter, locked: its usage and the quota granted to its stripes (which
    /// the guard counts as used, as METER_SLOT0 does).
    static LOCK_POOL: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz) =
        "SELECT used, stripe_quota FROM mec_data.usage_counters
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0
              FOR UPDATE";
}

stmt! {
    /// Adds to slot 0 and answers the pool's total (its stripes, the pool's own hot metering, included).
    static ADD: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, quantity: numeric) =
        "WITH upd AS (
              UPDATE mec_data.usage_counters SET used = used + $5, updated_at = now()
               WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND period_start = $4 AND slot = 0
              RETURNING used)
         SELECT (SELECT used FROM upd) + (SELECT coalesce(sum(used), 0) FROM mec_data.usage_counters
                                           WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                                             AND period_start = $4 AND slot > 0) AS used";
}

stmt! {
    static PARENT_OF: read (ns: uuid, account_id: uuid) =
        "SELECT parent_account_id FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2";
}

stmt! {
    /// How many levels hang below the account (0: no children).
    static HEIGHT: read (ns: uuid, account_id: uuid) =
        "WITH RECURSIVE below(account_id, depth) AS (
              SELECT account_id, 1 FROM mec_data.accounts WHERE namespace_id = $1 AND parent_account_id = $2
              UNION ALL
              SELECT a.account_id, b.depth + 1 FROM mec_data.accounts a
                JOIN below b ON a.namespace_id = $1 AND a.parent_account_id = b.account_id
               WHERE b.depth < 8)
         SELECT coalesce(max(depth), 0)::int4 FROM below";
}

stmt! {
    static SET_PARENT: write (ns: uuid, account_id: uuid, parent_account_id: uuid) =
        "UPDATE mec_data.accounts SET parent_account_id = $3, updated_at = now()
              WHERE namespace_id = $1 AND account_id = $2";
}

stmt! {
    static LOCK_HIERARCHY: write (ns: text) =
        "SELECT pg_advisory_xact_lock(1835361125, hashtext($1))";
}

stmt! {
    static LOCK_ACCOUNT: write (ns: uuid, account_id: uuid) =
        "SELECT parent_account_id FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2 FOR UPDATE";
}

/// What [`prepare`] found.
pub enum Pools {
    /// The key was recorded before: its first answer.
    Replay(Value),
    /// The pools to count the event in once it is recorded (locked, with room).
    Go(Vec<Pool>),
}

/// One ancestor's pool an event counts against.
pub struct Pool {
    pub account_id: Uuid,
    pub eff: Effective,
    counter: String,
    window: Window,
    start: TimestampWithTimeZone,
    end: Option<TimestampWithTimeZone>,
    /// Counted on this backend's stripe of the pool's counter (a hot pool): its total after.
    stripe_total: Option<Decimal>,
    /// Slot 0 had quota granted to stripes when the event was decided on it.
    striped: bool,
}

impl Pool {
    fn key(&self) -> CounterKey<'_> {
        CounterKey {
            account_id: self.account_id,
            resource_type: &self.counter,
            window: self.window,
        }
    }

    /// Whether the event was counted on this backend's stripe of the pool (see [`give_back`]).
    pub fn on_stripe(&self) -> bool {
        self.stripe_total.is_some()
    }
}

/// Whether usage of `eff`'s kind is pooled in ancestors.
fn pooled(eff: &Effective) -> bool {
    matches!(eff.kind, Kind::Metered | Kind::Gauge)
}

/// The ancestors of an account whose entitlement has `parent` as its parent, nearest first, each
/// with its own entitlement to `resource` at `at_us`. `ME402` when one is blocked for payment.
fn ancestors(
    client: &SpiClient<'_>,
    ns: Uuid,
    parent: Option<&str>,
    resource: &str,
    at_us: i64,
) -> MecResult<Vec<(Uuid, Effective)>> {
    let mut out = Vec::new();
    let mut next = parent.and_then(parse_uuid);
    while let Some(account) = next {
        if out.len() >= MAX_ANCESTORS {
            break;
        }
        let eff = entitlement::resolve_own(client, ns, account, resource, at_us)?;
        next = eff.parent.as_deref().and_then(parse_uuid);
        out.push((account, eff));
    }
    Ok(out)
}

/// The pools `ev` counts against (ancestors entitled to its resource, nearest first), without
/// locking anything: for reads.
fn pools_of(
    client: &SpiClient<'_>,
    ns: Uuid,
    eff: &Effective,
    resource: &str,
    at_us: i64,
) -> MecResult<Vec<Pool>> {
    if eff.parent.is_none() || !pooled(eff) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (account, a) in ancestors(client, ns, eff.parent.as_deref(), resource, at_us)? {
        if !a.entitled {
            continue;
        }
        let w = a.window(at_us);
        out.push(Pool {
            account_id: account,
            counter: resource.to_string(),
            window: w,
            start: timestamptz(w.start_us),
            end: w.end_us.map(timestamptz),
            eff: a,
            stripe_total: None,
            striped: false,
        });
    }
    Ok(out)
}

/// Locks and checks every pool `ev` counts against: `ME429` naming each pool it would pass,
/// `ME402` when an ancestor is blocked for payment. Nothing is written but empty counter rows.
pub fn prepare(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    ev: &Event,
    eff: &Effective,
) -> MecResult<Pools> {
    if eff.parent.is_none() {
        return Ok(Pools::Go(Vec::new()));
    }
    for (account, a) in ancestors(
        client,
        ns,
        eff.parent.as_deref(),
        &ev.resource_type,
        ev.occurred_us,
    )? {
        if a.blocked {
            // A key recorded before the ancestor fell overdue still answers as the first time.
            if let Some(v) = crate::ledger::replay::replay_if_recorded(client, ns, ev)? {
                return Ok(Pools::Replay(v));
            }
            return Err(MecError::PaymentOverdue {
                account_id: account.to_string(),
            });
        }
    }
    if !pooled(eff) {
        return Ok(Pools::Go(Vec::new()));
    }
    let mut pools = pools_of(client, ns, eff, &ev.resource_type, ev.occurred_us)?;
    let mut violated = Vec::new();
    // Farthest ancestor first: every call locks counter rows down the hierarchy (an ancestor's
    // before a descendant's, the account's own last), so two levels never wait on each other.
    for p in pools.iter_mut().rev() {
        // A hot pool (a busy organisation): the event takes quota slot 0 granted this backend's
        // stripe, as an account's own hot counter does (`counters/stripes.rs`); what it cannot take
        // there is decided on slot 0 after a fold, with the exact total.
        let stripable = p.eff.kind == Kind::Metered && ev.quantity > Decimal::ZERO;
        if stripable && stripes::is_hot(ns, &p.key()) {
            let fences = crate::events::alerts::fences(client, ns, &p.eff)?;
            let taken = stripes::take(
                client,
                ns,
                &p.key(),
                p.eff.policy.limit,
                ev.quantity,
                &fences,
            )?;
            if taken.is_some() {
                p.stripe_total = taken;
                continue;
            }
        }
        let started = Instant::now();
        let mut state = ensure_and_lock(client, ns, p)?;
        if stripable && started.elapsed() >= stripes::CONTENDED {
            stripes::saw_slow(ns, &p.key());
        }
        // Only the ceiling: a gauge's release is never refused by a pool (which may hold less than
        // the account released if the account joined it with usage already counted elsewhere).
        let fits = |(used, quota): (Decimal, Decimal)| {
            let after = used.saturating_add(quota).saturating_add(ev.quantity);
            ev.quantity <= Decimal::ZERO || p.eff.policy.ceiling().is_none_or(|c| after <= c)
        };
        // Quota granted to the pool's stripes counts as used until they give it back; and while
        // they hold some, slot 0 may not reach an alert value (the stripes could pass it
        // unnoticed): such an event is decided after a fold, on the exact total.
        if state.1 > Decimal::ZERO
            && (!fits(state) || crosses_fence(client, ns, p, state, ev.quantity)?)
        {
            stripes::fold(client, ns, &p.key())?;
            state = lock(client, ns, p)?;
        }
        p.striped = state.1 > Decimal::ZERO;
        if !fits(state) {
            let window = p.eff.window(ev.occurred_us);
            violated.push(json!({
                "policy": ev.resource_type,
                "pool_account_id": p.account_id.to_string(),
                "kind": p.eff.kind.as_str(),
                "limit": opt_num(p.eff.policy.limit),
                "ceiling": opt_num(p.eff.policy.ceiling()),
                "current": num(state.0.saturating_add(state.1)),
                "window": p.eff.window_json(),
                "window_seconds": window.end_us.map(|e| Value::from((e - window.start_us) / 1_000_000)),
                "reset_at": window.end_us.map(iso8601),
                "enforcement": p.eff.policy.enforcement.as_str(),
            }));
        }
    }
    if !violated.is_empty() {
        give_back(client, ns, &pools, ev.quantity)?;
        if let Some(v) = crate::ledger::replay::replay_if_recorded(client, ns, ev)? {
            return Ok(Pools::Replay(v));
        }
        let names: Vec<String> = violated
            .iter()
            .filter_map(|v| v["pool_account_id"].as_str().map(str::to_string))
            .collect();
        return Err(MecError::LimitReached {
            resource: format!(
                "{} (pool of account {})",
                ev.resource_type,
                names.join(", ")
            ),
            violated: Value::Array(violated),
        });
    }
    Ok(Pools::Go(pools))
}

/// Whether adding `qty` on slot 0 of the pool (its (used, stripe quota) in `state`) could reach
/// one of its alert values while its stripes hold quota.
fn crosses_fence(
    client: &SpiClient<'_>,
    ns: Uuid,
    p: &Pool,
    (used, quota): (Decimal, Decimal),
    qty: Decimal,
) -> MecResult<bool> {
    let upper = used.saturating_add(quota).saturating_add(qty);
    Ok(crate::events::alerts::fences(client, ns, &p.eff)?
        .iter()
        .any(|f| *f > used && *f <= upper))
}

/// Gives back what the event took on the stripes of hot pools ([`prepare`]): it was not recorded.
pub fn give_back(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    pools: &[Pool],
    quantity: Decimal,
) -> MecResult<()> {
    for p in pools.iter().filter(|p| p.on_stripe()) {
        stripes::give_back(client, ns, &p.key(), quantity)?;
    }
    Ok(())
}

/// Creates the pool's counter row if it is missing.
fn ensure(client: &mut SpiClient<'_>, ns: Uuid, p: &Pool) -> MecResult<()> {
    spi::write(
        client,
        &ENSURE_COUNTER,
        &[
            ns.into(),
            p.account_id.into(),
            p.counter.as_str().into(),
            p.start.into(),
            p.end.into(),
        ],
    )?;
    Ok(())
}

/// [`ensure`], then [`lock`].
fn ensure_and_lock(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    p: &Pool,
) -> MecResult<(Decimal, Decimal)> {
    ensure(client, ns, p)?;
    lock(client, ns, p)
}

/// Locks slot 0 of the pool's counter: (used, stripe_quota).
fn lock(client: &mut SpiClient<'_>, ns: Uuid, p: &Pool) -> MecResult<(Decimal, Decimal)> {
    let (used, quota) = spi::write(
        client,
        &LOCK_POOL,
        &[
            ns.into(),
            p.account_id.into(),
            p.counter.as_str().into(),
            p.start.into(),
        ],
    )?
    .two::<AnyNumeric, AnyNumeric>("used", "stripe_quota")?;
    let dec = |v: Option<AnyNumeric>| -> MecResult<Decimal> {
        Ok(v.as_ref().map(to_decimal).transpose()?.unwrap_or_default())
    };
    Ok((dec(used)?, dec(quota)?))
}

/// Creates and locks every pool's counter row, farthest ancestor first, without a check: for a
/// correction, before it locks the account's own counter (the order metering keeps).
pub fn lock_all(client: &mut SpiClient<'_>, ns: Uuid, pools: &[Pool]) -> MecResult<()> {
    for p in pools.iter().rev() {
        ensure_and_lock(client, ns, p)?;
    }
    Ok(())
}

/// Counts `quantity` (a recorded event, or a correction) in each pool. Returns each pool's total
/// after it, in the order of `pools`.
pub fn count(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    pools: &[Pool],
    quantity: Decimal,
) -> MecResult<Vec<Decimal>> {
    let mut totals = Vec::with_capacity(pools.len());
    for p in pools {
        if let Some(total) = p.stripe_total {
            // Counted on this backend's stripe when the pool was decided.
            totals.push(total);
            continue;
        }
        ensure(client, ns, p)?;
        let total = spi::write(
            client,
            &ADD,
            &[
                ns.into(),
                p.account_id.into(),
                p.counter.as_str().into(),
                p.start.into(),
                to_numeric(quantity).into(),
            ],
        )?
        .decimal_or_zero()?;
        totals.push(total);
        if p.striped {
            // The burst may be over: idle stripes go back into slot 0 (never waits).
            stripes::fold_if_idle(client, ns, &p.key())?;
        }
    }
    Ok(totals)
}

/// The usage alerts the pools crossed with an event the account recorded (`consumption_id`): an
/// organisation hears of its members' usage as of its own.
pub fn alert(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    pools: &[Pool],
    totals: &[Decimal],
    at_us: i64,
    consumption_id: Uuid,
) -> MecResult<()> {
    for (p, used) in pools.iter().zip(totals) {
        crate::events::alerts::after_usage(
            client,
            ns,
            &crate::events::alerts::Usage {
                account_id: p.account_id,
                eff: &p.eff,
                window: &p.eff.window(at_us),
                used: *used,
                consumption_id: Some(consumption_id),
            },
        )?;
    }
    Ok(())
}

/// The pools of the account whose entitlement is `eff`, at `at_us`, nearest first (for a
/// correction: counted without a limit check, the admin's statement of what happened).
pub fn pools(
    client: &SpiClient<'_>,
    ns: Uuid,
    eff: &Effective,
    at_us: i64,
) -> MecResult<Vec<Pool>> {
    pools_of(client, ns, eff, &eff.resource_type, at_us)
}

/// Each pool's usage as a check or summary shows it: `[{account_id, quantity_used,
/// quantity_allowed, quantity_remaining, decision}]` for `requested` more.
pub fn pool_answers(
    client: &SpiClient<'_>,
    ns: Uuid,
    eff: &Effective,
    at_us: i64,
    requested: Decimal,
) -> MecResult<Vec<Value>> {
    let mut out = Vec::new();
    for p in pools_of(client, ns, eff, &eff.resource_type, at_us)? {
        let used = usage::read(client, ns, p.account_id, &p.eff, at_us)?.used;
        let d = p.eff.policy.decide(used, requested);
        out.push(json!({
            "account_id": p.account_id.to_string(),
            "decision": if d.allowed && !p.eff.blocked { "allow" } else { "deny" },
            "quantity_used": num(used),
            "quantity_allowed": opt_num(p.eff.policy.limit),
            "quantity_remaining": opt_num(p.eff.policy.remaining(used)),
            "enforcement": p.eff.policy.enforcement.as_str(),
        }));
    }
    Ok(out)
}

/// Whether `account` meters `resource` into pools (reservations are refused there: a hold is not
/// carried up the hierarchy yet).
pub fn has_pools(client: &SpiClient<'_>, ns: Uuid, eff: &Effective, at_us: i64) -> MecResult<bool> {
    Ok(!pools_of(client, ns, eff, &eff.resource_type, at_us)?.is_empty())
}

/// `set_parent_account`: puts `account` (created without a plan if missing) under `parent`, or
/// makes it top-level (`None`). Refuses cycles and hierarchies deeper than four levels.
pub fn set_parent(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    account: Uuid,
    parent: Option<Uuid>,
) -> MecResult<Value> {
    // One change of a namespace's hierarchy at a time: two concurrent moves could otherwise each
    // pass the cycle and depth checks against the other's old state.
    spi::write(client, &LOCK_HIERARCHY, &[ns.to_string().into()])?;
    let created = provisioning::create_account(client, ns, account, None)?;
    let previous =
        spi::write(client, &LOCK_ACCOUNT, &[ns.into(), account.into()])?.one::<Uuid>()?;
    let mut chain = Vec::new();
    if let Some(p) = parent {
        if p == account {
            return Err(MecError::invalid("an account cannot be its own parent"));
        }
        // The new parent's ancestors, nearest first: the account may be none of them.
        let mut next = Some(p);
        while let Some(a) = next {
            if a == account {
                return Err(MecError::invalid_hint(
                    format!("account {p} is below account {account}: that would make a cycle"),
                    "Move the lower account elsewhere first.",
                ));
            }
            let row = spi::read(client, &PARENT_OF, &[ns.into(), a.into()])?.first();
            let Some(row) = row else {
                return Err(MecError::unknown("account", a.to_string()));
            };
            chain.push(a);
            if chain.len() > MAX_ANCESTORS + 1 {
                break;
            }
            next = row.get::<Uuid>("parent_account_id")?;
        }
        let height = spi::read(client, &HEIGHT, &[ns.into(), account.into()])?
            .one::<i32>()?
            .unwrap_or(0);
        let levels = chain.len() + 1 + usize::try_from(height).unwrap_or(usize::MAX);
        if levels > MAX_ANCESTORS + 1 {
            return Err(MecError::invalid_hint(
                format!(
                    "the hierarchy would have {levels} levels; at most {}",
                    MAX_ANCESTORS + 1
                ),
                "Hierarchies go organisation → team → member → key at most.",
            ));
        }
    }
    if previous != parent {
        spi::write(
            client,
            &SET_PARENT,
            &[ns.into(), account.into(), parent.into()],
        )?;
        audit(
            client,
            ns,
            "set_parent_account",
            &account.to_string(),
            json!({"parent_account_id": parent.map(|p| p.to_string()),
                   "previous_parent_account_id": previous.map(|p| p.to_string())}),
        )?;
    }
    Ok(json!({
        "account_id": account.to_string(),
        "parent_account_id": parent.map(|p| p.to_string()),
        "previous_parent_account_id": previous.map(|p| p.to_string()),
        "created": created,
        "changed": previous != parent,
        "ancestors": chain.iter().map(Uuid::to_string).collect::<Vec<_>>(),
    }))
}
