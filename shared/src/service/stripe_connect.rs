//! Stripe Connect: a tenant's connected account per mode. Onboarding goes through an Account
//! Link whose return carries a signed, expiring, single-use `state`; the account's state then
//! comes from that return and from Stripe's `account.updated` events, both applied by
//! [`apply_account`], so either path leaves the same account and records the same events:
//!
//! - `stripe_account.updated` whenever a newer description of the account is applied;
//! - `stripe_account.connected` once, when onboarding completes (the catalog sync is queued);
//! - `stripe_account.disconnected` when the tenant disconnects.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{ServiceError, ServiceResult};
use crate::{
    db::{self, DbError, catalog_sync, events::NewEvent, stripe_accounts::AccountState},
    stripe::{Account, Stripe},
    tenancy::{Scope, TenantContext},
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::stripe_accounts::{AccountRow, ConnectStatus};

/// How long an onboarding `state` is good for.
pub const STATE_TTL_MINUTES: i64 = 30;

fn state_mac(key: &[u8], nonce: Uuid, expires: i64) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(nonce.simple().to_string().as_bytes());
    mac.update(b".");
    mac.update(expires.to_string().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `nonce.expires.signature`.
fn sign_state(key: &[u8], nonce: Uuid, expires: i64) -> String {
    format!(
        "{}.{expires}.{}",
        nonce.simple(),
        hex::encode(state_mac(key, nonce, expires))
    )
}

fn bad_state() -> ServiceError {
    ServiceError::invalid("state", "is invalid, expired or already used")
}

/// Checks a state's signature and expiry; returns its nonce.
fn check_state(key: &[u8], raw: &str, now: i64) -> ServiceResult<Uuid> {
    let mut parts = raw.split('.');
    let (Some(nonce), Some(expires), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_state());
    };
    let nonce = Uuid::parse_str(nonce).map_err(|_| bad_state())?;
    let expires: i64 = expires.parse().map_err(|_| bad_state())?;
    let sig = hex::decode(sig).map_err(|_| bad_state())?;
    if !bool::from(sig.as_slice().ct_eq(&state_mac(key, nonce, expires))) || expires <= now {
        return Err(bad_state());
    }
    Ok(nonce)
}

/// The account as events carry it.
fn account_json(row: &AccountRow) -> serde_json::Value {
    serde_json::json!({
        "object": "stripe_account",
        "account_id": row.account_id,
        "status": row.status,
        "charges_enabled": row.charges_enabled,
        "payouts_enabled": row.payouts_enabled,
        "details_submitted": row.details_submitted,
        "livemode": row.livemode,
    })
}

async fn record(
    uow: &mut UnitOfWork,
    scope: Scope,
    event_type: &str,
    row: &AccountRow,
) -> ServiceResult<()> {
    let now = uow.now();
    db::events::record(
        uow.conn(),
        scope,
        NewEvent::new(event_type, account_json(row)),
        now,
    )
    .await?;
    Ok(())
}

/// The connected account of the caller's mode, if any was ever connected.
pub async fn status(pool: &PgPool, ctx: &TenantContext) -> ServiceResult<Option<AccountRow>> {
    let mut conn = pool.acquire().await.map_err(DbError::from)?;
    Ok(db::stripe_accounts::get(&mut conn, ctx.scope()).await?)
}

/// Where the tenant's browser goes to onboard, prepared with Stripe before any unit of work.
#[derive(Debug)]
pub struct Onboarding {
    pub account_id: String,
    /// Stripe's onboarding link.
    pub url: String,
    /// The signed, single-use value the return carries back.
    pub state: String,
    /// When the link stops working (Unix seconds).
    pub link_expires_at: i64,
    nonce: Uuid,
    state_expires_at: DateTime<Utc>,
    /// The account the tenant had before, when it was another one.
    replaced: bool,
}

/// Creates (once) the tenant's Express account in the caller's mode and an onboarding link
/// returning to `return_url` with a signed `state` (appended as `?state=…`). Talks to Stripe
/// only; [`record_onboarding`] stores the result.
pub async fn prepare_onboarding(
    pool: &PgPool,
    stripe: &Stripe,
    ctx: &TenantContext,
    state_key: &[u8; 32],
    return_url: &str,
    now: DateTime<Utc>,
) -> ServiceResult<Onboarding> {
    let livemode = ctx.livemode();
    if !stripe.configured(livemode) {
        return Err(crate::stripe::Failure::NotConfigured.into());
    }
    let current = status(pool, ctx).await?;
    let account_id = match current.as_ref().and_then(|r| r.usable_id()) {
        Some(id) => id.to_owned(),
        None => {
            let tenant = db::tenants::get(pool, ctx).await?;
            // The same key while nothing changed: a retried request finds the same account.
            let generation = current
                .as_ref()
                .map_or(0, |r| r.updated_at.timestamp_micros());
            let key = format!("account-{}-{livemode}-{generation}", ctx.tenant_id);
            let metadata = HashMap::from([("tenant_id".to_owned(), ctx.tenant_id.to_string())]);
            stripe
                .create_account(livemode, &key, &tenant.email, metadata)
                .await?
        }
    };
    let nonce = Uuid::new_v4();
    let state_expires_at = now + chrono::Duration::minutes(STATE_TTL_MINUTES);
    let state = sign_state(state_key, nonce, state_expires_at.timestamp());
    let back = format!("{return_url}?state={state}");
    let link = stripe
        .onboarding_link(livemode, &account_id, &back, &back)
        .await?;
    let replaced = current
        .as_ref()
        .and_then(|r| r.account_id.as_deref())
        .is_some_and(|p| p != account_id);
    Ok(Onboarding {
        account_id,
        url: link.url,
        state,
        link_expires_at: link.expires_at,
        nonce,
        state_expires_at,
        replaced,
    })
}

/// Records an onboarding under way and its single-use `state`.
pub async fn record_onboarding(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    o: &Onboarding,
) -> ServiceResult<AccountRow> {
    let now = uow.now();
    if o.replaced {
        // A new account: what the old one held must be created there afresh.
        catalog_sync::forget_stripe_ids(uow.conn(), ctx.scope()).await?;
    }
    let row = db::stripe_accounts::start_onboarding(uow.conn(), ctx, &o.account_id, now).await?;
    db::stripe_accounts::mirror_to_tenant(uow.conn(), &row).await?;
    db::stripe_accounts::new_state(uow.conn(), ctx, o.nonce, now, o.state_expires_at).await?;
    Ok(row)
}

/// What applying a description of an account did.
#[derive(Debug)]
pub enum Applied {
    /// The account now reads as given.
    Applied(AccountRow),
    /// A newer description was applied already (Stripe does not promise order), or the
    /// account is no longer the tenant's: nothing changed.
    Stale,
}

/// Applies what Stripe says about a tenant's account, the one path for the onboarding return
/// and for `account.updated`: the account's flags, `connected` once details are submitted
/// (then the catalog sync is queued and `stripe_account.connected` recorded, once), the
/// tenant's seed fields, and `stripe_account.updated`.
pub async fn apply_account(
    uow: &mut UnitOfWork,
    scope: Scope,
    account_id: &str,
    state: &AccountState,
) -> ServiceResult<Applied> {
    let now = uow.now();
    let was_connected = db::stripe_accounts::lock(uow.conn(), scope)
        .await?
        .is_some_and(|r| r.status == ConnectStatus::Connected);
    let Some(row) = db::stripe_accounts::apply_state(
        uow.conn(),
        scope,
        account_id,
        state,
        state.details_submitted,
        now,
    )
    .await?
    else {
        return Ok(Applied::Stale);
    };
    db::stripe_accounts::mirror_to_tenant(uow.conn(), &row).await?;
    record(uow, scope, "stripe_account.updated", &row).await?;
    if row.status == ConnectStatus::Connected && !was_connected {
        catalog_sync::schedule_all_unsynced(uow.conn(), scope, now).await?;
        record(uow, scope, "stripe_account.connected", &row).await?;
    }
    Ok(Applied::Applied(row))
}

/// The account as read from Stripe just now.
fn fresh_state(account: &Account, now: DateTime<Utc>) -> AccountState {
    AccountState {
        charges_enabled: account.charges_enabled,
        payouts_enabled: account.payouts_enabled,
        details_submitted: account.details_submitted,
        requirements: account.requirements.clone(),
        seen_at: now,
    }
}

/// The return from onboarding: the `state` (checked, used once) names the tenant and mode;
/// the account is read from Stripe and applied. Returns the scope and the account.
pub async fn complete_onboarding(
    uow: &mut UnitOfWork,
    stripe: &Stripe,
    state_key: &[u8; 32],
    raw_state: &str,
) -> ServiceResult<(Scope, AccountRow)> {
    let now = uow.now();
    let nonce = check_state(state_key, raw_state, now.timestamp())?;
    let scope = db::stripe_accounts::use_state(uow.conn(), nonce, now)
        .await?
        .ok_or_else(bad_state)?;
    let Some(account_id) = db::stripe_accounts::get(uow.conn(), scope)
        .await?
        .and_then(|r| r.usable_id().map(str::to_owned))
    else {
        return Err(ServiceError::conflict(
            "stripe_not_onboarding",
            "No onboarding is under way for this tenant; start again.",
        ));
    };
    let account = stripe.account(scope.livemode, &account_id).await?;
    let row = match apply_account(uow, scope, &account_id, &fresh_state(&account, now)).await? {
        Applied::Applied(row) => row,
        Applied::Stale => db::stripe_accounts::get(uow.conn(), scope)
            .await?
            .ok_or_else(bad_state)?,
    };
    Ok((scope, row))
}

/// The platform stops acting on the account (it stays with Stripe); catalog changes are no
/// longer synced.
pub async fn disconnect(uow: &mut UnitOfWork, ctx: &TenantContext) -> ServiceResult<AccountRow> {
    let now = uow.now();
    let row = db::stripe_accounts::disconnect(uow.conn(), ctx, now)
        .await
        .map_err(|e| match e {
            DbError::NotFound => ServiceError::conflict(
                "stripe_not_connected",
                "No Stripe account is connected in this mode.",
            ),
            other => other.into(),
        })?;
    db::stripe_accounts::mirror_to_tenant(uow.conn(), &row).await?;
    record(uow, ctx.scope(), "stripe_account.disconnected", &row).await?;
    Ok(row)
}

/// What an `account.updated` event did.
#[derive(Debug, PartialEq, Eq)]
pub enum EventOutcome {
    Applied,
    /// Applied from a fresh read of the account (the event's time was ambiguous).
    AppliedAfresh,
    Stale,
    /// The event names no account of any tenant.
    Unknown,
}

impl EventOutcome {
    /// How the stored event records it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::AppliedAfresh => "applied: read afresh",
            Self::Stale => "stale: a newer state of the account was applied already",
            Self::Unknown => "ignored: not a connected account of any tenant",
        }
    }
}

/// The description of an account an `account.updated` event carries.
fn event_state(object: &serde_json::Value, created: DateTime<Utc>) -> AccountState {
    AccountState {
        charges_enabled: object["charges_enabled"].as_bool().unwrap_or(false),
        payouts_enabled: object["payouts_enabled"].as_bool().unwrap_or(false),
        details_submitted: object["details_submitted"].as_bool().unwrap_or(false),
        requirements: object["requirements"].clone(),
        seen_at: created,
    }
}

/// Applies an `account.updated` event. When the event and the last applied description fall
/// in the same second, which came first is unknowable, so the account is read afresh.
pub async fn account_updated(
    uow: &mut UnitOfWork,
    stripe: &Stripe,
    account_id: &str,
    livemode: bool,
    object: &serde_json::Value,
    created: DateTime<Utc>,
) -> ServiceResult<EventOutcome> {
    let Some(current) = db::unscoped::stripe_account(uow.conn(), account_id, livemode).await?
    else {
        return Ok(EventOutcome::Unknown);
    };
    let scope = current.scope();
    let in_doubt = current
        .stripe_seen_at
        .is_some_and(|seen| seen.timestamp() == created.timestamp());
    let state = if in_doubt {
        let fresh = stripe.account(livemode, account_id).await?;
        // Stripe's answer now is at least as new as anything applied.
        fresh_state(&fresh, uow.now().max(created))
    } else {
        event_state(object, created)
    };
    Ok(match apply_account(uow, scope, account_id, &state).await? {
        Applied::Stale => EventOutcome::Stale,
        Applied::Applied(_) if in_doubt => EventOutcome::AppliedAfresh,
        Applied::Applied(_) => EventOutcome::Applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_verify_once_signed_and_fail_when_tampered_or_expired() {
        let key = [7u8; 32];
        let nonce = Uuid::new_v4();
        let s = sign_state(&key, nonce, 2_000);
        assert_eq!(check_state(&key, &s, 1_000).unwrap(), nonce);
        assert!(check_state(&key, &s, 2_000).is_err(), "expired");
        assert!(check_state(&[8u8; 32], &s, 1_000).is_err(), "other key");
        let tampered = s.replace(".2000.", ".3000.");
        assert!(check_state(&key, &tampered, 1_000).is_err());
        assert!(check_state(&key, "garbage", 1_000).is_err());
    }
}
