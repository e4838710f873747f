//! A function call, planned: the function of schema `mec` found by its name and the names of the
//! arguments given (PostgREST: Plan.hs `findProc`), `GET` only for a read-only function.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};

use crate::db::schema::{closest, Function, SchemaCache, Volatility, SCHEMA};
use crate::error::ApiError;
use crate::request::body::Given;

/// A call of `function` with `args` (or, for a function with one unnamed json argument, the
/// whole body).
#[derive(Debug)]
pub struct CallPlan<'f> {
    pub function: &'f Function,
    pub args: HashMap<String, Given>,
    pub whole_body: Option<String>,
}

impl<'f> CallPlan<'f> {
    /// Finds the function `name` takes `args` (`404 PGRST202` otherwise, with a hint naming what
    /// exists); `GET`/`HEAD` on a function that writes is `405 PGRST101`.
    pub fn new(
        cache: &'f SchemaCache,
        name: &str,
        args: HashMap<String, Given>,
        whole_body: Option<&str>,
        method: &Method,
    ) -> Result<CallPlan<'f>, ApiError> {
        let given: Vec<&str> = args.keys().map(String::as_str).collect();
        let f = cache
            .find_function(name, &given)
            .filter(|f| !f.takes_whole_body() || whole_body.is_some())
            .ok_or_else(|| not_found(cache, name, &given))?;
        let is_get = *method == Method::GET || *method == Method::HEAD;
        if is_get && !f.volatility.read_only() {
            return Err(ApiError::api(
                StatusCode::METHOD_NOT_ALLOWED,
                "PGRST101",
                format!("Cannot use the {method} method on RPC to the volatile function {SCHEMA}.{name}"),
            )
            .with_hint("Use POST"));
        }
        Ok(CallPlan {
            function: f,
            args,
            whole_body: whole_body.map(str::to_string),
        })
    }

    /// A STABLE or IMMUTABLE function runs in a read-only transaction.
    pub fn read_only(&self) -> bool {
        self.function.volatility.read_only()
    }

    /// Whether the call needs a transaction of its own (`db::run`) rather than one statement
    /// (`db::call`): sets and void keep their FROM clause, and an IMMUTABLE function with constant
    /// arguments may be evaluated while planning, before the request settings are set.
    pub fn needs_transaction(&self) -> bool {
        let f = self.function;
        f.returns_set || f.return_type == "void" || f.volatility == Volatility::Immutable
    }
}

fn signature(f: &Function) -> String {
    let mut names: Vec<&str> = f.args.iter().map(|a| a.name.as_str()).collect();
    names.sort_unstable();
    format!("{SCHEMA}.{}({})", f.name, names.join(", "))
}

/// 404 PGRST202 in PostgREST's words, with a hint naming what exists.
fn not_found(cache: &SchemaCache, name: &str, given: &[&str]) -> ApiError {
    let mut sorted: Vec<&str> = given.to_vec();
    sorted.sort_unstable();
    let list = sorted.join(", ");
    let hint = match cache.functions.get(name) {
        Some(overloads) => Some(format!(
            "Perhaps you meant to call the function {}",
            signature(&overloads[0])
        )),
        None => closest(name, cache.functions.keys()).map(|n| {
            format!(
                "Perhaps you meant to call the function {}",
                signature(&cache.functions[n][0])
            )
        }),
    };
    let e = ApiError::api(
        StatusCode::NOT_FOUND,
        "PGRST202",
        format!("Could not find the function {SCHEMA}.{name}({list}) in the schema cache"),
    )
    .with_details(format!(
        "Searched for the function {SCHEMA}.{name} with parameters {list} or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache."
    ));
    match hint {
        Some(h) => e.with_hint(h),
        None => e,
    }
}
