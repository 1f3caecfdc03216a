//! The operations of the platform, one module per business concept, shared by the API and the
//! worker fleet.
//!
//! An operation is a plain async function: it takes the unit of work first
//! ([`crate::uow::UnitOfWork`]: the transaction and the time; reads take a pool), then the
//! caller's tenant and parsed domain values, and returns a domain value or a [`ServiceError`].
//! It never sees HTTP. A route handler authenticates, parses its DTO, calls one operation and
//! renders; a job handler claims its job and calls the same operation.

pub mod api_keys;
pub mod audit;
pub mod balance;
pub mod billing_jobs;
pub mod billing_runs;
pub mod bundles;
pub mod catalog;
pub mod coupons;
pub mod credit_notes;
pub mod customers;
pub mod dunning;
pub mod events;
pub mod invoice_documents;
pub mod invoices;
pub mod invoicing;
pub mod payment_events;
pub mod refunds;
pub mod renewals;
pub mod sessions;
pub mod stripe_connect;
pub mod stripe_events;
pub mod subscriptions;
pub mod tax_rates;
pub mod tenants;
pub mod test_clocks;
pub mod usage;
pub mod usage_limits;
pub mod users;
pub mod webhook_endpoints;

pub use crate::db::pagination::{Page, PageRequest};
use crate::{
    db::{DbError, pagination::Cursor},
    stripe::Failure,
    uow::UnitOfWork,
};

/// Why an operation refused or failed; the API turns each into its problem.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such object in the caller's tenant and mode (another tenant's answers the same).
    #[error("no such {0}")]
    NotFound(&'static str),
    /// A value the operation cannot take: the field at fault, a stable code, and why.
    #[error("`{field}` {message}")]
    Invalid {
        field: String,
        code: &'static str,
        message: String,
    },
    /// The request conflicts with the current state.
    #[error("{message}")]
    Conflict {
        code: &'static str,
        field: Option<String>,
        message: String,
    },
    /// The credential presented is not (or no longer) good.
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    /// A rule about who may do what (beyond the permission table).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// A service the operation depends on (Stripe) failed (`transient`: try again shortly)
    /// or refused.
    #[error("{service}: {message}")]
    Upstream {
        service: &'static str,
        code: &'static str,
        message: String,
        transient: bool,
    },
    /// The database failed (see [`DbError`]: outages and conflicts are told apart).
    #[error(transparent)]
    Db(#[from] DbError),
    /// A fault of ours that no caller can fix (a failed hash, a task that died).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// A validation failure on a field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            code: "validation_failed",
            message: message.into(),
        }
    }

    /// A fault of ours, with its cause for the log.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            field: None,
            message: message.into(),
        }
    }

    /// Maps a violation of the unique `constraint` to a conflict on `field` (`code`), and
    /// `DbError::NotFound` to "no such `what`": the constraint's name never reaches a client.
    pub fn taken(
        constraint: &'static str,
        code: &'static str,
        field: &'static str,
        message: &'static str,
        what: &'static str,
    ) -> impl FnOnce(DbError) -> Self {
        move |e| match e {
            DbError::UniqueViolation(c) if c == constraint => Self::Conflict {
                code,
                field: Some(field.into()),
                message: message.into(),
            },
            other => Self::not_found(what)(other),
        }
    }

    /// Maps `DbError::NotFound` to a validation failure on `field` ("no such `what`"): for an
    /// object a request names in its body rather than its path.
    pub fn unknown(field: &'static str, what: &'static str) -> impl FnOnce(DbError) -> Self {
        move |e| match e {
            DbError::NotFound => Self::invalid(field, format!("no such {what}")),
            other => Self::Db(other),
        }
    }

    /// Maps `DbError::NotFound` to "no such `what`", anything else as it is.
    pub fn not_found(what: &'static str) -> impl FnOnce(DbError) -> Self {
        move |e| match e {
            DbError::NotFound => Self::NotFound(what),
            other => Self::Db(other),
        }
    }
}

/// Starts a change that may turn out to change nothing (a savepoint in the unit of work);
/// [`settle`] keeps or undoes it.
pub(crate) async fn tentative(uow: &mut UnitOfWork) -> ServiceResult<()> {
    sqlx::query("SAVEPOINT tentative")
        .execute(uow.conn())
        .await
        .map_err(DbError::from)?;
    Ok(())
}

/// Keeps (`keep`) or undoes what was written since [`tentative`].
pub(crate) async fn settle(uow: &mut UnitOfWork, keep: bool) -> ServiceResult<()> {
    let sql = if keep {
        "RELEASE SAVEPOINT tentative"
    } else {
        "ROLLBACK TO SAVEPOINT tentative"
    };
    sqlx::query(sql)
        .execute(uow.conn())
        .await
        .map_err(DbError::from)?;
    Ok(())
}

/// A list's `search` text: trimmed, none when blank, at most 100 characters without control
/// characters.
pub(crate) fn search_text(search: Option<&str>) -> ServiceResult<Option<&str>> {
    let search = search.map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > 100 || s.chars().any(char::is_control)) {
        return Err(ServiceError::invalid(
            "search",
            "must be at most 100 characters, without control characters",
        ));
    }
    Ok(search)
}

/// Reads the list parameters every list takes: `limit` (1–100, default 10) and at most one of
/// `starting_after` / `ending_before`, each an id parsed by `parse`.
pub fn page_request<E: std::fmt::Display>(
    limit: Option<i64>,
    starting_after: Option<&str>,
    ending_before: Option<&str>,
    parse: impl Fn(&str) -> Result<uuid::Uuid, E>,
) -> ServiceResult<PageRequest> {
    let limit = limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ServiceError::invalid("limit", "must be between 1 and 100"));
    }
    let cursor_of = |field: &'static str, raw: Option<&str>| {
        raw.map(|r| parse(r).map_err(|e| ServiceError::invalid(field, e.to_string())))
            .transpose()
    };
    let after = cursor_of("starting_after", starting_after)?;
    let before = cursor_of("ending_before", ending_before)?;
    let cursor = match (after, before) {
        // Both: the items between them, newest first.
        (Some(a), Some(b)) => Cursor::Between(a, b),
        (Some(a), None) => Cursor::StartingAfter(a),
        (None, Some(b)) => Cursor::EndingBefore(b),
        (None, None) => Cursor::First,
    };
    Ok(PageRequest { limit, cursor })
}

/// The result of an operation.
pub type ServiceResult<T> = Result<T, ServiceError>;

/// The code of a Stripe call refused for too many requests (429): back-pressure, not a
/// failure of what was asked.
pub const STRIPE_RATE_LIMITED: &str = "stripe_rate_limited";

/// A failed Stripe call: not configured is a conflict with the platform's setup; a refusal is
/// final; anything else is worth trying again shortly.
impl From<Failure> for ServiceError {
    fn from(e: Failure) -> Self {
        match e {
            Failure::NotConfigured => Self::conflict(
                "stripe_not_configured",
                "Stripe is not configured for this mode on this platform (STRIPE_SECRET_KEY_TEST \
                 / STRIPE_SECRET_KEY_LIVE); the sandbox gateway stands in.",
            ),
            Failure::RateLimited => Self::Upstream {
                service: "stripe",
                code: STRIPE_RATE_LIMITED,
                message: "Stripe asked for fewer requests; try again shortly.".into(),
                transient: true,
            },
            Failure::Transient(_) => Self::Upstream {
                service: "stripe",
                code: "stripe_unavailable",
                message: format!("Stripe could not be reached; try again shortly ({e})."),
                transient: true,
            },
            Failure::Rejected(m) => Self::Upstream {
                service: "stripe",
                code: "stripe_error",
                message: format!("Stripe refused the request: {m}"),
                transient: false,
            },
            Failure::Declined { message, .. } => Self::Upstream {
                service: "stripe",
                code: "stripe_error",
                message: format!("Stripe refused the request: {message}"),
                transient: false,
            },
        }
    }
}
