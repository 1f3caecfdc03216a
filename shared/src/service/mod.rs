//! The operations of the platform, one module per business concept, shared by the API and the
//! worker fleet.
//!
//! An operation is a plain async function: it takes the unit of work first
//! ([`crate::uow::UnitOfWork`]: the transaction and the time; reads take a pool), then the
//! caller's tenant and parsed domain values, and returns a domain value or a [`ServiceError`].
//! It never sees HTTP. A route handler authenticates, parses its DTO, calls one operation and
//! renders; a job handler claims its job and calls the same operation.

pub mod events;
pub mod webhook_endpoints;

use crate::{db::DbError, domain::ValidationError};

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

    /// Maps a domain parse failure to a validation failure on `field`.
    pub fn field(field: &str) -> impl FnOnce(ValidationError) -> Self + '_ {
        move |e| Self::invalid(field, e.0)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            field: None,
            message: message.into(),
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

/// The result of an operation.
pub type ServiceResult<T> = Result<T, ServiceError>;
