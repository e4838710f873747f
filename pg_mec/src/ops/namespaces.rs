//! Namespaces (tenants) and their settings. Secrets are kept apart from settings, readable only by
//! `mec_admin`, and shown masked.

use pgrx::spi::SpiClient;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Map, Value};

use crate::pg::spi::{self, stmt};
use crate::pg::{MecError, MecResult};

const SECRET_KEYS: [&str; 3] = ["stripe_webhook_secret", "auth0_secret", "stripe_api_key"];

stmt! {
    static SET_NAMESPACE_GUC: write (namespace: text) =
        "SELECT set_config('mec.namespace_id', $1, true)";
}

stmt! {
    static INSERT_NAMESPACE: write (ns: uuid, name: text, settings: jsonb) =
        "INSERT INTO mec_data.namespaces (namespace_id, name, settings) VALUES ($1, $2, $3)
              ON CONFLICT (namespace_id) DO NOTHING RETURNING true";
}

stmt! {
    static NAMESPACE: read (ns: uuid) =
        "SELECT name, settings FROM mec_data.namespaces WHERE namespace_id = $1";
}

stmt! {
    static UPDATE_SETTINGS: write (ns: uuid, settings: jsonb) =
        "UPDATE mec_data.namespaces SET settings = $2, updated_at = now() WHERE namespace_id = $1 RETURNING settings";
}

stmt! {
    static UPSERT_SECRET: write (ns: uuid, stripe_webhook_secret: text, auth0_secret: text, stripe_api_key: text, set_stripe: bool, set_auth0: bool, set_api_key: bool) =
        "INSERT INTO mec_data.namespace_secrets AS s (namespace_id, stripe_webhook_secret, auth0_secret, stripe_api_key)
              VALUES ($1, $2, $3, $4)
              ON CONFLICT (namespace_id) DO UPDATE
                 SET stripe_webhook_secret = CASE WHEN $5 THEN excluded.stripe_webhook_secret ELSE s.stripe_webhook_secret END,
                     auth0_secret = CASE WHEN $6 THEN excluded.auth0_secret ELSE s.auth0_secret END,
                     stripe_api_key = CASE WHEN $7 THEN excluded.stripe_api_key ELSE s.stripe_api_key END,
                     updated_at = now()
              RETURNING stripe_webhook_secret, auth0_secret, stripe_api_key";
}

stmt! {
    static PLAN_EXISTS: read (ns: uuid, plan_id: text) =
        "SELECT EXISTS (SELECT 1 FROM mec_data.plans WHERE namespace_id = $1 AND plan_id = $2 AND active)";
}

fn int_setting(key: &str, v: &Value, min: i64, max: i64) -> MecResult<()> {
    match v.as_i64() {
        Some(n) if (min..=max).contains(&n) => Ok(()),
        _ => Err(MecError::invalid(format!(
            "setting {key} must be an integer from {min} to {max}, got {v}"
        ))),
    }
}

/// `webhook_retry_schedule`: the pauses (seconds) before each retry of a failed webhook delivery;
/// past the last, a delivery is dead. At most 20, each up to a week.
fn retry_schedule(v: &Value) -> MecResult<()> {
    let ok = v.as_array().is_some_and(|a| {
        a.len() <= 20
            && a.iter()
                .all(|x| x.as_i64().is_some_and(|n| (0..=604_800).contains(&n)))
    });
    if !ok {
        return Err(MecError::invalid_hint(
            format!("setting webhook_retry_schedule must be an array of at most 20 pauses in seconds (0 to 604800), got {v}"),
            "The default, as Standard Webhooks suggests: [5, 300, 1800, 7200, 18000, 36000, 36000] (8 attempts over about a day).",
        ));
    }
    Ok(())
}

/// Checks every key of `settings`; `null` removes a key. Unknown keys are refused (typos must not
/// pass silently).
fn validate(settings: &Map<String, Value>) -> MecResult<()> {
    for (key, v) in settings {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "default_plan_id" | "stripe_webhook_secret" | "auth0_secret" | "stripe_api_key"
                if !v.is_string() =>
            {
                return Err(MecError::invalid(format!("setting {key} must be a string")));
            }
            "default_plan_id" | "stripe_webhook_secret" | "auth0_secret" | "stripe_api_key" => {}
            "stripe_usage_sync" if !v.is_boolean() => {
                return Err(MecError::invalid("setting stripe_usage_sync must be true or false"));
            }
            "stripe_usage_sync" => {}
            "webhook_retry_schedule" => retry_schedule(v)?,
            "key_retention_days" => int_setting(key, v, 45, 3650)?,
            "history_retention_days" => int_setting(key, v, 45, 36_500)?,
            "late_event_days" => int_setting(key, v, 0, 365)?,
            "billing_anchor" => int_setting(key, v, 1, 31)?,
            "stripe_webhook_tolerance_seconds" => int_setting(key, v, 1, 86_400)?,
            "overdue_action" => match v.as_str() {
                Some("flag" | "default_plan" | "block") => {}
                _ => {
                    return Err(MecError::invalid_hint(
                        format!("setting overdue_action must be \"flag\", \"default_plan\" or \"block\", got {v}"),
                        "flag reports payment_overdue only; default_plan applies the default plan's entitlements while overdue; block refuses every use (ME402).",
                    ))
                }
            },
            other => {
                return Err(MecError::invalid_hint(
                    format!("unknown setting \"{other}\""),
                    "Settings: default_plan_id, stripe_webhook_secret, stripe_webhook_tolerance_seconds, stripe_api_key, stripe_usage_sync, auth0_secret, key_retention_days, history_retention_days, late_event_days, billing_anchor, overdue_action, webhook_retry_schedule.",
                ))
            }
        }
    }
    Ok(())
}

fn mask(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{tail}")
}

fn settings_object(settings: Option<Value>) -> MecResult<Map<String, Value>> {
    match settings.unwrap_or_else(|| json!({})) {
        Value::Object(m) => Ok(m),
        _ => Err(MecError::invalid("p_settings must be a JSON object")),
    }
}

fn split_secrets(mut settings: Map<String, Value>) -> (Map<String, Value>, Map<String, Value>) {
    let mut secrets = Map::new();
    for k in SECRET_KEYS {
        if let Some(v) = settings.remove(k) {
            secrets.insert(k.to_string(), v);
        }
    }
    (settings, secrets)
}

fn store_secrets(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    secrets: &Map<String, Value>,
) -> MecResult<Map<String, Value>> {
    let stripe = secrets.get("stripe_webhook_secret");
    let auth0 = secrets.get("auth0_secret");
    let api_key = secrets.get("stripe_api_key");
    let (s, a, k) = spi::write(
        client,
        &UPSERT_SECRET,
        &[
            ns.into(),
            stripe.and_then(Value::as_str).into(),
            auth0.and_then(Value::as_str).into(),
            api_key.and_then(Value::as_str).into(),
            stripe.is_some().into(),
            auth0.is_some().into(),
            api_key.is_some().into(),
        ],
    )?
    .three::<String, String, String>(
        "stripe_webhook_secret",
        "auth0_secret",
        "stripe_api_key",
    )?;
    let mut masked = Map::new();
    for (key, value) in [
        ("stripe_webhook_secret", s),
        ("auth0_secret", a),
        ("stripe_api_key", k),
    ] {
        if let Some(v) = value {
            masked.insert(key.into(), Value::String(mask(&v)));
        }
    }
    Ok(masked)
}

/// Creates a namespace (idempotent on its id and name). Database owner only.
pub fn create(
    client: &mut SpiClient<'_>,
    name: &str,
    id: Uuid,
    settings: Option<Value>,
) -> MecResult<Value> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(MecError::invalid("p_name must be 1 to 200 characters"));
    }
    let settings = settings_object(settings)?;
    validate(&settings)?;
    let (plain, secrets) = split_secrets(settings);
    let plain: Map<String, Value> = plain.into_iter().filter(|(_, v)| !v.is_null()).collect();
    // So that FORCE ROW LEVEL SECURITY admits the new row for a non-superuser owner.
    spi::write(
        client,
        &SET_NAMESPACE_GUC,
        &[id.to_string().as_str().into()],
    )?;
    let created = !spi::write(
        client,
        &INSERT_NAMESPACE,
        &[id.into(), name.into(), JsonB(Value::Object(plain)).into()],
    )?
    .is_empty();
    if !created {
        let existing = spi::read(client, &NAMESPACE, &[id.into()])?.one::<String>()?;
        if existing.as_deref() != Some(name) {
            return Err(MecError::Conflict {
                message: format!("namespace {id} already exists with another name"),
                hint: Some("Pick another p_namespace_id, or omit it to get a new one.".into()),
            });
        }
    } else if !secrets.is_empty() {
        store_secrets(client, id, &secrets)?;
    }
    Ok(json!({"namespace_id": id.to_string(), "name": name, "created": created}))
}

/// `42501` unless the caller's namespace exists (and is visible to it): before a write that would
/// otherwise meet a foreign key.
pub fn require_namespace(client: &SpiClient<'_>, ns: Uuid) -> MecResult<()> {
    let current =
        spi::read(client, &NAMESPACE, &[ns.into()])?.two::<String, JsonB>("name", "settings")?;
    if current.0.is_none() {
        return Err(MecError::denied(
            "the namespace of this session does not exist or is not visible to this role",
        ));
    }
    Ok(())
}

/// Merges `settings` into the caller's namespace settings and returns them, secrets masked.
pub fn update_settings(
    client: &mut SpiClient<'_>,
    ns: Uuid,
    settings: Option<Value>,
) -> MecResult<Value> {
    let changes = settings_object(settings)?;
    validate(&changes)?;
    if let Some(Value::String(plan)) = changes.get("default_plan_id") {
        let exists =
            spi::read(client, &PLAN_EXISTS, &[ns.into(), plan.as_str().into()])?.one::<bool>()?;
        if exists != Some(true) {
            return Err(MecError::unknown("plan", plan.clone()));
        }
    }
    let current =
        spi::read(client, &NAMESPACE, &[ns.into()])?.two::<String, JsonB>("name", "settings")?;
    let Some(JsonB(Value::Object(mut merged))) = current.1 else {
        return Err(MecError::denied(
            "the namespace of this session does not exist or is not visible to this role",
        ));
    };
    let (plain, secrets) = split_secrets(changes);
    for (k, v) in plain {
        if v.is_null() {
            merged.remove(&k);
        } else {
            merged.insert(k, v);
        }
    }
    let stored = spi::write(
        client,
        &UPDATE_SETTINGS,
        &[ns.into(), JsonB(Value::Object(merged)).into()],
    )?
    .one::<JsonB>()?
    .map(|j| j.0)
    .unwrap_or(Value::Null);
    let masked = store_secrets(client, ns, &secrets)?;
    let mut out = match stored {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    out.extend(masked);
    for (k, v) in [
        ("key_retention_days", Value::from(45)),
        ("history_retention_days", Value::from(400)),
        ("late_event_days", Value::from(7)),
        ("stripe_webhook_tolerance_seconds", Value::from(300)),
        ("overdue_action", Value::from("flag")),
    ] {
        out.entry(k).or_insert(v);
    }
    crate::ledger::audit::audit(
        client,
        ns,
        "update_namespace_settings",
        &ns.to_string(),
        json!({"keys": out.keys().collect::<Vec<_>>()}),
    )?;
    Ok(Value::Object(out))
}
