//! Reservations: hold quota before work of unknown size, settle it afterwards.

use pgrx::prelude::*;
use pgrx::{AnyNumeric, Uuid};

use crate::api;
use crate::ops::reservations::{self, Reserve};
use crate::pg::args;
use crate::pg::clock;
use crate::pg::jsonb::{Jsonb, JsonbArg};

/// Holds `p_quantity` of a metered or gauge resource for `p_ttl_seconds` (1–86400), deciding under
/// the counter's row lock like `meter_consumption`. Idempotent on `p_idempotency_key`.
/// Returns `{reservation_id, expires_at, quantity_reserved, quantity_used, quantity_remaining, ...}`.
/// Raises `ME429`, `ME409`, `ME404`, `ME400` (other kinds), `22023`, `42501`.
#[pg_extern]
fn reserve_consumption(
    p_idempotency_key: Option<&str>,
    p_account_id: Option<Uuid>,
    p_resource_type: Option<&str>,
    p_quantity: Option<AnyNumeric>,
    p_ttl_seconds: default!(Option<i32>, 300),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let req = Reserve {
            key: args::required(p_idempotency_key, "p_idempotency_key")?.to_string(),
            account_id: args::required(p_account_id, "p_account_id")?,
            resource_type: args::text(p_resource_type, "p_resource_type")?,
            quantity: args::quantity(p_quantity, "p_quantity")?,
            ttl_seconds: args::ttl_seconds(p_ttl_seconds, "p_ttl_seconds")?,
        };
        reservations::reserve(client, ns, &req, clock::now_us())
    }))
}

/// Settles a held reservation at `p_actual_quantity` (default: the reserved quantity) and records
/// it in the ledger; or, with `p_items` (`[{resource_type, quantity, dimensions}]`, as
/// `meter_usage` takes them), gives the hold back and meters the items in one decision under the
/// reservation's key (reserve a token budget, commit the actual split), all or nothing.
/// Committing again returns the same result with `duplicate: true`.
/// Returns the `meter_consumption` result (with items: the `meter_usage` result) plus
/// `reservation_id`, `quantity_reserved`. Raises `ME410` (expired or cancelled), `ME429` (actual
/// above the reservation and the limit, or an item over its limit: nothing recorded, the hold kept),
/// `ME409` (committed before the other way, or with other items), `P0002` (unknown reservation),
/// `22023` (both `p_actual_quantity` and `p_items`, bad items), `42501`.
#[pg_extern]
fn commit_reservation(
    p_reservation_id: Option<Uuid>,
    p_actual_quantity: default!(Option<AnyNumeric>, "NULL"),
    p_items: default!(Option<JsonbArg>, "NULL"),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let id = args::required(p_reservation_id, "p_reservation_id")?;
        let actual = p_actual_quantity
            .map(|n| args::quantity(Some(n), "p_actual_quantity"))
            .transpose()?;
        let items = p_items.map(|i| i.parse("p_items")).transpose()?;
        reservations::commit(client, ns, id, actual, items.as_ref(), clock::now_us())
    }))
}

/// Gives a held reservation's quota back. Returns `{reservation_id, cancelled: true,
/// already_settled, expired, quantity_released}`. Raises `ME400` (already committed), `P0002`,
/// `42501`.
#[pg_extern]
fn cancel_reservation(p_reservation_id: Option<Uuid>) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let ns = caller.namespace;
        let id = args::required(p_reservation_id, "p_reservation_id")?;
        reservations::cancel(client, ns, id)
    }))
}
