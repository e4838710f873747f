//! Rate windows (`kind: rate`): exact sliding windows that write no WAL.
//!
//! An event at `t` is judged by everything counted after `t - window`: usage in `(t - w, t]`, plus
//! any event dated later (clients' clocks drift), so no span of `w` seconds ever holds more than
//! the ceiling. The window of each account × counter is a log in two UNLOGGED tables
//! (`sql/schema.sql`): `rate_windows`, whose row is locked to serialise callers and keeps the
//! running total, and `rate_entries`, one row per counted event with the running total through it
//! (`cum`, in the order of `(at, seq)`, `seq` numbering a window's entries as they come). Usage after `x` is then `total − cum_before(x)`: two index probes,
//! however full the window, and a denial's `reset_at` is one more — the instant the entry that
//! makes room leaves the window.
//!
//! The ledger stays the truth. A crash empties unlogged tables; the next event that needs the
//! window rebuilds it from the ledger (its billable usage events) under the row's lock, so a crash
//! loses nothing and counts nothing twice. Until then, and on a hot standby (which cannot read
//! unlogged tables), and for an event dated before the kept log, usage is summed from the ledger
//! itself: slower, the same answer. Corrections change billed totals and history, not a window of
//! requests already admitted. See docs/CONTRACT.md ("Rate windows").

use pg_mec_core::period::Window;
use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, DatumWithOid, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;

use crate::ledger::Event;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{timestamptz, to_decimal, to_numeric, unix_us};
use crate::pg::{MecError, MecResult};

/// Which window: an account's resource, or the part of it carrying one dimension value.
pub struct RateKey<'a> {
    pub account_id: Uuid,
    pub resource_type: &'a str,
    /// `(dimension, value)` of a dimension-scoped limit.
    pub scope: Option<(&'a str, &'a str)>,
    pub window_us: i64,
}

impl RateKey<'_> {
    /// The counter's name: the resource, or `<resource>@<dimension>=<value>`.
    fn counter(&self) -> String {
        match self.scope {
            Some((dimension, value)) => super::scoped_name(self.resource_type, dimension, value),
            None => self.resource_type.to_string(),
        }
    }
}

/// The ledger rows a window counts: `$1` namespace, `$2` account, `$3` resource, after `$4`,
/// carrying `$5` = `$6` when `$5` is not NULL (a dimension-scoped window). Every statement over the
/// ledger below numbers these parameters so.
macro_rules! counted_events {
    () => {
        "FROM mec_data.consumption
          WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3 AND occurred_at > $4
            AND billable AND entry_type = 'usage' AND ($5::text IS NULL OR dimensions ->> $5 = $6)"
    };
}

/// The running total through the last entry of the window at or before `$4` (`$1` namespace,
/// `$2` account, `$3` counter): NULL when none is kept, the caller falls back on the base. Every
/// statement below that asks for it numbers these parameters so.
macro_rules! running_total_through {
    () => {
        "(SELECT e.cum FROM mec_data.rate_entries e
           WHERE e.namespace_id = $1 AND e.account_id = $2 AND e.counter = $3 AND e.at <= $4
           ORDER BY e.at DESC, e.seq DESC LIMIT 1)"
    };
}

stmt! {
    /// Locks the window's row: callers of one window take turns, as on a counter row.
    /// It also reads the running total through `$4` — valid only if no other holder counted an
    /// event since this statement's snapshot: when `seq` (the locked, latest row's) equals
    /// `seen_seq` (the snapshot's). Otherwise the caller reads it again (CUM_BEFORE).
    static LOCK: write (ns: uuid, account_id: uuid, counter: text, after: timestamptz) =
        concat!(
            "SELECT w.total, w.base, w.kept_from, w.seq,
                    (SELECT s.seq FROM mec_data.rate_windows s
                      WHERE s.namespace_id = $1 AND s.account_id = $2 AND s.counter = $3) AS seen_seq,
                    coalesce(",
            running_total_through!(),
            ", w.base) AS before
               FROM mec_data.rate_windows w
              WHERE w.namespace_id = $1 AND w.account_id = $2 AND w.counter = $3
              FOR UPDATE OF w"
        );
}

stmt! {
    /// The window's row and its usage after `$4` (`total` less the running total through `$4`), in
    /// one snapshot.
    static USED_AFTER: read (ns: uuid, account_id: uuid, counter: text, after: timestamptz) =
        concat!(
            "SELECT w.total - coalesce(",
            running_total_through!(),
            ", w.base) AS used, w.total, w.kept_from, w.updated_at
               FROM mec_data.rate_windows w
              WHERE w.namespace_id = $1 AND w.account_id = $2 AND w.counter = $3"
        );
}

stmt! {
    /// A rate event's ledger row and its entry in the window, one statement: see `sql/rate_record.sql`.
    static RECORD: write (ns: uuid, key: text, account_id: uuid, resource_type: text, quantity: numeric,
                          occurred_at: timestamptz, period_start: timestamptz, period_end: timestamptz,
                          quantity_used: numeric, quantity_allowed: numeric, http_status: int4,
                          metadata: jsonb, dimensions: jsonb, counter: text) =
        include_str!("sql/rate_record.sql");
}

stmt! {
    /// The running total through the last entry at or before `$4` (`$5`: the base, if none).
    static CUM_BEFORE: read (ns: uuid, account_id: uuid, counter: text, at: timestamptz, base: numeric) =
        concat!("SELECT coalesce(", running_total_through!(), ", $5)");
}

stmt! {
    /// Creates a missing window from the ledger: its row (the total of what is kept)...
    static CREATE: write (ns: uuid, account_id: uuid, resource_type: text, kept_from: timestamptz,
                          dimension: text, value: text, counter: text) =
        concat!(
            "INSERT INTO mec_data.rate_windows (namespace_id, account_id, counter, kept_from, total, seq)
             SELECT $1, $2, $7, $4, coalesce(sum(quantity), 0), count(*) ",
            counted_events!(),
            " ON CONFLICT DO NOTHING RETURNING true"
        );
}

stmt! {
    /// ... and its entries, with their running totals in time order.
    static LOAD: write (ns: uuid, account_id: uuid, resource_type: text, kept_from: timestamptz,
                        dimension: text, value: text, counter: text) =
        concat!(
            "INSERT INTO mec_data.rate_entries (namespace_id, account_id, counter, at, seq, quantity, cum)
             SELECT $1, $2, $7, occurred_at, row_number() OVER w, quantity, sum(quantity) OVER w ",
            counted_events!(),
            " WINDOW w AS (ORDER BY occurred_at, consumption_id)"
        );
}

stmt! {
    /// Counts an event at `$4`: later entries' running totals move up by it (rarely any: events
    /// come in time order but for clock drift), the new entry's is the total through `$4`. An event
    /// dated at or before the kept log only moves the base.
    static APPEND: write (ns: uuid, account_id: uuid, counter: text, at: timestamptz, quantity: numeric) =
        concat!(
            "WITH head AS (
                  SELECT base, kept_from, seq FROM mec_data.rate_windows
                   WHERE namespace_id = $1 AND account_id = $2 AND counter = $3
             ), shifted AS (
                  UPDATE mec_data.rate_entries SET cum = cum + $5
                   WHERE namespace_id = $1 AND account_id = $2 AND counter = $3 AND at > $4
                  RETURNING 1
             ), entry AS (
                  INSERT INTO mec_data.rate_entries (namespace_id, account_id, counter, at, seq, quantity, cum)
                  SELECT $1, $2, $3, $4, head.seq + 1, $5, coalesce(",
            running_total_through!(),
            ", head.base) + $5
                    FROM head WHERE $4 > head.kept_from
             )
             UPDATE mec_data.rate_windows
                SET total = total + $5, seq = seq + 1, updated_at = now(),
                    base = base + CASE WHEN $4 <= kept_from THEN $5 ELSE 0 END
              WHERE namespace_id = $1 AND account_id = $2 AND counter = $3"
        );
}

stmt! {
    /// Drops the entries at or before `$4`, keeping their running total as the base.
    static PRUNE: write (ns: uuid, account_id: uuid, counter: text, kept_from: timestamptz) =
        concat!(
            "WITH cut AS (
                  SELECT coalesce(",
            running_total_through!(),
            ", w.base) AS base
                    FROM mec_data.rate_windows w
                   WHERE w.namespace_id = $1 AND w.account_id = $2 AND w.counter = $3
             ), gone AS (
                  DELETE FROM mec_data.rate_entries
                   WHERE namespace_id = $1 AND account_id = $2 AND counter = $3 AND at <= $4
             )
             UPDATE mec_data.rate_windows SET base = (SELECT base FROM cut), kept_from = $4
              WHERE namespace_id = $1 AND account_id = $2 AND counter = $3"
        );
}

stmt! {
    /// The first entry after `$4` whose running total reaches `$5`: when it leaves the window,
    /// what is left plus the request fits.
    static FIT_ENTRY: read (ns: uuid, account_id: uuid, counter: text, after: timestamptz, need: numeric) =
        "SELECT at FROM mec_data.rate_entries
          WHERE namespace_id = $1 AND account_id = $2 AND counter = $3 AND at > $4 AND cum >= $5
          ORDER BY at, seq LIMIT 1";
}

stmt! {
    /// The window from the ledger: billable usage after `$4` recorded by `$7` (NULL: now).
    static LEDGER_USED: read (ns: uuid, account_id: uuid, resource_type: text, after: timestamptz,
                              dimension: text, value: text, recorded_by: timestamptz) =
        concat!(
            "SELECT coalesce(sum(quantity), 0) AS used, max(recorded_at) AS updated ",
            counted_events!(),
            " AND ($7::timestamptz IS NULL OR recorded_at <= $7)"
        );
}

stmt! {
    /// `FIT_ENTRY` from the ledger: the first event after `$4` through which `$7` is counted.
    static LEDGER_FIT: read (ns: uuid, account_id: uuid, resource_type: text, after: timestamptz,
                             dimension: text, value: text, need: numeric) =
        concat!(
            "SELECT occurred_at FROM (
                  SELECT occurred_at, sum(quantity) OVER (ORDER BY occurred_at, consumption_id) AS cum ",
            counted_events!(),
            ") s WHERE cum >= $7 ORDER BY occurred_at LIMIT 1"
        );
}

stmt! {
    /// The first billable usage event after `$4` recorded by `$7` (NULL: now): the next to leave.
    static LEDGER_FIRST: read (ns: uuid, account_id: uuid, resource_type: text, after: timestamptz,
                               dimension: text, value: text, recorded_by: timestamptz) =
        concat!(
            "SELECT min(occurred_at) ",
            counted_events!(),
            " AND ($7::timestamptz IS NULL OR recorded_at <= $7)"
        );
}

/// A window's row as locked.
struct Head {
    total: Decimal,
    base: Decimal,
    kept_from_us: i64,
    /// The running total through the instant asked for, when the lock's snapshot was current.
    before: Option<Decimal>,
}

/// Usage of a window at one instant.
pub struct RateUsage {
    /// Everything counted after `at − window`.
    pub used: Decimal,
    /// When the window last counted an event.
    pub updated_us: Option<i64>,
}

fn in_recovery() -> bool {
    // SAFETY: reads shared recovery state; callable from any backend.
    unsafe { pgrx::pg_sys::RecoveryInProgress() }
}

fn instant(t: Option<TimestampWithTimeZone>) -> MecResult<Option<i64>> {
    t.map(unix_us).transpose()
}

fn decimal(v: Option<AnyNumeric>) -> MecResult<Decimal> {
    Ok(v.as_ref().map(to_decimal).transpose()?.unwrap_or_default())
}

/// `$1..$4` of the statements over a window's log (see `running_total_through!`): namespace,
/// account, the window's counter, an instant.
fn log_args<'a>(
    ns: Uuid,
    key: &RateKey<'_>,
    counter: &'a str,
    at_us: i64,
) -> Vec<DatumWithOid<'a>> {
    let at: TimestampWithTimeZone = timestamptz(at_us);
    vec![ns.into(), key.account_id.into(), counter.into(), at.into()]
}

/// `$1..$6` of the statements over the ledger (see `counted_events!`): namespace, account,
/// resource, the instant after which events count, and the window's dimension scope.
fn ledger_args<'a>(ns: Uuid, key: &RateKey<'a>, after_us: i64) -> Vec<DatumWithOid<'a>> {
    let after: TimestampWithTimeZone = timestamptz(after_us);
    let (dimension, value) = match key.scope {
        Some((d, v)) => (Some(d), Some(v)),
        None => (None, None),
    };
    vec![
        ns.into(),
        key.account_id.into(),
        key.resource_type.into(),
        after.into(),
        dimension.into(),
        value.into(),
    ]
}

/// The window's usage after `from_us` from its log, with its total: `None` when it has no log, or
/// its log starts later.
fn log_used_after(
    client: &SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    counter: &str,
    from_us: i64,
) -> MecResult<Option<(RateUsage, Decimal)>> {
    let Some(row) = spi::read(client, &USED_AFTER, &log_args(ns, key, counter, from_us))?.first()
    else {
        return Ok(None);
    };
    let kept_from = instant(row.get::<TimestampWithTimeZone>("kept_from")?)?.unwrap_or(i64::MAX);
    if from_us < kept_from {
        return Ok(None);
    }
    Ok(Some((
        RateUsage {
            used: decimal(row.get::<AnyNumeric>("used")?)?,
            updated_us: instant(row.get::<TimestampWithTimeZone>("updated_at")?)?,
        },
        decimal(row.get::<AnyNumeric>("total")?)?,
    )))
}

fn cum_before(
    client: &SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    counter: &str,
    at_us: i64,
    base: Decimal,
) -> MecResult<Decimal> {
    let mut args = log_args(ns, key, counter, at_us);
    args.push(to_numeric(base).into());
    spi::read(client, &CUM_BEFORE, &args)?.decimal_or_zero()
}

/// The window's usage at `at_us` from the ledger, as recorded by `recorded_by_us` (`None`: now).
pub fn ledger_used(
    client: &SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    at_us: i64,
    recorded_by_us: Option<i64>,
) -> MecResult<RateUsage> {
    let recorded_by: Option<TimestampWithTimeZone> = recorded_by_us.map(timestamptz);
    let mut args = ledger_args(ns, key, at_us - key.window_us);
    args.push(recorded_by.into());
    let (used, updated) = spi::read(client, &LEDGER_USED, &args)?
        .two::<AnyNumeric, TimestampWithTimeZone>("used", "updated")?;
    Ok(RateUsage {
        used: decimal(used)?,
        updated_us: instant(updated)?,
    })
}

/// When the window's usage at `at_us` next drops (its oldest counted event leaves), as recorded
/// by `recorded_by_us` (`None`: now); `None` when nothing is counted. Read from the ledger: this
/// answers `usage_summary`, not a hot path.
pub fn next_drop_at(
    client: &SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    at_us: i64,
    recorded_by_us: Option<i64>,
) -> MecResult<Option<i64>> {
    let recorded_by: Option<TimestampWithTimeZone> = recorded_by_us.map(timestamptz);
    let mut args = ledger_args(ns, key, at_us - key.window_us);
    args.push(recorded_by.into());
    let first = spi::read(client, &LEDGER_FIRST, &args)?.one::<TimestampWithTimeZone>()?;
    Ok(instant(first)?.map(|t| (t + key.window_us).max(at_us)))
}

/// The window's usage at `at_us` (no lock): from its log when that covers it, else the ledger.
pub fn used(
    client: &SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    at_us: i64,
) -> MecResult<RateUsage> {
    if !in_recovery() {
        let from = at_us - key.window_us;
        if let Some((u, _)) = log_used_after(client, ns, key, &key.counter(), from)? {
            return Ok(u);
        }
    }
    ledger_used(client, ns, key, at_us, None)
}

/// When `requested` more first fit under `ceiling` if nothing else is counted meanwhile: the
/// instant the entry that makes room leaves the window. `None` when it never fits.
pub fn fit_at(
    client: &SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    at_us: i64,
    ceiling: Decimal,
    requested: Decimal,
) -> MecResult<Option<i64>> {
    if requested > ceiling {
        return Ok(None);
    }
    let counter = key.counter();
    let from = at_us - key.window_us;
    let logged = if in_recovery() {
        None
    } else {
        log_used_after(client, ns, key, &counter, from)?
    };
    let found = match logged {
        Some((u, total)) => {
            if u.used.saturating_add(requested) <= ceiling {
                return Ok(Some(at_us));
            }
            // Entries through the one whose running total reaches this must leave.
            let need = total.saturating_add(requested).saturating_sub(ceiling);
            let mut args = log_args(ns, key, &counter, from);
            args.push(to_numeric(need).into());
            spi::read(client, &FIT_ENTRY, &args)?.one::<TimestampWithTimeZone>()?
        }
        None => {
            let used = ledger_used(client, ns, key, at_us, None)?.used;
            if used.saturating_add(requested) <= ceiling {
                return Ok(Some(at_us));
            }
            let need = used.saturating_add(requested).saturating_sub(ceiling);
            let mut args = ledger_args(ns, key, from);
            args.push(to_numeric(need).into());
            spi::read(client, &LEDGER_FIT, &args)?.one::<TimestampWithTimeZone>()?
        }
    };
    Ok(instant(found)?.map(|leaves| (leaves + key.window_us).max(at_us)))
}

fn lock_row(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    counter: &str,
    from_us: i64,
) -> MecResult<Option<Head>> {
    let Some(r) = spi::write(client, &LOCK, &log_args(ns, key, counter, from_us))?.first() else {
        return Ok(None);
    };
    let seq = r.get::<i64>("seq")?;
    let current = seq.is_some() && seq == r.get::<i64>("seen_seq")?;
    Ok(Some(Head {
        before: if current {
            Some(decimal(r.get::<AnyNumeric>("before")?)?)
        } else {
            None
        },
        total: decimal(r.get::<AnyNumeric>("total")?)?,
        base: decimal(r.get::<AnyNumeric>("base")?)?,
        kept_from_us: instant(r.get::<TimestampWithTimeZone>("kept_from")?)?.unwrap_or(i64::MAX),
    }))
}

/// Locks the window for this transaction — creating it from the ledger if it is missing — and
/// returns its usage at `at_us`. Callers of one window wait for each other here.
pub fn lock(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    at_us: i64,
    now_us: i64,
) -> MecResult<Decimal> {
    let counter = key.counter();
    let from = at_us - key.window_us;
    let mut locked = lock_row(client, ns, key, &counter, from)?;
    if locked.is_none() {
        // Missing (new, or emptied by a crash): build it from the ledger. A concurrent creator
        // wins the insert; its row is then locked below, once it commits.
        // (`$4` is where the log starts: events after it are loaded)
        let mut args = ledger_args(ns, key, now_us - 2 * key.window_us);
        args.push(counter.as_str().into());
        if spi::write(client, &CREATE, &args)?.one::<bool>()?.is_some() {
            spi::write(client, &LOAD, &args)?;
        }
        locked = lock_row(client, ns, key, &counter, from)?;
    }
    let vanished = || MecError::Internal(format!("rate window {counter} vanished while locked"));
    let mut h = locked.ok_or_else(vanished)?;
    // The log keeps two windows back from now; once a third has passed, the oldest goes.
    if h.kept_from_us < now_us - 3 * key.window_us {
        let cut = log_args(ns, key, &counter, now_us - 2 * key.window_us);
        spi::write(client, &PRUNE, &cut)?;
        h = lock_row(client, ns, key, &counter, from)?.ok_or_else(vanished)?;
    }
    if from < h.kept_from_us {
        // Dated before the kept log: the ledger has it all (and the lock keeps it still).
        return Ok(ledger_used(client, ns, key, at_us, None)?.used);
    }
    let before = match h.before {
        Some(b) => b,
        // The lock waited for a holder that counted: a statement of its own sees what it counted.
        None => cum_before(client, ns, key, &counter, from, h.base)?,
    };
    Ok(h.total.saturating_sub(before))
}

/// Counts a recorded event at `at_us` in the window [`lock`] locked.
pub fn append(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    at_us: i64,
    quantity: Decimal,
) -> MecResult<()> {
    let counter = key.counter();
    let mut args = log_args(ns, key, &counter, at_us);
    args.push(to_numeric(quantity).into());
    spi::write(client, &APPEND, &args)?;
    Ok(())
}

/// Records a rate event decided under [`lock`]: its ledger row and, when its key is new, its entry
/// in the window. Returns the new row's id; `None` when the key was recorded before (nothing
/// counted).
pub fn record(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    key: &RateKey<'_>,
    ev: &Event,
    window: &Window,
    used_after: Decimal,
    allowed: Option<Decimal>,
) -> MecResult<Option<Uuid>> {
    let counter = key.counter();
    let mut args = ev.ledger_args(ns, window);
    args.extend([
        to_numeric(used_after).into(),
        allowed.map(to_numeric).into(),
        ev.http_status.into(),
        ev.metadata_arg(),
        ev.dimensions_arg(),
        counter.as_str().into(),
    ]);
    spi::write(client, &RECORD, &args)?.one::<Uuid>()
}
