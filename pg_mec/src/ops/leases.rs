//! Leases: held slots of `concurrency` resources.
//!
//! `acquire` locks the account's lifetime counter row for the resource (one upsert), frees
//! expired leases, counts the active ones and inserts the new lease, so concurrent acquirers can
//! never hold more than the limit. An expired lease stops counting at once: expiry is compared
//! with `clock_timestamp()`, not the transaction's start, so it holds inside long transactions too.

use pg_mec_core::catalog::Kind;
use pg_mec_core::Decimal;
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::cache::entitlement;
use crate::counters::usage;
use crate::pg::spi::{self, stmt};
use crate::pg::values::{opt_num, timestamptz, ts_json, unix_us};
use crate::pg::{MecError, MecResult};

pub struct Acquire {
    pub account_id: Uuid,
    pub resource_type: String,
    pub holder: Option<String>,
    pub ttl_seconds: i32,
    pub key: Option<String>,
}

stmt! {
    static LOCK_COUNTER: write (ns: uuid, account_id: uuid, resource_type: text, period_start: timestamptz) =
        "INSERT INTO mec_data.usage_counters (namespace_id, account_id, resource_type, period_start, slot, period_end)
              VALUES ($1, $2, $3, $4, 0, NULL)
              ON CONFLICT (namespace_id, account_id, resource_type, period_start, slot)
              DO UPDATE SET updated_at = clock_timestamp()
              RETURNING used";
}

stmt! {
    static FREE_EXPIRED: write (ns: uuid, account_id: uuid, resource_type: text) =
        "UPDATE mec_data.leases SET released_at = clock_timestamp(), release_reason = 'expired'
              WHERE namespace_id = $1 AND account_id = $2 AND resource_type = $3
                AND released_at IS NULL AND expires_at <= clock_timestamp()";
}

stmt! {
    static INSERT_LEASE: write (ns: uuid, account_id: uuid, resource_type: text, holder: text, key: text, ttl_seconds: int4) =
        "INSERT INTO mec_data.leases (namespace_id, account_id, resource_type, holder, idempotency_key, expires_at)
              VALUES ($1, $2, $3, $4, $5, clock_timestamp() + make_interval(secs => $6))
              ON CONFLICT (namespace_id, idempotency_key) DO NOTHING
              RETURNING lease_id, expires_at";
}

stmt! {
    static BY_KEY: read (ns: uuid, key: text) =
        "SELECT lease_id, account_id, resource_type, expires_at, released_at
              FROM mec_data.leases WHERE namespace_id = $1 AND idempotency_key = $2";
}

stmt! {
    static RENEW: write (ns: uuid, lease_id: uuid, ttl_seconds: int4) =
        "UPDATE mec_data.leases SET expires_at = clock_timestamp() + make_interval(secs => $3)
              WHERE namespace_id = $1 AND lease_id = $2 AND released_at IS NULL AND expires_at > clock_timestamp()
              RETURNING expires_at";
}

stmt! {
    static RELEASE: write (ns: uuid, lease_id: uuid) =
        "UPDATE mec_data.leases
                 SET released_at = clock_timestamp(),
                     release_reason = CASE WHEN expires_at > clock_timestamp() THEN 'released' ELSE 'expired' END
              WHERE namespace_id = $1 AND lease_id = $2 AND released_at IS NULL
              RETURNING release_reason, released_at";
}

stmt! {
    static LEASE: read (ns: uuid, lease_id: uuid) =
        "SELECT released_at, release_reason, expires_at FROM mec_data.leases WHERE namespace_id = $1 AND lease_id = $2";
}

stmt! {
    static EXPIRE_ALL: write (ns: uuid) =
        "WITH gone AS (
                  UPDATE mec_data.leases SET released_at = clock_timestamp(), release_reason = 'expired'
                  WHERE namespace_id = $1 AND released_at IS NULL AND expires_at <= clock_timestamp()
                  RETURNING 1)
              SELECT count(*)::int4 FROM gone";
}

/// Takes a slot of a concurrency resource, or raises ME429 when all are held.
pub fn acquire(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    req: &Acquire,
    now_us: i64,
) -> MecResult<Value> {
    if let Some(key) = &req.key {
        crate::ledger::validate_key(key)?;
        if let Some(v) = replay(client, ns, req, key)? {
            return Ok(v);
        }
    }
    let eff = entitlement::resolve_for_use(client, ns, req.account_id, &req.resource_type, now_us)?;
    if eff.kind != Kind::Concurrency {
        return Err(MecError::bad_request(
            format!("resource \"{}\" is {} and has no leases", req.resource_type, eff.kind.as_str()),
            "Leases are for resources of kind concurrency; meter other kinds with mec.meter_consumption.",
        ));
    }
    let epoch: TimestampWithTimeZone = timestamptz(0);
    let resource = req.resource_type.as_str();
    spi::write(
        client,
        &LOCK_COUNTER,
        &[
            ns.into(),
            req.account_id.into(),
            resource.into(),
            epoch.into(),
        ],
    )?;
    // A concurrent call with the same key may have taken the slot while this one waited for the
    // counter's lock: answer as it did rather than counting that slot against this call.
    if let Some(key) = &req.key {
        if let Some(v) = replay(client, ns, req, key)? {
            return Ok(v);
        }
    }
    spi::write(
        client,
        &FREE_EXPIRED,
        &[ns.into(), req.account_id.into(), resource.into()],
    )?;
    let held = usage::read(client, ns, req.account_id, &eff, now_us)?;
    let decision = eff.policy.decide(held.used, Decimal::ONE);
    if !decision.allowed {
        return Err(MecError::LimitReached {
            resource: req.resource_type.clone(),
            violated: Value::Array(vec![usage::violated_policy(&eff, &held)]),
        });
    }
    let row = spi::write(
        client,
        &INSERT_LEASE,
        &[
            ns.into(),
            req.account_id.into(),
            resource.into(),
            req.holder.as_deref().into(),
            req.key.as_deref().into(),
            req.ttl_seconds.into(),
        ],
    )?
    .two::<Uuid, TimestampWithTimeZone>("lease_id", "expires_at")?;
    match row {
        (Some(id), expires) => Ok(json!({
            "lease_id": id.to_string(),
            "duplicate": false,
            "account_id": req.account_id.to_string(),
            "resource_type": req.resource_type,
            "holder": req.holder,
            "expires_at": ts_json(expires.map(unix_us).transpose()?),
            "active_leases": crate::pg::values::num(held.used + Decimal::ONE),
            "max_concurrent": opt_num(eff.policy.limit),
        })),
        // A concurrent call with the same key won: answer as it did.
        (None, _) => match req.key.as_deref() {
            Some(key) => replay(client, ns, req, key)?.ok_or_else(|| {
                MecError::Internal("lease key conflicted but no lease is visible".into())
            }),
            None => Err(MecError::Internal("lease insert returned nothing".into())),
        },
    }
}

fn replay(client: &SpiClient<'_>, ns: Uuid, req: &Acquire, key: &str) -> MecResult<Option<Value>> {
    let Some(row) = spi::read(client, &BY_KEY, &[ns.into(), key.into()])?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let id = row.get::<Uuid>("lease_id")?;
    let account = row.get::<Uuid>("account_id")?;
    let resource = row.get::<String>("resource_type")?;
    if account != Some(req.account_id) || resource.as_deref() != Some(req.resource_type.as_str()) {
        return Err(MecError::IdempotencyConflict {
            key: key.to_string(),
            detail: json!({"recorded": {"account_id": account.map(|a| a.to_string()), "resource_type": resource},
                           "sent": {"account_id": req.account_id.to_string(), "resource_type": req.resource_type}})
            .to_string(),
        });
    }
    let expires = row
        .get::<TimestampWithTimeZone>("expires_at")?
        .map(unix_us)
        .transpose()?;
    let released = row
        .get::<TimestampWithTimeZone>("released_at")?
        .map(unix_us)
        .transpose()?;
    Ok(Some(json!({
        "lease_id": id.map(|i| i.to_string()),
        "duplicate": true,
        "account_id": req.account_id.to_string(),
        "resource_type": req.resource_type,
        "expires_at": ts_json(expires),
        "released_at": ts_json(released),
    })))
}

/// Extends an active lease by `ttl` seconds from now. ME410 when it expired or was released.
pub fn renew(client: &mut SpiClient<'_>, ns: Uuid, lease_id: Uuid, ttl: i32) -> MecResult<Value> {
    let expires = spi::write(client, &RENEW, &[ns.into(), lease_id.into(), ttl.into()])?
        .one::<TimestampWithTimeZone>()?;
    if let Some(e) = expires {
        return Ok(
            json!({"lease_id": lease_id.to_string(), "renewed": true, "expires_at": ts_json(Some(unix_us(e)?))}),
        );
    }
    let state = spi::read(client, &LEASE, &[ns.into(), lease_id.into()])?
        .three::<TimestampWithTimeZone, String, TimestampWithTimeZone>(
            "released_at",
            "release_reason",
            "expires_at",
        );
    match state {
        Ok((released, reason, Some(_))) => Err(MecError::Expired {
            what: "lease",
            id: lease_id.to_string(),
            detail: Some(match (released, reason) {
                (Some(_), Some(r)) if r == "released" => "the lease was released".to_string(),
                _ => "the lease passed its expires_at; its slot may already be held by another caller".to_string(),
            }),
        }),
        _ => Err(MecError::NotFound { what: "lease", id: lease_id.to_string() }),
    }
}

/// Releases a lease. Releasing twice is not an error; an unknown lease is P0002.
pub fn release(client: &mut SpiClient<'_>, ns: Uuid, lease_id: Uuid) -> MecResult<Value> {
    let row = spi::write(client, &RELEASE, &[ns.into(), lease_id.into()])?
        .two::<String, TimestampWithTimeZone>("release_reason", "released_at")?;
    if let (Some(reason), released) = row {
        return Ok(json!({
            "lease_id": lease_id.to_string(),
            "released": true,
            "already_released": false,
            "expired": reason == "expired",
            "released_at": ts_json(released.map(unix_us).transpose()?),
        }));
    }
    let state = spi::read(client, &LEASE, &[ns.into(), lease_id.into()])?
        .three::<TimestampWithTimeZone, String, TimestampWithTimeZone>(
            "released_at",
            "release_reason",
            "expires_at",
        );
    match state {
        Ok((Some(released), reason, _)) => Ok(json!({
            "lease_id": lease_id.to_string(),
            "released": true,
            "already_released": true,
            "expired": reason.as_deref() == Some("expired"),
            "released_at": ts_json(Some(unix_us(released)?)),
        })),
        _ => Err(MecError::NotFound {
            what: "lease",
            id: lease_id.to_string(),
        }),
    }
}

/// Marks every lease of the namespace that passed its expiry as expired.
pub fn expire_stale(client: &mut SpiClient<'_>, ns: Uuid) -> MecResult<Value> {
    let n = spi::write(client, &EXPIRE_ALL, &[ns.into()])?
        .one::<i32>()?
        .unwrap_or(0);
    Ok(json!({"expired": n}))
}
