//! Usage to Stripe, exactly once: billable ledger rows become Stripe Billing meter events through an
//! outbox (`mec_data.stripe_usage_outbox`), which the gateway sends and marks.
//!
//! * [`prepare`] aggregates every billable ledger row not yet carried by an outbox row, per account ×
//!   resource × period, for resources with a `stripe_meter_event` and accounts with a Stripe
//!   customer, into one meter event each, and records which rows it carries
//!   (`mec_data.stripe_usage_items`: a row is carried by one event at most, so nothing is sent twice).
//! * A correction (`adjust_consumption`) is a ledger row like any other: it nets into the next event.
//!   When a period's net is negative — a refund larger than what was used since the last sync — the
//!   last event of that period is cancelled (Stripe's meter event adjustment, possible within 24 hours
//!   of Stripe receiving it) and replaced by one of the corrected value, sent only after the
//!   cancellation. A refund Stripe can no longer take that way is parked for the admin, who credits
//!   the customer in Stripe.
//! * [`due`] lists what to send now with the namespace's API key; [`result`] records Stripe's answer:
//!   sent, retried later (429 after `Retry-After`, 5xx and network errors with exponential backoff),
//!   or parked with the error (other 4xx, or too many attempts). A crash between sending and marking
//!   leaves the row pending: it is sent again with the same identifier and Idempotency-Key, which
//!   Stripe recognises, never as a new event.

use pg_mec_core::Decimal;
use pgrx::datum::{AnyNumeric, JsonB, TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::pg::spi::{self, stmt};
use crate::pg::values::{timestamptz, to_decimal, to_numeric, unix_us};
use crate::pg::{MecError, MecResult};

/// Stripe accepts meter events up to 35 days old; rows older than this when first synced are not sent.
const MAX_AGE_DAYS: i64 = 34;
/// Stripe cancels a meter event within 24 hours of receiving it; pg_mec asks within 23.
const CANCEL_WINDOW_HOURS: i64 = 23;
/// Attempts before a row that keeps failing (5xx, network) is parked.
pub const MAX_ATTEMPTS: i32 = 50;
/// Longest pause between two attempts.
const MAX_BACKOFF_SECONDS: i64 = 3600;

stmt! {
    /// Serialises the preparations of one namespace (the transaction holds it).
    static LOCK_NAMESPACE: write (ns: text) =
        "SELECT pg_advisory_xact_lock(1835361121, hashtext($1))";
}

stmt! {
    /// Billable ledger rows no outbox row carries yet, per account × resource × period.
    static CANDIDATES: read (ns: uuid, since: timestamptz) =
        "SELECT c.account_id, c.resource_type, c.period_start, r.stripe_meter_event,
                a.stripe_customer_id, sum(c.quantity) AS net, max(c.occurred_at) AS last_at,
                jsonb_agg(c.idempotency_key::text) AS keys, count(*)::int8 AS rows
           FROM mec_data.consumption c
           JOIN mec_data.resource_types r
             ON r.namespace_id = c.namespace_id AND r.resource_type = c.resource_type
           JOIN mec_data.accounts a ON a.namespace_id = c.namespace_id AND a.account_id = c.account_id
          WHERE c.namespace_id = $1 AND c.billable AND c.occurred_at >= $2
            AND r.stripe_meter_event IS NOT NULL AND a.stripe_customer_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM mec_data.stripe_usage_items i
                             WHERE i.namespace_id = c.namespace_id AND i.idempotency_key = c.idempotency_key)
          GROUP BY c.account_id, c.resource_type, c.period_start, r.stripe_meter_event, a.stripe_customer_id
          ORDER BY c.account_id, c.resource_type, c.period_start";
}

stmt! {
    static TOO_OLD: read (ns: uuid, since: timestamptz) =
        "SELECT count(*)::int8 FROM mec_data.consumption c
           JOIN mec_data.resource_types r
             ON r.namespace_id = c.namespace_id AND r.resource_type = c.resource_type
           JOIN mec_data.accounts a ON a.namespace_id = c.namespace_id AND a.account_id = c.account_id
          WHERE c.namespace_id = $1 AND c.billable AND c.occurred_at < $2
            AND r.stripe_meter_event IS NOT NULL AND a.stripe_customer_id IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM mec_data.stripe_usage_items i
                             WHERE i.namespace_id = c.namespace_id AND i.idempotency_key = c.idempotency_key)";
}

stmt! {
    static UNSENT_FOR_COUNTER: read (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz) =
        "SELECT EXISTS (SELECT 1 FROM mec_data.stripe_usage_outbox
                         WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                           AND period_start = $4 AND state = 'pending')";
}

stmt! {
    /// The last event of a counter Stripe can still cancel, and that nothing cancels yet.
    static CANCELLABLE: read (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz, window_hours: int4) =
        "SELECT o.identifier, o.value, o.event_timestamp FROM mec_data.stripe_usage_outbox o
          WHERE o.namespace_id = $1 AND o.account_id = $2 AND o.resource_type = $3 AND o.period_start = $4
            AND o.kind = 'meter_event' AND o.state = 'sent'
            AND o.sent_at > now() - make_interval(hours => $5)
            AND NOT EXISTS (SELECT 1 FROM mec_data.stripe_usage_outbox x
                             WHERE x.namespace_id = o.namespace_id AND x.cancels = o.identifier)
          ORDER BY o.sent_at DESC LIMIT 1";
}

stmt! {
    static INSERT_OUTBOX: write (ns: uuid, identifier: text, kind: text, account_id: uuid, resource_type: text, period_start: timestamptz, event_name: text, customer: text, value: numeric, event_timestamp: timestamptz, cancels: text, waits_for: text, state: text, last_error: text) =
        "INSERT INTO mec_data.stripe_usage_outbox
                (namespace_id, identifier, kind, account_id, resource_type, period_start, event_name,
                 stripe_customer_id, value, event_timestamp, cancels, waits_for, state, last_error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
}

stmt! {
    static INSERT_ITEMS: write (ns: uuid, identifier: text, keys: jsonb) =
        "INSERT INTO mec_data.stripe_usage_items (namespace_id, idempotency_key, identifier)
         SELECT $1, k, $2 FROM jsonb_array_elements_text($3) k";
}

stmt! {
    static MOVE_ITEMS: write (ns: uuid, from_identifier: text, to_identifier: text) =
        "UPDATE mec_data.stripe_usage_items SET identifier = $3
          WHERE namespace_id = $1 AND identifier = $2";
}

stmt! {
    static API_KEY: read (ns: uuid) =
        "SELECT stripe_api_key FROM mec_data.namespace_secrets WHERE namespace_id = $1";
}

stmt! {
    /// What is due now: pending, its pause over, and what it waits for (a cancellation) sent.
    static DUE: read (ns: uuid, max_rows: int8) =
        "SELECT o.identifier, o.kind, o.event_name, o.stripe_customer_id, trim_scale(o.value)::text AS value,
                extract(epoch FROM o.event_timestamp)::int8 AS timestamp, o.cancels, o.attempts
           FROM mec_data.stripe_usage_outbox o
          WHERE o.namespace_id = $1 AND o.state = 'pending' AND o.next_attempt_at <= now()
            AND (o.waits_for IS NULL OR EXISTS (
                   SELECT 1 FROM mec_data.stripe_usage_outbox w
                    WHERE w.namespace_id = o.namespace_id AND w.identifier = o.waits_for AND w.state = 'sent'))
          ORDER BY o.created_at, o.identifier
          LIMIT $2";
}

stmt! {
    static PENDING: read (ns: uuid) =
        "SELECT count(*)::int8 FROM mec_data.stripe_usage_outbox WHERE namespace_id = $1 AND state = 'pending'";
}

stmt! {
    static LOCK_ROW: write (ns: uuid, identifier: text) =
        "SELECT kind, state, attempts, cancels FROM mec_data.stripe_usage_outbox
          WHERE namespace_id = $1 AND identifier = $2 FOR UPDATE";
}

stmt! {
    static MARK_SENT: write (ns: uuid, identifier: text, status: int4) =
        "UPDATE mec_data.stripe_usage_outbox
            SET state = 'sent', sent_at = now(), attempts = attempts + 1, last_status = $3, last_error = NULL
          WHERE namespace_id = $1 AND identifier = $2";
}

stmt! {
    static MARK_CANCELLED: write (ns: uuid, identifier: text) =
        "UPDATE mec_data.stripe_usage_outbox SET state = 'cancelled'
          WHERE namespace_id = $1 AND identifier = $2 AND state = 'sent'";
}

stmt! {
    static MARK_RETRY: write (ns: uuid, identifier: text, status: int4, error: text, after_seconds: int8) =
        "UPDATE mec_data.stripe_usage_outbox
            SET attempts = attempts + 1, last_status = $3, last_error = $4,
                next_attempt_at = now() + make_interval(secs => $5)
          WHERE namespace_id = $1 AND identifier = $2
         RETURNING next_attempt_at";
}

stmt! {
    static MARK_PARKED: write (ns: uuid, identifier: text, status: int4, error: text) =
        "UPDATE mec_data.stripe_usage_outbox
            SET state = 'parked', attempts = attempts + 1, last_status = $3, last_error = $4
          WHERE namespace_id = $1 AND identifier = $2";
}

stmt! {
    /// Parked events that can be sent again as they are (not a refund Stripe cannot take).
    static UNPARK: write (ns: uuid, identifier: text) =
        "UPDATE mec_data.stripe_usage_outbox
            SET state = 'pending', next_attempt_at = now(), attempts = 0
          WHERE namespace_id = $1 AND state = 'parked' AND ($2::text IS NULL OR identifier = $2)
            AND (kind = 'cancel' OR value > 0)
         RETURNING identifier";
}

fn new_identifier() -> String {
    format!("mec_{}", uuid::Uuid::new_v4().simple())
}

fn dec(v: Option<AnyNumeric>) -> MecResult<Decimal> {
    Ok(v.as_ref().map(to_decimal).transpose()?.unwrap_or_default())
}

/// One new outbox row.
struct NewRow<'a> {
    identifier: &'a str,
    kind: &'a str,
    account: Uuid,
    resource: &'a str,
    period_start: TimestampWithTimeZone,
    event_name: &'a str,
    customer: &'a str,
    value: Decimal,
    at: TimestampWithTimeZone,
    cancels: Option<&'a str>,
    waits_for: Option<&'a str>,
    state: &'a str,
    error: Option<&'a str>,
}

fn insert(client: &mut SpiClient<'_>, ns: Uuid, r: &NewRow<'_>) -> MecResult<()> {
    spi::write(
        client,
        &INSERT_OUTBOX,
        &[
            ns.into(),
            r.identifier.into(),
            r.kind.into(),
            r.account.into(),
            r.resource.into(),
            r.period_start.into(),
            r.event_name.into(),
            r.customer.into(),
            to_numeric(r.value).into(),
            r.at.into(),
            r.cancels.into(),
            r.waits_for.into(),
            r.state.into(),
            r.error.into(),
        ],
    )?;
    Ok(())
}

fn carry(client: &mut SpiClient<'_>, ns: Uuid, identifier: &str, keys: &Value) -> MecResult<()> {
    spi::write(
        client,
        &INSERT_ITEMS,
        &[ns.into(), identifier.into(), JsonB(keys.clone()).into()],
    )?;
    Ok(())
}

/// Turns the ledger rows not yet carried into outbox rows. Returns `{events, cancellations,
/// nothing_to_send, parked, deferred, ledger_rows, too_old}`.
pub fn prepare(client: &mut SpiClient<'_>, ns: Uuid, now_us: i64) -> MecResult<Value> {
    spi::write(client, &LOCK_NAMESPACE, &[ns.to_string().as_str().into()])?;
    let since = timestamptz(now_us - MAX_AGE_DAYS * 86_400 * 1_000_000);
    let now = timestamptz(now_us);
    struct Group {
        account: Uuid,
        resource: String,
        period_start: TimestampWithTimeZone,
        event_name: String,
        customer: String,
        net: Decimal,
        last_us: i64,
        keys: Value,
        rows: i64,
    }
    let mut groups = Vec::new();
    for row in spi::read(client, &CANDIDATES, &[ns.into(), since.into()])? {
        let missing = || MecError::Internal("usage candidate with a NULL key column".into());
        groups.push(Group {
            account: row.get::<Uuid>("account_id")?.ok_or_else(missing)?,
            resource: row.get::<String>("resource_type")?.ok_or_else(missing)?,
            period_start: row
                .get::<TimestampWithTimeZone>("period_start")?
                .ok_or_else(missing)?,
            event_name: row
                .get::<String>("stripe_meter_event")?
                .ok_or_else(missing)?,
            customer: row
                .get::<String>("stripe_customer_id")?
                .ok_or_else(missing)?,
            net: dec(row.get::<AnyNumeric>("net")?)?,
            last_us: row
                .get::<TimestampWithTimeZone>("last_at")?
                .map(unix_us)
                .transpose()?
                .unwrap_or(now_us),
            keys: row
                .get::<JsonB>("keys")?
                .map(|j| j.0)
                .unwrap_or(Value::Null),
            rows: row.get::<i64>("rows")?.unwrap_or(0),
        });
    }
    let too_old = spi::read(client, &TOO_OLD, &[ns.into(), since.into()])?
        .one::<i64>()?
        .unwrap_or(0);

    let (mut events, mut cancellations, mut zero, mut parked, mut deferred, mut rows) =
        (0, 0, 0, 0, 0, 0i64);
    for g in groups {
        let at = timestamptz(g.last_us.min(now_us));
        if g.net >= Decimal::ZERO {
            let id = new_identifier();
            let positive = g.net > Decimal::ZERO;
            insert(
                client,
                ns,
                &NewRow {
                    identifier: &id,
                    kind: "meter_event",
                    account: g.account,
                    resource: &g.resource,
                    period_start: g.period_start,
                    event_name: &g.event_name,
                    customer: &g.customer,
                    value: g.net,
                    at,
                    cancels: None,
                    waits_for: None,
                    state: if positive {
                        "pending"
                    } else {
                        "nothing_to_send"
                    },
                    error: None,
                },
            )?;
            carry(client, ns, &id, &g.keys)?;
            if positive {
                events += 1;
            } else {
                zero += 1;
            }
            rows += g.rows;
            continue;
        }
        // A refund: wait while this counter has an event on its way, then cancel and replace.
        let counter = [
            ns.into(),
            g.account.into(),
            g.resource.as_str().into(),
            g.period_start.into(),
        ];
        let unsent = spi::read(client, &UNSENT_FOR_COUNTER, &counter)?
            .one::<bool>()?
            .unwrap_or(false);
        if unsent {
            deferred += 1;
            continue;
        }
        let last = spi::read(
            client,
            &CANCELLABLE,
            &[
                ns.into(),
                g.account.into(),
                g.resource.as_str().into(),
                g.period_start.into(),
                (CANCEL_WINDOW_HOURS as i32).into(),
            ],
        )?
        .first()
        .map(|row| -> MecResult<_> {
            Ok((
                row.get::<String>("identifier")?.unwrap_or_default(),
                dec(row.get::<AnyNumeric>("value")?)?,
                row.get::<TimestampWithTimeZone>("event_timestamp")?
                    .unwrap_or(now),
            ))
        })
        .transpose()?;
        match last {
            Some((sent, value, sent_at)) if value + g.net >= Decimal::ZERO => {
                let cancel = new_identifier();
                insert(
                    client,
                    ns,
                    &NewRow {
                        identifier: &cancel,
                        kind: "cancel",
                        account: g.account,
                        resource: &g.resource,
                        period_start: g.period_start,
                        event_name: &g.event_name,
                        customer: &g.customer,
                        value: Decimal::ZERO,
                        at: now,
                        cancels: Some(&sent),
                        waits_for: None,
                        state: "pending",
                        error: None,
                    },
                )?;
                cancellations += 1;
                let carrier = if value + g.net > Decimal::ZERO {
                    let replacement = new_identifier();
                    insert(
                        client,
                        ns,
                        &NewRow {
                            identifier: &replacement,
                            kind: "meter_event",
                            account: g.account,
                            resource: &g.resource,
                            period_start: g.period_start,
                            event_name: &g.event_name,
                            customer: &g.customer,
                            value: value + g.net,
                            at: sent_at,
                            cancels: None,
                            waits_for: Some(&cancel),
                            state: "pending",
                            error: None,
                        },
                    )?;
                    events += 1;
                    replacement
                } else {
                    cancel
                };
                spi::write(
                    client,
                    &MOVE_ITEMS,
                    &[ns.into(), sent.as_str().into(), carrier.as_str().into()],
                )?;
                carry(client, ns, &carrier, &g.keys)?;
            }
            _ => {
                let id = new_identifier();
                let error = format!(
                    "a refund of {} for this period, which Stripe can no longer take: it cancels a meter event only within 24 hours of receiving it. Credit the customer in Stripe (a credit note or a billing credit grant).",
                    g.net.abs().normalize()
                );
                insert(
                    client,
                    ns,
                    &NewRow {
                        identifier: &id,
                        kind: "meter_event",
                        account: g.account,
                        resource: &g.resource,
                        period_start: g.period_start,
                        event_name: &g.event_name,
                        customer: &g.customer,
                        value: g.net,
                        at,
                        cancels: None,
                        waits_for: None,
                        state: "parked",
                        error: Some(&error),
                    },
                )?;
                carry(client, ns, &id, &g.keys)?;
                parked += 1;
            }
        }
        rows += g.rows;
    }
    Ok(json!({
        "events": events,
        "cancellations": cancellations,
        "nothing_to_send": zero,
        "parked": parked,
        "deferred": deferred,
        "ledger_rows": rows,
        "too_old": too_old,
    }))
}

/// What to send now, at most `limit` rows, with the namespace's Stripe API key. `ME400` without a
/// key. Returns `{api_key, pending, events: [{identifier, kind, event_name, stripe_customer_id,
/// value, timestamp, cancels, attempts}]}`.
pub fn due(client: &SpiClient<'_>, ns: Uuid, limit: i64) -> MecResult<Value> {
    let key = spi::read(client, &API_KEY, &[ns.into()])?.one::<String>()?;
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Err(MecError::bad_request(
            format!("namespace {ns} has no stripe_api_key: usage cannot be sent to Stripe"),
            "Its admin sets it: SELECT mec.update_namespace_settings('{\"stripe_api_key\": \"sk_…\"}') (a restricted key with write access to Billing meter events is enough).",
        ));
    };
    if !(1..=1000).contains(&limit) {
        return Err(MecError::invalid(format!(
            "p_limit must be 1 to 1000, got {limit}"
        )));
    }
    let mut events = Vec::new();
    for row in spi::read(client, &DUE, &[ns.into(), limit.into()])? {
        events.push(json!({
            "identifier": row.get::<String>("identifier")?,
            "kind": row.get::<String>("kind")?,
            "event_name": row.get::<String>("event_name")?,
            "stripe_customer_id": row.get::<String>("stripe_customer_id")?,
            "value": row.get::<String>("value")?,
            "timestamp": row.get::<i64>("timestamp")?,
            "cancels": row.get::<String>("cancels")?,
            "attempts": row.get::<i32>("attempts")?,
        }));
    }
    let pending = spi::read(client, &PENDING, &[ns.into()])?
        .one::<i64>()?
        .unwrap_or(0);
    Ok(json!({"api_key": key, "pending": pending, "events": events}))
}

/// The pause before attempt `attempts + 1`: 1 s, 2 s, 4 s … at most an hour.
fn backoff_seconds(attempts: i32) -> i64 {
    let exp = u32::try_from(attempts.clamp(0, 12)).unwrap_or(12);
    (1i64 << exp).min(MAX_BACKOFF_SECONDS)
}

/// Records Stripe's answer to sending `identifier`: `status` is the HTTP status (0: no answer — a
/// network error or a timeout), `error` its body or the failure, `retry_after` Stripe's
/// `Retry-After` seconds. Returns `{identifier, state, attempts, next_attempt_at}`; a row that is no
/// longer pending (answered twice) is left as it is.
pub fn result(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    identifier: &str,
    status: i32,
    error: Option<&str>,
    retry_after: Option<i32>,
) -> MecResult<Value> {
    let Some(row) = spi::write(client, &LOCK_ROW, &[ns.into(), identifier.into()])?.first() else {
        return Err(MecError::NotFound {
            what: "usage event",
            id: identifier.to_string(),
        });
    };
    let kind = row.get::<String>("kind")?.unwrap_or_default();
    let state = row.get::<String>("state")?.unwrap_or_default();
    let attempts = row.get::<i32>("attempts")?.unwrap_or(0);
    let cancels = row.get::<String>("cancels")?;
    drop(row);
    if state != "pending" {
        return Ok(
            json!({"identifier": identifier, "state": state, "attempts": attempts, "changed": false}),
        );
    }
    let error: Option<String> = error.map(|e| e.chars().take(2000).collect());
    let (new_state, next) = match status {
        200..=299 => {
            spi::write(
                client,
                &MARK_SENT,
                &[ns.into(), identifier.into(), status.into()],
            )?;
            if kind == "cancel" {
                if let Some(c) = &cancels {
                    spi::write(client, &MARK_CANCELLED, &[ns.into(), c.as_str().into()])?;
                }
            }
            ("sent", None)
        }
        429 | 409 | 0 | 500..=599 if attempts + 1 < MAX_ATTEMPTS => {
            let wait = match (status, retry_after) {
                (429, Some(s)) if s > 0 => i64::from(s).min(MAX_BACKOFF_SECONDS),
                _ => backoff_seconds(attempts),
            };
            let next = spi::write(
                client,
                &MARK_RETRY,
                &[
                    ns.into(),
                    identifier.into(),
                    status.into(),
                    error.as_deref().into(),
                    wait.into(),
                ],
            )?
            .one::<TimestampWithTimeZone>()?;
            ("pending", next.map(unix_us).transpose()?)
        }
        _ => {
            spi::write(
                client,
                &MARK_PARKED,
                &[
                    ns.into(),
                    identifier.into(),
                    status.into(),
                    error.as_deref().into(),
                ],
            )?;
            ("parked", None)
        }
    };
    Ok(json!({
        "identifier": identifier,
        "state": new_state,
        "attempts": attempts + 1,
        "next_attempt_at": next.map(crate::pg::values::iso8601),
        "changed": true,
    }))
}

/// Puts parked events (one, or all with `None`) back to pending, to be sent at once: after the admin
/// fixed what Stripe refused (an API key, a meter). Refunds Stripe cannot take stay parked.
pub fn retry(client: &mut SpiClient<'_>, ns: Uuid, identifier: Option<&str>) -> MecResult<Value> {
    let ids: Vec<String> = spi::write(client, &UNPARK, &[ns.into(), identifier.into()])?
        .into_iter()
        .map(|r| r.get::<String>("identifier").map(Option::unwrap_or_default))
        .collect::<MecResult<_>>()?;
    Ok(json!({"requeued": ids.len(), "identifiers": ids}))
}
