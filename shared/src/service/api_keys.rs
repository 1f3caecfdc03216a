//! The tenant's API keys: listed masked, regenerated (shown once) and revoked per mode.

use sqlx::PgPool;

use super::ServiceResult;
use crate::{
    db::{
        self,
        events::{self, NewEvent},
    },
    domain::{
        api_key::{GeneratedKey, KeyKind},
        mode::Mode,
    },
    tenancy::TenantContext,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::api_keys::ApiKeyRow;

/// The tenant's keys, active ones first, newest first (never the keys themselves).
pub async fn list(pool: &PgPool, ctx: &TenantContext) -> ServiceResult<Vec<ApiKeyRow>> {
    Ok(db::api_keys::list(pool, ctx).await?)
}

/// Records one `event_type` event per key, in the key's own mode.
async fn record_each(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    rows: &[ApiKeyRow],
    event_type: &str,
) -> ServiceResult<()> {
    let now = uow.now();
    for mode in [Mode::Test, Mode::Live] {
        let batch: Vec<NewEvent> = rows
            .iter()
            .filter(|row| row.livemode == mode.livemode())
            .map(|row| NewEvent::new(event_type, row.to_json()))
            .collect();
        events::record_many(uow.conn(), ctx.scope_for(mode), &batch, now).await?;
    }
    Ok(())
}

/// New keys with the rows that hold them, and the keys they replaced.
pub struct Regenerated {
    /// The new keys in full (shown this once), each beside its stored row.
    pub keys: Vec<(GeneratedKey, ApiKeyRow)>,
    pub revoked: Vec<ApiKeyRow>,
}

/// Replaces the secret and publishable keys of `modes`: the old ones stop working when the
/// unit of work commits.
pub async fn regenerate(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    modes: &[Mode],
) -> ServiceResult<Regenerated> {
    let keys: Vec<GeneratedKey> = modes
        .iter()
        .flat_map(|&m| {
            [
                GeneratedKey::generate(KeyKind::Secret, m),
                GeneratedKey::generate(KeyKind::Publishable, m),
            ]
        })
        .collect();
    let now = uow.now();
    let (revoked, created) =
        db::api_keys::regenerate(uow.conn(), ctx, &keys, &ctx.actor.audit_name(), now).await?;
    record_each(uow, ctx, &revoked, "api_key.revoked").await?;
    record_each(uow, ctx, &created, "api_key.created").await?;
    Ok(Regenerated {
        keys: keys.into_iter().zip(created).collect(),
        revoked,
    })
}

/// Revokes the active keys of `modes`; returns them.
pub async fn revoke(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    modes: &[Mode],
) -> ServiceResult<Vec<ApiKeyRow>> {
    let now = uow.now();
    let revoked =
        db::api_keys::revoke(uow.conn(), ctx, modes, &ctx.actor.audit_name(), now).await?;
    record_each(uow, ctx, &revoked, "api_key.revoked").await?;
    Ok(revoked)
}
