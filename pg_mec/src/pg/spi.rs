//! Prepared SPI statements, planned once per backend and reused: the hot paths never parse or
//! plan SQL per call.
//!
//! Every statement is declared once with [`stmt!`]: its SQL and, in `$n` order, the name and the
//! type of each parameter, so the list of types cannot drift from the SQL:
//!
//! ```ignore
//! stmt! {
//!     /// The ledger row of an idempotency key.
//!     static RECORDED: read (ns: uuid, key: text) =
//!         "SELECT consumption_id, quantity FROM mec_data.consumption
//!           WHERE namespace_id = $1 AND idempotency_key = $2";
//! }
//! ```
//!
//! A declaration whose SQL uses another number of `$n` than it declares does not compile, and a
//! call with another number of arguments is refused before it runs. Rows are read by column name
//! ([`Row::get`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData, SpiTupleTable};

use crate::pg::errors::{MecError, MecResult};

thread_local! {
    static PLANS: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// One parameter of a statement: its name (for people and messages) and its SQL type.
pub struct Param {
    pub name: &'static str,
    pub oid: pg_sys::Oid,
}

/// One SQL statement with its parameters. Declare it with [`stmt!`].
pub struct Stmt {
    pub name: &'static str,
    pub sql: &'static str,
    pub params: &'static [Param],
    /// Writes (INSERT/UPDATE/DELETE); reads run read-only when the transaction has not written.
    pub writes: bool,
}

/// The highest `$n` in an SQL text ([`stmt!`]'s compile-time check); pure, so it lives and is
/// tested in `pg_mec_core`.
pub use pg_mec_core::sql_text::placeholders;

/// Declares a prepared statement (see the module documentation):
/// `[pub] static NAME: read|write (name: type, …) = "SQL";`, with the types `uuid`, `text`,
/// `numeric`, `timestamptz`, `int4`, `int8`, `bool` and `jsonb`.
macro_rules! stmt {
    ($(#[$meta:meta])* $vis:vis static $name:ident: $kind:ident ($($param:ident: $ty:ident),* $(,)?) = $sql:expr;) => {
        $(#[$meta])*
        $vis static $name: $crate::pg::spi::Stmt = $crate::pg::spi::Stmt {
            name: stringify!($name),
            sql: $sql,
            params: &[$($crate::pg::spi::Param {
                name: stringify!($param),
                oid: $crate::pg::spi::sql_type!($ty),
            }),*],
            writes: $crate::pg::spi::stmt!(@writes $kind),
        };
        const _: () = assert!(
            $crate::pg::spi::placeholders($sql) == <[&str]>::len(&[$(stringify!($param)),*]),
            concat!("stmt! ", stringify!($name), ": the SQL's $n and the declared parameters differ"),
        );
    };
    (@writes read) => { false };
    (@writes write) => { true };
}
pub(crate) use stmt;

/// The oid of a parameter type named in [`stmt!`].
macro_rules! sql_type {
    (uuid) => {
        ::pgrx::pg_sys::UUIDOID
    };
    (text) => {
        ::pgrx::pg_sys::TEXTOID
    };
    (numeric) => {
        ::pgrx::pg_sys::NUMERICOID
    };
    (timestamptz) => {
        ::pgrx::pg_sys::TIMESTAMPTZOID
    };
    (int4) => {
        ::pgrx::pg_sys::INT4OID
    };
    (int8) => {
        ::pgrx::pg_sys::INT8OID
    };
    (bool) => {
        ::pgrx::pg_sys::BOOLOID
    };
    (jsonb) => {
        ::pgrx::pg_sys::JSONBOID
    };
    // Arrays, for statements that take many rows at once (`unnest`).
    (uuid_array) => {
        ::pgrx::pg_sys::UUIDARRAYOID
    };
    (text_array) => {
        ::pgrx::pg_sys::TEXTARRAYOID
    };
    (numeric_array) => {
        ::pgrx::pg_sys::NUMERICARRAYOID
    };
    (timestamptz_array) => {
        ::pgrx::pg_sys::TIMESTAMPTZARRAYOID
    };
    (bool_array) => {
        ::pgrx::pg_sys::BOOLARRAYOID
    };
    (int4_array) => {
        ::pgrx::pg_sys::INT4ARRAYOID
    };
    (jsonb_array) => {
        ::pgrx::pg_sys::JSONBARRAYOID
    };
    (tid_array) => {
        ::pgrx::pg_sys::TIDARRAYOID
    };
}
pub(crate) use sql_type;

fn plan(client: &SpiClient<'_>, stmt: &Stmt) -> MecResult<Rc<OwnedPreparedStatement>> {
    let key = stmt.sql.as_ptr() as usize;
    if let Some(p) = PLANS.with(|plans| plans.borrow().get(&key).cloned()) {
        return Ok(p);
    }
    let oids: Vec<PgOid> = stmt.params.iter().map(|p| PgOid::from(p.oid)).collect();
    let prepared = if stmt.writes {
        client.prepare_mut(stmt.sql, &oids)?
    } else {
        client.prepare(stmt.sql, &oids)?
    };
    let kept = Rc::new(prepared.keep());
    PLANS.with(|plans| plans.borrow_mut().insert(key, kept.clone()));
    Ok(kept)
}

/// Refuses a call whose arguments are not one per declared parameter.
fn check_arity(stmt: &Stmt, args: &[DatumWithOid]) -> MecResult<()> {
    if args.len() == stmt.params.len() {
        return Ok(());
    }
    let names: Vec<&str> = stmt.params.iter().map(|p| p.name).collect();
    Err(MecError::Internal(format!(
        "statement {} takes ({}) but was called with {} arguments",
        stmt.name,
        names.join(", "),
        args.len()
    )))
}

/// The rows a statement returned.
pub struct Rows<'c>(SpiTupleTable<'c>);

/// One row, read by column name.
pub struct Row<'c>(SpiHeapTupleData<'c>);

impl<'c> Row<'c> {
    /// The value of `column` (`None` when NULL). An unknown column is an internal error.
    pub fn get<T: FromDatum + IntoDatum>(&self, column: &str) -> MecResult<Option<T>> {
        Ok(self.0.get_by_name::<T, _>(column)?)
    }
}

impl<'c> Rows<'c> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first row, if any.
    pub fn first(self) -> Option<Row<'c>> {
        self.into_iter().next()
    }

    /// Columns `a` and `b` of the first row (`None` for NULL, or when there is no row).
    pub fn two<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum>(
        self,
        a: &str,
        b: &str,
    ) -> MecResult<(Option<A>, Option<B>)> {
        match self.first() {
            Some(row) => Ok((row.get(a)?, row.get(b)?)),
            None => Ok((None, None)),
        }
    }

    /// Columns `a`, `b` and `c` of the first row (`None` for NULL, or when there is no row).
    pub fn three<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum, C: FromDatum + IntoDatum>(
        self,
        a: &str,
        b: &str,
        c: &str,
    ) -> MecResult<(Option<A>, Option<B>, Option<C>)> {
        match self.first() {
            Some(row) => Ok((row.get(a)?, row.get(b)?, row.get(c)?)),
            None => Ok((None, None, None)),
        }
    }

    /// The only column of the first row as an exact decimal, zero when there is no row or it is
    /// NULL: for statements that sum or read one counter.
    pub fn decimal_or_zero(self) -> MecResult<pg_mec_core::Decimal> {
        Ok(self
            .one::<pgrx::AnyNumeric>()?
            .as_ref()
            .map(crate::pg::values::to_decimal)
            .transpose()?
            .unwrap_or_default())
    }

    /// The only column of the first row; `None` when there is no row or it is NULL. For
    /// statements that return one column.
    pub fn one<A: FromDatum + IntoDatum>(self) -> MecResult<Option<A>> {
        if self.0.is_empty() {
            return Ok(None);
        }
        Ok(self.0.first().get_one::<A>()?)
    }
}

impl<'c> IntoIterator for Rows<'c> {
    type Item = Row<'c>;
    type IntoIter = std::iter::Map<SpiTupleTable<'c>, fn(SpiHeapTupleData<'c>) -> Row<'c>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.map(Row)
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
    check_arity(stmt, args)?;
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
    check_arity(stmt, args)?;
    let p = plan(client, stmt)?;
    let _generic = GenericPlans::force();
    Ok(Rows(client.update(&*p, None, args)?))
}
