//! The tenant's API keys (seed contract under `/api/v1/auth/tenants/api-keys/…`).

use poem::Request;
use poem_openapi::{Object, OpenApi, payload::Json};
use serde::Deserialize;
use shared::{service::api_keys, tenancy::Permission};

use super::{
    ApiTags,
    dto::{ApiKeyOut, KeyModes, NewKeyOut},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct ApiKeysApi;

#[derive(Debug, Object)]
pub struct ApiKeyList {
    /// Active keys first, then revoked ones; never the keys themselves.
    pub data: Vec<ApiKeyOut>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RegenerateIn {
    /// `live`, `test` or `all`. Give this or `key_type`, not both.
    pub mode: Option<KeyModes>,
    /// Another name for `mode`.
    pub key_type: Option<KeyModes>,
    /// Optional; when given it must be `true`.
    #[oai(nullable)]
    pub confirm: Option<bool>,
}

#[derive(Debug, Object)]
pub struct RegenerateOut {
    /// The new keys, shown in full this once.
    pub keys: Vec<NewKeyOut>,
    /// Ids of the keys that stopped working.
    pub revoked: Vec<String>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RevokeIn {
    /// `live`, `test` or `all`. Give this or `key_type`, not both.
    pub mode: Option<KeyModes>,
    /// Another name for `mode`.
    pub key_type: Option<KeyModes>,
    /// Must be `true`: revoked keys stop working at once and cannot be restored.
    pub confirm: bool,
}

/// The keys a request names, by `mode` or by its other name `key_type`.
fn key_modes(mode: Option<KeyModes>, key_type: Option<KeyModes>) -> Result<KeyModes, ApiError> {
    match (mode, key_type) {
        (Some(m), None) | (None, Some(m)) => Ok(m),
        (Some(_), Some(_)) => Err(ApiError::validation(
            "key_type",
            "cannot be combined with mode (it is another name for it)",
        )),
        (None, None) => Err(ApiError::validation(
            "mode",
            "is required: `live`, `test` or `all` (or give it as `key_type`)",
        )),
    }
}

#[derive(Debug, Object)]
pub struct RevokeOut {
    pub revoked: Vec<ApiKeyOut>,
}

async fn revoke(
    state: &AppState,
    req: &Request,
    auth: &Auth,
    body: RevokeIn,
) -> Result<Json<RevokeOut>, ApiError> {
    let ctx = auth.require(Permission::ManageApiKeys)?;
    let modes = key_modes(body.mode, body.key_type)?;
    if !body.confirm {
        return Err(ApiError::validation(
            "confirm",
            "must be true to revoke keys",
        ));
    }
    let mut work = Work::begin(req).await?;
    let revoked = api_keys::revoke(&mut work, ctx, &modes.modes()).await?;
    let state = state.clone();
    work.after_commit(move || crate::auth::forget_keys(&state));
    let ids: Vec<String> = revoked.iter().map(|k| k.id.to_string()).collect();
    note(req, |n| n.object_id = Some(ids.join(",")));
    Ok(Json(RevokeOut {
        revoked: revoked.into_iter().map(Into::into).collect(),
    }))
}

#[OpenApi]
impl ApiKeysApi {
    /// List API keys
    ///
    /// The tenant's keys, masked to prefix and last four characters. Owners and admins only.
    #[oai(
        path = "/api/v1/auth/tenants/api-keys",
        method = "get",
        operation_id = "api_keys.list",
        tag = "ApiTags::ApiKeys"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> Result<Json<ApiKeyList>, ApiError> {
        let ctx = auth.require(Permission::ManageApiKeys)?;
        let rows = api_keys::list(&state.pool, ctx).await?;
        Ok(Json(ApiKeyList {
            data: rows.into_iter().map(Into::into).collect(),
        }))
    }

    /// Regenerate API keys
    ///
    /// Replaces the secret and publishable keys of the given mode (or both modes), named by
    /// `mode` or `key_type`. The old keys stop working at once; the new ones are shown only in
    /// this response.
    #[oai(
        path = "/api/v1/auth/tenants/api-keys/regenerate",
        method = "post",
        operation_id = "api_keys.regenerate",
        tag = "ApiTags::ApiKeys"
    )]
    async fn regenerate(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<RegenerateIn>,
    ) -> Result<Json<RegenerateOut>, ApiError> {
        let ctx = auth.require(Permission::ManageApiKeys)?;
        let b = body.0;
        let modes = key_modes(b.mode, b.key_type)?;
        if b.confirm == Some(false) {
            return Err(ApiError::validation(
                "confirm",
                "must be true (or left out) to regenerate keys",
            ));
        }
        let mut work = Work::begin(req).await?;
        let done = api_keys::regenerate(&mut work, ctx, &modes.modes()).await?;
        let state = state.clone();
        work.after_commit(move || crate::auth::forget_keys(&state));
        let new_ids: Vec<String> = done
            .keys
            .iter()
            .map(|(_, row)| row.id.to_string())
            .collect();
        note(req, |n| n.object_id = Some(new_ids.join(",")));
        Ok(Json(RegenerateOut {
            keys: done
                .keys
                .into_iter()
                .map(|(k, row)| NewKeyOut {
                    id: row.id.to_string(),
                    kind: k.kind.as_str().into(),
                    mode: k.mode.as_str().into(),
                    key: k.full,
                })
                .collect(),
            revoked: done.revoked.iter().map(|k| k.id.to_string()).collect(),
        }))
    }

    /// Revoke API keys
    ///
    /// Revokes the keys of the given mode (or both), named by `mode` or `key_type`. Needs
    /// `"confirm": true`. Recorded in the audit log with who, when and which keys.
    #[oai(
        path = "/api/v1/auth/tenants/api-keys/revoke",
        method = "delete",
        operation_id = "api_keys.revoke",
        tag = "ApiTags::ApiKeys"
    )]
    async fn revoke_delete(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<RevokeIn>,
    ) -> Result<Json<RevokeOut>, ApiError> {
        revoke(&state, req, &auth, body.0).await
    }

    /// Revoke API keys (POST)
    ///
    /// The same as `DELETE /api/v1/auth/tenants/api-keys/revoke`.
    #[oai(
        path = "/api/v1/auth/tenants/api-keys/revoke",
        method = "post",
        operation_id = "api_keys.revoke_post",
        tag = "ApiTags::ApiKeys"
    )]
    async fn revoke_post(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<RevokeIn>,
    ) -> Result<Json<RevokeOut>, ApiError> {
        revoke(&state, req, &auth, body.0).await
    }
}
