//! Prepared SPI statements, planned once per backend and reused: the hot paths never parse or
//! plan SQL per call. Statements are keyed by their `&'static str` text.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};

use crate::errors::MecResult;

thread_local! {
    static PLANS: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// One SQL statement with the types of its parameters.
pub struct Stmt {
    pub sql: &'static str,
    pub types: &'static [pg_sys::Oid],
    /// Writes (INSERT/UPDATE/DELETE); reads run read-only when the transaction has not written.
    pub writes: bool,
}

fn plan(client: &SpiClient<'_>, stmt: &Stmt) -> MecResult<Rc<OwnedPreparedStatement>> {
    let key = stmt.sql.as_ptr() as usize;
    if let Some(p) = PLANS.with(|plans| plans.borrow().get(&key).cloned()) {
        return Ok(p);
    }
    let oids: Vec<PgOid> = stmt.types.iter().map(|o| PgOid::from(*o)).collect();
    let prepared = if stmt.writes {
        client.prepare_mut(stmt.sql, &oids)?
    } else {
        client.prepare(stmt.sql, &oids)?
    };
    let kept = Rc::new(prepared.keep());
    PLANS.with(|plans| plans.borrow_mut().insert(key, kept.clone()));
    Ok(kept)
}

/// The rows a statement returned.
pub struct Rows<'c>(SpiTupleTable<'c>);

impl<'c> Rows<'c> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first column of the first row; `None` when there is no row or it is NULL.
    pub fn one<A: FromDatum + IntoDatum>(self) -> MecResult<Option<A>> {
        if self.0.is_empty() {
            return Ok(None);
        }
        Ok(self.0.first().get_one::<A>()?)
    }

    /// The first two columns of the first row.
    pub fn two<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum>(
        self,
    ) -> MecResult<(Option<A>, Option<B>)> {
        if self.0.is_empty() {
            return Ok((None, None));
        }
        Ok(self.0.first().get_two::<A, B>()?)
    }

    /// The first three columns of the first row.
    pub fn three<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum, C: FromDatum + IntoDatum>(
        self,
    ) -> MecResult<(Option<A>, Option<B>, Option<C>)> {
        if self.0.is_empty() {
            return Ok((None, None, None));
        }
        Ok(self.0.first().get_three::<A, B, C>()?)
    }
}

impl<'c> IntoIterator for Rows<'c> {
    type Item = <SpiTupleTable<'c> as Iterator>::Item;
    type IntoIter = SpiTupleTable<'c>;

    fn into_iter(self) -> Self::IntoIter {
        self.0
    }
}

/// Keeps `plan_cache_mode = force_generic_plan` for the statements run while it lives: they are
/// the same few statements on every call, so the generic plan is planned once per backend and
/// never replaced by custom plans. Cheaper than a `SET` clause on every function, which would
/// push and pop a GUC level per call. Restored on drop, also when an error unwinds.
struct GenericPlans(std::ffi::c_int);

impl GenericPlans {
    fn force() -> Self {
        // SAFETY: a plain int GUC variable of this backend, read by GetCachedPlan.
        unsafe {
            let previous = pg_sys::plan_cache_mode;
            pg_sys::plan_cache_mode =
                pg_sys::PlanCacheMode::PLAN_CACHE_MODE_FORCE_GENERIC_PLAN as std::ffi::c_int;
            Self(previous)
        }
    }
}

impl Drop for GenericPlans {
    fn drop(&mut self) {
        // SAFETY: restores the value read in `force`.
        unsafe { pg_sys::plan_cache_mode = self.0 };
    }
}

/// Runs a statement that only reads.
pub fn read<'c>(client: &SpiClient<'c>, stmt: &Stmt, args: &[DatumWithOid]) -> MecResult<Rows<'c>> {
    let p = plan(client, stmt)?;
    let _generic = GenericPlans::force();
    Ok(Rows(client.select(&*p, None, args)?))
}

/// Runs a statement that writes.
pub fn write<'c>(
    client: &mut SpiClient<'c>,
    stmt: &Stmt,
    args: &[DatumWithOid],
) -> MecResult<Rows<'c>> {
    let p = plan(client, stmt)?;
    let _generic = GenericPlans::force();
    Ok(Rows(client.update(&*p, None, args)?))
}

pub use pg_sys::{
    BOOLOID as BOOL, INT4OID as INT4, INT8OID as INT8, JSONBOID as JSONB, NUMERICOID as NUMERIC,
    TEXTOID as TEXT, TIMESTAMPTZOID as TIMESTAMPTZ, UUIDOID as UUID,
};
