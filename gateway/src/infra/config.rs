//! Configuration from `MEC_*` environment variables, validated once at startup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
}

fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        message: message.into(),
    }
}

/// JWT verification settings.
#[derive(Clone, Debug, Default)]
pub struct JwtConfig {
    /// HS256 shared secret (`MEC_JWT_SECRET`), at least 32 bytes.
    pub secret: Option<String>,
    /// Path of a JWKS file with RS256/ES256 public keys (`MEC_JWT_JWKS`).
    pub jwks_path: Option<PathBuf>,
    /// Required `aud` value (`MEC_JWT_AUD`).
    pub audience: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub addr: SocketAddr,
    pub database_url: String,
    pub jwt: JwtConfig,
    pub pool_size: usize,
    /// Tokio worker threads; `None`: one per CPU.
    pub worker_threads: Option<usize>,
    pub pool_timeout: Duration,
    pub connect_timeout: Duration,
    /// Postgres `statement_timeout` for the gateway's connections; zero = none.
    pub statement_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_body_bytes: usize,
    /// The namespace of `POST /webhooks/stripe` (no namespace in the path).
    pub default_namespace: Option<uuid::Uuid>,
    /// Where Stripe's API is (`MEC_STRIPE_API_BASE`, a stand-in in tests).
    pub stripe_api_base: String,
    /// How long one request to Stripe may take.
    pub stripe_timeout: Duration,
    /// How often the background worker sends usage to Stripe; `None`: never (the default).
    pub stripe_sync_interval: Option<Duration>,
    /// How often the background worker delivers due webhooks; `None`: never.
    pub webhook_interval: Option<Duration>,
    /// How long one webhook delivery may take.
    pub webhook_timeout: Duration,
    /// How often the background worker runs `mec.purge_expired` in every namespace; `None`: never.
    pub purge_interval: Option<Duration>,
    /// Group commit of concurrent `meter_consumption` calls (`db/group.rs`): how long a group
    /// waits for more calls (`MEC_GROUP_COMMIT_US`, default 1 000 µs; 0 turns grouping off) ...
    pub group_commit_window: Duration,
    /// ... and the most calls in one group (`MEC_GROUP_COMMIT_MAX`, default 64).
    pub group_commit_max: usize,
}

pub const MIN_SECRET_LEN: usize = 32;

impl Config {
    /// Read from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Read from any key → value lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let addr = match get("MEC_GATEWAY_ADDR") {
            None => SocketAddr::from(([127, 0, 0, 1], 8000)),
            Some(a) => a.parse().map_err(|e| {
                invalid("MEC_GATEWAY_ADDR", format!("{a:?} is not host:port ({e})"))
            })?,
        };
        let database_url = get("MEC_AUTHENTICATOR_URL")
            .or_else(|| get("MEC_DATABASE_URL"))
            .ok_or(ConfigError::Missing("MEC_DATABASE_URL"))?;
        database_url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| invalid("MEC_DATABASE_URL", e.to_string()))?;
        let jwt = jwt_from_lookup(&get)?;
        if jwt.secret.is_none() && jwt.jwks_path.is_none() {
            return Err(ConfigError::Missing("MEC_JWT_SECRET or MEC_JWT_JWKS"));
        }
        let pool_size = int(&get, "MEC_POOL_SIZE", 16)?;
        if pool_size == 0 {
            return Err(invalid("MEC_POOL_SIZE", "must be at least 1"));
        }
        let worker_threads = match get("MEC_WORKER_THREADS") {
            None => None,
            Some(_) => match int(&get, "MEC_WORKER_THREADS", 0)? {
                0 => return Err(invalid("MEC_WORKER_THREADS", "must be at least 1")),
                n => Some(n),
            },
        };
        let max_body_bytes = int(&get, "MEC_MAX_BODY_BYTES", 1024 * 1024)?;
        if max_body_bytes == 0 {
            return Err(invalid("MEC_MAX_BODY_BYTES", "must be at least 1"));
        }
        let default_namespace = match get("MEC_DEFAULT_NAMESPACE_ID") {
            None => None,
            Some(v) => Some(v.trim().parse::<uuid::Uuid>().map_err(|_| {
                invalid("MEC_DEFAULT_NAMESPACE_ID", format!("{v:?} is not a uuid"))
            })?),
        };
        let stripe_api_base = get("MEC_STRIPE_API_BASE")
            .unwrap_or_else(|| "https://api.stripe.com".into())
            .trim_end_matches('/')
            .to_string();
        if !(stripe_api_base.starts_with("https://") || stripe_api_base.starts_with("http://")) {
            return Err(invalid(
                "MEC_STRIPE_API_BASE",
                format!("{stripe_api_base:?} is not an http(s) URL"),
            ));
        }
        let sync = millis(&get, "MEC_STRIPE_SYNC_INTERVAL_MS", 0, true)?;
        let webhooks = millis(&get, "MEC_WEBHOOK_INTERVAL_MS", 1_000, true)?;
        let purge = millis(&get, "MEC_PURGE_INTERVAL_MS", 3_600_000, true)?;
        Ok(Config {
            addr,
            database_url,
            jwt,
            pool_size,
            worker_threads,
            pool_timeout: millis(&get, "MEC_POOL_TIMEOUT_MS", 5_000, false)?,
            connect_timeout: millis(&get, "MEC_CONNECT_TIMEOUT_MS", 5_000, false)?,
            statement_timeout: millis(&get, "MEC_STATEMENT_TIMEOUT_MS", 10_000, true)?,
            request_timeout: millis(&get, "MEC_REQUEST_TIMEOUT_MS", 15_000, false)?,
            shutdown_timeout: millis(&get, "MEC_SHUTDOWN_TIMEOUT_MS", 30_000, false)?,
            max_body_bytes,
            default_namespace,
            stripe_api_base,
            stripe_timeout: millis(&get, "MEC_STRIPE_TIMEOUT_MS", 5_000, false)?,
            stripe_sync_interval: (!sync.is_zero()).then_some(sync),
            webhook_interval: (!webhooks.is_zero()).then_some(webhooks),
            webhook_timeout: millis(&get, "MEC_WEBHOOK_TIMEOUT_MS", 10_000, false)?,
            purge_interval: (!purge.is_zero()).then_some(purge),
            group_commit_window: Duration::from_micros(
                int(&get, "MEC_GROUP_COMMIT_US", 1_000)? as u64
            ),
            group_commit_max: int(&get, "MEC_GROUP_COMMIT_MAX", 64)?.clamp(1, 1_000),
        })
    }
}

/// The JWT part alone: the `token` subcommand needs only this.
pub fn jwt_from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<JwtConfig, ConfigError> {
    let secret = get("MEC_JWT_SECRET");
    if let Some(s) = &secret {
        if s.len() < MIN_SECRET_LEN {
            return Err(invalid(
                "MEC_JWT_SECRET",
                format!("must be at least {MIN_SECRET_LEN} bytes long"),
            ));
        }
    }
    let jwks_path = get("MEC_JWT_JWKS").map(PathBuf::from);
    if let Some(p) = &jwks_path {
        if !p.is_file() {
            return Err(invalid(
                "MEC_JWT_JWKS",
                format!("{} is not a readable file", p.display()),
            ));
        }
    }
    Ok(JwtConfig {
        secret,
        jwks_path,
        audience: get("MEC_JWT_AUD"),
    })
}

fn int(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: usize,
) -> Result<usize, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| invalid(name, format!("{v:?} is not a non-negative integer"))),
    }
}

fn millis(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    zero_ok: bool,
) -> Result<Duration, ConfigError> {
    let ms = int(get, name, default as usize)? as u64;
    if ms == 0 && !zero_ok {
        return Err(invalid(name, "must be greater than 0"));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults() {
        let c = cfg(&[
            ("MEC_DATABASE_URL", "postgres://u@localhost/mec"),
            ("MEC_JWT_SECRET", SECRET),
        ])
        .unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:8000");
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.pool_size, 16);
    }

    #[test]
    fn authenticator_url_wins() {
        let c = cfg(&[
            ("MEC_DATABASE_URL", "postgres://owner@localhost/mec"),
            (
                "MEC_AUTHENTICATOR_URL",
                "postgres://mec_authenticator@localhost/mec",
            ),
            ("MEC_JWT_SECRET", SECRET),
        ])
        .unwrap();
        assert!(c.database_url.contains("mec_authenticator"));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(cfg(&[("MEC_JWT_SECRET", SECRET)]).is_err());
        assert!(cfg(&[("MEC_DATABASE_URL", "postgres://u@h/d")]).is_err());
        assert!(cfg(&[
            ("MEC_DATABASE_URL", "postgres://u@h/d"),
            ("MEC_JWT_SECRET", "short")
        ])
        .is_err());
        assert!(cfg(&[
            ("MEC_DATABASE_URL", "postgres://u@h/d"),
            ("MEC_JWT_SECRET", SECRET),
            ("MEC_GATEWAY_ADDR", "nope")
        ])
        .is_err());
        assert!(cfg(&[
            ("MEC_DATABASE_URL", "postgres://u@h/d"),
            ("MEC_JWT_SECRET", SECRET),
            ("MEC_POOL_SIZE", "x")
        ])
        .is_err());
        assert!(cfg(&[
            ("MEC_DATABASE_URL", "postgres://u@h/d"),
            ("MEC_JWT_SECRET", SECRET),
            ("MEC_JWT_JWKS", "/nonexistent/jwks.json")
        ])
        .is_err());
    }
}
