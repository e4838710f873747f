//! The entitlement in force for one account and resource at one moment: the plan's row, replaced by
//! an override, raised by grants (`pg_mec_core::entitlement::combine`). One indexed query per
//! account and resource, then answered from this backend's cache until a change to the tables it
//! read invalidates it (`pg/invalidation.rs`), and from the cluster's shared cache (`shared.rs`).

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::rc::Rc;
use std::str::FromStr;

use pg_mec_core::billing::{default_billable, StatusClass};
use pg_mec_core::catalog::Kind;
pub use pg_mec_core::entitlement::Effective;
use pg_mec_core::entitlement::{combine, Entitlements, Row, Standing, OVERDUE_PLAN};
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;

use crate::cache::shared;
use crate::pg::clock;
use crate::pg::invalidation;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{timestamptz, to_decimal};
use crate::pg::{MecError, MecResult};

stmt! {
    /// Every entitlement row of one account and resource still in force at or after `$4`, with the
    /// resource's and the account's header columns (one row with NULL entitlement columns when there
    /// is none). The moment of the call is applied in Rust, so one fetch serves any later moment.
    static LOOKUP: read (ns: uuid, account_id: uuid, resource_type: text, since: timestamptz) =
        "SELECT a.account_id, r.kind, r.window_seconds, r.billable_statuses::text,
                     a.billing_anchor_day::int4, a.payment_overdue, n.settings->>'overdue_action' AS overdue_action,
                     a.parent_account_id::text AS parent,
                     e.source, e.quantity_limit, e.period, e.enforcement,
                     e.overage_cap, e.grace, e.enabled, e.valid_from, e.valid_until
              FROM mec_data.accounts a
              JOIN mec_data.namespaces n ON n.namespace_id = a.namespace_id
              JOIN mec_data.resource_types r
                ON r.namespace_id = a.namespace_id AND r.resource_type = $3
              LEFT JOIN mec_data.entitlements e
                ON e.namespace_id = a.namespace_id AND e.account_id = a.account_id
               AND e.resource_type = $3 AND (e.valid_until IS NULL OR e.valid_until > $4)
              WHERE a.namespace_id = $1 AND a.account_id = $2";
}

stmt! {
    /// LOOKUP for the next `$4` accounts of the namespace after account `$3` (in account order):
    /// one chunk of what a backend loads when it keeps missing the cache for one resource.
    static LOOKUP_CHUNK: read (ns: uuid, resource_type: text, after_account: uuid, accounts: int8, since: timestamptz) =
        "SELECT a.account_id, r.kind, r.window_seconds, r.billable_statuses::text,
                     a.billing_anchor_day::int4, a.payment_overdue, n.settings->>'overdue_action' AS overdue_action,
                     a.parent_account_id::text AS parent,
                     e.source, e.quantity_limit, e.period, e.enforcement,
                     e.overage_cap, e.grace, e.enabled, e.valid_from, e.valid_until
              FROM (SELECT namespace_id, account_id, billing_anchor_day, payment_overdue, parent_account_id
                      FROM mec_data.accounts
                    WHERE namespace_id = $1 AND account_id > $3
                    ORDER BY account_id LIMIT $4) a
              JOIN mec_data.namespaces n ON n.namespace_id = $1
              JOIN mec_data.resource_types r
                ON r.namespace_id = $1 AND r.resource_type = $2
              -- LATERAL (kept so by OFFSET 0): one index probe per account, never a scan of all
              -- the namespace's entitlements
              LEFT JOIN LATERAL (
                    SELECT * FROM mec_data.entitlements x
                    WHERE x.namespace_id = $1 AND x.account_id = a.account_id AND x.resource_type = $2
                      AND (x.valid_until IS NULL OR x.valid_until > $5)
                    OFFSET 0) e ON true";
}

stmt! {
    /// The namespace's default plan's row for one resource: what an overdue account gets under
    /// `overdue_action = default_plan`.
    static OVERDUE_PLAN_ROW: read (ns: uuid, resource_type: text) =
        "SELECT pe.quantity_limit, pe.period, pe.enforcement, pe.overage_cap, pe.grace, pe.enabled
              FROM mec_data.namespaces n
              JOIN mec_data.plan_entitlements pe
                ON pe.namespace_id = n.namespace_id AND pe.plan_id = n.settings->>'default_plan_id'
               AND pe.resource_type = $2
              WHERE n.namespace_id = $1";
}

stmt! {
    static EXISTS: read (ns: uuid, account_id: uuid, resource_type: text) =
        "SELECT EXISTS (SELECT 1 FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2) AS account,
                EXISTS (SELECT 1 FROM mec_data.resource_types WHERE namespace_id = $1 AND resource_type = $3) AS resource";
}

/// How far back a cached lookup answers: events older than this (late events) query directly.
const CACHE_HORIZON_US: i64 = 40 * 86_400 * 1_000_000;
/// Entries per backend before the cache starts over (a few hundred bytes each: ~10 MB at most).
const CACHE_CAPACITY: usize = 25_000;

type Key = (Uuid, Uuid, String);

/// Misses on one resource of a namespace that earn one chunk load.
const BULK_AFTER: u32 = 64;
/// Accounts per chunk (about 2 ms, the cost of ~64 single lookups): chunks are loaded until all
/// accounts are or the cache is half full; no single call pays for warming the whole namespace.
const CHUNK_ACCOUNTS: i64 = 500;

thread_local! {
    /// Lookups of this backend: (namespace, account, resource) -> rows, valid for one epoch.
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

fn dec(v: Option<AnyNumeric>) -> MecResult<Option<Decimal>> {
    v.as_ref().map(to_decimal).transpose()
}

fn micros(v: Option<TimestampWithTimeZone>) -> MecResult<Option<i64>> {
    v.map(crate::pg::values::unix_us).transpose()
}

fn parse_statuses(text: Option<String>) -> Vec<StatusClass> {
    text.and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
        .map(|vals| {
            vals.iter()
                .filter_map(|v| StatusClass::from_json(v).ok())
                .collect()
        })
        .unwrap_or_else(default_billable)
}

/// Groups LOOKUP rows by account. One statuses text is parsed once. Accounts on the default plan
/// while overdue get its row (one more read, only when there is such an account).
fn collect(
    client: &SpiClient<'_>,
    ns: Uuid,
    resource_type: &str,
    rows: spi::Rows<'_>,
    since_us: i64,
) -> MecResult<HashMap<Uuid, Entitlements>> {
    let mut by_account: HashMap<Uuid, Entitlements> = HashMap::new();
    let mut statuses: Option<(Option<String>, Vec<StatusClass>)> = None;
    for row in rows {
        let Some(account) = row.get::<Uuid>("account_id")? else {
            continue;
        };
        let f = match by_account.entry(account) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let kind = row.get::<String>("kind")?.unwrap_or_default();
                let text = row.get::<String>("billable_statuses")?;
                let billable = match &statuses {
                    Some((t, parsed)) if *t == text => parsed.clone(),
                    _ => {
                        let parsed = parse_statuses(text.clone());
                        statuses = Some((text, parsed.clone()));
                        parsed
                    }
                };
                v.insert(Entitlements {
                    kind: Kind::from_str(&kind).map_err(|e| MecError::Internal(e.to_string()))?,
                    window_seconds: row.get::<i32>("window_seconds")?,
                    billable,
                    anchor: row.get::<i32>("billing_anchor_day")?,
                    rows: Vec::new(),
                    since_us,
                    standing: Standing::new(
                        row.get::<bool>("payment_overdue")?.unwrap_or(false),
                        row.get::<String>("overdue_action")?.as_deref(),
                    ),
                    parent: row.get::<String>("parent")?,
                })
            }
        };
        if let Some(source) = row.get::<String>("source")? {
            f.rows.push(Row {
                source,
                limit: dec(row.get::<AnyNumeric>("quantity_limit")?)?,
                period: row.get::<String>("period")?,
                enforcement: row.get::<String>("enforcement")?,
                overage_cap: dec(row.get::<AnyNumeric>("overage_cap")?)?,
                grace: dec(row.get::<AnyNumeric>("grace")?)?,
                enabled: row.get::<bool>("enabled")?.unwrap_or(true),
                valid_from_us: micros(row.get::<TimestampWithTimeZone>("valid_from")?)?
                    .unwrap_or(0),
                valid_until_us: micros(row.get::<TimestampWithTimeZone>("valid_until")?)?,
            });
        }
    }
    if by_account
        .values()
        .any(|f| f.standing == Standing::DefaultPlan)
    {
        let default_row = overdue_plan_row(client, ns, resource_type)?;
        for f in by_account.values_mut() {
            if f.standing == Standing::DefaultPlan {
                f.rows.extend(default_row.clone());
            }
        }
    }
    for f in by_account.values_mut() {
        // Newest first, sorted here rather than by a Sort node per call.
        f.rows.sort_by_key(|r| std::cmp::Reverse(r.valid_from_us));
    }
    Ok(by_account)
}

/// The default plan's row for `resource_type`, valid at every moment; `None` when the namespace
/// has no default plan or it does not grant the resource.
fn overdue_plan_row(
    client: &SpiClient<'_>,
    ns: Uuid,
    resource_type: &str,
) -> MecResult<Option<Row>> {
    let rows = spi::read(
        client,
        &OVERDUE_PLAN_ROW,
        &[ns.into(), resource_type.into()],
    )?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(Row {
        source: OVERDUE_PLAN.to_string(),
        limit: dec(row.get::<AnyNumeric>("quantity_limit")?)?,
        period: row.get::<String>("period")?,
        enforcement: row.get::<String>("enforcement")?,
        overage_cap: dec(row.get::<AnyNumeric>("overage_cap")?)?,
        grace: dec(row.get::<AnyNumeric>("grace")?)?,
        enabled: row.get::<bool>("enabled")?.unwrap_or(true),
        valid_from_us: 0,
        valid_until_us: None,
    }))
}

/// Runs LOOKUP: `None` when the account or the resource type does not exist.
fn fetch(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    since_us: i64,
) -> MecResult<Option<Entitlements>> {
    let since: TimestampWithTimeZone = timestamptz(since_us);
    let rows = spi::read(
        client,
        &LOOKUP,
        &[
            ns.into(),
            account_id.into(),
            resource_type.into(),
            since.into(),
        ],
    )?;
    Ok(collect(client, ns, resource_type, rows, since_us)?.remove(&account_id))
}

/// Runs LOOKUP_CHUNK: the accounts after `after` and whether the namespace has more.
fn fetch_chunk(
    client: &SpiClient<'_>,
    ns: Uuid,
    resource_type: &str,
    after: Uuid,
    since_us: i64,
) -> MecResult<(HashMap<Uuid, Entitlements>, bool)> {
    let since: TimestampWithTimeZone = timestamptz(since_us);
    let rows = spi::read(
        client,
        &LOOKUP_CHUNK,
        &[
            ns.into(),
            resource_type.into(),
            after.into(),
            CHUNK_ACCOUNTS.into(),
            since.into(),
        ],
    )?;
    let chunk = collect(client, ns, resource_type, rows, since_us)?;
    let more = chunk.len() as i64 >= CHUNK_ACCOUNTS;
    Ok((chunk, more))
}

/// What this backend's cache knows about one namespace and resource in the current epoch.
#[derive(Default)]
struct Misses {
    count: u32,
    /// The last account of the last chunk loaded; `None` before the first chunk.
    loaded_up_to: Option<Uuid>,
    /// Every account is loaded, or the cache is half full: no more chunks this epoch.
    done: bool,
}

/// The cache of one backend: entries of one epoch, and the misses that decide a bulk load.
#[derive(Default)]
struct Cache {
    epoch: u64,
    entries: HashMap<Key, Rc<Entitlements>>,
    misses: HashMap<(Uuid, String), Misses>,
}

impl Cache {
    fn insert(&mut self, key: Key, fetched: Rc<Entitlements>) {
        if self.entries.len() >= CACHE_CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(key, fetched);
    }
}

/// LOOKUP through this backend's cache (see `cache.rs` for how it stays fresh), then the
/// cluster's shared cache (`shared.rs`), then the tables; what the tables gave is kept in
/// both. Events older than the cache's horizon query directly. Every `BULK_AFTER` misses that
/// read the tables, on one resource of a namespace in one epoch, a miss also loads the next
/// `CHUNK_ACCOUNTS` accounts: a pool connection serving many accounts warms up in chunks instead
/// of one miss per account, while one serving a few never loads more than its misses would have
/// cost.
fn lookup(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    at_us: i64,
) -> MecResult<Option<Rc<Entitlements>>> {
    let since_us = clock::now_us() - CACHE_HORIZON_US;
    if invalidation::snapshot_per_transaction() || at_us < since_us {
        return Ok(fetch(client, ns, account_id, resource_type, at_us)?.map(Rc::new));
    }
    let epoch = invalidation::epoch();
    let key: Key = (ns, account_id, resource_type.to_string());
    let hit = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.epoch != epoch {
            *c = Cache {
                epoch,
                ..Cache::default()
            };
        }
        c.entries.get(&key).filter(|f| f.since_us <= at_us).cloned()
    });
    if hit.is_some() {
        return Ok(hit);
    }
    // Read before the load's snapshot is taken: what the load reads is at least this new.
    let stamp = shared::stamp();
    if let Some(f) = stamp.and_then(|_| shared_get(&key, at_us)) {
        let f = Rc::new(f);
        if invalidation::epoch() == epoch {
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                if c.epoch == epoch {
                    c.insert(key, f.clone());
                }
            });
        }
        return Ok(Some(f));
    }
    // A miss that reads the tables.
    let chunk_after = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.epoch != epoch {
            return None;
        }
        let full = c.entries.len() >= CACHE_CAPACITY / 2;
        let m = c.misses.entry((ns, key.2.clone())).or_default();
        m.count += 1;
        if full {
            m.done = true;
        }
        // Ski rental: one chunk per BULK_AFTER misses, so warming up never costs more than
        // the misses it is meant to save (a chunk of 500 accounts costs about 64 lookups).
        (!m.done && m.count >= BULK_AFTER).then(|| {
            m.count = 0;
            m.loaded_up_to.unwrap_or_else(|| Uuid::from_bytes([0; 16]))
        })
    });
    let (found, loaded, progress) = invalidation::with_fresh_snapshot(|| {
        load(client, ns, account_id, resource_type, since_us, chunk_after)
    })?;
    // Keep what was read only if no invalidation arrived meanwhile.
    if invalidation::epoch() == epoch {
        if let Some(stamp) = stamp {
            for ((ns, account, resource), f) in &loaded {
                if let Some(bytes) = f.encode() {
                    shared::put(stamp, &shared_key(ns, account, resource), &bytes);
                }
            }
        }
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.epoch != epoch {
                return;
            }
            for (k, f) in loaded {
                c.insert(k, f);
            }
            if let Some((last, more)) = progress {
                let m = c.misses.entry((ns, resource_type.to_string())).or_default();
                m.loaded_up_to = last.or(m.loaded_up_to);
                m.done = m.done || !more;
            }
        });
    }
    Ok(found)
}

/// The shared cache's current entry for `key`, if it answers for `at_us`.
fn shared_get(key: &Key, at_us: i64) -> Option<Entitlements> {
    let (ns, account, resource) = key;
    let bytes = shared::get(&shared_key(ns, account, resource))?;
    Entitlements::decode(&bytes).filter(|f| f.since_us <= at_us)
}

/// This cache's key as the shared cache's.
fn shared_key<'a>(ns: &'a Uuid, account: &'a Uuid, resource: &'a str) -> shared::Key<'a> {
    shared::Key {
        namespace: ns.as_bytes(),
        account: account.as_bytes(),
        resource,
    }
}

/// What one miss reads: the account's rows (if it exists), every entry to keep (the chunk's and
/// the account's), and how far the chunk got.
type Loaded = (
    Option<Rc<Entitlements>>,
    Vec<(Key, Rc<Entitlements>)>,
    Option<(Option<Uuid>, bool)>,
);

/// Reads for one miss: the next chunk when one is due, then the account itself unless the chunk
/// held it.
fn load(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    since_us: i64,
    chunk_after: Option<Uuid>,
) -> MecResult<Loaded> {
    let mut found = None;
    let mut loaded = Vec::new();
    let mut progress = None;
    if let Some(after) = chunk_after {
        let (chunk, more) = fetch_chunk(client, ns, resource_type, after, since_us)?;
        progress = Some((chunk.keys().max().copied(), more));
        for (account, f) in chunk {
            let f = Rc::new(f);
            if account == account_id {
                found = Some(f.clone());
            }
            loaded.push(((ns, account, resource_type.to_string()), f));
        }
    }
    if found.is_none() {
        if let Some(f) = fetch(client, ns, account_id, resource_type, since_us)? {
            let f = Rc::new(f);
            found = Some(f.clone());
            loaded.push(((ns, account_id, resource_type.to_string()), f));
        }
    }
    Ok((found, loaded, progress))
}

/// Resolves the entitlement of `account_id` for `resource_type` at `at_us`.
/// Raises `ME404` for an unknown account or resource type.
pub fn resolve(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    at_us: i64,
) -> MecResult<Effective> {
    let mut eff = resolve_own(client, ns, account_id, resource_type, at_us)?;
    // An account with no entitlement of its own inherits its nearest entitled ancestor's (as
    // a tenant's members inherit the tenant's plan); its own usage then counts against that.
    let mut next = eff.parent.clone();
    for _ in 0..MAX_ANCESTORS {
        if eff.entitled || eff.downgraded {
            break;
        }
        let Some(parent) = next.as_deref().and_then(crate::pg::context::parse_uuid) else {
            break;
        };
        let up = resolve_own(client, ns, parent, resource_type, at_us)?;
        if up.entitled {
            let (own_parent, blocked) = (eff.parent.take(), eff.blocked || up.blocked);
            eff = Effective {
                parent: own_parent,
                blocked,
                inherited_from: Some(parent.to_string()),
                ..up
            };
            break;
        }
        next = up.parent;
    }
    Ok(eff)
}

/// Most ancestors an account has: a hierarchy is at most four levels (organisation, team,
/// member, key).
pub const MAX_ANCESTORS: usize = 3;

/// The account's own entitlement, without inheriting from its ancestors.
pub fn resolve_own(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    at_us: i64,
) -> MecResult<Effective> {
    let Some(f) = lookup(client, ns, account_id, resource_type, at_us)? else {
        return Err(diagnose_missing(client, ns, account_id, resource_type));
    };
    combine(resource_type, &f, at_us).map_err(|e| MecError::invalid(e.to_string()))
}

/// [`resolve`] for a call that uses the resource (meter, reserve, lease): `ME402` when the account
/// is overdue and its namespace blocks overdue accounts.
pub fn resolve_for_use(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
    at_us: i64,
) -> MecResult<Effective> {
    let eff = resolve(client, ns, account_id, resource_type, at_us)?;
    if eff.blocked {
        return Err(MecError::PaymentOverdue {
            account_id: account_id.to_string(),
        });
    }
    Ok(eff)
}

/// `ME404` unless the account and the resource type both exist in the namespace.
pub fn require_exists(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
) -> MecResult<()> {
    let (account, resource) = match spi::read(
        client,
        &EXISTS,
        &[ns.into(), account_id.into(), resource_type.into()],
    )?
    .first()
    {
        Some(row) => (row.get::<bool>("account")?, row.get::<bool>("resource")?),
        None => (None, None),
    };
    match (account, resource) {
        (Some(false), _) => Err(MecError::unknown("account", account_id.to_string())),
        (_, Some(false)) => Err(MecError::unknown("resource type", resource_type)),
        _ => Ok(()),
    }
}

fn diagnose_missing(
    client: &SpiClient<'_>,
    ns: Uuid,
    account_id: Uuid,
    resource_type: &str,
) -> MecError {
    match require_exists(client, ns, account_id, resource_type) {
        Ok(()) => {
            MecError::Internal("entitlement lookup found neither a row nor a missing key".into())
        }
        Err(e) => e,
    }
}
