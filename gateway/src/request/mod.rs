//! The request, parsed: query string, headers, body. Nothing here knows the schema; what a request
//! names is checked by `plan`.

pub mod body;
pub mod headers;
pub mod query;
