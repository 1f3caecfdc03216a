//! Sessions: logging in with email and password, JWT access and refresh tokens, refresh-token
//! rotation (a used refresh token revokes its family), and password changes.

use sqlx::PgPool;
use uuid::Uuid;

use super::{ServiceError, ServiceResult};
use crate::{
    auth::{
        jwt::{Issue, JwtKeys, TokenType},
        password,
    },
    db::{self, DbError, tenants::TenantRow, users::Credentials, users::UserRow},
    domain::{email::Email, mode::Mode, password::NewPassword},
    ids::UserId,
    tenancy::TenantContext,
    uow::UnitOfWork,
};

/// A password hashed for storage (Argon2id, PHC string).
pub struct PasswordHash(String);

impl PasswordHash {
    /// Hashes a new password on a blocking thread (tens of milliseconds of CPU): do it before
    /// beginning the unit of work, so that no transaction waits on it.
    pub async fn of(password: &NewPassword) -> ServiceResult<Self> {
        let pw = password.expose().to_owned();
        tokio::task::spawn_blocking(move || password::hash(&pw))
            .await
            .map_err(ServiceError::internal)?
            .map(Self)
            .map_err(ServiceError::internal)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a password against a stored hash on a blocking thread.
async fn verify(password: &str, hash: String) -> ServiceResult<bool> {
    let pw = password.to_owned();
    tokio::task::spawn_blocking(move || password::verify(&pw, &hash))
        .await
        .map_err(ServiceError::internal)
}

/// How tokens are signed and how long they live.
#[derive(Clone, Copy)]
pub struct TokenPolicy<'a> {
    pub keys: &'a JwtKeys,
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
}

/// An access token and the refresh token that renews it.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

fn invalid_token(message: &str) -> ServiceError {
    ServiceError::Unauthenticated {
        code: "invalid_token",
        message: message.to_owned(),
    }
}

/// Issues an access token and a refresh token for a user; the refresh token is stored in the
/// unit of work (in `family`: the chain of rotations it belongs to).
pub async fn issue(
    uow: &mut UnitOfWork,
    policy: TokenPolicy<'_>,
    user: &Credentials,
    password_version: i32,
    family: Uuid,
) -> ServiceResult<Tokens> {
    let now = uow.now();
    let issue = |typ, ttl_secs, jti| Issue {
        user_id: user.id,
        tenant_id: user.tenant_id,
        role: user.role(),
        typ,
        password_version,
        jti,
        now,
        ttl_secs,
    };
    let (access, _) = policy
        .keys
        .issue(&issue(
            TokenType::Access,
            policy.access_ttl_secs,
            Uuid::new_v4(),
        ))
        .map_err(ServiceError::internal)?;
    let jti = Uuid::new_v4();
    let (refresh, refresh_exp) = policy
        .keys
        .issue(&issue(TokenType::Refresh, policy.refresh_ttl_secs, jti))
        .map_err(ServiceError::internal)?;
    db::refresh_tokens::insert(
        uow.conn(),
        jti,
        family,
        user.id,
        user.tenant_id,
        now,
        refresh_exp,
    )
    .await?;
    Ok(Tokens {
        access,
        refresh,
        expires_in: policy.access_ttl_secs,
    })
}

/// Checks an email and password. Unknown emails, wrong passwords and deactivated users get
/// the same answer, after the same work (a dummy hash is checked when no user matches).
pub async fn authenticate(pool: &PgPool, email: &Email, pw: &str) -> ServiceResult<Credentials> {
    let creds = match db::users::credentials_by_email(pool, email.as_str()).await {
        Ok(c) => Some(c),
        Err(DbError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let hash = creds.as_ref().map_or_else(
        || password::dummy_hash().to_owned(),
        |c| c.password_hash.clone(),
    );
    let ok = verify(pw, hash).await?;
    match creds {
        Some(c) if ok && c.can_log_in() => Ok(c),
        _ => Err(ServiceError::Unauthenticated {
            code: "invalid_credentials",
            message: "The email or password is incorrect.".into(),
        }),
    }
}

/// A session that has just started.
pub struct Session {
    pub tokens: Tokens,
    pub user: UserRow,
    pub tenant: TenantRow,
}

/// Starts a session for an authenticated user: notes the login and issues tokens.
pub async fn log_in(
    uow: &mut UnitOfWork,
    policy: TokenPolicy<'_>,
    creds: &Credentials,
) -> ServiceResult<Session> {
    let now = uow.now();
    db::users::touch_last_login(uow.conn(), creds.id, now).await?;
    let tokens = issue(uow, policy, creds, creds.password_version, Uuid::new_v4()).await?;
    let ctx = creds.context(Mode::Test);
    let user = db::users::get(uow.conn(), &ctx, creds.id).await?;
    let tenant = db::tenants::get(uow.conn(), &ctx).await?;
    Ok(Session {
        tokens,
        user,
        tenant,
    })
}

/// Exchanges a refresh token for new tokens. Each refresh token works once: presenting a used
/// one revokes the tokens issued from it, and that revocation is committed at once on `pool`
/// although the request fails.
pub async fn refresh(
    uow: &mut UnitOfWork,
    pool: &PgPool,
    policy: TokenPolicy<'_>,
    token: &str,
) -> ServiceResult<Tokens> {
    const BAD: &str = "The refresh token is invalid, expired or already used.";
    let claims = policy.keys.verify(token).map_err(|_| invalid_token(BAD))?;
    if claims.typ != TokenType::Refresh {
        return Err(invalid_token(BAD));
    }
    let now = uow.now();
    let family = match db::refresh_tokens::consume(uow.conn(), claims.jti, now).await {
        Ok(f) => f,
        Err(DbError::NotFound) => {
            db::refresh_tokens::revoke_if_reused(pool, claims.jti, now).await?;
            return Err(invalid_token(BAD));
        }
        Err(e) => return Err(e.into()),
    };
    let creds = db::users::credentials_by_id(uow.conn(), claims.user_id)
        .await
        .map_err(|_| invalid_token(BAD))?;
    if !creds.can_log_in() || creds.password_version != claims.password_version {
        return Err(invalid_token(BAD));
    }
    issue(uow, policy, &creds, creds.password_version, family).await
}

/// The caller's own user (a user's session, not an API key).
pub fn own_user(ctx: &TenantContext) -> ServiceResult<UserId> {
    ctx.user_id().ok_or_else(|| ServiceError::Forbidden {
        code: "user_token_required",
        message: "Needs a user's JWT.".into(),
    })
}

/// The caller's user and tenant.
pub async fn me(pool: &PgPool, ctx: &TenantContext) -> ServiceResult<(UserRow, TenantRow)> {
    let id = own_user(ctx)?;
    let user = db::users::get(pool, ctx, id)
        .await
        .map_err(ServiceError::not_found("user"))?;
    let tenant = db::tenants::get(pool, ctx)
        .await
        .map_err(ServiceError::not_found("tenant"))?;
    Ok((user, tenant))
}

/// A password change that passed its checks, ready to apply.
pub struct PasswordChange {
    creds: Credentials,
    hash: PasswordHash,
}

/// Checks the current password and hashes the new one (before any unit of work begins).
pub async fn prepare_password_change(
    pool: &PgPool,
    ctx: &TenantContext,
    current: &str,
    new: &NewPassword,
) -> ServiceResult<PasswordChange> {
    let id = own_user(ctx)?;
    let creds = db::users::credentials_by_id(pool, id)
        .await
        .map_err(ServiceError::not_found("user"))?;
    if !verify(current, creds.password_hash.clone()).await? {
        return Err(ServiceError::Invalid {
            field: "current_password".into(),
            code: "invalid_current_password",
            message: "is incorrect".into(),
        });
    }
    if current == new.expose() {
        return Err(ServiceError::invalid(
            "new_password",
            "must differ from the current password",
        ));
    }
    Ok(PasswordChange {
        creds,
        hash: PasswordHash::of(new).await?,
    })
}

/// Sets the new password: every earlier token of the user stops working; returns fresh ones.
pub async fn change_password(
    uow: &mut UnitOfWork,
    policy: TokenPolicy<'_>,
    ctx: &TenantContext,
    change: PasswordChange,
) -> ServiceResult<Tokens> {
    let now = uow.now();
    db::users::change_password(uow.conn(), ctx, change.creds.id, change.hash.as_str(), now)
        .await
        .map_err(ServiceError::not_found("user"))?;
    let version = change.creds.password_version + 1;
    issue(uow, policy, &change.creds, version, Uuid::new_v4()).await
}
