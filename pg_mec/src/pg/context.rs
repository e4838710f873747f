//! Who is calling: the namespace and account of the current request, resolved in one place.
//!
//! Where the namespace may come from depends on who opened the session (its *session user*,
//! which `SET ROLE` and `set_config` cannot change):
//!
//! * **trusted sessions** — the gateway's authenticator (`mec_authenticator` or a member of it), a
//!   superuser, or the database's owner: the `namespace_id` claim of `request.jwt.claims` (the
//!   gateway sets it per transaction from a verified token) names the namespace, else the setting
//!   `mec.namespace_id`; likewise `account_id` / `mec.account_id` for `mec_user`. The claims win.
//! * **every other login role** acts only in the namespaces the database owner bound it to with
//!   `mec.bind_role` (`mec_data.role_bindings`), and only as the API role it was bound as; a
//!   setting or claim naming another namespace (or, for a `mec_user` binding, another account)
//!   is refused with `42501`. A role without a binding cannot use pg_mec at all.
//!
//! The last raw value of each setting and what it parsed to are cached per backend, so a trusted
//! call costs a GUC lookup and a byte comparison per setting. A bound role's bindings are cached
//! per backend too, until a change to `mec_data.role_bindings` starts a new cache epoch.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::rc::Rc;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::Uuid;

use crate::pg::spi::{self, stmt};
use crate::pg::{MecError, MecResult};

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
    static ROLES: RefCell<Option<Roles>> = const { RefCell::new(None) };
    /// The bindings of a bound session user, valid for one cache epoch.
    static BINDINGS: RefCell<Option<CachedBindings>> = const { RefCell::new(None) };
    /// Whether the session user (the oid) is trusted: decided once, forgotten whenever PostgreSQL
    /// invalidates a role, a role membership or a database row (a GRANT or REVOKE of
    /// mec_authenticator, a new database owner), so the next statement decides again.
    static TRUST: Cell<Option<(pg_sys::Oid, bool)>> = const { Cell::new(None) };
    static TRUST_CALLBACKS: Cell<bool> = const { Cell::new(false) };
    /// Set while an entry point that authenticated its caller itself acts in one namespace
    /// ([`ActingIn`]).
    static ACTING_IN: Cell<Option<Uuid>> = const { Cell::new(None) };
}

/// While alive, the caller's namespace is the one given, whatever the claims and settings say, and
/// there is no caller account. For entry points whose caller proved itself to that namespace with
/// the namespace's own secret (a signed webhook): they act there and nowhere else. Restored on drop,
/// also when an error unwinds.
pub struct ActingIn {
    previous: Option<Uuid>,
}

impl ActingIn {
    pub fn enter(namespace: Uuid) -> ActingIn {
        ActingIn {
            previous: ACTING_IN.with(|a| a.replace(Some(namespace))),
        }
    }
}

impl Drop for ActingIn {
    fn drop(&mut self) {
        ACTING_IN.with(|a| a.set(self.previous));
    }
}

/// Syscache callback: a role, a membership or a database changed.
unsafe extern "C-unwind" fn forget_trust(_arg: pg_sys::Datum, _cache: std::ffi::c_int, _hash: u32) {
    TRUST.with(|t| t.set(None));
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

/// The namespace the claims or `mec.namespace_id` name (trusted sessions: the caller's namespace).
fn namespace_from_settings() -> MecResult<Option<Uuid>> {
    let (ns, _, bad) = claims();
    if bad {
        return Err(MecError::denied(
            "request.jwt.claims is not a JSON object with uuid namespace_id / account_id claims",
        ));
    }
    if ns.is_some() {
        return Ok(ns);
    }
    match uuid_setting(&NAMESPACE_SETTING, c"mec.namespace_id") {
        (ns, None) => Ok(ns),
        (_, Some(s)) => Err(MecError::invalid_hint(
            format!("mec.namespace_id \"{s}\" is not a uuid"),
            "SET mec.namespace_id = '<namespace uuid>'",
        )),
    }
}

/// The account the claims or `mec.account_id` name.
fn account_from_settings() -> MecResult<Option<Uuid>> {
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

/// The caller's namespace: see the module documentation. `42501` without one, or when a bound
/// login role names a namespace it is not bound to.
pub fn namespace() -> MecResult<Uuid> {
    if let Some(ns) = ACTING_IN.with(Cell::get) {
        return Ok(ns);
    }
    match session()? {
        Session::Trusted => namespace_from_settings()?.ok_or(MecError::NoNamespace),
        Session::Bound { role, bindings } => Ok(binding_in_force(&role, &bindings)?.namespace),
    }
}

/// The caller's account: the `account_id` claim, else `mec.account_id`, else `None`; for a login
/// role bound as `mec_user`, the account it was bound to.
pub fn account() -> MecResult<Option<Uuid>> {
    if ACTING_IN.with(Cell::get).is_some() {
        return Ok(None);
    }
    match session()? {
        Session::Trusted => account_from_settings(),
        Session::Bound { role, bindings } => {
            let binding = binding_in_force(&role, &bindings)?;
            match binding.account {
                None => account_from_settings(),
                Some(own) => match account_from_settings()? {
                    Some(named) if named != own => Err(MecError::PermissionDenied {
                        message: format!(
                            "login role \"{role}\" is bound to account {own} and may not act for account {named}"
                        ),
                        hint: Some("Leave mec.account_id and the account_id claim unset for this role.".into()),
                    }),
                    _ => Ok(Some(own)),
                },
            }
        }
    }
}

// ---------------------------------------------------------------- sessions and bindings

/// One row of `mec_data.role_bindings` for the session user.
#[derive(Clone, Debug)]
struct Binding {
    namespace: Uuid,
    api_role: pg_sys::Oid,
    api_role_name: String,
    /// Set for `mec_user` bindings: the one account the role acts for.
    account: Option<Uuid>,
}

struct CachedBindings {
    session_user: pg_sys::Oid,
    epoch: u64,
    role: Rc<str>,
    bindings: Rc<[Binding]>,
}

enum Session {
    Trusted,
    Bound {
        role: Rc<str>,
        bindings: Rc<[Binding]>,
    },
}

#[derive(Clone, Copy)]
struct Roles {
    user: pg_sys::Oid,
    service: pg_sys::Oid,
    admin: pg_sys::Oid,
    authenticator: pg_sys::Oid,
}

stmt! {
    static SESSION_BINDINGS: read (role: text) =
        "SELECT namespace_id, api_role, account_id FROM mec_data.role_bindings
              WHERE role_name = $1 ORDER BY namespace_id";
}

/// Whether the session user may name any namespace: the gateway's authenticator (or a member of
/// it), a superuser, or the owner of this database. Cached until a role or database changes.
fn trusted(session_user: pg_sys::Oid) -> bool {
    if let Some((user, verdict)) = TRUST.with(Cell::get) {
        if user == session_user {
            return verdict;
        }
    }
    if !TRUST_CALLBACKS.with(Cell::get) {
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHOID,
            pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE,
            pg_sys::SysCacheIdentifier::DATABASEOID,
        ] {
            // SAFETY: registers a static callback that only resets a Cell; once per backend.
            unsafe {
                pg_sys::CacheRegisterSyscacheCallback(
                    cache as std::ffi::c_int,
                    Some(forget_trust),
                    pg_sys::Datum::from(0),
                )
            };
        }
        TRUST_CALLBACKS.with(|c| c.set(true));
    }
    let verdict = decide_trust(session_user);
    TRUST.with(|t| t.set(Some((session_user, verdict))));
    verdict
}

fn decide_trust(session_user: pg_sys::Oid) -> bool {
    let roles = role_oids();
    // SAFETY: catalog lookups on valid oids (each cached by PostgreSQL).
    unsafe {
        session_user == roles.authenticator
            || pg_sys::superuser_arg(session_user)
            || pg_sys::pg_database_ownercheck(pg_sys::MyDatabaseId, session_user)
            || (roles.authenticator != pg_sys::InvalidOid
                && pg_sys::is_member_of_role(session_user, roles.authenticator))
    }
}

/// Reads the session user's bindings (as `mec_owner`: the table is no API role's to read).
fn load_bindings(role: &str) -> MecResult<Vec<Binding>> {
    let roles = role_oids();
    let _owner = crate::pg::owner::AsOwner::enter()?;
    Spi::connect(|client| {
        let rows = spi::read(client, &SESSION_BINDINGS, &[role.into()])?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let namespace = row
                .get::<Uuid>("namespace_id")?
                .ok_or_else(|| MecError::Internal("role binding without namespace".into()))?;
            let api_role_name = row.get::<String>("api_role")?.unwrap_or_default();
            let api_role = match api_role_name.as_str() {
                "mec_user" => roles.user,
                "mec_service" => roles.service,
                "mec_admin" => roles.admin,
                other => return Err(MecError::Internal(format!("role binding as {other}"))),
            };
            out.push(Binding {
                namespace,
                api_role,
                api_role_name,
                account: row.get::<Uuid>("account_id")?,
            });
        }
        Ok(out)
    })
}

/// Who opened this session, and what it may therefore name.
fn session() -> MecResult<Session> {
    // SAFETY: reads the session user of this backend.
    let session_user = unsafe { pg_sys::GetSessionUserId() };
    if trusted(session_user) {
        return Ok(Session::Trusted);
    }
    let epoch = crate::pg::invalidation::epoch();
    let cached = BINDINGS.with(|b| {
        b.borrow()
            .as_ref()
            .filter(|c| c.session_user == session_user && c.epoch == epoch)
            .map(|c| (c.role.clone(), c.bindings.clone()))
    });
    let (role, bindings) = match cached {
        Some(hit) => hit,
        None => {
            let role: Rc<str> = crate::pg::owner::role_name(session_user).into();
            let bindings: Rc<[Binding]> = load_bindings(&role)?.into();
            BINDINGS.with(|b| {
                *b.borrow_mut() = Some(CachedBindings {
                    session_user,
                    epoch,
                    role: role.clone(),
                    bindings: bindings.clone(),
                })
            });
            (role, bindings)
        }
    };
    Ok(Session::Bound { role, bindings })
}

/// The binding a bound session acts under: the one the claims or `mec.namespace_id` name (it must
/// be one of the role's), else the role's only one. Refuses an API role above the binding's.
fn binding_in_force<'b>(role: &str, bindings: &'b [Binding]) -> MecResult<&'b Binding> {
    let named = namespace_from_settings()?;
    let binding = match (named, bindings) {
        (_, []) => {
            return Err(MecError::PermissionDenied {
                message: format!("login role \"{role}\" is not bound to a pg_mec namespace"),
                hint: Some(format!(
                    "The database owner binds it: SELECT mec.bind_role(p_role => '{role}', p_namespace_id => '<namespace uuid>', p_api_role => 'mec_service')."
                )),
            })
        }
        (Some(ns), _) => bindings.iter().find(|b| b.namespace == ns).ok_or_else(|| {
            MecError::PermissionDenied {
                message: format!(
                    "login role \"{role}\" may not act in namespace {ns}: it is bound to {}",
                    bindings
                        .iter()
                        .map(|b| b.namespace.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                hint: Some(
                    "Leave mec.namespace_id and the namespace_id claim unset, or name a namespace the role is bound to."
                        .into(),
                ),
            }
        })?,
        (None, [only]) => only,
        (None, _) => {
            return Err(MecError::PermissionDenied {
                message: format!(
                    "login role \"{role}\" is bound to {} namespaces: name one",
                    bindings.len()
                ),
                hint: Some("SET mec.namespace_id = '<one of the bound namespaces>'".into()),
            })
        }
    };
    // The API role in use may not be above the one bound: a role bound as mec_service that was
    // also granted mec_admin still acts as mec_service at most.
    let roles = role_oids();
    // SAFETY: reads the current user; role membership lookups are cached by PostgreSQL.
    let current = unsafe { pg_sys::GetUserId() };
    let above = [roles.admin, roles.service, roles.user]
        .into_iter()
        .take_while(|r| *r != binding.api_role)
        .any(|r| r != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(current, r) });
    if above {
        return Err(MecError::PermissionDenied {
            message: format!(
                "login role \"{role}\" is bound as {} and may not act above it",
                binding.api_role_name
            ),
            hint: Some(format!(
                "SET ROLE {} (or a role below it).",
                binding.api_role_name
            )),
        });
    }
    Ok(binding)
}

fn role_oids() -> Roles {
    ROLES.with(|cell| {
        *cell.borrow_mut().get_or_insert_with(|| {
            // SAFETY: catalog lookups by name; InvalidOid for a missing role.
            let oid = |name: &CStr| unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
            Roles {
                user: oid(c"mec_user"),
                service: oid(c"mec_service"),
                admin: oid(c"mec_admin"),
                authenticator: oid(c"mec_authenticator"),
            }
        })
    })
}

/// True when the caller acts as `mec_user` (an end user) and not as `mec_service` or above: such a
/// caller may read only its own account.
fn is_end_user() -> bool {
    let roles = role_oids();
    // SAFETY: plain catalog lookups on valid oids.
    unsafe {
        let me = pg_sys::GetUserId();
        roles.user != pg_sys::InvalidOid
            && pg_sys::has_privs_of_role(me, roles.user)
            && !pg_sys::has_privs_of_role(me, roles.service)
    }
}

/// The caller of an entry point, resolved before pg_mec switches to `mec_owner` (`owner.rs`):
/// its namespace, and whether it is an end user and for which account.
pub struct Caller {
    pub namespace: Uuid,
    /// `Some` when the caller acts as `mec_user`: the account it may read (`None` inside: no
    /// account claim, so nothing may be read).
    end_user: Option<Option<Uuid>>,
}

impl Caller {
    pub fn resolve() -> MecResult<Caller> {
        let namespace = namespace()?;
        let end_user = if is_end_user() {
            Some(account()?)
        } else {
            None
        };
        Ok(Caller {
            namespace,
            end_user,
        })
    }

    /// Refuses an end user (`mec_user`) asking about an account other than its own.
    pub fn require_account_access(&self, account_id: Uuid) -> MecResult<()> {
        match self.end_user {
            None => Ok(()),
            Some(Some(own)) if own == account_id => Ok(()),
            Some(Some(_)) => Err(MecError::denied("mec_user may only read its own account")),
            Some(None) => Err(MecError::PermissionDenied {
                message: "mec_user needs an account_id claim".into(),
                hint: Some("Mint the token with an account_id claim for this end user.".into()),
            }),
        }
    }
}
