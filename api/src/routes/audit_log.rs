//! The audit log, read-only.

use poem_openapi::{Object, OpenApi, param::Query, payload::Json};
use shared::tenancy::Permission;

use super::ApiTags;
use crate::{auth::Auth, error::ApiError, state::AppState};

pub struct AuditLogApi;

/// One audited request.
#[derive(Debug, Object)]
pub struct AuditEntryOut {
    /// Sequence number; pass it as `before` for the next page.
    pub id: i64,
    pub livemode: bool,
    /// A user id or a masked key (`sk_test_…abcd`).
    pub actor: String,
    /// The operation, e.g. `api_keys.revoke`.
    pub action: String,
    #[oai(nullable)]
    pub object_id: Option<String>,
    pub request_id: String,
    #[oai(nullable)]
    pub client_addr: Option<String>,
    /// The HTTP status the request got.
    pub outcome: i16,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Object)]
pub struct AuditEntryList {
    pub data: Vec<AuditEntryOut>,
    pub has_more: bool,
}

#[OpenApi]
impl AuditLogApi {
    /// List audit entries
    ///
    /// Every mutating request of the tenant, newest first. Owners and admins only.
    #[oai(
        path = "/api/v1/audit-log",
        method = "get",
        operation_id = "audit_log.list",
        tag = "ApiTags::AuditLog"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// 1 to 100; default 20.
        limit: Query<Option<i64>>,
        /// Entries older than this id.
        before: Query<Option<i64>>,
    ) -> Result<Json<AuditEntryList>, ApiError> {
        let ctx = auth.require(Permission::ManageApiKeys)?;
        let limit = limit.0.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::validation("limit", "must be between 1 and 100"));
        }
        let page = shared::service::audit::list(&state.pool, ctx, limit, before.0).await?;
        Ok(Json(AuditEntryList {
            has_more: page.has_more,
            data: page
                .items
                .into_iter()
                .map(|r| AuditEntryOut {
                    id: r.id,
                    livemode: r.livemode,
                    actor: r.actor,
                    action: r.action,
                    object_id: r.object_id,
                    request_id: r.request_id,
                    client_addr: r.client_addr,
                    outcome: r.outcome,
                    created_at: r.created_at,
                })
                .collect(),
        }))
    }
}
