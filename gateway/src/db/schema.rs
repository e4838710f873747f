//! What schema `mec` exposes: its functions (with argument names, types, defaults and
//! volatility) and its views (with column names and types), read from the catalog at
//! start and again on `NOTIFY mec_gateway, 'reload schema'`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, GenericClient, NoTls};

use axum::http::StatusCode;

use crate::error::ApiError;
use crate::infra::auth::Role;

/// The exposed schema.
pub const SCHEMA: &str = "mec";
/// The NOTIFY channel the gateway listens on.
pub const CHANNEL: &str = "mec_gateway";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

impl Volatility {
    pub fn read_only(self) -> bool {
        self != Volatility::Volatile
    }
}

#[derive(Clone, Debug)]
pub struct Arg {
    /// Empty for an unnamed argument.
    pub name: String,
    /// `format_type` of the argument type, usable in a cast (`numeric`, `timestamp with time zone`).
    pub type_name: String,
    pub has_default: bool,
}

#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub args: Vec<Arg>,
    pub return_type: String,
    pub returns_set: bool,
    pub volatility: Volatility,
    /// Roles with EXECUTE.
    pub roles: Vec<Role>,
    pub description: Option<String>,
}

impl Function {
    pub fn required(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().filter(|a| !a.has_default)
    }
    pub fn arg(&self, name: &str) -> Option<&Arg> {
        self.args.iter().find(|a| a.name == name)
    }
    /// A single unnamed json/jsonb argument takes the whole body (PostgREST).
    pub fn takes_whole_body(&self) -> bool {
        self.args.len() == 1
            && self.args[0].name.is_empty()
            && matches!(self.args[0].type_name.as_str(), "json" | "jsonb")
    }
}

#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, NULL)`: the type without modifiers, for casts.
    pub type_name: String,
}

#[derive(Clone, Debug)]
pub struct View {
    pub name: String,
    pub columns: Vec<Column>,
    /// Roles with SELECT.
    pub roles: Vec<Role>,
    pub description: Option<String>,
}

impl View {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Default)]
pub struct SchemaCache {
    /// Overloads share a name.
    pub functions: BTreeMap<String, Vec<Function>>,
    pub views: BTreeMap<String, View>,
}

const ROLES_SQL: &str = "mec_user,mec_service,mec_admin";

const FUNCTIONS_SQL: &str = r#"
select p.proname::text,
       p.provolatile::text,
       p.pronargs::int4,
       p.pronargdefaults::int4,
       coalesce(array(select format_type(t, null)
                        from unnest(p.proargtypes::oid[]) with ordinality u(t, i)
                       order by i), '{}')::text[] as in_types,
       coalesce(p.proargnames, '{}')::text[] as arg_names,
       coalesce(p.proargmodes::text[], '{}')::text[] as arg_modes,
       format_type(p.prorettype, null) as return_type,
       p.proretset,
       array(select r from unnest(string_to_array($2, ',')) r
              where exists (select 1 from pg_roles where rolname = r)
                and has_function_privilege(r, p.oid, 'EXECUTE'))::text[] as roles,
       obj_description(p.oid, 'pg_proc') as description
  from pg_proc p
  join pg_namespace n on n.oid = p.pronamespace
 where n.nspname = $1 and p.prokind = 'f'
 order by p.proname, p.oid
"#;

const VIEWS_SQL: &str = r#"
select c.relname::text,
       array(select a.attname::text from pg_attribute a
              where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
              order by a.attnum)::text[] as col_names,
       array(select format_type(a.atttypid, null) from pg_attribute a
              where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
              order by a.attnum)::text[] as col_types,
       array(select r from unnest(string_to_array($2, ',')) r
              where exists (select 1 from pg_roles where rolname = r)
                and has_table_privilege(r, c.oid, 'SELECT'))::text[] as roles,
       obj_description(c.oid, 'pg_class') as description
  from pg_class c
  join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = $1 and c.relkind in ('v', 'm', 'r', 'p', 'f')
 order by c.relname
"#;

fn roles(names: Vec<String>) -> Vec<Role> {
    names.iter().filter_map(|r| Role::parse(r)).collect()
}

impl SchemaCache {
    /// Read the catalog. Any client will do (pool connection or the listener's).
    pub async fn load(client: &impl GenericClient) -> Result<Self, tokio_postgres::Error> {
        let mut cache = SchemaCache::default();
        for row in client.query(FUNCTIONS_SQL, &[&SCHEMA, &ROLES_SQL]).await? {
            let name: String = row.get(0);
            let volatility = match row.get::<_, String>(1).as_str() {
                "i" => Volatility::Immutable,
                "s" => Volatility::Stable,
                _ => Volatility::Volatile,
            };
            let nargs = row.get::<_, i32>(2) as usize;
            let ndefaults = row.get::<_, i32>(3) as usize;
            let in_types: Vec<String> = row.get(4);
            let names: Vec<String> = row.get(5);
            let modes: Vec<String> = row.get(6);
            // Names of the input arguments: all names when there are no modes, else those
            // whose mode is in, inout or variadic.
            let in_names: Vec<String> = if modes.is_empty() {
                (0..nargs)
                    .map(|i| names.get(i).cloned().unwrap_or_default())
                    .collect()
            } else {
                modes
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| matches!(m.as_str(), "i" | "b" | "v"))
                    .map(|(i, _)| names.get(i).cloned().unwrap_or_default())
                    .collect()
            };
            let args = in_types
                .into_iter()
                .enumerate()
                .map(|(i, type_name)| Arg {
                    name: in_names.get(i).cloned().unwrap_or_default(),
                    type_name,
                    has_default: i + ndefaults >= nargs,
                })
                .collect();
            let f = Function {
                name: name.clone(),
                args,
                return_type: row.get(7),
                returns_set: row.get(8),
                volatility,
                roles: roles(row.get(9)),
                description: row.get(10),
            };
            cache.functions.entry(name).or_default().push(f);
        }
        for row in client.query(VIEWS_SQL, &[&SCHEMA, &ROLES_SQL]).await? {
            let name: String = row.get(0);
            let col_names: Vec<String> = row.get(1);
            let col_types: Vec<String> = row.get(2);
            let columns = col_names
                .into_iter()
                .zip(col_types)
                .map(|(name, type_name)| Column { name, type_name })
                .collect();
            cache.views.insert(
                name.clone(),
                View {
                    name,
                    columns,
                    roles: roles(row.get(3)),
                    description: row.get(4),
                },
            );
        }
        Ok(cache)
    }

    /// Pick the overload of `name` whose arguments are exactly matched by `given`:
    /// every required argument present, nothing unknown (PostgREST's rule).
    pub fn find_function(&self, name: &str, given: &[&str]) -> Option<&Function> {
        let overloads = self.functions.get(name)?;
        let fits = |f: &&Function| {
            if f.takes_whole_body() {
                return true;
            }
            given.iter().all(|g| f.arg(g).is_some())
                && f.required().all(|a| given.contains(&a.name.as_str()))
        };
        // Prefer an exact fit (no defaulted argument left out) over one relying on defaults.
        overloads
            .iter()
            .filter(|f| !f.takes_whole_body())
            .filter(fits)
            .min_by_key(|f| f.args.len() - given.len().min(f.args.len()))
            .or_else(|| overloads.iter().find(|f| f.takes_whole_body()))
    }
}

/// The shared, swappable cache. `None` until the first successful load.
#[derive(Clone, Default)]
pub struct SchemaStore {
    inner: Arc<RwLock<Option<Arc<SchemaCache>>>>,
}

impl SchemaStore {
    pub fn get(&self) -> Option<Arc<SchemaCache>> {
        self.inner.read().ok().and_then(|g| g.clone())
    }
    pub fn set(&self, cache: SchemaCache) {
        if let Ok(mut g) = self.inner.write() {
            *g = Some(Arc::new(cache));
        }
    }
}

fn summary(c: &SchemaCache) -> (usize, usize) {
    (c.functions.values().map(Vec::len).sum(), c.views.len())
}

/// Keep a dedicated connection that LISTENs on [`CHANNEL`], loads the cache at connect and
/// reloads it on `'reload schema'` (or an empty payload). Reconnects with backoff forever;
/// a reconnect reloads too, since notifications may have been missed.
///
/// `on_reload` runs after every load (the gateway clears its prepared statements there, which
/// may refer to what the reload replaced).
pub async fn listen_forever(
    database_url: String,
    connect_timeout: Duration,
    store: SchemaStore,
    on_reload: impl Fn() + Send + Sync + 'static,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match listen_once(&database_url, connect_timeout, &store, &on_reload).await {
            Ok(()) => tracing::warn!("schema listener connection closed; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "schema listener failed; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if store.get().is_some() {
            // Reset after a healthy period so a restart is picked up quickly.
            backoff = backoff.min(Duration::from_secs(1));
        }
    }
}

async fn listen_once(
    database_url: &str,
    connect_timeout: Duration,
    store: &SchemaStore,
    on_reload: &(impl Fn() + Send + Sync),
) -> Result<(), tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = database_url.parse()?;
    cfg.application_name("mec-gateway-listener");
    cfg.connect_timeout(connect_timeout);
    let (client, mut connection) = cfg.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "schema listener connection error");
                    break;
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let cache = SchemaCache::load(&client).await?;
    let (f, v) = summary(&cache);
    store.set(cache);
    on_reload();
    tracing::info!(functions = f, views = v, "schema cache loaded");
    while let Some(payload) = rx.recv().await {
        let payload = payload.trim();
        if payload.is_empty() || payload == "reload schema" {
            let cache = SchemaCache::load(&client).await?;
            let (f, v) = summary(&cache);
            store.set(cache);
            on_reload();
            tracing::info!(functions = f, views = v, "schema cache reloaded");
        }
    }
    driver.abort();
    Ok(())
}

/// Names of views and functions for error hints.
pub fn closest<'a>(want: &str, names: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let mut best: Option<(&String, usize)> = None;
    for n in names {
        let d = distance(want, n);
        if d <= 3 && best.is_none_or(|(_, bd)| d < bd) {
            best = Some((n, d));
        }
    }
    best.map(|(n, _)| n)
}

fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// 503 PGRST002: the schema cache is not loaded yet (the database was not reachable at start).
pub fn not_loaded() -> ApiError {
    ApiError::Unavailable {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "PGRST002",
        message: "Could not query the database for the schema cache. Retrying.",
        cause: "schema cache not loaded yet".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, args: &[(&str, bool)]) -> Function {
        Function {
            name: name.into(),
            args: args
                .iter()
                .map(|(n, d)| Arg {
                    name: n.to_string(),
                    type_name: "text".into(),
                    has_default: *d,
                })
                .collect(),
            return_type: "jsonb".into(),
            returns_set: false,
            volatility: Volatility::Volatile,
            roles: vec![],
            description: None,
        }
    }

    #[test]
    fn overload_matching() {
        let mut c = SchemaCache::default();
        c.functions.insert(
            "check".into(),
            vec![f("check", &[("p_a", false), ("p_b", false), ("p_q", true)])],
        );
        assert!(c.find_function("check", &["p_a", "p_b"]).is_some());
        assert!(c.find_function("check", &["p_a", "p_b", "p_q"]).is_some());
        assert!(c.find_function("check", &["p_a"]).is_none());
        assert!(c.find_function("check", &["p_a", "p_b", "p_x"]).is_none());
        assert!(c.find_function("nope", &[]).is_none());
    }

    #[test]
    fn closest_name() {
        let names = ["accounts".to_string(), "plans".to_string()];
        assert_eq!(closest("acounts", names.iter()).unwrap(), "accounts");
        assert!(closest("zzzzzzzzz", names.iter()).is_none());
    }
}
