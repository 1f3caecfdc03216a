//! Every error leaves as `application/problem+json` (RFC 9457) with a stable `code`.

use poem::{
    IntoResponse, Response,
    error::ResponseError,
    http::{HeaderValue, StatusCode, header},
};
use poem_openapi::{
    ApiResponse, Object,
    registry::{MetaMediaType, MetaResponse, MetaResponses, Registry},
    types::Type,
};
use shared::{db::DbError, domain::ValidationError, service::ServiceError};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct Problem {
    /// A URI reference naming the problem type.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub type_: String,
    /// Short human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// Explanation specific to this occurrence.
    pub detail: String,
    /// Stable machine-readable error code, e.g. `validation_failed`.
    pub code: String,
    /// For validation errors: the offending field (dotted path for nested fields).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[oai(nullable)]
    pub field: Option<String>,
}

/// Marks the response of a deadlock or serialization failure: the request's transaction was
/// rolled back and the request can run again.
#[derive(Debug, Clone, Copy)]
pub struct RetryableConflict;

/// An error a handler returns; becomes a problem response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.detail)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn validation(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        let detail = format!("`{field}` {}", detail.into());
        Self {
            field: Some(field),
            ..Self::new(StatusCode::BAD_REQUEST, "validation_failed", detail)
        }
    }

    /// A domain parse failure on a named field.
    pub fn invalid(field: &str) -> impl FnOnce(ValidationError) -> Self + '_ {
        move |e| Self::validation(field, e.0)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "resource_missing",
            format!("No such {what}."),
        )
    }

    pub fn unauthenticated(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests.",
            )
        }
    }

    /// A failure on our side: logged in full, answered opaquely.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "An internal error occurred.",
        )
    }

    pub fn unavailable(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, dependency = what, "dependency unavailable");
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                format!("A dependency ({what}) is unavailable; try again shortly."),
            )
        }
    }

    /// Maps a database error; `what` names the object for `NotFound`.
    pub fn from_db(what: &str) -> impl FnOnce(DbError) -> Self + '_ {
        move |e| match e {
            DbError::NotFound => Self::not_found(what),
            DbError::UniqueViolation(constraint) => {
                tracing::info!(constraint, "unique violation");
                Self::conflict(
                    "conflict",
                    format!("The {what} conflicts with an existing one."),
                )
            }
            other => Self::db(other),
        }
    }

    /// Maps a database error where none is expected: an outage is a 503, a deadlock or
    /// serialization failure runs the request again, anything else is a 500.
    pub fn db(e: DbError) -> Self {
        match e {
            DbError::Conflict(err) => {
                tracing::info!(error = %err, "transaction conflict");
                Self {
                    retry_after: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transaction_conflict",
                        "The request conflicted with a concurrent one; try again.",
                    )
                }
            }
            DbError::Unavailable(err) => Self::unavailable("database", err),
            DbError::NotFound => Self::not_found("object"),
            DbError::UniqueViolation(constraint) => {
                tracing::info!(constraint, "unique violation");
                Self::conflict("conflict", "The object conflicts with an existing one.")
            }
            DbError::Other(err) => Self::internal(err),
        }
    }

    /// A deadlock or serialization failure (see [`ApiError::db`]).
    pub fn is_retryable_conflict(&self) -> bool {
        self.code == "transaction_conflict"
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            field: self.field.clone(),
        }
    }
}

/// Every service error as its problem; exhaustive, so a new kind of error needs its answer.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound(what) => Self::not_found(what),
            ServiceError::Invalid {
                field,
                code,
                message,
            } => Self {
                field: Some(field.clone()),
                ..Self::new(
                    StatusCode::BAD_REQUEST,
                    code,
                    format!("`{field}` {message}"),
                )
            },
            ServiceError::Conflict {
                code,
                field,
                message,
            } => Self {
                field,
                ..Self::conflict(code, message)
            },
            ServiceError::Forbidden { code, message } => Self::forbidden(code, message),
            ServiceError::Unauthenticated { code, message } => Self::unauthenticated(code, message),
            ServiceError::Upstream {
                service,
                code,
                message,
                transient: true,
            } => {
                tracing::warn!(service, %message, "upstream unavailable");
                Self {
                    retry_after: Some(1),
                    ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
                }
            }
            ServiceError::Upstream {
                code,
                message,
                transient: false,
                ..
            } => Self::new(StatusCode::BAD_GATEWAY, code, message),
            ServiceError::Db(e) => Self::db(e),
            ServiceError::Internal(cause) => Self::internal(cause),
        }
    }
}

impl ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut resp = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, PROBLEM_JSON)
            .body(body);
        if let Some(v) = self
            .retry_after
            .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.is_retryable_conflict() {
            resp.set_data(RetryableConflict);
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.as_response()
    }
}

const DOCUMENTED: &[(u16, &str)] = &[
    (
        400,
        "Invalid request: malformed JSON, a wrong type or a failed validation (see `field`).",
    ),
    (401, "Missing, malformed, unknown or revoked credentials."),
    (
        403,
        "The credential is valid but its role or kind lacks the permission.",
    ),
    (404, "No such object in the caller's tenant and mode."),
    (
        409,
        "Conflict with the current state or an earlier use of the idempotency key.",
    ),
    (413, "Request body too large."),
    (415, "Unsupported or missing `Content-Type`."),
    (429, "Rate limit reached; see `Retry-After`."),
    (
        500,
        "Internal error; the request id in `X-Request-Id` identifies it in our logs.",
    ),
    (503, "A dependency is temporarily unavailable."),
];

impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: DOCUMENTED
                .iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(*status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: PROBLEM_JSON,
                        schema: <Problem as Type>::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        <Problem as Type>::register(registry);
    }
}

/// Turns any error poem or poem-openapi raises (unknown route, wrong method, unparsable
/// parameter, missing content type…) into a problem.
pub fn from_poem(err: &poem::Error) -> ApiError {
    use poem_openapi::error::{
        ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
    };
    if let Some(e) = err.downcast_ref::<ParseParamError>() {
        let mut e2 = ApiError::validation(e.name, format!("is invalid: {}", e.reason));
        e2.code = "invalid_parameter";
        return e2;
    }
    if let Some(e) = err.downcast_ref::<ParsePathError>() {
        // A malformed id in the path names nothing that exists.
        tracing::debug!(name = e.name, reason = %e.reason, "unparsable path parameter");
        return ApiError::not_found("object");
    }
    if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.reason.clone());
    }
    if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        );
    }
    let status = err.status();
    let (code, detail) = match status {
        StatusCode::NOT_FOUND => ("route_not_found", "No route matches this path.".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "This path does not accept this method.".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("payload_too_large", "Request body too large.".to_owned())
        }
        StatusCode::UNAUTHORIZED => ("unauthenticated", "Credentials are required.".to_owned()),
        s if s.is_client_error() => ("bad_request", err.to_string()),
        _ => return ApiError::internal(err),
    };
    ApiError::new(status, code, detail)
}
