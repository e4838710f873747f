//! The per-request transaction.
//!
//! One pool per mec role: every connection logs in as `mec_authenticator` and takes its role
//! at connection start (`-c role=mec_service`), so a request runs in its token's role without a
//! `SET ROLE` of its own, and no connection ever changes role.
//!
//! A function call is one statement, i.e. one transaction: the request settings are set
//! transaction-locally (`set_config(…, true)`) in a subquery the call reads from, so they are in
//! place before the function runs and gone when the statement ends. A view read needs the
//! settings before the scan starts (row-level security reads them), so it runs as
//! `BEGIN READ ONLY`, the settings, the read and `COMMIT`, pipelined in one round trip.
//! Statements are prepared once per connection (`prepare_cached`). Postgres turns the `COMMIT`
//! of a failed transaction into a rollback, so a failed request never commits anything.

use std::pin::pin;
use std::time::Duration;

use axum::http::HeaderMap;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::future::{join, join3, join4, maybe_done, FutureExt};
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::error::ApiError;
use crate::infra::auth::{Claims, Role};
use crate::infra::config::Config;
use crate::infra::startup::StartupError;

pub mod group;
pub mod schema;

/// Bound on cached statements per connection (view queries vary with their filters).
const STATEMENT_CACHE_MAX: usize = 256;

/// The connection pools, one per mec role, one for webhook deliveries (`mec_webhook`) and one for
/// background jobs (`mec_worker`); each opens connections lazily, so a role nobody uses opens
/// nothing.
pub struct Pools {
    by_role: [Pool; 3],
    webhook: Pool,
    worker: Pool,
}

/// The role of webhook deliveries: it may only hand them to pg_mec (`sql/grants.sql`).
const WEBHOOK_ROLE: &str = "mec_webhook";
/// The role of the gateway's background jobs (usage to Stripe).
const WORKER_ROLE: &str = "mec_worker";

/// What the pools hold, summed over the roles.
pub struct PoolStatus {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
}

impl Pools {
    pub fn build(cfg: &Config) -> Result<Pools, StartupError> {
        let [user, service, admin] = Role::ALL.map(|r| build_pool(cfg, r.as_str()));
        Ok(Pools {
            by_role: [user?, service?, admin?],
            webhook: build_pool(cfg, WEBHOOK_ROLE)?,
            worker: build_pool(cfg, WORKER_ROLE)?,
        })
    }

    pub fn for_role(&self, role: Role) -> &Pool {
        let i = Role::ALL.iter().position(|r| *r == role).unwrap_or(0);
        &self.by_role[i]
    }

    /// The pool for work that is no request's (health probes, the schema cache).
    pub fn any(&self) -> &Pool {
        self.for_role(Role::Service)
    }

    /// The pool of webhook deliveries.
    pub fn webhook(&self) -> &Pool {
        &self.webhook
    }

    /// The pool of background jobs.
    pub fn worker(&self) -> &Pool {
        &self.worker
    }

    fn all(&self) -> impl Iterator<Item = &Pool> {
        self.by_role.iter().chain([&self.webhook, &self.worker])
    }

    pub fn status(&self) -> PoolStatus {
        self.all().map(Pool::status).fold(
            PoolStatus {
                max_size: 0,
                size: 0,
                available: 0,
                waiting: 0,
            },
            |a, s| PoolStatus {
                max_size: a.max_size + s.max_size,
                size: a.size + s.size,
                available: a.available + s.available,
                waiting: a.waiting + s.waiting,
            },
        )
    }

    /// After a schema reload: prepared statements may name what changed.
    pub fn clear_statement_caches(&self) {
        for p in self.all() {
            p.manager().statement_caches.clear();
        }
    }

    pub fn close(&self) {
        for p in self.all() {
            p.close();
        }
    }
}

fn build_pool(cfg: &Config, role: &'static str) -> Result<Pool, StartupError> {
    let mut pg: tokio_postgres::Config = cfg
        .database_url
        .parse()
        .map_err(|e| StartupError::DatabaseUrl(format!("{e}")))?;
    pg.application_name("mec-gateway");
    pg.connect_timeout(cfg.connect_timeout);
    // The role is fixed for the connection's life; the role name is one of pg_mec's.
    // Kept: any options= the database URL carries.
    let mut options = pg.get_options().map(str::to_string).unwrap_or_default();
    options.push_str(&format!(" -c role={role}"));
    if !cfg.statement_timeout.is_zero() {
        options.push_str(&format!(
            " -c statement_timeout={}",
            cfg.statement_timeout.as_millis()
        ));
    }
    pg.options(options);
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
        .map_err(|e| StartupError::Pool(e.to_string()))
}

/// Who calls: a request's verified token, or the gateway's own worker acting in one namespace.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    Token(&'a Claims),
    Worker { namespace: uuid::Uuid },
}

impl Caller<'_> {
    fn pool<'p>(&self, pools: &'p Pools) -> &'p Pool {
        match self {
            Caller::Token(claims) => pools.for_role(claims.role),
            Caller::Worker { .. } => pools.worker(),
        }
    }

    /// `request.jwt.claims`: the token's claims, or the worker's namespace (the authenticator is a
    /// trusted session: pg_mec takes the namespace from the claims).
    fn claims_json(&self) -> String {
        match self {
            Caller::Token(claims) => claims.to_json(),
            Caller::Worker { namespace } => {
                serde_json::json!({"role": WORKER_ROLE, "namespace_id": namespace.to_string()})
                    .to_string()
            }
        }
    }
}

/// Who calls and how: everything `set_config` needs.
pub struct RequestCtx<'a> {
    pub caller: Caller<'a>,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub read_only: bool,
}

impl<'a> RequestCtx<'a> {
    /// A call of the gateway's background worker in `namespace` (`path` names the job in the
    /// request settings; `headers` is empty: no client sent this).
    pub fn worker(namespace: uuid::Uuid, path: &'a str, headers: &'a HeaderMap) -> Self {
        RequestCtx {
            caller: Caller::Worker { namespace },
            method: "POST",
            path,
            headers,
            read_only: false,
        }
    }
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

impl Checkout {
    fn client(&self) -> Result<&Object, ApiError> {
        self.obj
            .as_ref()
            .ok_or_else(|| ApiError::Internal("connection already returned".into()))
    }
}

/// A pipelined step that should have finished: dropping the checkout discards the connection.
fn unfinished(step: &str) -> ApiError {
    ApiError::Internal(format!("{step} did not finish"))
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

/// Checks a connection out of the pool of the caller's role.
async fn checkout(pools: &Pools, ctx: &RequestCtx<'_>) -> Result<Checkout, ApiError> {
    let obj = ctx.caller.pool(pools).get().await?;
    if obj.statement_cache.size() > STATEMENT_CACHE_MAX {
        obj.statement_cache.clear();
    }
    Ok(Checkout {
        obj: Some(obj),
        finished: false,
    })
}

/// The request settings as text parameters, in the order of [`settings_sql`].
fn settings_params(ctx: &RequestCtx<'_>) -> [Option<String>; 4] {
    [
        Some(ctx.caller.claims_json()),
        Some(ctx.method.to_string()),
        Some(ctx.path.to_string()),
        Some(headers_json(ctx.headers)),
    ]
}

/// `set_config` of the request settings, parameters from `$first` on, transaction-local; read-only
/// requests also make the transaction read-only.
fn settings_sql(first: usize, read_only: bool) -> String {
    format!(
        "set_config('request.jwt.claims', ${}, true), set_config('request.method', ${}, true), \
         set_config('request.path', ${}, true), set_config('request.headers', ${}, true){}",
        first,
        first + 1,
        first + 2,
        first + 3,
        if read_only {
            ", set_config('transaction_read_only', 'on', true)"
        } else {
            ""
        }
    )
}

/// Calls a function that returns one value: `select` is `SELECT <expr>, <expr>` without a FROM
/// clause. Runs as one statement, so one transaction and one round trip: the settings come
/// from a subquery the select list reads from, which runs before the function is called.
pub async fn call(
    pools: &Pools,
    ctx: &RequestCtx<'_>,
    select: &str,
    params: &[Option<String>],
) -> Result<Vec<Row>, ApiError> {
    let mut checkout = checkout(pools, ctx).await?;
    let sql = format!(
        "{select} FROM (SELECT {} OFFSET 0) _request",
        settings_sql(params.len() + 1, ctx.read_only)
    );
    let settings = settings_params(ctx);
    let all: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .chain(settings.iter())
        .map(|p| p as &(dyn ToSql + Sync))
        .collect();
    let client = checkout.client()?;
    let result = match client.prepare_cached(&sql).await {
        Ok(stmt) => client.query(&stmt, &all).await,
        Err(e) => Err(e),
    };
    finish(&mut checkout, ctx, result)
}

/// [`call`] of a function returning one jsonb (selected `::text`): its value. `what` names the
/// function family in the error when the answer is not one JSON row.
pub async fn call_json(
    pools: &Pools,
    ctx: &RequestCtx<'_>,
    select: &str,
    params: &[Option<String>],
    what: &str,
) -> Result<serde_json::Value, ApiError> {
    let rows = call(pools, ctx, select, params).await?;
    let row = rows
        .first()
        .ok_or_else(|| ApiError::Internal(format!("{what} returned no row")))?;
    let text: String = column(row, 0)?;
    serde_json::from_str(&text).map_err(|e| ApiError::Internal(format!("{what} JSON: {e}")))
}

/// Run `sql` with text parameters in the caller's role, in one transaction with the request
/// settings set first (what a view read needs).
pub async fn run(
    pools: &Pools,
    ctx: &RequestCtx<'_>,
    sql: &str,
    params: &[Option<String>],
) -> Result<Vec<Row>, ApiError> {
    let mut checkout = checkout(pools, ctx).await?;
    let client = checkout.client()?;
    // No schema is named here, so it can be prepared outside the transaction.
    let settings = client
        .prepare_cached(&format!("SELECT {}", settings_sql(1, false)))
        .await;
    let settings = match settings {
        Ok(s) => s,
        Err(e) => return finish(&mut checkout, ctx, Err(e)),
    };
    let begin = if ctx.read_only {
        "BEGIN READ ONLY"
    } else {
        "BEGIN"
    };
    let result = {
        let set_values = settings_params(ctx);
        let set_params: Vec<&(dyn ToSql + Sync)> = set_values
            .iter()
            .map(|p| p as &(dyn ToSql + Sync))
            .collect();
        let call_params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();

        // Each future sends its messages when first polled, so the poll order is the wire order.
        let mut begun = pin!(maybe_done(client.batch_execute(begin)));
        let mut set = pin!(maybe_done(client.query(&settings, &set_params)));
        let _ = begun.as_mut().now_or_never();
        let _ = set.as_mut().now_or_never();
        // On a cache hit this is ready at once and the whole request is one round trip; on a miss
        // the Parse goes out now, behind the BEGIN.
        let mut prep = pin!(maybe_done(client.prepare_cached(sql)));
        if prep.as_mut().now_or_never().is_none() {
            join3(begun.as_mut(), set.as_mut(), prep.as_mut()).await;
        }
        let Some(prepared) = prep.as_mut().take_output() else {
            return Err(unfinished("prepare"));
        };

        match prepared {
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
                let (Some(b), Some(s)) = (begun.as_mut().take_output(), set.as_mut().take_output())
                else {
                    return Err(unfinished("BEGIN and the settings"));
                };
                (|| {
                    b?;
                    s?;
                    let rows = rows?;
                    committed?;
                    Ok::<_, tokio_postgres::Error>(rows)
                })()
            }
        }
    };
    finish(&mut checkout, ctx, result)
}

/// Returns the connection to the pool unless it is unusable; maps the error.
fn finish(
    checkout: &mut Checkout,
    ctx: &RequestCtx<'_>,
    result: Result<Vec<Row>, tokio_postgres::Error>,
) -> Result<Vec<Row>, ApiError> {
    match result {
        Ok(rows) => {
            checkout.finished = true;
            Ok(rows)
        }
        Err(e) => {
            if let Some(client) = checkout.obj.as_ref() {
                // A server-side error leaves a healthy connection (the transaction rolled back);
                // anything else means the connection is gone.
                checkout.finished = e.as_db_error().is_some() && !client.is_closed();
                // After DDL a cached statement may be stale ("cached plan must not change
                // result type", or it no longer exists): start afresh.
                let code = e.code().map(|c| c.code()).unwrap_or("");
                if code == "0A000" || code == "26000" || code == "42883" {
                    client.statement_cache.clear();
                }
            }
            Err(ApiError::from(e).with_instance(ctx.path))
        }
    }
}

/// Hands a webhook delivery to pg_mec: `select` (one statement, text parameters) runs on a
/// connection of the webhook role, with no request settings: pg_mec authenticates the delivery
/// itself, against the secret of the namespace it names.
pub async fn deliver(
    pools: &Pools,
    path: &str,
    select: &str,
    params: &[Option<String>],
) -> Result<Vec<Row>, ApiError> {
    let client = pools.webhook().get().await?;
    let all: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let result = match client.prepare_cached(select).await {
        Ok(stmt) => client.query(&stmt, &all).await,
        Err(e) => Err(e),
    };
    if result.is_err() && client.is_closed() {
        drop(Object::take(client));
    }
    result.map_err(|e| ApiError::from(e).with_instance(path))
}

/// Column `idx` of a result row. A value of another type than the gateway's SQL selects is a bug,
/// not the database's fault: an internal error.
pub fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: impl tokio_postgres::row::RowIndex + std::fmt::Display + Copy,
) -> Result<T, ApiError> {
    row.try_get(idx)
        .map_err(|e| ApiError::Internal(format!("result column {idx}: {e}")))
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
