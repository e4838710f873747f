//! The SQL API: `#[pg_extern]` entry points only, one file per contract group. Each converts its
//! arguments and calls the logic module through one of the entry shapes below, which resolve the
//! caller, run the work as `mec_owner` with a fixed search path (`owner.rs`), and raise any error
//! at this boundary, after every Rust value is dropped (`errors::raise`).

pub mod billing;
pub mod cache;
pub mod catalog;
pub mod corrections;
pub mod entitlements;
pub mod identity;
pub mod leases;
pub mod metering;
pub mod namespaces;
pub mod provisioning;
pub mod reservations;
pub mod retention;
pub mod webhooks;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

use crate::pg::context::Caller;
use crate::pg::owner::AsOwner;
use crate::pg::raise::finish;
use crate::pg::MecResult;

/// The caller, then `work` as `mec_owner`: the guard is dropped before the result is returned.
fn as_owner<T>(work: impl FnOnce(&Caller) -> MecResult<T>) -> MecResult<T> {
    let caller = Caller::resolve()?;
    let _owner = AsOwner::enter()?;
    work(&caller)
}

/// An entry point that only reads.
pub(crate) fn read<T>(work: impl FnOnce(&Caller, &SpiClient<'_>) -> MecResult<T>) -> T {
    finish(as_owner(|caller| {
        Spi::connect(|client| work(caller, client))
    }))
}

/// An entry point that writes.
pub(crate) fn write<T>(work: impl FnOnce(&Caller, &mut SpiClient<'_>) -> MecResult<T>) -> T {
    finish(as_owner(|caller| {
        Spi::connect_mut(|client| work(caller, client))
    }))
}

/// An entry point that authenticates its caller itself, against a secret of the namespace it names
/// (a signed webhook): `work` runs as `mec_owner` acting in `namespace` only, and checks the
/// secret before it changes anything.
pub(crate) fn acting_in<T>(
    namespace: Uuid,
    work: impl FnOnce(&mut SpiClient<'_>) -> MecResult<T>,
) -> T {
    finish((|| {
        let _acting = crate::pg::context::ActingIn::enter(namespace);
        let _owner = AsOwner::enter()?;
        Spi::connect_mut(work)
    })())
}

/// An entry point for the platform operator (the database owner): it runs with the caller's own
/// rights, which the owner has and no API role does, under the fixed search path.
pub(crate) fn operator<T>(work: impl FnOnce(&mut SpiClient<'_>) -> MecResult<T>) -> T {
    finish(with_fixed_search_path(work))
}

/// `work` under the fixed search path; the guard is dropped before the result is returned.
fn with_fixed_search_path<T>(
    work: impl FnOnce(&mut SpiClient<'_>) -> MecResult<T>,
) -> MecResult<T> {
    let _path = crate::pg::owner::FixedSearchPath::enter();
    Spi::connect_mut(work)
}
