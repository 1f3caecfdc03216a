//! Tenants and authentication: the seed contract under `/api/v1/auth/tenants/…`.

use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use serde::Deserialize;
use shared::{
    domain::{
        api_key::GeneratedKey,
        email::Email,
        password::NewPassword,
        person_name::PersonName,
        tenant::{CompanyName, parse_domain},
    },
    ratelimit::{self, Decision},
    service::api_keys::ApiKeyRow,
    service::{
        sessions::{self, PasswordHash, TokenPolicy, Tokens},
        tenants::{self, Registration},
    },
    tenancy::Permission,
};
use uuid::Uuid;

use super::{
    ApiTags,
    dto::{NewKeyOut, TenantOut, TokensOut, UserOut},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct TenantsApi;

/// A new tenant and its owner.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RegisterIn {
    /// The company's name; the tenant's unique slug is derived from it.
    pub company_name: String,
    /// The owner's email, used to log in.
    pub email: String,
    /// At least 10 characters.
    pub password: String,
    /// The owner's first name: at most 100 characters, no control characters.
    #[oai(nullable)]
    pub first_name: Option<String>,
    /// The owner's last name: at most 100 characters, no control characters.
    #[oai(nullable)]
    pub last_name: Option<String>,
    /// The company's domain, e.g. `acme.com`.
    #[oai(nullable)]
    pub domain: Option<String>,
}

/// Both key pairs of a new tenant.
#[derive(Debug, Object)]
pub struct KeySetOut {
    pub live_publishable: NewKeyOut,
    pub live_secret: NewKeyOut,
    pub test_publishable: NewKeyOut,
    pub test_secret: NewKeyOut,
}

/// Registration result. Keys and the webhook secret are shown this once.
#[derive(Debug, Object)]
pub struct RegisterOut {
    pub tenant: TenantOut,
    pub user: UserOut,
    pub api_keys: KeySetOut,
    /// Webhook signing secret (`whsec_…`): shown only now.
    pub webhook_secret: String,
    pub tokens: TokensOut,
}

#[derive(ApiResponse)]
pub enum RegisterResponse {
    /// The tenant was created.
    #[oai(status = 201)]
    Created(Json<RegisterOut>),
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct LoginIn {
    pub email: String,
    pub password: String,
}

/// Tokens plus who logged in. The token fields appear twice: grouped under `tokens`, as
/// registration returns them, and at the top level, as earlier clients read them.
#[derive(Debug, Object)]
pub struct LoginOut {
    /// The same as `tokens.access`.
    pub access: String,
    /// The same as `tokens.refresh`.
    pub refresh: String,
    /// The same as `tokens.token_type`.
    pub token_type: String,
    /// The same as `tokens.expires_in`.
    pub expires_in: i64,
    pub tokens: TokensOut,
    pub user: UserOut,
    pub tenant: TenantOut,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RefreshIn {
    /// A refresh token from login, registration or an earlier refresh.
    pub refresh: String,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordIn {
    pub current_password: String,
    /// At least 10 characters.
    pub new_password: String,
}

#[derive(Debug, Object)]
pub struct MeOut {
    pub user: UserOut,
    pub tenant: TenantOut,
}

/// The result of checking a key or token.
#[derive(Debug, Object)]
pub struct VerifyOut {
    pub valid: bool,
    pub tenant_id: String,
    pub company_name: String,
    /// `live` or `test`.
    pub mode: String,
    /// `secret`, `publishable` or `user`.
    pub credential: String,
}

#[derive(Debug, Object)]
pub struct DetailsOut {
    pub tenant: TenantOut,
    pub active_users: i64,
    pub active_api_keys: i64,
    /// `live` or `test`: the mode of the calling credential.
    pub mode: String,
}

/// An optional first or last name; absent means empty.
fn field(v: &Option<String>, name: &str) -> Result<PersonName, ApiError> {
    PersonName::parse(v.as_deref().unwrap_or_default()).map_err(ApiError::invalid(name))
}

/// How this server signs tokens and how long they live.
fn token_policy(state: &AppState) -> TokenPolicy<'_> {
    TokenPolicy {
        keys: &state.jwt,
        access_ttl_secs: state.settings.auth.access_token_ttl_secs,
        refresh_ttl_secs: state.settings.auth.refresh_token_ttl_secs,
    }
}

impl From<Tokens> for TokensOut {
    fn from(t: Tokens) -> Self {
        TokensOut {
            access: t.access,
            refresh: t.refresh,
            token_type: "Bearer".into(),
            expires_in: t.expires_in,
        }
    }
}

fn new_key_out(k: &GeneratedKey, row: &ApiKeyRow) -> NewKeyOut {
    NewKeyOut {
        id: row.id.to_string(),
        kind: k.kind.as_str().into(),
        mode: k.mode.as_str().into(),
        key: k.full.clone(),
    }
}

/// The client's address, as the connection shows it.
fn client_ip(req: &Request) -> String {
    req.remote_addr()
        .as_socket_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Counts one attempt in each bucket (name, limit) for `window_secs`; the first bucket over its
/// limit refuses with 429. These limits guard against guessing and abuse, so they fail closed:
/// while Redis is down the request is refused with 503.
async fn limit_attempts(
    state: &AppState,
    buckets: &[(String, u32)],
    window_secs: u64,
) -> Result<(), ApiError> {
    if !state.health.redis_up() {
        return Err(ApiError::unavailable("redis", "known to be down"));
    }
    let now = state.clock.now().timestamp().max(0) as u64;
    let prefix = &state.settings.redis.key_prefix;
    let mut redis = state.redis.clone();
    for (bucket, limit) in buckets {
        let hit = ratelimit::hit(&mut redis, prefix, bucket, *limit, window_secs, now);
        match tokio::time::timeout(shared::health::PROBE_TIMEOUT, hit).await {
            Ok(Ok(Decision::Allowed { .. })) => {}
            Ok(Ok(Decision::Limited { retry_after_secs })) => {
                return Err(ApiError::rate_limited(retry_after_secs));
            }
            Ok(Err(e)) => {
                state.health.set_redis(false);
                return Err(ApiError::unavailable("redis", e));
            }
            Err(_) => {
                state.health.set_redis(false);
                return Err(ApiError::unavailable("redis", "timed out"));
            }
        }
    }
    Ok(())
}

/// Login attempts are limited per client address, and per email from each address: an
/// attacker guessing one account's password is stopped, while its owner, elsewhere, still
/// logs in.
async fn login_rate_limit(state: &AppState, req: &Request, email: &str) -> Result<(), ApiError> {
    let a = &state.settings.auth;
    let ip = client_ip(req);
    let email_at_ip = hex::encode(
        &shared::crypto::sha256(format!("{}\n{ip}", email.to_lowercase()).as_bytes())[..12],
    );
    limit_attempts(
        state,
        &[
            (
                format!("login:email-ip:{email_at_ip}"),
                a.login_attempts_per_email,
            ),
            (format!("login:ip:{ip}"), a.login_attempts_per_ip),
        ],
        a.login_window_secs,
    )
    .await
}

/// Registrations are limited per client address: each one costs a password hash and creates
/// a tenant with four keys.
async fn registration_rate_limit(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let a = &state.settings.auth;
    limit_attempts(
        state,
        &[(
            format!("register:ip:{}", client_ip(req)),
            a.registrations_per_ip,
        )],
        a.registration_window_secs,
    )
    .await
}

#[OpenApi]
impl TenantsApi {
    /// Register a tenant
    ///
    /// Creates the tenant, its owner user, live and test key pairs and a webhook signing
    /// secret, and logs the owner in. Keys and the secret are returned only in this response.
    #[oai(
        path = "/api/v1/auth/tenants/register",
        method = "post",
        operation_id = "tenants.register",
        tag = "ApiTags::Auth"
    )]
    async fn register(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<RegisterIn>,
    ) -> Result<RegisterResponse, ApiError> {
        let b = body.0;
        let company =
            CompanyName::parse(&b.company_name).map_err(ApiError::invalid("company_name"))?;
        let email = Email::parse(&b.email).map_err(ApiError::invalid("email"))?;
        let pw = NewPassword::parse(&b.password).map_err(ApiError::invalid("password"))?;
        let first_name = field(&b.first_name, "first_name")?;
        let last_name = field(&b.last_name, "last_name")?;
        let domain = match b.domain.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
            Some(d) => Some(parse_domain(d).map_err(ApiError::invalid("domain"))?),
            None => None,
        };
        registration_rate_limit(&state, req).await?;
        let password = PasswordHash::of(&pw).await?;
        let mut work = Work::begin(req).await?;
        let reg = tenants::register(
            &mut work,
            &state.encryptor,
            Registration {
                company: &company,
                email: &email,
                password: &password,
                first_name: &first_name,
                last_name: &last_name,
                domain: domain.as_deref(),
            },
        )
        .await?;
        let (tenant_id, owner_id) = (reg.tenant.id, reg.owner.id);
        note(req, |n| {
            n.tenant = Some((tenant_id, false));
            n.actor = Some(owner_id.to_string());
            n.object_id = Some(tenant_id.to_string());
        });
        let creds = &reg.owner_credentials;
        let tokens = sessions::issue(
            &mut work,
            token_policy(&state),
            creds,
            creds.password_version,
            Uuid::new_v4(),
        )
        .await?;
        let out = |i: usize| new_key_out(&reg.keys[i].0, &reg.keys[i].1);
        Ok(RegisterResponse::Created(Json(RegisterOut {
            api_keys: KeySetOut {
                live_publishable: out(0),
                live_secret: out(1),
                test_publishable: out(2),
                test_secret: out(3),
            },
            tenant: reg.tenant.into(),
            user: reg.owner.into(),
            webhook_secret: reg.webhook_secret,
            tokens: tokens.into(),
        })))
    }

    /// Log in
    ///
    /// Exchanges email and password for JWT access and refresh tokens. Unknown emails and
    /// wrong passwords get the same answer. Attempts are rate limited per email and per client
    /// address.
    #[oai(
        path = "/api/v1/auth/tenants/login",
        method = "post",
        operation_id = "tenants.login",
        tag = "ApiTags::Auth"
    )]
    async fn login(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<LoginIn>,
    ) -> Result<Json<LoginOut>, ApiError> {
        let email = Email::parse(&body.0.email).map_err(ApiError::invalid("email"))?;
        if body.0.password.is_empty() {
            return Err(ApiError::validation("password", "must not be empty"));
        }
        login_rate_limit(&state, req, email.as_str()).await?;
        let creds = sessions::authenticate(&state.pool, &email, &body.0.password).await?;
        note(req, |n| {
            n.tenant = Some((creds.tenant_id, false));
            n.actor = Some(creds.id.to_string());
            n.object_id = Some(creds.id.to_string());
        });
        let mut work = Work::begin(req).await?;
        let session = sessions::log_in(&mut work, token_policy(&state), &creds).await?;
        let tokens: TokensOut = session.tokens.into();
        Ok(Json(LoginOut {
            access: tokens.access.clone(),
            refresh: tokens.refresh.clone(),
            token_type: tokens.token_type.clone(),
            expires_in: tokens.expires_in,
            tokens,
            user: session.user.into(),
            tenant: session.tenant.into(),
        }))
    }

    /// Refresh tokens
    ///
    /// Exchanges a refresh token for a new access token and a new refresh token. Each refresh
    /// token works once: presenting a used one fails and revokes the tokens issued from it.
    #[oai(
        path = "/api/v1/auth/tenants/token/refresh",
        method = "post",
        operation_id = "tenants.token_refresh",
        tag = "ApiTags::Auth"
    )]
    async fn refresh(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: JsonBody<RefreshIn>,
    ) -> Result<Json<TokensOut>, ApiError> {
        let mut work = Work::begin(req).await?;
        let tokens = sessions::refresh(
            &mut work,
            &state.pool,
            token_policy(&state),
            &body.0.refresh,
        )
        .await?;
        Ok(Json(tokens.into()))
    }

    /// Current user
    ///
    /// The logged-in user and their tenant. Needs a user's JWT.
    #[oai(
        path = "/api/v1/auth/tenants/me",
        method = "get",
        operation_id = "tenants.me",
        tag = "ApiTags::Auth"
    )]
    async fn me(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> Result<Json<MeOut>, ApiError> {
        let ctx = auth.require(Permission::OwnAccount)?;
        let (user, tenant) = sessions::me(&state.pool, ctx).await?;
        Ok(Json(MeOut {
            user: user.into(),
            tenant: tenant.into(),
        }))
    }

    /// Change password
    ///
    /// Needs the current password. Every earlier refresh and access token of the user stops
    /// working; the response carries fresh tokens.
    #[oai(
        path = "/api/v1/auth/tenants/change-password",
        method = "post",
        operation_id = "tenants.change_password",
        tag = "ApiTags::Auth"
    )]
    async fn change_password(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<ChangePasswordIn>,
    ) -> Result<Json<TokensOut>, ApiError> {
        let ctx = auth.require(Permission::OwnAccount)?;
        let id = sessions::own_user(ctx)?;
        let new =
            NewPassword::parse(&body.0.new_password).map_err(ApiError::invalid("new_password"))?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let change =
            sessions::prepare_password_change(&state.pool, ctx, &body.0.current_password, &new)
                .await?;
        let mut work = Work::begin(req).await?;
        let tokens =
            sessions::change_password(&mut work, token_policy(&state), ctx, change).await?;
        let cache = state.clone();
        work.after_commit(move || cache.users.clear());
        Ok(Json(tokens.into()))
    }

    /// Verify a credential
    ///
    /// Checks an API key (secret or publishable) or a JWT and says which tenant and mode it
    /// belongs to.
    #[oai(
        path = "/api/v1/auth/tenants/verify",
        method = "get",
        operation_id = "tenants.verify",
        tag = "ApiTags::Auth"
    )]
    async fn verify_get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> Result<Json<VerifyOut>, ApiError> {
        verify(&state, &auth).await
    }

    /// Verify a credential (POST)
    ///
    /// The same as `GET /api/v1/auth/tenants/verify`.
    #[oai(
        path = "/api/v1/auth/tenants/verify",
        method = "post",
        operation_id = "tenants.verify_post",
        tag = "ApiTags::Auth"
    )]
    async fn verify_post(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> Result<Json<VerifyOut>, ApiError> {
        verify(&state, &auth).await
    }

    /// Tenant details
    ///
    /// The caller's tenant with its user and key counts.
    #[oai(
        path = "/api/v1/auth/tenants/details",
        method = "get",
        operation_id = "tenants.details",
        tag = "ApiTags::Auth"
    )]
    async fn details(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> Result<Json<DetailsOut>, ApiError> {
        let ctx = auth.require(Permission::ReadTenant)?;
        let (tenant, users, keys) = tenants::details(&state.pool, ctx).await?;
        Ok(Json(DetailsOut {
            tenant: tenant.into(),
            active_users: users,
            active_api_keys: keys,
            mode: ctx.mode().as_str().into(),
        }))
    }
}

async fn verify(state: &AppState, auth: &Auth) -> Result<Json<VerifyOut>, ApiError> {
    let ctx = auth.require(Permission::ReadTenant)?;
    // The hottest read path: the tenant row is cached as briefly as the credential itself.
    let tenant = match state.tenants.get(&ctx.tenant_id()) {
        Some(Some(t)) => t,
        _ => {
            let t = tenants::get(&state.pool, ctx).await?;
            state.tenants.put(ctx.tenant_id(), Some(t.clone()));
            t
        }
    };
    let credential = match ctx.actor() {
        shared::tenancy::Actor::User { .. } => "user",
        shared::tenancy::Actor::ApiKey { kind, .. } => kind.as_str(),
    };
    Ok(Json(VerifyOut {
        valid: true,
        tenant_id: tenant.id.to_string(),
        company_name: tenant.company_name,
        mode: ctx.mode().as_str().into(),
        credential: credential.into(),
    }))
}
