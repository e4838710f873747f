//! `bind_role` / `unbind_role`: the database owner ties a login role that uses pg_mec from SQL to
//! a namespace, so that its session acts only there (`context.rs` reads the bindings).

use pgrx::datum::Uuid;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::pg::spi::{self, stmt};
use crate::pg::{MecError, MecResult};

pub const API_ROLES: [&str; 3] = ["mec_user", "mec_service", "mec_admin"];

stmt! {
    /// What the catalogs say about a role: does it exist, and is it trusted to name any namespace
    /// anyway (a superuser, the gateway's authenticator or a member of it, the database owner)?
    static ROLE: read (role: text, api_role: text) =
        "SELECT r.rolsuper
                     OR pg_has_role(r.oid, 'mec_authenticator', 'MEMBER')
                     OR r.oid = (SELECT datdba FROM pg_database WHERE datname = current_database()) AS trusted,
                     r.rolname IN ('mec_user', 'mec_service', 'mec_admin', 'mec_owner', 'mec_authenticator') AS reserved,
                     pg_has_role(r.oid, $2, 'MEMBER') AS member
              FROM pg_roles r WHERE r.rolname = $1";
}

stmt! {
    static NAMESPACE_EXISTS: read (ns: uuid) =
        "SELECT EXISTS (SELECT 1 FROM mec_data.namespaces WHERE namespace_id = $1)";
}

stmt! {
    static ACCOUNT_EXISTS: read (ns: uuid, account_id: uuid) =
        "SELECT EXISTS (SELECT 1 FROM mec_data.accounts WHERE namespace_id = $1 AND account_id = $2)";
}

stmt! {
    static CURRENT: read (ns: uuid, role: text) =
        "SELECT api_role, account_id FROM mec_data.role_bindings
              WHERE namespace_id = $1 AND role_name = $2";
}

stmt! {
    static UPSERT: write (ns: uuid, role: text, api_role: text, account_id: uuid) =
        "INSERT INTO mec_data.role_bindings (namespace_id, role_name, api_role, account_id)
              VALUES ($1, $2, $3, $4)
              ON CONFLICT (namespace_id, role_name)
              DO UPDATE SET api_role = excluded.api_role, account_id = excluded.account_id";
}

stmt! {
    static GRANT_SQL: read (api_role: text, role: text) =
        "SELECT format('GRANT %I TO %I', $1::text, $2::text)";
}

stmt! {
    static DELETE: write (role: text, ns: uuid) =
        "DELETE FROM mec_data.role_bindings
              WHERE role_name = $1 AND ($2::uuid IS NULL OR namespace_id = $2)
              RETURNING namespace_id";
}

/// A binding the owner asked for.
pub struct Bind {
    pub role: String,
    pub namespace_id: Uuid,
    pub api_role: String,
    pub account_id: Option<Uuid>,
}

/// Binds `req.role` to a namespace as `req.api_role` (granting it that role if it lacks it).
pub fn bind(client: &mut SpiClient<'_>, req: &Bind) -> MecResult<Value> {
    if !API_ROLES.contains(&req.api_role.as_str()) {
        return Err(MecError::invalid_hint(
            format!("p_api_role \"{}\" is not a pg_mec API role", req.api_role),
            "Bind as mec_user, mec_service or mec_admin.",
        ));
    }
    let Some(role) = spi::read(
        client,
        &ROLE,
        &[req.role.as_str().into(), req.api_role.as_str().into()],
    )?
    .first() else {
        return Err(MecError::UnknownObject {
            what: "role",
            id: req.role.clone(),
            hint: Some("Create the login role first: CREATE ROLE app LOGIN PASSWORD '…'.".into()),
        });
    };
    let flag = |column: &str| -> MecResult<bool> { Ok(role.get::<bool>(column)?.unwrap_or(false)) };
    let (trusted, reserved, member) = (flag("trusted")?, flag("reserved")?, flag("member")?);
    if reserved {
        return Err(MecError::invalid(format!(
            "role \"{}\" is one of pg_mec's own roles and cannot be bound",
            req.role
        )));
    }
    if trusted {
        return Err(MecError::invalid_hint(
            format!(
                "role \"{}\" may name any namespace (a superuser, the database owner or a member of mec_authenticator): a binding would not restrict it",
                req.role
            ),
            "Bind a login role of its own to each application; keep superusers and the authenticator for operators and the gateway.",
        ));
    }
    let ns = req.namespace_id;
    if spi::read(client, &NAMESPACE_EXISTS, &[ns.into()])?.one::<bool>()? != Some(true) {
        return Err(MecError::unknown("namespace", ns.to_string()));
    }
    match (req.api_role.as_str(), req.account_id) {
        ("mec_user", None) => {
            return Err(MecError::invalid_hint(
                "a mec_user binding needs p_account_id: an end user acts for one account",
                "Pass the account the role acts for as p_account_id.",
            ))
        }
        ("mec_user", Some(account)) => {
            let exists =
                spi::read(client, &ACCOUNT_EXISTS, &[ns.into(), account.into()])?.one::<bool>()?;
            if exists != Some(true) {
                return Err(MecError::unknown("account", account.to_string()));
            }
        }
        (_, Some(_)) => {
            return Err(MecError::invalid(
                "p_account_id applies to mec_user bindings only",
            ))
        }
        (_, None) => {}
    }
    let before = match spi::read(client, &CURRENT, &[ns.into(), req.role.as_str().into()])?.first()
    {
        Some(row) => (
            row.get::<String>("api_role")?,
            row.get::<Uuid>("account_id")?,
        ),
        None => (None, None),
    };
    spi::write(
        client,
        &UPSERT,
        &[
            ns.into(),
            req.role.as_str().into(),
            req.api_role.as_str().into(),
            req.account_id.into(),
        ],
    )?;
    if !member {
        let grant = spi::read(
            client,
            &GRANT_SQL,
            &[req.api_role.as_str().into(), req.role.as_str().into()],
        )?
        .one::<String>()?
        .ok_or_else(|| MecError::Internal("format() returned NULL".into()))?;
        client.update(&grant, None, &[])?;
    }
    let created = before.0.is_none();
    let changed = created || before != (Some(req.api_role.clone()), req.account_id);
    Ok(json!({
        "role": req.role,
        "namespace_id": ns.to_string(),
        "api_role": req.api_role,
        "account_id": req.account_id.map(|a| a.to_string()),
        "created": created,
        "changed": changed,
        "granted": !member,
    }))
}

/// Removes the role's binding to `namespace` (every binding when `None`). Role grants stay: an
/// unbound role can no longer use pg_mec either way.
pub fn unbind(client: &mut SpiClient<'_>, role: &str, namespace: Option<Uuid>) -> MecResult<Value> {
    let rows = spi::write(client, &DELETE, &[role.into(), namespace.into()])?;
    let mut gone = Vec::new();
    for row in rows {
        if let Some(ns) = row.get::<Uuid>("namespace_id")? {
            gone.push(Value::String(ns.to_string()));
        }
    }
    Ok(json!({"role": role, "unbound": gone.len(), "namespaces": gone}))
}
