//! The layers every request passes through, outermost first:
//! observe (request id, tracing, metrics) → read body (size limit) → authenticate (credential,
//! rate limit, errors into problems) → transact (a write request's unit of work: idempotency,
//! the handler's writes and the audit row in one transaction; see [`crate::work`]) → routes.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::Bytes;
use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response,
    http::{HeaderValue, Method, StatusCode, header},
};
use poem_openapi::OperationId;
use shared::ids::TenantId;
use tracing::Instrument;

use crate::{
    auth::{self, Resolved},
    error::{self, ApiError},
    state::AppState,
};

/// The request id, echoed in `X-Request-Id`.
#[derive(Clone)]
pub struct RequestId(pub String);

/// The request body, read once with the size limit applied.
#[derive(Clone)]
pub struct RawBody(pub Bytes);

/// What a handler tells the audit layer about a request.
#[derive(Default, Debug)]
pub struct Note {
    pub object_id: Option<String>,
    /// For requests made before any credential exists (registration, login).
    pub tenant: Option<(TenantId, bool)>,
    pub actor: Option<String>,
}

#[derive(Clone, Default)]
pub struct AuditNote(pub Arc<Mutex<Note>>);

/// Lets a handler annotate the audit entry of its request.
pub fn note(req: &Request, f: impl FnOnce(&mut Note)) {
    if let Some(n) = req.extensions().get::<AuditNote>() {
        f(&mut n.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

const REQUEST_ID: &str = "x-request-id";

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// The methods a path accepts (for `Allow` on a 405), from the OpenAPI document: each path
/// template with its methods, `{param}` matching any one segment.
fn allowed_methods(path: &str) -> Option<&'static str> {
    type Templates = Vec<(Vec<String>, String)>;
    static TEMPLATES: std::sync::LazyLock<Templates> = std::sync::LazyLock::new(|| {
        let spec: serde_json::Value =
            serde_json::from_str(&crate::routes::service().spec()).unwrap_or_default();
        spec["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .iter()
                    .map(|(template, ops)| {
                        let mut methods: Vec<String> = ops
                            .as_object()
                            .map(|o| o.keys().map(|m| m.to_uppercase()).collect())
                            .unwrap_or_default();
                        if methods.iter().any(|m| m == "GET") {
                            methods.push("HEAD".into());
                        }
                        let segments = template.split('/').map(str::to_owned).collect();
                        (segments, methods.join(", "))
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    let segments: Vec<&str> = path.split('/').collect();
    TEMPLATES.iter().find_map(|(template, allow)| {
        let matches = template.len() == segments.len()
            && template
                .iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()));
        matches.then_some(allow.as_str())
    })
}

/// Converts an error into a problem response, keeping the operation id for metrics.
pub fn problem_response(err: poem::Error, resolved: Option<&Resolved>) -> Response {
    let op = err.data::<OperationId>().copied();
    let api_err = if let Some(e) = err.downcast_ref::<ApiError>() {
        e.clone()
    } else if err.is::<poem_openapi::error::AuthorizationError>() {
        auth::refusal(resolved)
    } else {
        error::from_poem(&err)
    };
    let mut resp = api_err.into_response();
    if let Some(op) = op {
        resp.set_data(op);
    }
    resp
}

/// Wraps the routes with every layer.
pub fn wrap(routes: impl Endpoint + 'static, state: AppState) -> impl Endpoint {
    let s_auth = state.clone();
    let s_work = state.clone();
    let s_observe = state.clone();
    let max_body = state.settings.api.max_body_bytes;
    routes
        .around(move |ep, req| crate::work::transact(s_work.clone(), ep, req))
        .around(move |ep, req| authenticate(s_auth.clone(), ep, req))
        .around(move |ep, req| read_body(max_body, ep, req))
        .around(move |ep, req| observe(s_observe.clone(), ep, req))
}

async fn observe<E: Endpoint>(
    state: AppState,
    ep: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    let started = Instant::now();
    let id = request_id(&req);
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        tenant_id = tracing::field::Empty,
    );
    async move {
        let mut resp = match ep.call(req).await {
            Ok(r) => r.into_response(),
            Err(e) => problem_response(e, None),
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(REQUEST_ID, v);
        }
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED
            && !resp.headers().contains_key(header::ALLOW)
            && let Some(allow) = allowed_methods(&path)
            && let Ok(v) = HeaderValue::from_str(allow)
        {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        let route = resp
            .data::<OperationId>()
            .map(|o| o.0)
            .unwrap_or("unmatched");
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        state.metrics.observe(route, status, elapsed);
        tracing::info!(
            route,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
        Ok(resp)
    }
    .instrument(span)
    .await
}

async fn read_body<E: Endpoint>(
    max: usize,
    ep: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The request body exceeds {max} bytes."),
        )
    };
    if declared.is_some_and(|n| n > max) {
        return Ok(too_large().into_response());
    }
    let bytes = match req.take_body().into_bytes_limit(max).await {
        Ok(b) => b,
        Err(poem::error::ReadBodyError::PayloadTooLarge) => return Ok(too_large().into_response()),
        Err(e) => {
            return Ok(
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string())
                    .into_response(),
            );
        }
    };
    req.extensions_mut().insert(RawBody(bytes.clone()));
    req.set_body(bytes);
    ep.call(req).await.map(IntoResponse::into_response)
}

/// Whether a path is served from the database (every API path; not health, metrics or docs).
fn needs_database(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/webhooks/")
}

async fn authenticate<E: Endpoint>(
    state: AppState,
    ep: Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    if !state.health.db_up() && needs_database(req.uri().path()) {
        // Known to be down: answer now rather than wait for a connection that cannot come.
        return Ok(ApiError::unavailable("database", "known to be down").into_response());
    }
    let resolved = match auth::resolve(&state, &req).await {
        None => None,
        // A credential that cannot be checked is an outage, not a bad credential.
        Some(Err(e)) if e.status == StatusCode::SERVICE_UNAVAILABLE => {
            return Ok(e.into_response());
        }
        Some(Ok(ctx)) => {
            tracing::Span::current().record("tenant_id", tracing::field::display(ctx.tenant_id()));
            if let Err(limited) = auth::rate_limit(&state, &ctx).await {
                return Ok(limited.into_response());
            }
            Some(Resolved(Arc::new(Ok(ctx))))
        }
        Some(Err(e)) => Some(Resolved(Arc::new(Err(e)))),
    };
    if let Some(r) = &resolved {
        req.extensions_mut().insert(r.clone());
    }
    Ok(match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) => problem_response(e, resolved.as_ref()),
    })
}

/// Seed paths that are other names of canonical ones (the OpenAPI document lists the canonical
/// paths; each operation's text names its seed alias). `true`: the alias is a prefix.
const SEED_ALIASES: [(&str, &str, bool); 6] = [
    ("/api/v1/auth/plans", "/api/v1/plans", true),
    ("/webhooks/stripe/account", "/webhooks/stripe", false),
    ("/webhooks/stripe/connect", "/webhooks/stripe", false),
    ("/webhooks/stripe/payment", "/webhooks/stripe", false),
    ("/webhooks/stripe/subscription", "/webhooks/stripe", false),
    (
        "/api/subscriptions/webhooks/stripe",
        "/webhooks/stripe",
        false,
    ),
];

/// Rewrites a seed alias path to its canonical path, before routing.
pub fn seed_aliases(req: &mut Request) {
    let path = req.uri().path();
    let trimmed = path.trim_end_matches('/');
    let Some((from, to, _)) = SEED_ALIASES.iter().find(|(from, _, prefix)| {
        trimmed == *from
            || (*prefix
                && path
                    .strip_prefix(from)
                    .is_some_and(|rest| rest.starts_with('/')))
    }) else {
        return;
    };
    let rest = path.get(from.len()..).unwrap_or("");
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Ok(uri) = format!("{to}{rest}{query}").parse() {
        *req.uri_mut() = uri;
    }
}
