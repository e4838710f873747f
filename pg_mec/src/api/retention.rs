//! Retention (mec_admin, and the gateway's worker on its schedule).

use pgrx::prelude::*;

use crate::api;
use crate::ops::retention;
use crate::pg::args;
use crate::pg::jsonb::Jsonb;

/// Removes what the namespace keeps no longer, one bounded batch per call: idempotency keys older
/// than `key_retention_days` (45) before `p_before`, and ledger rows recorded and occurred more than
/// `history_retention_days` (400; never less than the key retention) before it — rolled up per day
/// first, so totals, day and month history and as-of answers after that horizon do not change. A
/// row whose usage Stripe has still to be sent is kept. Call again while `more` is true.
///
/// Returns `{before, key_cutoff, ledger_cutoff, keys_deleted, ledger_rows_rolled_up,
/// rollup_rows_written, stripe_items_deleted, more}`. Raises `22023` (`p_before` in the future,
/// `p_batch_size` outside 1 to 1 000 000), `42501`.
#[pg_extern]
fn purge_expired(
    p_before: default!(Option<TimestampWithTimeZone>, "now()"),
    p_batch_size: default!(Option<i32>, 10000),
) -> Jsonb {
    Jsonb(api::write(|caller, client| {
        let before = args::instant(p_before, "p_before")?;
        retention::purge(
            client,
            caller.namespace,
            before,
            p_batch_size.unwrap_or(retention::DEFAULT_BATCH),
        )
    }))
}
