//! Processes an event received from Stripe (stored once per event id by the API).
//!
//! `account.updated` refreshes the connected account unless a newer description was applied
//! already (Stripe does not promise order); when the event and the last description fall in
//! the same second, which came first is unknowable, so the account is read afresh from Stripe. Events about subscriptions, invoices, payment
//! intents and payment methods concern objects this platform does not keep yet: they are
//! recorded as ignored, with the reason.

use shared::{
    db::{
        DbError, catalog_sync,
        events::NewEvent,
        stripe_accounts::{self, AccountState},
        stripe_events,
    },
    jobs::{Claimed, Finished, Outcome, Queue},
    tenancy::Scope,
};

use crate::Runtime;

/// Types the platform knows and may act on once it keeps their objects.
const KNOWN_PREFIXES: [&str; 5] = [
    "customer.subscription.",
    "invoice.payment_",
    "payment_intent.",
    "payment_method.attached",
    "payment_method.detached",
];

pub async fn run(rt: &Runtime, job: &Claimed) -> Finished {
    let outcome = match process(rt, job).await {
        Ok(()) => Outcome::Succeeded,
        Err(e) => Outcome::after_failure(
            crate::retry_policy(&rt.settings, Queue::StripeSync),
            job.attempts,
            job.max_attempts,
            rt.clock.now(),
            e.to_string(),
        ),
    };
    Finished {
        id: job.id,
        token: job.token,
        outcome,
    }
}

async fn process(rt: &Runtime, job: &Claimed) -> Result<(), String> {
    let Some(event_id) = job.payload["event_id"].as_str() else {
        return Ok(());
    };
    let event = match stripe_events::get(&rt.pool, event_id).await {
        Ok(e) => e,
        Err(DbError::NotFound) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if event.processed_at.is_some() {
        return Ok(());
    }
    let ignored = match event.event_type.as_str() {
        "account.updated" => return account_updated(rt, &event).await,
        t if KNOWN_PREFIXES.iter().any(|p| t.starts_with(p)) => {
            "ignored: the platform does not keep this object yet"
        }
        _ => "ignored: not an event type the platform acts on",
    };
    let mut conn = rt.pool.acquire().await.map_err(|e| e.to_string())?;
    stripe_events::mark_processed(&mut conn, &event.id, ignored, rt.clock.now())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Records an outcome that changed nothing.
async fn settle(rt: &Runtime, id: &str, outcome: &str) -> Result<(), String> {
    let mut conn = rt.pool.acquire().await.map_err(|e| e.to_string())?;
    stripe_events::mark_processed(&mut conn, id, outcome, rt.clock.now())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn account_updated(
    rt: &Runtime,
    event: &stripe_events::StripeEventRow,
) -> Result<(), String> {
    let object = &event.payload["data"]["object"];
    let Some(account_id) = object["id"].as_str().or(event.account.as_deref()) else {
        return settle(rt, &event.id, "ignored: no account id").await;
    };
    let Some(row) = stripe_accounts::by_account(&rt.pool, account_id, event.livemode)
        .await
        .map_err(|e| e.to_string())?
    else {
        return settle(
            rt,
            &event.id,
            "ignored: not a connected account of any tenant",
        )
        .await;
    };
    let scope = Scope {
        tenant_id: row.tenant_id,
        livemode: row.livemode,
    };
    let now = rt.clock.now();
    let in_doubt = row
        .stripe_seen_at
        .is_some_and(|seen| seen.timestamp() == event.created.timestamp());
    let state = if in_doubt {
        let fresh = rt
            .stripe
            .account(event.livemode, account_id)
            .await
            .map_err(|e| format!("re-reading the account: {e}"))?;
        AccountState {
            charges_enabled: fresh.charges_enabled,
            payouts_enabled: fresh.payouts_enabled,
            details_submitted: fresh.details_submitted,
            requirements: object["requirements"].clone(),
            // Stripe's answer now is at least as new as anything applied.
            seen_at: now.max(event.created),
        }
    } else {
        AccountState {
            charges_enabled: object["charges_enabled"].as_bool().unwrap_or(false),
            payouts_enabled: object["payouts_enabled"].as_bool().unwrap_or(false),
            details_submitted: object["details_submitted"].as_bool().unwrap_or(false),
            requirements: object["requirements"].clone(),
            seen_at: event.created,
        }
    };
    let details_submitted = state.details_submitted;
    let was_connected = row.status == "connected";
    let db = |e: DbError| e.to_string();
    let mut tx = rt.pool.begin().await.map_err(|e| e.to_string())?;
    let outcome = if in_doubt {
        "applied: read afresh"
    } else {
        "applied"
    };
    // Claim the event first: a second run of this job changes nothing.
    if !stripe_events::mark_processed(&mut tx, &event.id, outcome, now)
        .await
        .map_err(db)?
    {
        return Ok(());
    }
    let Some(applied) =
        stripe_accounts::apply_state(&mut tx, scope, account_id, &state, details_submitted, now)
            .await
            .map_err(db)?
    else {
        tx.rollback().await.map_err(|e| e.to_string())?;
        return settle(
            rt,
            &event.id,
            "stale: a newer state of the account was applied already",
        )
        .await;
    };
    stripe_accounts::mirror_to_tenant(&mut tx, &applied)
        .await
        .map_err(db)?;
    if applied.status == "connected" && !was_connected {
        catalog_sync::schedule_all_unsynced(&mut tx, scope, now)
            .await
            .map_err(db)?;
    }
    let object = serde_json::json!({
        "object": "stripe_account",
        "account_id": applied.account_id,
        "status": applied.status,
        "charges_enabled": applied.charges_enabled,
        "payouts_enabled": applied.payouts_enabled,
        "details_submitted": applied.details_submitted,
        "livemode": applied.livemode,
    });
    shared::db::events::record(
        &mut tx,
        scope,
        NewEvent::new("stripe_account.updated", object),
        now,
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(|e| e.to_string())
}
