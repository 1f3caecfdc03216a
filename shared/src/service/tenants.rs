//! Tenants: registration (the tenant, its owner, live and test keys and the seed's webhook
//! secret, at once), and the caller's own tenant.

use sqlx::PgPool;

use super::{ServiceError, ServiceResult, sessions::PasswordHash};
use crate::{
    crypto::{Encryptor, b64, random_bytes},
    db::{
        self, DbError,
        api_keys::ApiKeyRow,
        users::{Credentials, UserRow},
    },
    domain::{
        api_key::{GeneratedKey, KeyKind},
        email::Email,
        mode::Mode,
        person_name::PersonName,
        tenant::CompanyName,
    },
    ids::{TenantId, UserId},
    tenancy::TenantContext,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::tenants::TenantRow;

/// Who registers.
pub struct Registration<'a> {
    pub company: &'a CompanyName,
    pub email: &'a Email,
    pub password: &'a PasswordHash,
    pub first_name: &'a PersonName,
    pub last_name: &'a PersonName,
    pub domain: Option<&'a str>,
}

/// A new tenant with everything shown to its owner this once.
pub struct Registered {
    pub tenant: TenantRow,
    pub owner: UserRow,
    /// The owner's credential, to start their first session with.
    pub owner_credentials: Credentials,
    /// Live publishable, live secret, test publishable, test secret.
    pub keys: Vec<(GeneratedKey, ApiKeyRow)>,
    /// The seed's webhook signing secret (`whsec_…`).
    pub webhook_secret: String,
}

/// Creates a tenant with a unique slug, its owner, both modes' key pairs and a webhook secret.
pub async fn register(
    uow: &mut UnitOfWork,
    encryptor: &Encryptor,
    r: Registration<'_>,
) -> ServiceResult<Registered> {
    let generated: Vec<GeneratedKey> = [
        (KeyKind::Publishable, Mode::Live),
        (KeyKind::Secret, Mode::Live),
        (KeyKind::Publishable, Mode::Test),
        (KeyKind::Secret, Mode::Test),
    ]
    .into_iter()
    .map(|(k, m)| GeneratedKey::generate(k, m))
    .collect();
    let webhook_secret = format!("whsec_{}", b64(&random_bytes::<24>()));
    let last4 = &webhook_secret[webhook_secret.len() - 4..];
    let owner_id = UserId::new();
    let now = uow.now();
    let (tenant, key_rows) = db::tenants::register(
        uow.conn(),
        db::tenants::NewTenant {
            tenant_id: TenantId::new(),
            company_name: r.company.as_str(),
            slug_base: &r.company.slug_base(),
            email: r.email.as_str(),
            domain: r.domain,
            webhook_secret_enc: encryptor.encrypt(webhook_secret.as_bytes()),
            webhook_secret_last4: last4,
            owner_id,
            owner_password_hash: r.password.as_str(),
            first_name: r.first_name.as_str(),
            last_name: r.last_name.as_str(),
            keys: &generated,
            now,
        },
    )
    .await
    .map_err(|e| match e {
        DbError::UniqueViolation(c) if c == "users_email_key" => ServiceError::Conflict {
            code: "email_taken",
            field: Some("email".into()),
            message: "An account with this email already exists.".into(),
        },
        DbError::UniqueViolation(_) => ServiceError::conflict(
            "conflict",
            "A tenant with this name could not be given a unique slug; try again.",
        ),
        other => other.into(),
    })?;
    let owner_credentials = db::users::credentials_by_id(uow.conn(), owner_id).await?;
    let owner =
        db::users::get(uow.conn(), &owner_credentials.context(Mode::Test), owner_id).await?;
    Ok(Registered {
        tenant,
        owner,
        owner_credentials,
        keys: generated.into_iter().zip(key_rows).collect(),
        webhook_secret,
    })
}

/// The caller's own tenant.
pub async fn get(pool: &PgPool, ctx: &TenantContext) -> ServiceResult<TenantRow> {
    db::tenants::get(pool, ctx)
        .await
        .map_err(ServiceError::not_found("tenant"))
}

/// The caller's tenant with its counts of active users and active API keys.
pub async fn details(pool: &PgPool, ctx: &TenantContext) -> ServiceResult<(TenantRow, i64, i64)> {
    let tenant = get(pool, ctx).await?;
    let (users, keys) = db::tenants::counts(pool, ctx).await?;
    Ok((tenant, users, keys))
}
