//! Users of a tenant. Login looks users up by email; everything else is tenant-scoped.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgExecutor, PgPool};

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    domain::{mode::Mode, role::Role},
    ids::{TenantId, UserId},
    tenancy::{Actor, TenantContext},
};

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub role: Role,
    pub is_active: bool,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl UserRow {
    pub fn role(&self) -> Role {
        self.role
    }

    /// The user as events carry it (the fields the API returns).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "user",
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "role": self.role.as_str(),
            "is_active": self.is_active,
            "last_login_at": self.last_login_at,
            "created_at": self.created_at,
        })
    }
}

const COLUMNS: &str =
    "id, tenant_id, email, first_name, last_name, role, is_active, last_login_at, created_at";

/// What login and token checks need about a user. Only read from the database
/// (`non_exhaustive`: never built by hand elsewhere), since a context is built from it.
#[derive(Debug, Clone, FromRow)]
#[non_exhaustive]
pub struct Credentials {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub role: Role,
    pub password_hash: String,
    pub password_version: i32,
    pub is_active: bool,
    pub tenant_active: bool,
}

impl Credentials {
    /// The user's context in `mode`, once their credential has been checked (a password, or a
    /// token whose version matches).
    pub fn context(&self, mode: Mode) -> TenantContext {
        TenantContext {
            tenant_id: self.tenant_id,
            mode,
            actor: Actor::User {
                id: self.id,
                role: self.role(),
            },
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn can_log_in(&self) -> bool {
        self.is_active && self.tenant_active
    }
}

const CREDENTIALS: &str = "SELECT u.id, u.tenant_id, u.role, u.password_hash, \
    u.password_version, u.is_active, t.is_active AS tenant_active \
    FROM users u JOIN tenants t ON t.id = u.tenant_id";

/// Login: by email, before any tenant is known.
pub async fn credentials_by_email(pool: &PgPool, email: &str) -> Result<Credentials, DbError> {
    sqlx::query_as::<_, Credentials>(sqlf!("{CREDENTIALS} WHERE lower(u.email) = lower($1)"))
        .bind(email)
        .fetch_one(pool)
        .await
        .map_err(Into::into)
}

/// Token checks: by the id in a verified token.
pub async fn credentials_by_id(
    db: impl PgExecutor<'_>,
    id: UserId,
) -> Result<Credentials, DbError> {
    sqlx::query_as::<_, Credentials>(sqlf!("{CREDENTIALS} WHERE u.id = $1"))
        .bind(id)
        .fetch_one(db)
        .await
        .map_err(Into::into)
}

pub async fn touch_last_login(
    db: impl PgExecutor<'_>,
    id: UserId,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query("UPDATE users SET last_login_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn get(
    db: impl PgExecutor<'_>,
    ctx: &TenantContext,
    id: UserId,
) -> Result<UserRow, DbError> {
    sqlx::query_as::<_, UserRow>(sqlf!(
        "SELECT {COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(ctx.tenant_id)
    .bind(id)
    .fetch_one(db)
    .await
    .map_err(Into::into)
}

pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
) -> Result<Page<UserRow>, DbError> {
    let (cond, order) = page.sql(3);
    let rows = sqlx::query_as::<_, UserRow>(sqlf!(
        "SELECT {COLUMNS} FROM users WHERE tenant_id = $1 AND {cond} ORDER BY {order} LIMIT $2"
    ))
    .bind(ctx.tenant_id)
    .bind(page.limit + 1)
    .bind(page.bounds())
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// A user to invite into the caller's tenant.
pub struct NewUser<'a> {
    pub id: UserId,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub role: Role,
}

/// Inserts the user.
pub async fn create(
    tx: &mut PgConnection,
    ctx: &TenantContext,
    u: NewUser<'_>,
    now: DateTime<Utc>,
) -> Result<UserRow, DbError> {
    let row = sqlx::query_as::<_, UserRow>(sqlf!(
        "INSERT INTO users (id, tenant_id, email, password_hash, first_name, last_name, role, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {COLUMNS}"
    ))
    .bind(u.id)
    .bind(ctx.tenant_id)
    .bind(u.email)
    .bind(u.password_hash)
    .bind(u.first_name)
    .bind(u.last_name)
    .bind(u.role.as_str())
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    Ok(row)
}

/// Changes to one user.
#[derive(Debug, Default)]
pub struct UserChanges<'a> {
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
}

/// Serialises changes to one tenant's users until the transaction ends, so that two owners
/// demoting or deactivating each other cannot both see the other still active and both commit.
/// `NO KEY UPDATE` conflicts with itself and with `FOR UPDATE` (key regeneration) but not with
/// the key-share locks that inserts referencing the tenant take.
pub async fn lock_tenant_users(tx: &mut PgConnection, ctx: &TenantContext) -> Result<(), DbError> {
    sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
        .bind(ctx.tenant_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// How many active owners the tenant has.
pub async fn active_owners(tx: &mut PgConnection, ctx: &TenantContext) -> Result<i64, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE tenant_id = $1 AND role = 'owner' AND is_active",
    )
    .bind(ctx.tenant_id)
    .fetch_one(&mut *tx)
    .await?)
}

/// Applies changes and, when the user is deactivated, ends every token issued to them (their
/// credential version moves on, so reactivating them later does not revive old tokens, and
/// their refresh tokens are revoked).
pub async fn update(
    tx: &mut PgConnection,
    ctx: &TenantContext,
    id: UserId,
    c: UserChanges<'_>,
    now: DateTime<Utc>,
) -> Result<UserRow, DbError> {
    let row = sqlx::query_as::<_, UserRow>(sqlf!(
        "UPDATE users SET role = COALESCE($3, role), is_active = COALESCE($4, is_active), \
         first_name = COALESCE($5, first_name), last_name = COALESCE($6, last_name), \
         password_version = password_version + CASE WHEN $4 = FALSE AND is_active THEN 1 ELSE 0 END, \
         updated_at = $7 WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(id)
    .bind(c.role.map(Role::as_str))
    .bind(c.is_active)
    .bind(c.first_name)
    .bind(c.last_name)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    if c.is_active == Some(false) {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(row)
}

/// Sets a new password hash, bumps the password version and revokes every refresh token.
pub async fn change_password(
    tx: &mut PgConnection,
    ctx: &TenantContext,
    id: UserId,
    new_hash: &str,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let updated = sqlx::query(
        "UPDATE users SET password_hash = $3, password_version = password_version + 1, \
         updated_at = $4 WHERE tenant_id = $1 AND id = $2",
    )
    .bind(ctx.tenant_id)
    .bind(id)
    .bind(new_hash)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(DbError::NotFound);
    }
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
