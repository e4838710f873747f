//! The per-request transaction.
//!
//! One round trip in the steady state: the statements are prepared once per connection
//! (`prepare_cached`) and then `BEGIN; SET LOCAL ROLE`, the `set_config` of the request
//! settings, the call and `COMMIT` are pipelined. Postgres turns the `COMMIT` of a failed
//! transaction into a rollback, so a failed call never commits anything.

use std::pin::pin;
use std::time::Duration;

use axum::http::HeaderMap;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::future::{join, join3, join4, maybe_done, FutureExt};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::auth::Claims;
use crate::config::Config;
use crate::error::ApiError;

/// Bound on cached statements per connection (view queries vary with their filters).
const STATEMENT_CACHE_MAX: usize = 256;

const SETTINGS_SQL: &str = "select set_config('request.jwt.claims', $1, true), \
     set_config('request.method', $2, true), \
     set_config('request.path', $3, true), \
     set_config('request.headers', $4, true)";

pub fn build_pool(cfg: &Config) -> Result<Pool, String> {
    let mut pg: tokio_postgres::Config = cfg.database_url.parse().map_err(|e| format!("{e}"))?;
    pg.application_name("mec-gateway");
    pg.connect_timeout(cfg.connect_timeout);
    if !cfg.statement_timeout.is_zero() {
        pg.options(format!(
            "-c statement_timeout={}",
            cfg.statement_timeout.as_millis()
        ));
    }
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(cfg.pool_size)
        .wait_timeout(Some(cfg.pool_timeout))
        .create_timeout(Some(cfg.connect_timeout + Duration::from_millis(500)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())
}

/// Who calls and how: everything `set_config` needs.
pub struct RequestCtx<'a> {
    pub claims: &'a Claims,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub read_only: bool,
}

/// `request.headers`: lower-case names (as `http` keeps them), no cookies, repeated headers
/// joined with ", ".
pub fn headers_json(headers: &HeaderMap) -> String {
    let mut m = Map::new();
    for name in headers.keys() {
        if name == axum::http::header::COOKIE {
            continue;
        }
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        m.insert(name.as_str().to_string(), Value::String(values.join(", ")));
    }
    Value::Object(m).to_string()
}

/// Drops the connection instead of returning it to the pool unless the transaction finished
/// (a request timeout or a client disconnect may cancel us mid-pipeline).
struct Checkout {
    obj: Option<Object>,
    finished: bool,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(obj) = self.obj.take() {
                drop(Object::take(obj));
            }
        }
    }
}

/// Run `sql` with text parameters in the caller's role, in one transaction.
pub async fn run(
    pool: &Pool,
    ctx: &RequestCtx<'_>,
    sql: &str,
    params: &[Option<String>],
) -> Result<Vec<Row>, ApiError> {
    let mut checkout = Checkout {
        obj: Some(pool.get().await?),
        finished: false,
    };
    let client = checkout.obj.as_ref().expect("checked out above");

    if client.statement_cache.size() > STATEMENT_CACHE_MAX {
        client.statement_cache.clear();
    }
    // No schema is named here, so it can be prepared outside the transaction.
    let settings = client.prepare_cached(SETTINGS_SQL).await?;

    // The role comes from a closed enum; quoting is belt and braces.
    let begin = format!(
        "BEGIN{}; SET LOCAL ROLE \"{}\"",
        if ctx.read_only { " READ ONLY" } else { "" },
        ctx.claims.role.as_str()
    );
    let claims = ctx.claims.to_json();
    let headers = headers_json(ctx.headers);
    let set_params: [&(dyn ToSql + Sync); 4] = [&claims, &ctx.method, &ctx.path, &headers];
    let call_params: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();

    // Each future sends its messages when first polled, so the poll order is the wire order.
    let mut begun = pin!(maybe_done(client.batch_execute(&begin)));
    let mut set = pin!(maybe_done(client.query(&settings, &set_params)));
    let _ = begun.as_mut().now_or_never();
    let _ = set.as_mut().now_or_never();
    // The call statement must be parsed in the caller's role (mec_authenticator itself has
    // no USAGE on schema mec), i.e. after BEGIN; SET LOCAL ROLE. On a cache hit this is
    // ready at once and the whole request is one round trip; on a miss the Parse goes out
    // now, behind the BEGIN.
    let mut prep = pin!(maybe_done(client.prepare_cached(sql)));
    if prep.as_mut().now_or_never().is_none() {
        join3(begun.as_mut(), set.as_mut(), prep.as_mut()).await;
    }
    let prepared = prep.as_mut().take_output().expect("prepare finished");

    let result = match prepared {
        Err(e) => {
            join(begun.as_mut(), set.as_mut()).await;
            let _ = client.batch_execute("ROLLBACK").await;
            let b = begun.as_mut().take_output().and_then(Result::err);
            let s = set.as_mut().take_output().and_then(|r| r.err());
            Err(b.or(s).unwrap_or(e))
        }
        Ok(stmt) => {
            let (_, _, rows, committed) = join4(
                begun.as_mut(),
                set.as_mut(),
                client.query(&stmt, &call_params),
                client.batch_execute("COMMIT"),
            )
            .await;
            let b = begun.as_mut().take_output().expect("BEGIN finished");
            let s = set.as_mut().take_output().expect("settings finished");
            (|| {
                b?;
                s?;
                let rows = rows?;
                committed?;
                Ok::<_, tokio_postgres::Error>(rows)
            })()
        }
    };
    match result {
        Ok(rows) => {
            checkout.finished = true;
            Ok(rows)
        }
        Err(e) => {
            // A server-side error leaves a healthy connection (the COMMIT rolled back);
            // anything else means the connection is gone.
            checkout.finished = e.as_db_error().is_some() && !client.is_closed();
            // After DDL a cached statement may be stale ("cached plan must not change
            // result type", or it no longer exists): start afresh.
            let code = e.code().map(|c| c.code()).unwrap_or("");
            if code == "0A000" || code == "26000" || code == "42883" {
                client.statement_cache.clear();
            }
            Err(ApiError::from(e).with_instance(ctx.path))
        }
    }
}

/// A cheap liveness probe of the database through the pool.
pub async fn ping(pool: &Pool, timeout: Duration) -> Result<(), String> {
    let fut = async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("select 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err("timed out".into()),
    }
}
