//! Request and response bodies shared by several resources.

use poem_openapi::{Enum, Object};
use serde::Deserialize;
use shared::service::{api_keys::ApiKeyRow, tenants::TenantRow, users::UserRow};

/// A tenant (company) account.
#[derive(Debug, Object)]
pub struct TenantOut {
    /// Tenant id (`ten_…`).
    pub id: String,
    pub company_name: String,
    /// Unique URL-safe name.
    pub slug: String,
    pub email: String,
    #[oai(nullable)]
    pub domain: Option<String>,
    /// Platform fee taken on charges, in basis points (1500 = 15 %).
    pub platform_fee_bps: i32,
    /// The same fee as a percentage string, e.g. `"15.00"`.
    pub platform_fee_percentage: String,
    pub branding: serde_json::Value,
    pub is_active: bool,
    /// `free`, `pro` or `enterprise`.
    pub subscription_tier: String,
    #[oai(nullable)]
    pub stripe_connect_account_id: Option<String>,
    pub stripe_connect_status: String,
    /// Last four characters of the tenant's webhook signing secret.
    pub webhook_secret_last4: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<TenantRow> for TenantOut {
    fn from(t: TenantRow) -> Self {
        Self {
            id: t.id.to_string(),
            platform_fee_percentage: format!(
                "{}.{:02}",
                t.platform_fee_bps / 100,
                t.platform_fee_bps % 100
            ),
            company_name: t.company_name,
            slug: t.slug,
            email: t.email,
            domain: t.domain,
            platform_fee_bps: t.platform_fee_bps,
            branding: t.branding,
            is_active: t.is_active,
            subscription_tier: t.subscription_tier,
            stripe_connect_account_id: t.stripe_connect_account_id,
            stripe_connect_status: t.stripe_connect_status.to_string(),
            webhook_secret_last4: t.webhook_secret_last4,
            created_at: t.created_at,
        }
    }
}

/// A user of a tenant.
#[derive(Debug, Object)]
pub struct UserOut {
    /// User id (`usr_…`).
    pub id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// `owner`, `admin`, `developer` or `billing`.
    pub role: String,
    pub is_active: bool,
    #[oai(nullable)]
    pub last_login_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<UserRow> for UserOut {
    fn from(u: UserRow) -> Self {
        Self {
            id: u.id.to_string(),
            email: u.email,
            first_name: u.first_name,
            last_name: u.last_name,
            role: u.role.as_str().into(),
            is_active: u.is_active,
            last_login_at: u.last_login_at,
            created_at: u.created_at,
        }
    }
}

/// An API key as listed: never the key itself.
#[derive(Debug, Object)]
pub struct ApiKeyOut {
    /// Key id (`key_…`).
    pub id: String,
    /// `secret` or `publishable`.
    pub kind: String,
    /// `live` or `test`.
    pub mode: String,
    pub livemode: bool,
    /// e.g. `sk_test_`.
    pub prefix: String,
    pub last4: String,
    /// e.g. `sk_test_…a1b2`.
    pub display: String,
    /// `active` or `revoked`.
    pub status: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[oai(nullable)]
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<ApiKeyRow> for ApiKeyOut {
    fn from(k: ApiKeyRow) -> Self {
        Self {
            id: k.id.to_string(),
            display: k.display(),
            mode: if k.livemode { "live" } else { "test" }.into(),
            status: if k.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            }
            .into(),
            kind: k.kind,
            livemode: k.livemode,
            prefix: k.prefix,
            last4: k.last4,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// JWT access and refresh tokens.
#[derive(Debug, Object)]
pub struct TokensOut {
    /// Access token for `Authorization: Bearer …`.
    pub access: String,
    /// Refresh token; exchange it once at `/api/v1/auth/tenants/token/refresh`.
    pub refresh: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

/// A newly created key, shown in full this once.
#[derive(Debug, Object)]
pub struct NewKeyOut {
    /// Key id (`key_…`).
    pub id: String,
    pub kind: String,
    pub mode: String,
    /// The whole key. Store it now: it is never shown again.
    pub key: String,
}

/// Which keys an operation applies to.
#[derive(Debug, Clone, Copy, Enum, Deserialize, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum KeyModes {
    Live,
    Test,
    All,
}

impl KeyModes {
    pub fn modes(self) -> Vec<shared::domain::mode::Mode> {
        use shared::domain::mode::Mode;
        match self {
            KeyModes::Live => vec![Mode::Live],
            KeyModes::Test => vec![Mode::Test],
            KeyModes::All => vec![Mode::Live, Mode::Test],
        }
    }
}

/// Reads the list parameters every list takes (see [`shared::service::page_request`]).
pub fn page_request<E: std::fmt::Display>(
    limit: Option<i64>,
    starting_after: Option<String>,
    ending_before: Option<String>,
    parse: impl Fn(&str) -> Result<uuid::Uuid, E>,
) -> Result<shared::service::PageRequest, crate::error::ApiError> {
    Ok(shared::service::page_request(
        limit,
        starting_after.as_deref(),
        ending_before.as_deref(),
        parse,
    )?)
}

/// Parses optional key-value metadata (Stripe's limits).
pub fn metadata(
    m: Option<&std::collections::HashMap<String, String>>,
) -> Result<Option<shared::domain::catalog::Metadata>, crate::error::ApiError> {
    m.map(shared::domain::catalog::Metadata::parse)
        .transpose()
        .map_err(crate::error::ApiError::invalid("metadata"))
}

/// An optional id given in a body or a query (`400 field` when malformed).
pub fn optional_id<T, E: std::fmt::Display>(
    field: &str,
    raw: Option<&str>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<T>, crate::error::ApiError> {
    raw.map(parse)
        .transpose()
        .map_err(|e| crate::error::ApiError::validation(field, e.to_string()))
}

/// The problem for a field that cannot change after creation.
pub fn immutable(field: &str, what: &str) -> crate::error::ApiError {
    crate::error::ApiError {
        field: Some(field.into()),
        ..crate::error::ApiError::new(
            poem::http::StatusCode::BAD_REQUEST,
            "immutable_field",
            format!("`{field}` cannot change: create a new {what} instead."),
        )
    }
}
