//! `load_catalog`: the catalog document is the single source of truth for plans and limits.

use pgrx::prelude::*;

use crate::api;
use crate::ops::catalog;
use crate::pg::args;
use crate::pg::jsonb::{Jsonb, JsonbArg};

/// Validates the catalog (`sql/catalog.schema.json` describes it) and applies it to the caller's
/// namespace, all or nothing. Loading the same document twice changes nothing.
///
/// Returns `{unchanged, version, digest, plans_created, plans_updated, plans_unchanged,
/// plans_retired, resources, resources_created, resources_updated, accounts_reprovisioned}`.
/// Raises `ME422` (invalid; DETAIL `{"problems": [{"path", "message"}, ...]}` lists every
/// problem), `22023` (NULL), `42501`.
#[pg_extern]
fn load_catalog(p_catalog: Option<JsonbArg>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let doc = args::required(p_catalog, "p_catalog")?.parse("p_catalog")?;
        catalog::load(client, ns, &doc)
    }))
}
