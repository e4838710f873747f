//! mec_gateway: the PostgREST-compatible HTTP front of pg_mec.
//!
//! The gateway holds no business rules: it verifies the JWT, opens one transaction per
//! request in the token's role with the claims in `request.jwt.claims`, calls a function or
//! reads a view of schema `mec`, and renders the answer (or the error) the way PostgREST
//! does. See `docs/gateway.md`.

// The rooms, each importing only the rooms below it (scripts/dev/check-layers.py): routes, jobs,
// sql, plan, request, db, infra, error. A request goes through them as PostgREST's stages do.
pub mod db;
pub mod error;
pub mod infra;
pub mod jobs;
pub mod plan;
pub mod request;
pub mod routes;
pub mod sql;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, Method};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use infra::config::Config;
pub use infra::startup::StartupError;

use db::schema::{SchemaCache, SchemaStore};
use error::ApiError;
use infra::auth::JwtVerifier;
use infra::metrics::Metrics;
use infra::middleware;

/// Everything a handler needs, built once at startup.
pub struct Inner {
    pub config: Config,
    pub pools: db::Pools,
    pub jwt: JwtVerifier,
    pub schema: SchemaStore,
    pub metrics: Metrics,
    /// Outbound HTTP (Stripe), with its connection pool.
    pub http: reqwest::Client,
    /// Outbound webhooks: no redirects followed (an endpoint answers for itself).
    pub webhook_http: reqwest::Client,
    /// Group commit of concurrent `meter_consumption` calls; `None`: off.
    pub group_commit: Option<db::group::GroupCommit>,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Validate the configuration into a state. Connects to nothing yet: the pool connects
    /// lazily and the schema cache is loaded by [`AppState::reload_schema`] or the listener.
    pub fn new(config: Config) -> Result<Self, StartupError> {
        let jwt = JwtVerifier::new(&config.jwt)?;
        let pools = db::Pools::build(&config)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("pg_mec-gateway/", env!("CARGO_PKG_VERSION")))
            .timeout(config.stripe_timeout)
            .build()
            .map_err(|e| StartupError::HttpClient(e.to_string()))?;
        let webhook_http = reqwest::Client::builder()
            .user_agent(concat!("pg_mec-webhooks/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.webhook_timeout)
            .build()
            .map_err(|e| StartupError::HttpClient(e.to_string()))?;
        let group_commit =
            db::group::GroupCommit::new(config.group_commit_window, config.group_commit_max);
        Ok(AppState(Arc::new(Inner {
            group_commit,
            config,
            pools,
            jwt,
            schema: SchemaStore::default(),
            metrics: Metrics::default(),
            http,
            webhook_http,
        })))
    }

    /// Load the schema cache once through the pool.
    pub async fn reload_schema(&self) -> Result<(), ApiError> {
        let client = self.pools.any().get().await?;
        let cache = SchemaCache::load(&**client).await?;
        self.schema.set(cache);
        Ok(())
    }

    /// Keep the schema cache fresh: LISTEN on `mec_gateway` with its own connection.
    pub fn spawn_schema_listener(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(db::schema::listen_forever(
            self.config.database_url.clone(),
            self.config.connect_timeout,
            self.schema.clone(),
            move || state.pools.clear_statement_caches(),
        ))
    }
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([
            HeaderName::from_static("content-range"),
            request_id.clone(),
            header::RETRY_AFTER,
            HeaderName::from_static("ratelimit"),
            HeaderName::from_static("ratelimit-policy"),
        ])
        .max_age(Duration::from_secs(86_400));

    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &axum::http::Request<axum::body::Body>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!(
                "request",
                request_id = %id,
                method = %req.method(),
                path = %req.uri().path(),
            )
        })
        .on_request(())
        .on_response(
            |resp: &axum::http::Response<axum::body::Body>,
             latency: Duration,
             _span: &tracing::Span| {
                // Like PostgREST, successful requests are not logged by default (MEC_LOG=debug
                // logs every response): a log line per request costs ~20 % of the throughput.
                let status = resp.status().as_u16();
                let latency_ms = latency.as_secs_f64() * 1000.0;
                if status >= 500 {
                    tracing::warn!(status, latency_ms, "response");
                } else if status >= 400 {
                    tracing::info!(status, latency_ms, "response");
                } else {
                    tracing::debug!(status, latency_ms, "response");
                }
            },
        )
        .on_failure(());

    Router::new()
        .route("/health", get(routes::health::health))
        .route("/ready", get(routes::health::ready))
        .route("/metrics", get(routes::health::metrics))
        .route("/api", get(routes::openapi::openapi))
        .route("/api/", get(routes::openapi::openapi))
        .route(
            "/api/rpc/{function}",
            get(routes::rpc::rpc_get)
                .post(routes::rpc::rpc_post)
                .fallback(routes::method_not_allowed),
        )
        .route(
            "/api/{view}",
            get(routes::views::read).fallback(routes::method_not_allowed),
        )
        .route(
            "/webhooks/stripe",
            post(routes::webhooks::stripe_default).fallback(routes::method_not_allowed),
        )
        .route(
            "/webhooks/stripe/{namespace_id}",
            post(routes::webhooks::stripe_in_namespace).fallback(routes::method_not_allowed),
        )
        .route(
            "/webhooks/auth0/{namespace_id}",
            post(routes::webhooks::auth0).fallback(routes::method_not_allowed),
        )
        .route(
            "/admin/bulk-provision",
            post(routes::admin::bulk_provision).fallback(routes::method_not_allowed),
        )
        .route(
            "/admin/expire-stale-leases",
            post(routes::admin::expire_stale_leases).fallback(routes::method_not_allowed),
        )
        .route(
            "/admin/deliveries",
            get(routes::admin::deliveries).fallback(routes::method_not_allowed),
        )
        .route(
            "/admin/sync-usage-to-stripe",
            post(routes::admin::sync_usage_to_stripe).fallback(routes::method_not_allowed),
        )
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::track,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panic_response,
        ))
        .layer(cors)
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// JSON-lines logs; `MEC_LOG` (or `RUST_LOG`) filters, default `info`.
pub fn init_tracing() {
    let filter = std::env::var("MEC_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the server until SIGTERM/SIGINT, then finish in-flight requests (at most
/// `MEC_SHUTDOWN_TIMEOUT_MS`).
pub async fn serve(config: Config) -> Result<(), StartupError> {
    let addr = config.addr;
    let shutdown_timeout = config.shutdown_timeout;
    let state = AppState::new(config)?;
    let listener_task = state.spawn_schema_listener();
    let jobs_task = jobs::spawn(&state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Listen { addr, source })?;
    tracing::info!(%addr, "mec-gateway listening");

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    let deadline = async move {
        let _ = stop_rx.wait_for(|v| *v).await;
        tokio::time::sleep(shutdown_timeout).await;
    };
    tokio::select! {
        r = server => r.map_err(StartupError::Server)?,
        _ = deadline => tracing::warn!("shutdown timeout reached; dropping remaining requests"),
    }
    listener_task.abort();
    for job in jobs_task {
        job.abort();
    }
    state.pools.close();
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
