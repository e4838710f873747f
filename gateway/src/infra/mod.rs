//! What every request and the server itself rely on: configuration, JWT verification, metrics,
//! the request-wide middleware, startup errors.

pub mod auth;
pub mod config;
pub mod metrics;
pub mod middleware;
pub mod startup;
