//! Auth0 in: sign-ups become accounts, deleted users are forgotten.
//!
//! A delivery is authenticated by the namespace's `auth0_secret`, which the Auth0 log stream sends
//! as its `Authorization` token (`Bearer <secret>` or the bare secret), compared in constant time.
//! Bodies: a log stream's JSON array of log events (`[{"log_id", "data": {"type", "user_id", …}}]`),
//! its JSON-lines form, one such event, or a post-user-registration Action's object
//! (`{"user": {"user_id", …}}`). `ss` (successful sign-up) and an Action's registration create the
//! account with `external_id` = the Auth0 user id on the default plan; `sdu` / `du` (user deleted)
//! call `forget_account`. Each acted-on event is kept by its log id (an Action's: `action:<user_id>`),
//! so a redelivered batch changes nothing; other log types are only counted. See
//! `docs/integrations.md`.

use pgrx::datum::Uuid;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::ops::corrections;
use crate::ops::provisioning::{self, Provision};
use crate::pg::spi::{self, stmt};
use crate::pg::values::new_uuid;
use crate::pg::{MecError, MecResult};

/// Events pg_mec acts on in one delivery at most (Auth0 batches hold up to a few hundred).
const MAX_EVENTS: usize = 10_000;

stmt! {
    static AUTH0_SECRET: read (ns: uuid) =
        "SELECT auth0_secret FROM mec_data.namespace_secrets WHERE namespace_id = $1";
}

stmt! {
    static CLAIM_LOG: write (ns: uuid, log_id: text, event_type: text, user_id: text) =
        "INSERT INTO mec_data.auth0_events (namespace_id, log_id, event_type, user_id, outcome)
         VALUES ($1, $2, $3, $4, 'ignored')
         ON CONFLICT (namespace_id, log_id) DO NOTHING
         RETURNING true";
}

stmt! {
    static SET_OUTCOME: write (ns: uuid, log_id: text, outcome: text, account_id: uuid, user_id: text, detail: text) =
        "UPDATE mec_data.auth0_events SET outcome = $3, account_id = $4, user_id = $5, detail = $6
          WHERE namespace_id = $1 AND log_id = $2";
}

stmt! {
    static ACCOUNT_BY_EXTERNAL_ID: read (ns: uuid, external_id: text) =
        "SELECT account_id FROM mec_data.accounts WHERE namespace_id = $1 AND external_id = $2";
}

/// What one log event asks for.
enum Action {
    SignUp,
    Delete,
}

/// One event of a delivery, as much of it as pg_mec reads.
struct LogEvent {
    log_id: String,
    event_type: String,
    user_id: Option<String>,
}

impl LogEvent {
    fn action(&self) -> Option<Action> {
        match self.event_type.as_str() {
            "ss" | "post-user-registration" => Some(Action::SignUp),
            "sdu" | "du" => Some(Action::Delete),
            _ => None,
        }
    }
}

fn bad(message: impl Into<String>) -> MecError {
    MecError::bad_request(
        message,
        "Send what an Auth0 log stream (custom webhook, JSON array, JSON lines or one object) or a post-user-registration Action posts.",
    )
}

/// One record of a log stream (`{"log_id", "data": {…}}`, or the log event itself) or an Action's
/// object (`{"user": {"user_id"}}`).
fn parse_record(v: &Value) -> MecResult<LogEvent> {
    if let Some(user) = v.get("user").filter(|u| u.is_object()) {
        let user_id = user
            .get("user_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("the Action's user has no user_id"))?;
        return Ok(LogEvent {
            log_id: format!("action:{user_id}"),
            event_type: "post-user-registration".into(),
            user_id: Some(user_id.to_string()),
        });
    }
    let data = v.get("data").filter(|d| d.is_object()).unwrap_or(v);
    let log_id = v
        .get("log_id")
        .or_else(|| data.get("log_id"))
        .or_else(|| data.get("_id"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or_else(|| bad("an Auth0 log event has no log_id"))?;
    let event_type = data
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("Auth0 log event {log_id} has no type")))?;
    Ok(LogEvent {
        log_id: log_id.to_string(),
        event_type: event_type.to_string(),
        user_id: data
            .get("user_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    })
}

/// The records of a body: a JSON array, one JSON object, or JSON lines.
fn parse_body(payload: &str) -> MecResult<Vec<LogEvent>> {
    let records: Vec<Value> = match serde_json::from_str::<Value>(payload) {
        Ok(Value::Array(a)) => a,
        Ok(v @ Value::Object(_)) => vec![v],
        Ok(_) => return Err(bad("the body is neither a JSON array nor a JSON object")),
        Err(_) => payload
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .map_err(|e| bad(format!("the body is not JSON ({e})")))
            })
            .collect::<MecResult<_>>()?,
    };
    if records.len() > MAX_EVENTS {
        return Err(bad(format!(
            "{} events in one delivery; at most {MAX_EVENTS}",
            records.len()
        )));
    }
    records.iter().map(parse_record).collect()
}

/// Authenticates a delivery against the namespace's `auth0_secret` and acts on its events.
/// `ME400` when the token is refused or the body is not Auth0's; nothing is recorded then.
pub fn receive(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    payload: &str,
    authorization: Option<&str>,
    now_us: i64,
) -> MecResult<Value> {
    let secret = spi::read(client, &AUTH0_SECRET, &[ns.into()])?.one::<String>()?;
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Err(MecError::bad_request(
            format!("namespace {ns} does not accept Auth0 webhooks: it has no auth0_secret"),
            "Its admin sets it: SELECT mec.update_namespace_settings('{\"auth0_secret\": \"…\"}'), and the log stream sends it as its Authorization token.",
        ));
    };
    if !pg_mec_core::bearer::matches(authorization, &secret) {
        return Err(MecError::bad_request(
            "Auth0 webhook refused: the Authorization token does not match the namespace's auth0_secret",
            "Set the log stream's Authorization Token to the namespace's auth0_secret (with or without \"Bearer \").",
        ));
    }
    let events = parse_body(payload)?;
    apply(client, ns, &events, now_us)
}

fn apply(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    events: &[LogEvent],
    now_us: i64,
) -> MecResult<Value> {
    let (mut applied, mut duplicates, mut ignored) = (0, 0, 0);
    let mut results = Vec::new();
    for ev in events {
        let Some(action) = ev.action() else {
            ignored += 1;
            continue;
        };
        let claimed = !spi::write(
            client,
            &CLAIM_LOG,
            &[
                ns.into(),
                ev.log_id.as_str().into(),
                ev.event_type.as_str().into(),
                ev.user_id.as_deref().into(),
            ],
        )?
        .is_empty();
        if !claimed {
            duplicates += 1;
            results.push(json!({"log_id": ev.log_id, "type": ev.event_type, "duplicate": true}));
            continue;
        }
        let (outcome, account, user_id, detail) = match (&action, &ev.user_id) {
            (_, None) => ("ignored", None, None, "the event names no user".to_string()),
            (Action::SignUp, Some(user)) => {
                let (account, detail) = sign_up(client, ns, user, now_us)?;
                ("applied", Some(account), Some(user.as_str()), detail)
            }
            (Action::Delete, Some(user)) => match account_of(client, ns, user)? {
                Some(account) => {
                    corrections::forget(client, ns, account)?;
                    // The deletion's own row keeps no trace of who it was.
                    (
                        "applied",
                        Some(account),
                        None,
                        "forgot the account".to_string(),
                    )
                }
                None => (
                    "ignored",
                    None,
                    None,
                    "no account has this user".to_string(),
                ),
            },
        };
        if outcome == "applied" {
            applied += 1;
        } else {
            ignored += 1;
        }
        spi::write(
            client,
            &SET_OUTCOME,
            &[
                ns.into(),
                ev.log_id.as_str().into(),
                outcome.into(),
                account.into(),
                user_id.into(),
                detail.as_str().into(),
            ],
        )?;
        results.push(json!({
            "log_id": ev.log_id,
            "type": ev.event_type,
            "duplicate": false,
            "outcome": outcome,
            "account_id": account.map(|a| a.to_string()),
            "detail": detail,
        }));
    }
    Ok(json!({
        "received": events.len(),
        "applied": applied,
        "duplicates": duplicates,
        "ignored": ignored,
        "results": results,
    }))
}

fn account_of(client: &SpiClient<'_>, ns: Uuid, user: &str) -> MecResult<Option<Uuid>> {
    spi::read(client, &ACCOUNT_BY_EXTERNAL_ID, &[ns.into(), user.into()])?.one::<Uuid>()
}

/// The account of `user`, created on the default plan (or with no plan) if missing.
fn sign_up(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    user: &str,
    now_us: i64,
) -> MecResult<(Uuid, String)> {
    if let Some(account) = account_of(client, ns, user)? {
        return Ok((account, "the account exists already".into()));
    }
    let account = new_uuid();
    match provisioning::default_plan(client, ns)? {
        Some(plan) => {
            provisioning::provision(
                client,
                ns,
                &Provision {
                    account_id: account,
                    plan_id: plan.clone(),
                    effective_us: now_us,
                    external_id: Some(user.to_string()),
                    key: None,
                },
            )?;
            Ok((
                account,
                format!("created the account on the default plan \"{plan}\""),
            ))
        }
        None => {
            provisioning::create_account(client, ns, account, Some(user))?;
            Ok((
                account,
                "created the account (the namespace has no default plan)".into(),
            ))
        }
    }
}
