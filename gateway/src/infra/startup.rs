//! Why the gateway could not start: each a message an operator can act on.

use std::net::SocketAddr;

use crate::infra::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A `MEC_*` setting is missing or invalid (the JWT key included).
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    /// `MEC_DATABASE_URL` is not a PostgreSQL connection URL.
    #[error("MEC_DATABASE_URL: {0}")]
    DatabaseUrl(String),
    /// The connection pool could not be built.
    #[error("database pool: {0}")]
    Pool(String),
    /// The HTTP client for outbound calls (Stripe) could not be built.
    #[error("HTTP client: {0}")]
    HttpClient(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Server(std::io::Error),
}
