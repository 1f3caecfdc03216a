//! Delivers one webhook: signs the event per the Standard Webhooks specification and POSTs it
//! to the endpoint, then decides what follows (done, retry on the schedule, failed, endpoint
//! disabled). Every attempt of a delivery carries the same `webhook-id`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::{
    db::webhook_deliveries::{Attempt, Completion, SendItem},
    domain::webhook::{
        AttemptResult, DeliveryStatus, EndpointChange, SigningSecret, UrlPolicy, WebhookUrl,
        decide, signature_header,
    },
    ids::DeliveryId,
    jobs::{Claimed, Finished, Outcome},
};

use crate::{Runtime, http};

/// How a delivery run ends: a delivery to record, or (the delivery is gone) just the job.
#[derive(Debug)]
pub enum Done {
    Delivery(Box<Completion>),
    Job(Finished),
}

/// Why an endpoint's signing secret cannot sign.
#[derive(Debug, thiserror::Error)]
enum SecretError {
    #[error("the signing secret cannot be decrypted (APP_SECRET changed?)")]
    Undecryptable,
    #[error("the signing secret is corrupt")]
    Corrupt,
    #[error("the signing secret is invalid: {0}")]
    Invalid(String),
}

/// The signing keys: the current secret, and the previous one while it still signs.
fn signing_keys(
    rt: &Runtime,
    item: &SendItem,
    now: DateTime<Utc>,
) -> Result<Vec<Vec<u8>>, SecretError> {
    let decrypt = |enc: &[u8]| -> Result<Vec<u8>, SecretError> {
        let raw = rt
            .encryptor
            .decrypt(enc)
            .map_err(|_| SecretError::Undecryptable)?;
        let text = String::from_utf8(raw).map_err(|_| SecretError::Corrupt)?;
        SigningSecret::parse(&text)
            .map(|s| s.key())
            .map_err(|e| SecretError::Invalid(e.to_string()))
    };
    let mut keys = vec![decrypt(&item.secret_enc)?];
    if let (Some(prev), Some(until)) = (&item.previous_secret_enc, item.previous_secret_expires_at)
        && until > now
    {
        keys.push(decrypt(prev)?);
    }
    Ok(keys)
}

pub async fn run(rt: &Runtime, job: &Claimed, item: Option<&SendItem>) -> Done {
    let Some(item) = item else {
        // The delivery (or its endpoint or event) was deleted: nothing left to do.
        return Done::Job(Finished {
            id: job.id,
            token: job.token,
            outcome: Outcome::Succeeded,
        });
    };
    let scope = item.scope();
    let completion = |status, next_attempt_at, attempt, endpoint, outcome| {
        Done::Delivery(Box::new(Completion {
            job: Finished {
                id: job.id,
                token: job.token,
                outcome,
            },
            delivery_id: item.delivery_id,
            endpoint_id: item.endpoint_id,
            scope,
            attempt,
            status,
            next_attempt_at,
            endpoint,
        }))
    };
    if item.status == DeliveryStatus::Succeeded {
        // A duplicate run after success: already delivered.
        return completion(
            DeliveryStatus::Succeeded,
            None,
            None,
            None,
            Outcome::Succeeded,
        );
    }
    if !item.enabled {
        return completion(
            DeliveryStatus::Failed,
            None,
            None,
            None,
            Outcome::Dead {
                error: "the endpoint is disabled".into(),
            },
        );
    }

    let settings = &rt.settings.webhooks;
    let now = rt.clock.now();
    let policy = UrlPolicy {
        livemode: item.livemode,
        allow_private: settings.allow_private_targets,
    };
    let answer = match WebhookUrl::parse(&item.url, policy) {
        Err(e) => refused(format!("refused: the URL {e}")),
        Ok(url) => match signing_keys(rt, item, now) {
            Err(e) => refused(e.to_string()),
            Ok(keys) => {
                let body = item.body();
                let msg_id = DeliveryId::from_uuid(item.delivery_id).to_string();
                let timestamp = now.timestamp();
                let signature = signature_header(&keys, &msg_id, timestamp, &body);
                let headers = vec![
                    ("webhook-id", msg_id),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signature),
                ];
                http::post(&rt.http, url.as_str(), headers, body).await
            }
        },
    };
    let result = match answer.status {
        Some(status) => AttemptResult::Answered(status),
        None => AttemptResult::NoAnswer(answer.error.clone().unwrap_or_default()),
    };
    let finished_at = rt.clock.now();
    let decision = decide(
        &result,
        job.attempts,
        &settings.retry_schedule,
        item.failing_since,
        settings.disable_after,
        finished_at,
    );
    let error = match (&result, &answer.error) {
        (AttemptResult::Answered(s), None) => format!("the endpoint answered {s}"),
        (AttemptResult::Answered(s), Some(e)) => format!("the endpoint answered {s}; {e}"),
        (AttemptResult::NoAnswer(e), _) => e.clone(),
    };
    let outcome = match (decision.status, decision.retry_at) {
        (DeliveryStatus::Succeeded, _) => Outcome::Succeeded,
        (DeliveryStatus::Pending, Some(at)) => Outcome::Retry {
            at,
            error: error.clone(),
        },
        _ => Outcome::Dead {
            error: error.clone(),
        },
    };
    let attempt = Attempt {
        number: item.delivery_attempts + 1,
        at: now,
        status_code: answer.status.and_then(|s| i16::try_from(s).ok()),
        latency_ms: i32::try_from(answer.latency.as_millis()).unwrap_or(i32::MAX),
        response_body: answer.body,
        error: if result.succeeded() {
            None
        } else {
            Some(error)
        },
    };
    // Only a change to the endpoint's health is written: a success while it was not failing, or
    // a failure while a run of failures is already recorded, leaves it as it is.
    let endpoint = match (decision.endpoint, item.failing_since) {
        (EndpointChange::Healthy, None) | (EndpointChange::Failing(_), Some(_)) => None,
        (change, _) => Some(change),
    };
    completion(
        decision.status,
        decision.retry_at,
        Some(attempt),
        endpoint,
        outcome,
    )
}

fn refused(error: String) -> http::Answer {
    http::Answer {
        status: None,
        body: String::new(),
        error: Some(error),
        latency: Duration::ZERO,
    }
}
