//! Authentication: turns `Authorization: Bearer …` or `X-API-Key: …` into a [`TenantContext`].
//!
//! A middleware resolves the credential once per request (cached for under a second, so a
//! revocation reaches every replica within one second) and applies the per-credential rate
//! limit; the security schemes below hand the result to handlers and document it.

use poem::{Request, http::StatusCode};
use poem_openapi::{
    SecurityScheme,
    auth::{ApiKey, Bearer},
};
use shared::{
    auth::jwt::TokenType,
    db::DbError,
    domain::{api_key::PresentedKey, mode::Mode},
    ratelimit::{self, Decision},
    tenancy::{Actor, Permission, TenantContext},
};

use crate::{error::ApiError, state::AppState};

/// The outcome of resolving a request's credentials, stored in its extensions.
#[derive(Clone)]
pub struct Resolved(pub std::sync::Arc<Result<TenantContext, ApiError>>);

impl Clone for ApiError {
    fn clone(&self) -> Self {
        Self {
            status: self.status,
            code: self.code,
            detail: self.detail.clone(),
            field: self.field.clone(),
            retry_after: self.retry_after,
        }
    }
}

/// A credential as presented.
enum Presented {
    /// From `X-API-Key`: must be an API key.
    ApiKey(String),
    /// From `Authorization: Bearer`: an API key or a JWT.
    Bearer(String),
}

/// The credential presented, if any.
fn presented(req: &Request) -> Option<Result<Presented, ApiError>> {
    if let Some(v) = req.headers().get("x-api-key") {
        return Some(
            v.to_str()
                .map(|s| Presented::ApiKey(s.trim().to_owned()))
                .map_err(|_| invalid_key("The X-API-Key header is not valid text.")),
        );
    }
    let v = req.headers().get(poem::http::header::AUTHORIZATION)?;
    let Ok(text) = v.to_str() else {
        return Some(Err(ApiError::unauthenticated(
            "invalid_authorization",
            "The Authorization header is not valid text.",
        )));
    };
    let mut parts = text.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or_default();
    let token = parts.next().map(str::trim).unwrap_or_default();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Some(Err(ApiError::unauthenticated(
            "invalid_authorization",
            "Use `Authorization: Bearer <key or token>`.",
        )));
    }
    Some(Ok(Presented::Bearer(token.to_owned())))
}

fn invalid_key(detail: &str) -> ApiError {
    ApiError::unauthenticated("invalid_api_key", detail)
}

/// Resolves the request's credential; `None` when it carries none.
pub async fn resolve(state: &AppState, req: &Request) -> Option<Result<TenantContext, ApiError>> {
    Some(match presented(req)? {
        Err(e) => Err(e),
        Ok(Presented::ApiKey(key)) => resolve_key(state, &key).await,
        Ok(Presented::Bearer(token)) if PresentedKey::has_key_prefix(&token) => {
            resolve_key(state, &token).await
        }
        Ok(Presented::Bearer(token)) => resolve_jwt(state, req, &token).await,
    })
}

async fn resolve_key(state: &AppState, token: &str) -> Result<TenantContext, ApiError> {
    let presented = PresentedKey::parse(token)
        .ok_or_else(|| invalid_key("The API key is malformed, unknown or revoked."))?;
    let key = match state.keys.get(&presented.hash) {
        Some(found) => found,
        None => {
            let found =
                match shared::db::api_keys::find_active_by_hash(&state.pool, &presented.hash).await
                {
                    Ok(k) => Some(k),
                    Err(DbError::NotFound) => None,
                    Err(e) => return Err(ApiError::unavailable("database", e)),
                };
            state.keys.put(presented.hash, found.clone());
            found
        }
    }
    .ok_or_else(|| invalid_key("The API key is malformed, unknown or revoked."))?;
    if !key.tenant_active {
        return Err(ApiError::forbidden(
            "tenant_inactive",
            "This tenant account is deactivated.",
        ));
    }
    Ok(key.context())
}

async fn resolve_jwt(
    state: &AppState,
    req: &Request,
    token: &str,
) -> Result<TenantContext, ApiError> {
    let bad = || ApiError::unauthenticated("invalid_token", "The token is invalid or expired.");
    let claims = state.jwt.verify(token).map_err(|_| bad())?;
    if claims.typ != TokenType::Access {
        return Err(ApiError::unauthenticated(
            "invalid_token",
            "A refresh token cannot authenticate requests; exchange it first.",
        ));
    }
    let user = match state.users.get(&claims.user_id) {
        Some(found) => found,
        None => {
            let found =
                match shared::db::users::credentials_by_id(&state.pool, claims.user_id).await {
                    Ok(u) => Some(u),
                    Err(DbError::NotFound) => None,
                    Err(e) => return Err(ApiError::unavailable("database", e)),
                };
            state.users.put(claims.user_id, found.clone());
            found
        }
    }
    .ok_or_else(bad)?;
    if !user.can_log_in()
        || user.password_version != claims.password_version
        || user.tenant_id != claims.tenant_id
    {
        return Err(bad());
    }
    let mode = match req
        .headers()
        .get("x-mode")
        .map(|v| v.to_str().unwrap_or("?"))
    {
        None | Some("test") => Mode::Test,
        Some("live") => Mode::Live,
        Some(_) => {
            return Err(ApiError::validation("X-Mode", "must be `test` or `live`"));
        }
    };
    Ok(user.context(mode))
}

/// How long a rate-limit check may wait for Redis before the request goes on without it.
const RATE_LIMIT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Applies the per-credential rate limit. Fails open (with a warning) while Redis is down or
/// slow: a request is not refused for an outage of the limiter.
pub async fn rate_limit(state: &AppState, ctx: &TenantContext) -> Result<(), ApiError> {
    if !state.health.redis_up() {
        return Ok(());
    }
    let bucket = match ctx.actor() {
        Actor::ApiKey { id, .. } => id.to_string(),
        Actor::User { id, .. } => id.to_string(),
    };
    let now = state.clock.now().timestamp().max(0) as u64;
    let mut redis = state.redis.clone();
    let hit = ratelimit::hit(
        &mut redis,
        &state.settings.redis.key_prefix,
        &bucket,
        state.settings.auth.rate_limit_per_second,
        1,
        now,
    );
    match tokio::time::timeout(RATE_LIMIT_WAIT, hit).await {
        Ok(Ok(Decision::Allowed { .. })) => Ok(()),
        Ok(Ok(Decision::Limited { retry_after_secs })) => {
            Err(ApiError::rate_limited(retry_after_secs))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "rate limiter unavailable; allowing request");
            state.health.set_redis(false);
            Ok(())
        }
        Err(_) => {
            tracing::warn!("rate limiter too slow; allowing request");
            state.health.set_redis(false);
            Ok(())
        }
    }
}

fn from_extensions(req: &Request) -> Option<TenantContext> {
    req.extensions()
        .get::<Resolved>()
        .and_then(|r| r.0.as_ref().as_ref().ok().cloned())
}

async fn check_api_key(req: &Request, _key: ApiKey) -> Option<TenantContext> {
    from_extensions(req)
}

async fn check_bearer(req: &Request, _bearer: Bearer) -> Option<TenantContext> {
    from_extensions(req)
}

/// A secret API key (`sk_test_…`, `sk_live_…`) in the `X-API-Key` header.
#[derive(SecurityScheme)]
#[oai(
    rename = "ApiKeyAuth",
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header",
    checker = "check_api_key"
)]
pub struct ApiKeyAuth(TenantContext);

/// `Authorization: Bearer <key or JWT>`: a secret API key, or a dashboard user's JWT access
/// token (JWT requests act in test mode unless `X-Mode: live` is sent).
#[derive(SecurityScheme)]
#[oai(
    rename = "BearerAuth",
    ty = "bearer",
    bearer_format = "sk_… or JWT",
    checker = "check_bearer"
)]
pub struct BearerAuth(TenantContext);

/// Either credential.
#[derive(SecurityScheme)]
pub enum Auth {
    ApiKey(ApiKeyAuth),
    Bearer(BearerAuth),
}

impl Auth {
    pub fn ctx(&self) -> &TenantContext {
        match self {
            Auth::ApiKey(a) => &a.0,
            Auth::Bearer(b) => &b.0,
        }
    }

    /// The context, if it holds the permission; otherwise 403.
    pub fn require(&self, p: Permission) -> Result<&TenantContext, ApiError> {
        let ctx = self.ctx();
        if ctx.can(p) {
            return Ok(ctx);
        }
        Err(match ctx.actor() {
            Actor::ApiKey {
                kind: shared::domain::api_key::KeyKind::Publishable,
                ..
            } => ApiError::forbidden(
                "secret_key_required",
                "Publishable keys cannot call this endpoint; use a secret key.",
            ),
            Actor::ApiKey { .. } if matches!(p, Permission::OwnAccount) => ApiError::forbidden(
                "user_token_required",
                "This endpoint needs a user's JWT, not an API key.",
            ),
            _ => ApiError::forbidden("permission_denied", "Your role does not allow this action."),
        })
    }
}

/// The error to answer when a security scheme refused the request.
pub fn refusal(req_resolved: Option<&Resolved>) -> ApiError {
    match req_resolved.map(|r| r.0.as_ref()) {
        Some(Err(e)) => e.clone(),
        Some(Ok(_)) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Credentials are required.",
        ),
        None => ApiError::unauthenticated(
            "missing_credentials",
            "Send `Authorization: Bearer <key or token>` or `X-API-Key: <key>`.",
        ),
    }
}

/// Forgets cached key lookups (after this process revoked or regenerated keys).
pub fn forget_keys(state: &AppState) {
    state.keys.clear();
}
