//! Identity from outside: Auth0's sign-ups and deletions (`receive_auth0_events`, for the gateway's
//! webhook role). See `docs/integrations.md`.

use pgrx::prelude::*;
use pgrx::Uuid;

use crate::api;
use crate::ops::auth0;
use crate::pg::args;
use crate::pg::clock;
use crate::pg::jsonb::Jsonb;
use crate::pg::raise::finish;

/// Receives one Auth0 delivery for namespace `p_namespace_id`: `p_payload` is the raw body (a log
/// stream's JSON array, JSON lines or one log event, or a post-user-registration Action's
/// `{"user": {…}}`), `p_authorization` the `Authorization` header, which must carry the namespace's
/// `auth0_secret` (`Bearer <secret>` or the bare secret). A sign-up (`ss`, or the Action) creates the
/// account with `external_id` = the Auth0 user id on the default plan; a deletion (`sdu`, `du`)
/// forgets it; other log types are counted and not kept. Each acted-on event is applied once, by its
/// `log_id`.
///
/// Returns `{received, applied, duplicates, ignored, results: [{log_id, type, duplicate, outcome,
/// account_id, detail}]}`. Raises `ME400` (no secret, token refused, not Auth0's body; nothing is
/// recorded), `22023`. Granted to `mec_webhook`.
#[pg_extern]
fn receive_auth0_events(
    p_namespace_id: Option<Uuid>,
    p_payload: Option<&str>,
    p_authorization: Option<&str>,
) -> Jsonb {
    let ns = finish(args::required(p_namespace_id, "p_namespace_id"));
    Jsonb(api::acting_in(ns, |client| {
        let payload = args::required(p_payload, "p_payload")?;
        auth0::receive(client, ns, payload, p_authorization, clock::now_us())
    }))
}
