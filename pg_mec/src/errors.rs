//! pg_mec's errors: one enum whose variants know their SQLSTATE, message, DETAIL and HINT, and the
//! one place that raises them.
//!
//! pg_mec's own conditions use class `ME` with the HTTP status in the digits (`ME429` → 429).
//! pgrx's error API only knows the standard codes (anything else arrives as `XX000`), so [`raise`]
//! calls Postgres's `errstart`/`errfinish` directly. `errfinish` jumps out past the Rust frames, so
//! every value with a destructor is dropped, and the strings are copied into Postgres memory,
//! before it is called.

use std::ffi::{c_char, c_int, CString};

use pgrx::pg_sys;

/// Everything an entry point can fail with. Inner functions return `Result<_, MecError>`; only the
/// `#[pg_extern]` boundary calls [`finish`].
#[derive(Debug, Clone, PartialEq)]
pub enum MecError {
    /// `42501`: no namespace in the claims or `mec.namespace_id`.
    NoNamespace,
    /// `42501`: the caller's role may not do this.
    PermissionDenied {
        message: String,
        hint: Option<String>,
    },
    /// `22023`: an argument has a value that can never be right.
    InvalidParameter {
        message: String,
        hint: Option<String>,
    },
    /// `ME400`: the request does not fit the resource or the state (e.g. metering a feature).
    InvalidRequest {
        message: String,
        hint: Option<String>,
    },
    /// `ME404`: unknown account, resource type or plan.
    UnknownObject {
        what: &'static str,
        id: String,
        hint: Option<String>,
    },
    /// `P0002`: a lease or reservation id that does not exist in this namespace.
    NotFound { what: &'static str, id: String },
    /// `ME409`: the idempotency key was used before with another payload.
    IdempotencyConflict { key: String, detail: String },
    /// `ME410`: the lease or reservation expired.
    Expired {
        what: &'static str,
        id: String,
        detail: Option<String>,
    },
    /// `ME422`: the catalog is invalid; DETAIL lists every problem with its JSON path.
    CatalogInvalid {
        problems: serde_json::Value,
        count: usize,
    },
    /// `ME429`: a limit was reached; DETAIL is `{"violated_policies": [...]}`.
    LimitReached {
        resource: String,
        violated: serde_json::Value,
    },
    /// `23505`: a unique value (external id, namespace id) belongs to something else.
    Conflict {
        message: String,
        hint: Option<String>,
    },
    /// `XX000`: a bug or an impossible state, never a caller's mistake.
    Internal(String),
    /// An error met after the call changed tables (its SQLSTATE and text are the inner error's).
    /// Only aborting the statement undoes what was written, so a batch never reports it as one
    /// rejected event: it fails the whole call.
    AfterWrite(Box<MecError>),
}

pub type MecResult<T> = Result<T, MecError>;

impl MecError {
    pub fn invalid(message: impl Into<String>) -> Self {
        MecError::InvalidParameter {
            message: message.into(),
            hint: None,
        }
    }

    pub fn invalid_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        MecError::InvalidParameter {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn bad_request(message: impl Into<String>, hint: impl Into<String>) -> Self {
        MecError::InvalidRequest {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn denied(message: impl Into<String>) -> Self {
        MecError::PermissionDenied {
            message: message.into(),
            hint: None,
        }
    }

    pub fn unknown(what: &'static str, id: impl Into<String>) -> Self {
        let hint = match what {
            "account" => "Create the account with mec.provision_plan(p_account_id, p_plan_id).",
            "resource type" => {
                "Declare the resource type in the catalog and load it with mec.load_catalog."
            }
            "plan" => "List the plans with SELECT plan_id FROM mec.plans.",
            _ => "Check the identifier.",
        };
        MecError::UnknownObject {
            what,
            id: id.into(),
            hint: Some(hint.to_string()),
        }
    }

    /// This error, marked as met after a write (see [`MecError::AfterWrite`]).
    pub fn after_write(self) -> Self {
        match self {
            e @ MecError::AfterWrite(_) => e,
            e => MecError::AfterWrite(Box::new(e)),
        }
    }

    /// The SQLSTATE, five characters.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MecError::AfterWrite(inner) => inner.sqlstate(),
            MecError::NoNamespace | MecError::PermissionDenied { .. } => "42501",
            MecError::InvalidParameter { .. } => "22023",
            MecError::InvalidRequest { .. } => "ME400",
            MecError::UnknownObject { .. } => "ME404",
            MecError::NotFound { .. } => "P0002",
            MecError::IdempotencyConflict { .. } => "ME409",
            MecError::Expired { .. } => "ME410",
            MecError::CatalogInvalid { .. } => "ME422",
            MecError::LimitReached { .. } => "ME429",
            MecError::Conflict { .. } => "23505",
            MecError::Internal(_) => "XX000",
        }
    }

    /// Message, DETAIL and HINT as a person reads them.
    pub fn parts(&self) -> (String, Option<String>, Option<String>) {
        match self {
            MecError::AfterWrite(inner) => inner.parts(),
            MecError::NoNamespace => (
                "no pg_mec namespace is set for this session".into(),
                None,
                Some("Pass a namespace_id claim in request.jwt.claims, or SET mec.namespace_id = '<uuid>'.".into()),
            ),
            MecError::PermissionDenied { message, hint }
            | MecError::InvalidParameter { message, hint }
            | MecError::InvalidRequest { message, hint }
            | MecError::Conflict { message, hint } => (message.clone(), None, hint.clone()),
            MecError::UnknownObject { what, id, hint } => {
                (format!("unknown {what} \"{id}\""), None, hint.clone())
            }
            MecError::NotFound { what, id } => (
                format!("{what} \"{id}\" does not exist in this namespace"),
                None,
                None,
            ),
            MecError::IdempotencyConflict { key, detail } => (
                format!("idempotency key \"{key}\" was already used with a different payload"),
                Some(detail.clone()),
                Some("Use a new idempotency key for a different event; replay only identical payloads.".into()),
            ),
            MecError::Expired { what, id, detail } => (
                format!("{what} \"{id}\" has expired"),
                detail.clone(),
                Some(format!("Acquire a new {what}.")),
            ),
            MecError::CatalogInvalid { problems, count } => (
                format!("catalog is invalid: {count} problem(s)"),
                Some(serde_json::json!({ "problems": problems }).to_string()),
                Some("Fix every listed path and load the catalog again; nothing was changed.".into()),
            ),
            MecError::LimitReached { resource, violated } => (
                format!("limit reached for resource \"{resource}\""),
                Some(serde_json::json!({ "violated_policies": violated }).to_string()),
                Some("Wait until reset_at, or raise the limit (upgrade the plan, an override or a grant).".into()),
            ),
            MecError::Internal(message) => (format!("pg_mec internal error: {message}"), None, None),
        }
    }
}

impl From<pgrx::spi::SpiError> for MecError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        MecError::Internal(format!("SPI: {e}"))
    }
}

/// Unwraps an entry point's result, raising the error as a Postgres ERROR.
pub fn finish<T>(result: MecResult<T>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => raise(e),
    }
}

/// `MAKE_SQLSTATE` from Postgres's `elog.h`: six bits per character.
pub fn make_sqlstate(code: &str) -> c_int {
    code.bytes().take(5).enumerate().fold(0, |acc, (i, c)| {
        acc + ((((c as c_int) - ('0' as c_int)) & 0x3F) << (6 * i))
    })
}

/// `ERROR` from Postgres's `elog.h` (21 since PostgreSQL 14).
const ERROR_LEVEL: c_int = 21;

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errdetail(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// A copy of `s` in the current Postgres memory context (freed by Postgres on abort).
fn palloc_cstr(s: &str) -> *mut c_char {
    let owned = CString::new(s.replace('\0', " ")).unwrap_or_default();
    // SAFETY: pstrdup copies the NUL-terminated string into palloc'd memory.
    unsafe { pg_sys::pstrdup(owned.as_ptr()) }
}

/// Raises `err` as a Postgres ERROR with its SQLSTATE, DETAIL and HINT. Never returns.
#[cold]
#[inline(never)]
pub fn raise(err: MecError) -> ! {
    let code = make_sqlstate(err.sqlstate());
    let (message, detail, hint) = err.parts();
    drop(err);
    let message_p = palloc_cstr(&message);
    let detail_p = detail.as_deref().map(palloc_cstr);
    let hint_p = hint.as_deref().map(palloc_cstr);
    drop((message, detail, hint));
    // SAFETY: only raw pointers into Postgres memory are alive from here on; errfinish longjmps
    // to the innermost PG_TRY (the caller's statement), as any ereport(ERROR) does.
    unsafe {
        if errstart(ERROR_LEVEL, std::ptr::null()) {
            errcode(code);
            errmsg(c"%s".as_ptr(), message_p);
            if let Some(d) = detail_p {
                errdetail(c"%s".as_ptr(), d);
            }
            if let Some(h) = hint_p {
                errhint(c"%s".as_ptr(), h);
            }
            errfinish(c"pg_mec".as_ptr(), 0, c"pg_mec".as_ptr());
        }
    }
    // errstart returns false only for levels below the reporting threshold, never for ERROR.
    unreachable!("ereport(ERROR) returned")
}
