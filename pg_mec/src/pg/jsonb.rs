//! Results as `jsonb`, built in place: every public function returns a `serde_json::Value`, and
//! `Jsonb` turns it into the tree of `JsonbValue`s that Postgres's own `JsonbValueToJsonb` converts,
//! instead of printing it as JSON text and parsing that text again with `jsonb_in` (what
//! `pgrx::JsonB` does, ~5% of a `check_entitlement` call). The result is the same `jsonb` value:
//! numbers go through `numeric_in` on the text serde prints, so `50.0` stays `50.0`, and each
//! object's keys are put in jsonb's order (shorter first, then by bytes), as `jsonb_in` would.

use std::ffi::CString;

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::{Datum, FromDatum};
use pgrx::nullable::Nullable;
use pgrx::pg_sys::{self, jbvType};
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::IntoDatum;
use serde_json::Value;

/// A function result of SQL type `jsonb`.
#[derive(Debug)]
pub struct Jsonb(pub Value);

/// A document as the tree of `JsonbValue`s that `JsonbValueToJsonb` turns into a `jsonb`, built
/// directly rather than through `pushJsonbValue` (which copies every element into growing arrays
/// and sorts each object's pairs with a C comparator). Every array of elements and of pairs lives
/// here until the conversion, and every string points into the `Value` being converted, which
/// outlives it too.
#[derive(Default)]
struct Tree {
    arrays: Vec<Vec<pg_sys::JsonbValue>>,
    objects: Vec<Vec<pg_sys::JsonbPair>>,
}

impl Tree {
    fn node(&mut self, value: &Value) -> pg_sys::JsonbValue {
        match value {
            Value::Array(items) => {
                let mut elems: Vec<pg_sys::JsonbValue> =
                    items.iter().map(|item| self.node(item)).collect();
                // SAFETY: an all-zero JsonbValue is valid; the union member set matches type_.
                let mut jv: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
                jv.type_ = jbvType::jbvArray;
                jv.val.array = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_2 {
                    nElems: count(elems.len()),
                    // Moving the Vec into `arrays` below keeps its buffer where it is.
                    elems: elems.as_mut_ptr(),
                    rawScalar: false,
                };
                self.arrays.push(elems);
                jv
            }
            Value::Object(map) => {
                // jsonb keeps an object's keys shorter first, then by their bytes (what
                // pushJsonbValue's sort gives); a serde map's keys are unique already.
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|(a, _), (b, _)| {
                    a.len()
                        .cmp(&b.len())
                        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
                });
                let mut pairs: Vec<pg_sys::JsonbPair> = entries
                    .into_iter()
                    .map(|(k, v)| {
                        // SAFETY: as above; string() sets the string member.
                        let mut key: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
                        string(&mut key, k);
                        pg_sys::JsonbPair {
                            key,
                            value: self.node(v),
                            order: 0,
                        }
                    })
                    .collect();
                // SAFETY: as above.
                let mut jv: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
                jv.type_ = jbvType::jbvObject;
                jv.val.object = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_3 {
                    nPairs: count(pairs.len()),
                    pairs: pairs.as_mut_ptr(),
                };
                self.objects.push(pairs);
                jv
            }
            scalar => scalar_value(scalar),
        }
    }
}

/// A count for a JsonbValue; a document too big for jsonb is refused with an ERROR when converted.
fn count(n: usize) -> std::ffi::c_int {
    std::ffi::c_int::try_from(n).unwrap_or(std::ffi::c_int::MAX)
}

/// A JSON scalar as a JsonbValue (strings borrow from `value`).
fn scalar_value(value: &Value) -> pg_sys::JsonbValue {
    // SAFETY: an all-zero JsonbValue is jbvNull; the union member set below matches type_.
    let mut jv: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    match value {
        Value::Bool(b) => {
            jv.type_ = jbvType::jbvBool;
            jv.val.boolean = *b;
        }
        Value::Number(n) => {
            jv.type_ = jbvType::jbvNumeric;
            jv.val.numeric = numeric(n);
        }
        Value::String(s) => string(&mut jv, s),
        Value::Null | Value::Array(_) | Value::Object(_) => jv.type_ = jbvType::jbvNull,
    }
    jv
}

fn string(jv: &mut pg_sys::JsonbValue, s: &str) {
    jv.type_ = jbvType::jbvString;
    jv.val.string = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 {
        // A document too big for jsonb is refused with an ERROR by JsonbValueToJsonb.
        len: i32::try_from(s.len()).unwrap_or(i32::MAX),
        val: s.as_ptr() as *mut std::ffi::c_char,
    };
}

/// A JSON number as a Postgres numeric: integers directly, others through `numeric_in` on the
/// text serde prints (the same text `jsonb_in` would have read).
fn numeric(n: &serde_json::Number) -> pg_sys::Numeric {
    if let Some(i) = n.as_i64() {
        // SAFETY: int64_to_numeric allocates a numeric in the current memory context.
        return unsafe { pg_sys::int64_to_numeric(i) };
    }
    // A serde number prints as a JSON number literal: digits, '.', 'e', '-', '+'; never a NUL.
    let text = CString::new(n.to_string()).unwrap_or_default();
    // SAFETY: numeric_in takes a C string, the type modifier -1 and any typioparam.
    let datum = unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::numeric_in,
            &[
                Some(pg_sys::Datum::from(text.as_ptr())),
                Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
                Some(pg_sys::Datum::from(-1i32)),
            ],
        )
    };
    match datum {
        Some(d) => d.cast_mut_ptr(),
        None => pgrx::error!("numeric_in returned NULL for the JSON number {n}"),
    }
}

impl IntoDatum for Jsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let mut tree = Tree::default();
        let mut root = tree.node(&self.0);
        // SAFETY: a scalar root becomes a raw-scalar array inside JsonbValueToJsonb; a container
        // root's elements, pairs and strings still live in `tree` and `self.0`, and are copied.
        Some(pg_sys::Datum::from(unsafe {
            pg_sys::JsonbValueToJsonb(&mut root)
        }))
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

unsafe impl BoxRet for Jsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        match self.into_datum() {
            // SAFETY: a jsonb datum allocated in the function's memory context.
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

// SAFETY: the SQL type is jsonb, and the datum is a jsonb.
unsafe impl SqlTranslatable for Jsonb {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Jsonb);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}

/// A `jsonb` argument, kept as its text and parsed by the entry point: [`JsonbArg::parse`] turns
/// what serde_json refuses (nesting deeper than its 128 levels) into a `22023` naming the argument.
/// pgrx's own `JsonB` parses in the function's wrapper and panics instead, which the caller sees as
/// `XX000`: a server error for a caller's mistake.
pub struct JsonbArg(String);

impl JsonbArg {
    /// The argument as a JSON value, or `22023`.
    pub fn parse(&self, name: &str) -> crate::pg::errors::MecResult<Value> {
        serde_json::from_str(&self.0).map_err(|e| {
            crate::pg::errors::MecError::invalid_hint(
                format!("{name} cannot be read: {e}"),
                "pg_mec reads JSON arguments nested at most 128 levels deep.",
            )
        })
    }
}

impl FromDatum for JsonbArg {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<JsonbArg> {
        if is_null {
            return None;
        }
        // SAFETY: a jsonb datum of this call; jsonb_out detoasts it and returns a palloc'd C
        // string, which is copied and freed.
        unsafe {
            let text =
                pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(datum)])?;
            let owned = text.to_string_lossy().into_owned();
            pg_sys::pfree(text.as_ptr() as *mut std::ffi::c_void);
            Some(JsonbArg(owned))
        }
    }
}

// SAFETY: unboxed through FromDatum, as pgrx does for its own datum types.
unsafe impl<'fcx> ArgAbi<'fcx> for JsonbArg {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the caller (pgrx's wrapper) checked the argument is not NULL.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above; NULL becomes Nullable::Null.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

// SAFETY: the SQL type is jsonb, and the datum is read as a jsonb.
unsafe impl SqlTranslatable for JsonbArg {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(JsonbArg);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
        Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}
