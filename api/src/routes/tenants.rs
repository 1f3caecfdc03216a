//! Tenants and authentication: the seed contract under `/api/v1/auth/tenants/…`.

use poem::{Request, http::StatusCode};
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};
use serde::Deserialize;
use shared::{
    auth::{
        jwt::{Issue, TokenType},
        password,
    },
    crypto::{b64, random_bytes},
    db::{self, DbError, users::Credentials},
    domain::{
        api_key::{GeneratedKey, KeyKind},
        email::Email,
        mode::Mode,
        password::NewPassword,
        person_name::PersonName,
        tenant::{CompanyName, parse_domain},
    },
    ids::{TenantId, UserId},
    ratelimit::{self, Decision},
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

async fn hash_password(pw: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

async fn verify_password(pw: String, hash: String) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || password::verify(&pw, &hash))
        .await
        .map_err(ApiError::internal)
}

/// Issues an access token and a refresh token, stored in the request's transaction.
pub async fn issue_tokens(
    state: &AppState,
    work: &mut Work,
    user_id: UserId,
    tenant_id: TenantId,
    role: shared::domain::role::Role,
    password_version: i32,
    family: Uuid,
) -> Result<TokensOut, ApiError> {
    let now = work.now();
    let a = &state.settings.auth;
    let issue = |typ, ttl_secs, jti| Issue {
        user_id,
        tenant_id,
        role,
        typ,
        password_version,
        jti,
        now,
        ttl_secs,
    };
    let (access, _) = state
        .jwt
        .issue(&issue(
            TokenType::Access,
            a.access_token_ttl_secs,
            Uuid::new_v4(),
        ))
        .map_err(ApiError::internal)?;
    let jti = Uuid::new_v4();
    let (refresh, refresh_exp) = state
        .jwt
        .issue(&issue(TokenType::Refresh, a.refresh_token_ttl_secs, jti))
        .map_err(ApiError::internal)?;
    db::refresh_tokens::insert(
        work.conn(),
        jti,
        family,
        user_id,
        tenant_id,
        now,
        refresh_exp,
    )
    .await
    .map_err(ApiError::from_db("token"))?;
    Ok(TokensOut {
        access,
        refresh,
        token_type: "Bearer".into(),
        expires_in: a.access_token_ttl_secs,
    })
}

fn new_key_out(k: &GeneratedKey, id: String) -> NewKeyOut {
    NewKeyOut {
        id,
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

fn bad_login() -> ApiError {
    ApiError::unauthenticated("invalid_credentials", "The email or password is incorrect.")
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
        let password_hash = hash_password(pw.expose().to_owned()).await?;
        let keys: Vec<GeneratedKey> = [
            (KeyKind::Publishable, Mode::Live),
            (KeyKind::Secret, Mode::Live),
            (KeyKind::Publishable, Mode::Test),
            (KeyKind::Secret, Mode::Test),
        ]
        .into_iter()
        .map(|(k, m)| GeneratedKey::generate(k, m))
        .collect();
        let webhook_secret = format!("whsec_{}", b64(&random_bytes::<24>()));
        let last4 = webhook_secret[webhook_secret.len() - 4..].to_owned();
        let tenant_id = TenantId::new();
        let owner_id = UserId::new();
        let mut work = Work::begin(req).await?;
        let (tenant, key_rows) = db::tenants::register(
            work.conn(),
            db::tenants::NewTenant {
                tenant_id,
                company_name: company.as_str(),
                slug_base: &company.slug_base(),
                email: email.as_str(),
                domain: domain.as_deref(),
                webhook_secret_enc: state.encryptor.encrypt(webhook_secret.as_bytes()),
                webhook_secret_last4: &last4,
                owner_id,
                owner_password_hash: &password_hash,
                first_name: first_name.as_str(),
                last_name: last_name.as_str(),
                keys: &keys,
            },
        )
        .await
        .map_err(|e| match e {
            DbError::UniqueViolation(c) if c == "users_email_key" => ApiError {
                field: Some("email".into()),
                ..ApiError::conflict("email_taken", "An account with this email already exists.")
            },
            other => ApiError::from_db("tenant")(other),
        })?;
        note(req, |n| {
            n.tenant = Some((tenant_id, false));
            n.actor = Some(owner_id.to_string());
            n.object_id = Some(tenant_id.to_string());
        });
        let out = |i: usize| new_key_out(&keys[i], key_rows[i].id.to_string());
        let tokens = issue_tokens(
            &state,
            &mut work,
            owner_id,
            tenant_id,
            shared::domain::role::Role::Owner,
            1,
            Uuid::new_v4(),
        )
        .await?;
        let user = db::users::get(
            work.conn(),
            &shared::tenancy::TenantContext {
                tenant_id,
                mode: Mode::Test,
                actor: shared::tenancy::Actor::User {
                    id: owner_id,
                    role: shared::domain::role::Role::Owner,
                },
            },
            owner_id,
        )
        .await
        .map_err(ApiError::from_db("user"))?;
        Ok(RegisterResponse::Created(Json(RegisterOut {
            tenant: tenant.into(),
            user: user.into(),
            api_keys: KeySetOut {
                live_publishable: out(0),
                live_secret: out(1),
                test_publishable: out(2),
                test_secret: out(3),
            },
            webhook_secret,
            tokens,
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
        let creds = match db::users::credentials_by_email(&state.pool, email.as_str()).await {
            Ok(c) => Some(c),
            Err(DbError::NotFound) => None,
            Err(e) => return Err(ApiError::unavailable("database", e)),
        };
        let hash = creds
            .as_ref()
            .map(|c| c.password_hash.clone())
            .unwrap_or_else(|| password::dummy_hash().to_owned());
        let ok = verify_password(body.0.password.clone(), hash).await?;
        let creds: Credentials = match creds {
            Some(c) if ok && c.can_log_in() => c,
            _ => return Err(bad_login()),
        };
        note(req, |n| {
            n.tenant = Some((creds.tenant_id, false));
            n.actor = Some(creds.id.to_string());
            n.object_id = Some(creds.id.to_string());
        });
        let mut work = Work::begin(req).await?;
        db::users::touch_last_login(work.conn(), creds.id)
            .await
            .map_err(ApiError::from_db("user"))?;
        let tokens = issue_tokens(
            &state,
            &mut work,
            creds.id,
            creds.tenant_id,
            creds.role(),
            creds.password_version,
            Uuid::new_v4(),
        )
        .await?;
        let ctx = shared::tenancy::TenantContext {
            tenant_id: creds.tenant_id,
            mode: Mode::Test,
            actor: shared::tenancy::Actor::User {
                id: creds.id,
                role: creds.role(),
            },
        };
        let user = db::users::get(work.conn(), &ctx, creds.id)
            .await
            .map_err(ApiError::from_db("user"))?;
        let tenant = db::tenants::get(work.conn(), &ctx)
            .await
            .map_err(ApiError::from_db("tenant"))?;
        Ok(Json(LoginOut {
            access: tokens.access.clone(),
            refresh: tokens.refresh.clone(),
            token_type: tokens.token_type.clone(),
            expires_in: tokens.expires_in,
            tokens,
            user: user.into(),
            tenant: tenant.into(),
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
        let bad = || {
            ApiError::unauthenticated(
                "invalid_token",
                "The refresh token is invalid, expired or already used.",
            )
        };
        let claims = state.jwt.verify(&body.0.refresh).map_err(|_| bad())?;
        if claims.typ != TokenType::Refresh {
            return Err(bad());
        }
        let mut work = Work::begin(req).await?;
        let now = work.now();
        let family = match db::refresh_tokens::consume(work.conn(), claims.jti, now).await {
            Ok(f) => f,
            Err(DbError::NotFound) => {
                // Presenting a used token revokes its family; that must stick although this
                // request fails, so it commits on its own.
                db::refresh_tokens::revoke_if_reused(&state.pool, claims.jti, now)
                    .await
                    .map_err(ApiError::db)?;
                return Err(bad());
            }
            Err(e) => return Err(ApiError::db(e)),
        };
        let creds = db::users::credentials_by_id(work.conn(), claims.user_id)
            .await
            .map_err(|_| bad())?;
        if !creds.can_log_in() || creds.password_version != claims.password_version {
            return Err(bad());
        }
        issue_tokens(
            &state,
            &mut work,
            creds.id,
            creds.tenant_id,
            creds.role(),
            creds.password_version,
            family,
        )
        .await
        .map(Json)
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
        let id = ctx
            .user_id()
            .ok_or_else(|| ApiError::forbidden("user_token_required", "Needs a user's JWT."))?;
        let user = db::users::get(&state.pool, ctx, id)
            .await
            .map_err(ApiError::from_db("user"))?;
        let tenant = db::tenants::get(&state.pool, ctx)
            .await
            .map_err(ApiError::from_db("tenant"))?;
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
        let id = ctx
            .user_id()
            .ok_or_else(|| ApiError::forbidden("user_token_required", "Needs a user's JWT."))?;
        let new =
            NewPassword::parse(&body.0.new_password).map_err(ApiError::invalid("new_password"))?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let creds = db::users::credentials_by_id(&state.pool, id)
            .await
            .map_err(ApiError::from_db("user"))?;
        if !verify_password(body.0.current_password.clone(), creds.password_hash.clone()).await? {
            return Err(ApiError {
                field: Some("current_password".into()),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_current_password",
                    "The current password is incorrect.",
                )
            });
        }
        if body.0.current_password == body.0.new_password {
            return Err(ApiError::validation(
                "new_password",
                "must differ from the current password",
            ));
        }
        let hash = hash_password(new.expose().to_owned()).await?;
        let mut work = Work::begin(req).await?;
        let now = work.now();
        db::users::change_password(work.conn(), ctx, id, &hash, now)
            .await
            .map_err(ApiError::from_db("user"))?;
        let cache = state.clone();
        work.after_commit(move || cache.users.clear());
        issue_tokens(
            &state,
            &mut work,
            id,
            ctx.tenant_id,
            creds.role(),
            creds.password_version + 1,
            Uuid::new_v4(),
        )
        .await
        .map(Json)
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
        let tenant = db::tenants::get(&state.pool, ctx)
            .await
            .map_err(ApiError::from_db("tenant"))?;
        let (users, keys) = db::tenants::counts(&state.pool, ctx)
            .await
            .map_err(ApiError::from_db("tenant"))?;
        Ok(Json(DetailsOut {
            tenant: tenant.into(),
            active_users: users,
            active_api_keys: keys,
            mode: ctx.mode.as_str().into(),
        }))
    }
}

async fn verify(state: &AppState, auth: &Auth) -> Result<Json<VerifyOut>, ApiError> {
    let ctx = auth.require(Permission::ReadTenant)?;
    // The hottest read path: the tenant row is cached as briefly as the credential itself.
    let tenant = match state.tenants.get(&ctx.tenant_id) {
        Some(Some(t)) => t,
        _ => {
            let t = db::tenants::get(&state.pool, ctx)
                .await
                .map_err(ApiError::from_db("tenant"))?;
            state.tenants.put(ctx.tenant_id, Some(t.clone()));
            t
        }
    };
    let credential = match &ctx.actor {
        shared::tenancy::Actor::User { .. } => "user",
        shared::tenancy::Actor::ApiKey { kind, .. } => kind.as_str(),
    };
    Ok(Json(VerifyOut {
        valid: true,
        tenant_id: tenant.id.to_string(),
        company_name: tenant.company_name,
        mode: ctx.mode.as_str().into(),
        credential: credential.into(),
    }))
}
