//! Who is calling: the namespace and account of the current request, resolved in one place.
//!
//! The gateway sets `request.jwt.claims` per transaction (all the token's claims as JSON); SQL
//! callers set `mec.namespace_id` (and, as `mec_user`, `mec.account_id`). The claims win. The last
//! raw value of each setting and what it parsed to are cached per backend, so a call costs a GUC
//! lookup and a byte comparison per setting, and allocates nothing.

use std::cell::RefCell;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::Uuid;

use crate::errors::{MecError, MecResult};

#[derive(Clone, Default)]
struct Parsed {
    raw: Vec<u8>,
    namespace: Option<Option<Uuid>>,
    account: Option<Option<Uuid>>,
    /// The claim was present but not a uuid.
    bad: bool,
}

/// The last raw value of a uuid setting (`mec.namespace_id`, `mec.account_id`) and its uuid.
#[derive(Default)]
struct UuidSetting {
    raw: Vec<u8>,
    uuid: Option<Uuid>,
}

thread_local! {
    static CLAIMS: RefCell<Parsed> = RefCell::new(Parsed::default());
    static NAMESPACE_SETTING: RefCell<UuidSetting> = RefCell::new(UuidSetting::default());
    static ACCOUNT_SETTING: RefCell<UuidSetting> = RefCell::new(UuidSetting::default());
    static ROLES: RefCell<Option<(pg_sys::Oid, pg_sys::Oid)>> = const { RefCell::new(None) };
}

/// Calls `f` with the value of a GUC, ASCII whitespace trimmed; empty when unset.
fn with_guc<R>(name: &CStr, f: impl FnOnce(&[u8]) -> R) -> R {
    // SAFETY: GetConfigOption returns NULL or a NUL-terminated string owned by the GUC system,
    // which stays put while `f` runs (nothing here sets GUCs).
    let p = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if p.is_null() {
        return f(&[]);
    }
    f(unsafe { CStr::from_ptr(p) }.to_bytes().trim_ascii())
}

/// A uuid setting through its cache: (its uuid, its raw text when set but not a uuid).
fn uuid_setting(
    cache: &'static std::thread::LocalKey<RefCell<UuidSetting>>,
    name: &CStr,
) -> (Option<Uuid>, Option<String>) {
    with_guc(name, |raw| {
        cache.with(|cell| {
            let mut c = cell.borrow_mut();
            if c.raw != raw {
                c.uuid = std::str::from_utf8(raw).ok().and_then(parse_uuid);
                c.raw = raw.to_vec();
            }
            let bad = (c.uuid.is_none() && !raw.is_empty())
                .then(|| String::from_utf8_lossy(raw).into_owned());
            (c.uuid, bad)
        })
    })
}

pub fn parse_uuid(s: &str) -> Option<Uuid> {
    uuid::Uuid::parse_str(s.trim())
        .ok()
        .map(|u| Uuid::from_bytes(*u.as_bytes()))
}

fn claim_uuid(claims: &serde_json::Value, key: &str) -> (Option<Uuid>, bool) {
    match claims.get(key) {
        None | Some(serde_json::Value::Null) => (None, false),
        Some(serde_json::Value::String(s)) => match parse_uuid(s) {
            Some(u) => (Some(u), false),
            None => (None, true),
        },
        Some(_) => (None, true),
    }
}

/// Reads `request.jwt.claims` through the cache: (namespace claim, account claim, malformed).
fn claims() -> (Option<Uuid>, Option<Uuid>, bool) {
    with_guc(c"request.jwt.claims", |raw| {
        CLAIMS.with(|cell| {
            let mut cached = cell.borrow_mut();
            if cached.namespace.is_none() || cached.raw != raw {
                let value: serde_json::Value = if raw.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(raw).unwrap_or(serde_json::Value::Bool(false))
                };
                let malformed_json = matches!(value, serde_json::Value::Bool(false));
                let (ns, bad_ns) = claim_uuid(&value, "namespace_id");
                let (acct, bad_acct) = claim_uuid(&value, "account_id");
                *cached = Parsed {
                    raw: raw.to_vec(),
                    namespace: Some(ns),
                    account: Some(acct),
                    bad: malformed_json || bad_ns || bad_acct,
                };
            }
            (
                cached.namespace.flatten(),
                cached.account.flatten(),
                cached.bad,
            )
        })
    })
}

/// The caller's namespace: the `namespace_id` claim, else `mec.namespace_id`; `42501` without one.
pub fn namespace() -> MecResult<Uuid> {
    let (ns, _, bad) = claims();
    if bad {
        return Err(MecError::denied(
            "request.jwt.claims is not a JSON object with uuid namespace_id / account_id claims",
        ));
    }
    if let Some(ns) = ns {
        return Ok(ns);
    }
    match uuid_setting(&NAMESPACE_SETTING, c"mec.namespace_id") {
        (Some(ns), _) => Ok(ns),
        (None, None) => Err(MecError::NoNamespace),
        (None, Some(s)) => Err(MecError::invalid_hint(
            format!("mec.namespace_id \"{s}\" is not a uuid"),
            "SET mec.namespace_id = '<namespace uuid>'",
        )),
    }
}

/// The caller's account: the `account_id` claim, else `mec.account_id`, else `None`.
pub fn account() -> MecResult<Option<Uuid>> {
    let (_, acct, bad) = claims();
    if bad {
        return Err(MecError::denied(
            "request.jwt.claims is not a JSON object with uuid namespace_id / account_id claims",
        ));
    }
    if acct.is_some() {
        return Ok(acct);
    }
    Ok(uuid_setting(&ACCOUNT_SETTING, c"mec.account_id").0)
}

fn role_oids() -> (pg_sys::Oid, pg_sys::Oid) {
    ROLES.with(|cell| {
        *cell.borrow_mut().get_or_insert_with(|| unsafe {
            (
                pg_sys::get_role_oid(c"mec_user".as_ptr(), true),
                pg_sys::get_role_oid(c"mec_service".as_ptr(), true),
            )
        })
    })
}

/// True when the caller acts as `mec_user` (an end user) and not as `mec_service` or above: such a
/// caller may read only its own account.
pub fn is_end_user() -> bool {
    let (user, service) = role_oids();
    // SAFETY: plain catalog lookups on valid oids.
    unsafe {
        let me = pg_sys::GetUserId();
        user != pg_sys::InvalidOid
            && pg_sys::has_privs_of_role(me, user)
            && !pg_sys::has_privs_of_role(me, service)
    }
}

/// Refuses an end user (`mec_user`) asking about an account other than its `account_id` claim.
pub fn require_account_access(account_id: Uuid) -> MecResult<()> {
    if !is_end_user() {
        return Ok(());
    }
    match account()? {
        Some(own) if own == account_id => Ok(()),
        Some(_) => Err(MecError::denied("mec_user may only read its own account")),
        None => Err(MecError::PermissionDenied {
            message: "mec_user needs an account_id claim".into(),
            hint: Some("Mint the token with an account_id claim for this end user.".into()),
        }),
    }
}
