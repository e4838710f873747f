//! Results as `jsonb`, built in place: every public function returns a `serde_json::Value`, and
//! `Jsonb` turns it into a `jsonb` datum with Postgres's own `pushJsonbValue`, instead of printing
//! it as JSON text and parsing that text again with `jsonb_in` (what `pgrx::JsonB` does, ~5% of a
//! `check_entitlement` call). The result is the same `jsonb` value: numbers go through
//! `numeric_in` on the text serde prints, so `50.0` stays `50.0`.

use std::ffi::CString;

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::{Datum, FromDatum};
use pgrx::nullable::Nullable;
use pgrx::pg_sys::{self, jbvType, JsonbIteratorToken as Token};
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::IntoDatum;
use serde_json::Value;

/// A function result of SQL type `jsonb`.
#[derive(Debug)]
pub struct Jsonb(pub Value);

/// The parse state of `pushJsonbValue`. Every string pointer it keeps borrows from the `Value`
/// being pushed, which outlives `JsonbValueToJsonb`, where the bytes are copied.
struct Builder {
    state: *mut pg_sys::JsonbParseState,
}

impl Builder {
    /// # Safety
    /// `v` is NULL (begin/end tokens) or a value whose string bytes outlive the builder.
    unsafe fn push(
        &mut self,
        token: Token::Type,
        v: *mut pg_sys::JsonbValue,
    ) -> *mut pg_sys::JsonbValue {
        // SAFETY: a valid parse state (NULL at the start) and a JsonbValue or NULL.
        unsafe { pg_sys::pushJsonbValue(&mut self.state, token, v) }
    }

    /// Pushes `value` with `token` (WJB_ELEM or WJB_VALUE) inside a container, or as the whole
    /// document when `token` is `None`. Returns what the last push returned: for the document,
    /// its finished root value.
    fn value(&mut self, token: Option<Token::Type>, value: &Value) -> *mut pg_sys::JsonbValue {
        // SAFETY: begin/end tokens take NULL; keys, elements and scalars borrow from `value`.
        unsafe {
            match value {
                Value::Array(items) => {
                    self.push(Token::WJB_BEGIN_ARRAY, std::ptr::null_mut());
                    for item in items {
                        self.value(Some(Token::WJB_ELEM), item);
                    }
                    self.push(Token::WJB_END_ARRAY, std::ptr::null_mut())
                }
                Value::Object(map) => {
                    self.push(Token::WJB_BEGIN_OBJECT, std::ptr::null_mut());
                    for (k, v) in map {
                        let mut key: pg_sys::JsonbValue = std::mem::zeroed();
                        string(&mut key, k);
                        self.push(Token::WJB_KEY, &mut key);
                        self.value(Some(Token::WJB_VALUE), v);
                    }
                    self.push(Token::WJB_END_OBJECT, std::ptr::null_mut())
                }
                scalar => {
                    let mut jv = scalar_value(scalar);
                    match token {
                        Some(t) => self.push(t, &mut jv),
                        None => {
                            // A scalar document is a one-element raw-scalar array, as jsonb_in
                            // makes it.
                            let mut arr: pg_sys::JsonbValue = std::mem::zeroed();
                            arr.type_ = jbvType::jbvArray;
                            arr.val.array.rawScalar = true;
                            self.push(Token::WJB_BEGIN_ARRAY, &mut arr);
                            self.push(Token::WJB_ELEM, &mut jv);
                            self.push(Token::WJB_END_ARRAY, std::ptr::null_mut())
                        }
                    }
                }
            }
        }
    }
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
        let mut b = Builder {
            state: std::ptr::null_mut(),
        };
        let root = b.value(None, &self.0);
        // SAFETY: the last push closed the document and returned its root; the strings it points
        // to still live in `self.0`.
        Some(pg_sys::Datum::from(unsafe {
            pg_sys::JsonbValueToJsonb(root)
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
