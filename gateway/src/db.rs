//! The per-request transaction.
//!
//! One round trip in the steady state: the statements are prepared once per connection
//! (`prepare_cached`) and then `BEGIN; SET LOCAL ROLE`, the `set_config` of the request
//! settings, the call and `COMMIT` are pipelined. Postgres turns the `COMMIT` of a failed
//! transaction into a rollback, so a failed call never commits anything.

use std::time::Duration;

use axum::http::HeaderMap;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
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
    let settings = client.prepare_cached(SETTINGS_SQL).await?;
    let stmt = client.prepare_cached(sql).await?;

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

    // Polled in order, so sent in order, in one write.
    let (begun, set, rows, committed) = futures_util::future::join4(
        client.batch_execute(&begin),
        client.query(&settings, &set_params),
        client.query(&stmt, &call_params),
        client.batch_execute("COMMIT"),
    )
    .await;

    let result = (|| {
        begun?;
        set?;
        let rows = rows?;
        committed?;
        Ok::<_, tokio_postgres::Error>(rows)
    })();
    match result {
        Ok(rows) => {
            checkout.finished = true;
            Ok(rows)
        }
        Err(e) => {
            // A server-side error leaves a healthy connection (the COMMIT rolled back);
            // anything else means the connection is gone.
            checkout.finished = e.as_db_error().is_some() && !client.is_closed();
            if e.as_db_error().is_some() {
                // An error inside the pipeline may leave the statement cache stale
                // (e.g. after DDL): drop it to be safe when the cause was 0A000/26000.
                let code = e.code().map(|c| c.code()).unwrap_or("");
                if code == "0A000" || code == "26000" {
                    client.statement_cache.clear();
                }
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
