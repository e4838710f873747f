//! pg_mec's errors: one enum whose variants know their SQLSTATE, message, DETAIL and HINT.
//! `raise.rs` is the one place that raises them.
//!
//! pg_mec's own conditions use class `ME` with the HTTP status in the digits (`ME429` → 429).

/// Everything an entry point can fail with. Inner functions return `Result<_, MecError>`; only the
/// `#[pg_extern]` boundary raises them (`raise::finish`).
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
    /// `ME409`: the object is not in the state the call expects (e.g. an account not on the plan
    /// version a migration moves).
    StateConflict {
        message: String,
        hint: Option<String>,
    },
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
    /// `22023`: rows of a batch argument are invalid; DETAIL lists every problem with its index.
    RowsInvalid {
        argument: &'static str,
        problems: serde_json::Value,
        count: usize,
    },
    /// `ME429`: a limit was reached; DETAIL is `{"violated_policies": [...]}`.
    LimitReached {
        resource: String,
        violated: serde_json::Value,
    },
    /// `ME402`: the account is overdue on payment and its namespace's `overdue_action` is `block`.
    PaymentOverdue { account_id: String },
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
            MecError::InvalidParameter { .. } | MecError::RowsInvalid { .. } => "22023",
            MecError::InvalidRequest { .. } => "ME400",
            MecError::UnknownObject { .. } => "ME404",
            MecError::NotFound { .. } => "P0002",
            MecError::IdempotencyConflict { .. } | MecError::StateConflict { .. } => "ME409",
            MecError::Expired { .. } => "ME410",
            MecError::CatalogInvalid { .. } => "ME422",
            MecError::LimitReached { .. } => "ME429",
            MecError::PaymentOverdue { .. } => "ME402",
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
            | MecError::Conflict { message, hint }
            | MecError::StateConflict { message, hint } => (message.clone(), None, hint.clone()),
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
            MecError::RowsInvalid { argument, problems, count } => (
                format!("{argument} has {count} invalid row(s); nothing was changed"),
                Some(serde_json::json!({ "problems": problems }).to_string()),
                Some("Fix every listed row and send the whole batch again.".into()),
            ),
            MecError::LimitReached { resource, violated } => (
                format!("limit reached for resource \"{resource}\""),
                Some(serde_json::json!({ "violated_policies": violated }).to_string()),
                Some("Wait until reset_at, or raise the limit (upgrade the plan, an override or a grant).".into()),
            ),
            MecError::PaymentOverdue { account_id } => (
                format!("account \"{account_id}\" is overdue on payment"),
                Some(serde_json::json!({ "account_id": account_id, "overdue_action": "block" }).to_string()),
                Some("Its namespace blocks overdue accounts (overdue_action = block) until the invoice is paid (Stripe's invoice.paid) or an admin calls mec.set_payment_overdue(p_account_id, false).".into()),
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
