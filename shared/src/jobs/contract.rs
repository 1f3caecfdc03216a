//! The typed job contract: every job the platform queues, what it carries, the queue that runs
//! it, and the key that makes two of them the same job.
//!
//! A job's id is derived from its deduplication key, so the outbox's primary key keeps one job
//! per key: the object's own id when one object is the key (a delivery, a catalog object), a
//! UUIDv5 of the key otherwise (a Stripe event today; a renewal per (subscription, period) or a
//! dunning attempt per (invoice, attempt) tomorrow). Producers build a [`Job`]; the worker
//! parses a claimed row back into one and dispatches with a `match`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{NewJob, Queue};
use crate::{
    db::catalog_sync::Synced,
    ids::{DeliveryId, InvoiceId, RefundId, SubscriptionId, TestClockId},
    tenancy::Scope,
};

/// The namespace of job ids derived from deduplication keys.
const JOB_NAMESPACE: Uuid = Uuid::from_u128(0x6a0b_5c1e_7f3d_4e2a_9b8c_1d2e_3f4a_5b6c);

/// Every job the platform runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Send one webhook delivery (its retries are the same job, due again).
    DeliverWebhook { delivery: DeliveryId },
    /// Bring Stripe up to date with one catalog object (only its latest state matters).
    SyncCatalog { what: Synced, id: Uuid },
    /// Apply one event received from Stripe (stored once per Stripe event id).
    ProcessStripeEvent { event_id: String },
    /// Charge an invoice: one job per (invoice, attempt number), so an attempt runs once.
    PayInvoice { invoice: InvoiceId, attempt: i32 },
    /// End the dunning of an invoice whose attempt `attempt` was declined (the policy's final
    /// action), unless a later attempt was made or it was paid: one job per (invoice, attempt).
    /// Attempt 0: an invoice sent for payment, overdue, that was never charged.
    EndDunning { invoice: InvoiceId, attempt: i32 },
    /// At the due date of an invoice sent for payment: if still unpaid it is overdue (its
    /// subscription past due, dunning's final action after the policy's waits). One per
    /// invoice.
    InvoiceOverdue { invoice: InvoiceId },
    /// Finalize a renewal invoice kept a draft for its tenant's grace period, at `at` (when the
    /// grace period ends), billing the usage recorded meanwhile. One per invoice.
    FinalizeInvoice {
        invoice: InvoiceId,
        at: DateTime<Utc>,
    },
    /// Close a subscription's period that starts at `period_start`: one job per (subscription,
    /// period), so a period is renewed once.
    RenewSubscription {
        subscription: SubscriptionId,
        period_start: DateTime<Utc>,
    },
    /// Expire a subscription whose first invoice is still unpaid 23 hours after its creation.
    ExpireIncomplete { subscription: SubscriptionId },
    /// Tell that a trial ends in three days (`customer.subscription.trial_will_end`): one job
    /// per (subscription, trial end).
    TrialWillEnd {
        subscription: SubscriptionId,
        trial_end: DateTime<Utc>,
    },
    /// Send a recorded refund to the gateway: one job per refund (the refund's id is its
    /// idempotency key at the gateway).
    RefundPayment { refund: RefundId },
    /// Move a test clock to `to`, running what comes due for its customers on the way: one job
    /// per (clock, target).
    AdvanceTestClock {
        clock: TestClockId,
        to: DateTime<Utc>,
    },
    /// See whether a subscription's usage in its current period reached a limit of its plans,
    /// after the usage recorded in the few minutes starting at `window`: one job per
    /// (subscription, window), whichever requests recorded usage in it.
    CheckUsageLimits {
        subscription: SubscriptionId,
        window: DateTime<Utc>,
    },
}

/// Why a claimed row is not a job this worker knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobParseError {
    #[error("no handler for job kind `{0}` in this worker")]
    UnknownKind(String),
    #[error("job kind `{kind}` without a valid `{field}` in its payload")]
    BadPayload { kind: String, field: &'static str },
}

impl Job {
    pub const DELIVER_WEBHOOK: &'static str = "webhook.deliver";
    pub const SYNC_PRODUCT: &'static str = "stripe.sync_product";
    pub const SYNC_PRICE: &'static str = "stripe.sync_price";
    pub const SYNC_CUSTOMER: &'static str = "stripe.sync_customer";
    pub const SYNC_PAYMENT_METHOD: &'static str = "stripe.sync_payment_method";
    pub const PROCESS_STRIPE_EVENT: &'static str = "stripe.process_event";
    pub const PAY_INVOICE: &'static str = "invoice.pay";
    pub const END_DUNNING: &'static str = "invoice.end_dunning";
    pub const INVOICE_OVERDUE: &'static str = "invoice.overdue";
    pub const FINALIZE_INVOICE: &'static str = "invoice.finalize";
    pub const RENEW_SUBSCRIPTION: &'static str = "subscription.renew";
    pub const EXPIRE_INCOMPLETE: &'static str = "subscription.expire_incomplete";
    pub const TRIAL_WILL_END: &'static str = "subscription.trial_will_end";
    pub const ADVANCE_TEST_CLOCK: &'static str = "test_clock.advance";
    pub const REFUND_PAYMENT: &'static str = "payment.refund";
    pub const CHECK_USAGE_LIMITS: &'static str = "subscription.check_usage_limits";

    /// The kind stored in the outbox row.
    pub fn kind(&self) -> &'static str {
        match self {
            Job::DeliverWebhook { .. } => Self::DELIVER_WEBHOOK,
            Job::SyncCatalog {
                what: Synced::Product,
                ..
            } => Self::SYNC_PRODUCT,
            Job::SyncCatalog {
                what: Synced::Price,
                ..
            } => Self::SYNC_PRICE,
            Job::SyncCatalog {
                what: Synced::Customer,
                ..
            } => Self::SYNC_CUSTOMER,
            Job::SyncCatalog {
                what: Synced::PaymentMethod,
                ..
            } => Self::SYNC_PAYMENT_METHOD,
            Job::ProcessStripeEvent { .. } => Self::PROCESS_STRIPE_EVENT,
            Job::PayInvoice { .. } => Self::PAY_INVOICE,
            Job::EndDunning { .. } => Self::END_DUNNING,
            Job::InvoiceOverdue { .. } => Self::INVOICE_OVERDUE,
            Job::FinalizeInvoice { .. } => Self::FINALIZE_INVOICE,
            Job::RenewSubscription { .. } => Self::RENEW_SUBSCRIPTION,
            Job::ExpireIncomplete { .. } => Self::EXPIRE_INCOMPLETE,
            Job::TrialWillEnd { .. } => Self::TRIAL_WILL_END,
            Job::AdvanceTestClock { .. } => Self::ADVANCE_TEST_CLOCK,
            Job::RefundPayment { .. } => Self::REFUND_PAYMENT,
            Job::CheckUsageLimits { .. } => Self::CHECK_USAGE_LIMITS,
        }
    }

    pub fn queue(&self) -> Queue {
        match self {
            Job::DeliverWebhook { .. } => Queue::Webhooks,
            Job::SyncCatalog { .. } | Job::ProcessStripeEvent { .. } => Queue::StripeSync,
            Job::PayInvoice { .. }
            | Job::EndDunning { .. }
            | Job::InvoiceOverdue { .. }
            | Job::FinalizeInvoice { .. }
            | Job::RenewSubscription { .. }
            | Job::ExpireIncomplete { .. }
            | Job::TrialWillEnd { .. }
            | Job::RefundPayment { .. }
            | Job::AdvanceTestClock { .. } => Queue::Renewals,
            Job::CheckUsageLimits { .. } => Queue::Analytics,
        }
    }

    /// What makes two jobs the same job.
    pub fn dedup_key(&self) -> String {
        match self {
            Job::DeliverWebhook { delivery } => format!("{}:{}", self.kind(), delivery.as_uuid()),
            Job::SyncCatalog { id, .. } => format!("{}:{id}", self.kind()),
            Job::ProcessStripeEvent { event_id } => format!("{}:{event_id}", self.kind()),
            Job::PayInvoice { invoice, attempt } | Job::EndDunning { invoice, attempt } => {
                format!("{}:{}:{attempt}", self.kind(), invoice.as_uuid())
            }
            Job::RenewSubscription {
                subscription,
                period_start,
            } => format!(
                "{}:{}:{}",
                self.kind(),
                subscription.as_uuid(),
                period_start.timestamp()
            ),
            Job::ExpireIncomplete { subscription } => {
                format!("{}:{}", self.kind(), subscription.as_uuid())
            }
            Job::CheckUsageLimits {
                subscription,
                window,
            } => format!(
                "{}:{}:{}",
                self.kind(),
                subscription.as_uuid(),
                window.timestamp()
            ),
            Job::RefundPayment { refund } => format!("{}:{}", self.kind(), refund.as_uuid()),
            Job::InvoiceOverdue { invoice } | Job::FinalizeInvoice { invoice, .. } => {
                format!("{}:{}", self.kind(), invoice.as_uuid())
            }
            Job::AdvanceTestClock { clock, to } => {
                format!("{}:{}:{}", self.kind(), clock.as_uuid(), to.timestamp())
            }
            Job::TrialWillEnd {
                subscription,
                trial_end,
            } => format!(
                "{}:{}:{}",
                self.kind(),
                subscription.as_uuid(),
                trial_end.timestamp()
            ),
        }
    }

    /// The outbox id: the object's id when one object is the key, else a UUIDv5 of the key.
    pub fn id(&self) -> Uuid {
        match self {
            Job::DeliverWebhook { delivery } => delivery.as_uuid(),
            Job::SyncCatalog { id, .. } => *id,
            Job::ProcessStripeEvent { .. }
            | Job::PayInvoice { .. }
            | Job::EndDunning { .. }
            | Job::InvoiceOverdue { .. }
            | Job::FinalizeInvoice { .. }
            | Job::RenewSubscription { .. }
            | Job::ExpireIncomplete { .. }
            | Job::TrialWillEnd { .. }
            | Job::RefundPayment { .. }
            | Job::CheckUsageLimits { .. }
            | Job::AdvanceTestClock { .. } => {
                Uuid::new_v5(&JOB_NAMESPACE, self.dedup_key().as_bytes())
            }
        }
    }

    pub fn payload(&self) -> Value {
        match self {
            Job::DeliverWebhook { delivery } => json!({ "delivery_id": delivery.to_string() }),
            Job::SyncCatalog { id, .. } => json!({ "id": id }),
            Job::ProcessStripeEvent { event_id } => json!({ "event_id": event_id }),
            Job::PayInvoice { invoice, attempt } | Job::EndDunning { invoice, attempt } => {
                json!({ "invoice_id": invoice.to_string(), "attempt": attempt })
            }
            Job::RenewSubscription {
                subscription,
                period_start,
            } => json!({
                "subscription_id": subscription.to_string(),
                "period_start": period_start.to_rfc3339(),
            }),
            Job::ExpireIncomplete { subscription } => {
                json!({ "subscription_id": subscription.to_string() })
            }
            Job::CheckUsageLimits {
                subscription,
                window,
            } => json!({
                "subscription_id": subscription.to_string(),
                "window": window.to_rfc3339(),
            }),
            Job::RefundPayment { refund } => json!({ "refund_id": refund.to_string() }),
            Job::InvoiceOverdue { invoice } => json!({ "invoice_id": invoice.to_string() }),
            Job::FinalizeInvoice { invoice, at } => {
                json!({ "invoice_id": invoice.to_string(), "at": at.to_rfc3339() })
            }
            Job::AdvanceTestClock { clock, to } => {
                json!({ "test_clock_id": clock.to_string(), "to": to.to_rfc3339() })
            }
            Job::TrialWillEnd {
                subscription,
                trial_end,
            } => json!({
                "subscription_id": subscription.to_string(),
                "trial_end": trial_end.to_rfc3339(),
            }),
        }
    }

    /// Runs before the job is dead. A delivery's own retry schedule decides when it has
    /// failed, not a job limit.
    pub fn max_attempts(&self) -> i32 {
        match self {
            Job::DeliverWebhook { .. } => i32::MAX,
            _ => self.queue().retry_policy().max_attempts,
        }
    }

    /// The outbox row for this job, for `scope`'s tenant (`None`: a platform job), due at
    /// `run_at`.
    pub fn to_new(&self, scope: Option<Scope>, run_at: DateTime<Utc>) -> NewJob {
        NewJob {
            id: self.id(),
            queue: self.queue(),
            kind: self.kind(),
            tenant: scope.map(|s| (s.tenant_id.as_uuid(), s.livemode)),
            payload: self.payload(),
            run_at,
            max_attempts: self.max_attempts(),
            test_clock: None,
        }
    }

    /// The job a stored row describes.
    pub fn parse(kind: &str, payload: &Value) -> Result<Job, JobParseError> {
        let bad = |field| JobParseError::BadPayload {
            kind: kind.to_owned(),
            field,
        };
        let sync = |what| {
            payload["id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .map(|id| Job::SyncCatalog { what, id })
                .ok_or_else(|| bad("id"))
        };
        let subscription = || {
            payload["subscription_id"]
                .as_str()
                .and_then(|s| SubscriptionId::parse(s).ok())
                .ok_or_else(|| bad("subscription_id"))
        };
        let time = |field| {
            payload[field]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
                .ok_or_else(|| bad(field))
        };
        match kind {
            Self::DELIVER_WEBHOOK => payload["delivery_id"]
                .as_str()
                .and_then(|s| DeliveryId::parse(s).ok())
                .map(|delivery| Job::DeliverWebhook { delivery })
                .ok_or_else(|| bad("delivery_id")),
            Self::SYNC_PRODUCT => sync(Synced::Product),
            Self::SYNC_PRICE => sync(Synced::Price),
            Self::SYNC_CUSTOMER => sync(Synced::Customer),
            Self::SYNC_PAYMENT_METHOD => sync(Synced::PaymentMethod),
            Self::PROCESS_STRIPE_EVENT => payload["event_id"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(|e| Job::ProcessStripeEvent {
                    event_id: e.to_owned(),
                })
                .ok_or_else(|| bad("event_id")),
            Self::PAY_INVOICE | Self::END_DUNNING => {
                let invoice = payload["invoice_id"]
                    .as_str()
                    .and_then(|s| InvoiceId::parse(s).ok())
                    .ok_or_else(|| bad("invoice_id"))?;
                // Attempt 0 ends the dunning of an overdue invoice never charged.
                let first = if kind == Self::PAY_INVOICE { 1 } else { 0 };
                let attempt = payload["attempt"]
                    .as_i64()
                    .and_then(|a| i32::try_from(a).ok())
                    .filter(|a| *a >= first)
                    .ok_or_else(|| bad("attempt"))?;
                Ok(if kind == Self::PAY_INVOICE {
                    Job::PayInvoice { invoice, attempt }
                } else {
                    Job::EndDunning { invoice, attempt }
                })
            }
            Self::RENEW_SUBSCRIPTION => {
                let subscription = subscription()?;
                let period_start = time("period_start")?;
                Ok(Job::RenewSubscription {
                    subscription,
                    period_start,
                })
            }
            Self::INVOICE_OVERDUE | Self::FINALIZE_INVOICE => {
                let invoice = payload["invoice_id"]
                    .as_str()
                    .and_then(|s| InvoiceId::parse(s).ok())
                    .ok_or_else(|| bad("invoice_id"))?;
                Ok(if kind == Self::INVOICE_OVERDUE {
                    Job::InvoiceOverdue { invoice }
                } else {
                    Job::FinalizeInvoice {
                        invoice,
                        at: time("at")?,
                    }
                })
            }
            Self::EXPIRE_INCOMPLETE => Ok(Job::ExpireIncomplete {
                subscription: subscription()?,
            }),
            Self::CHECK_USAGE_LIMITS => Ok(Job::CheckUsageLimits {
                subscription: subscription()?,
                window: time("window")?,
            }),
            Self::TRIAL_WILL_END => Ok(Job::TrialWillEnd {
                subscription: subscription()?,
                trial_end: time("trial_end")?,
            }),
            Self::REFUND_PAYMENT => payload["refund_id"]
                .as_str()
                .and_then(|s| RefundId::parse(s).ok())
                .map(|refund| Job::RefundPayment { refund })
                .ok_or_else(|| bad("refund_id")),
            Self::ADVANCE_TEST_CLOCK => Ok(Job::AdvanceTestClock {
                clock: payload["test_clock_id"]
                    .as_str()
                    .and_then(|s| TestClockId::parse(s).ok())
                    .ok_or_else(|| bad("test_clock_id"))?,
                to: time("to")?,
            }),
            other => Err(JobParseError::UnknownKind(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Job> {
        let id = Uuid::now_v7();
        vec![
            Job::DeliverWebhook {
                delivery: DeliveryId::from_uuid(id),
            },
            Job::SyncCatalog {
                what: Synced::Product,
                id,
            },
            Job::SyncCatalog {
                what: Synced::Price,
                id,
            },
            Job::SyncCatalog {
                what: Synced::Customer,
                id,
            },
            Job::SyncCatalog {
                what: Synced::PaymentMethod,
                id,
            },
            Job::ProcessStripeEvent {
                event_id: "evt_123".into(),
            },
            Job::PayInvoice {
                invoice: InvoiceId::from_uuid(id),
                attempt: 2,
            },
            Job::EndDunning {
                invoice: InvoiceId::from_uuid(id),
                attempt: 2,
            },
            Job::EndDunning {
                invoice: InvoiceId::from_uuid(id),
                attempt: 0,
            },
            Job::InvoiceOverdue {
                invoice: InvoiceId::from_uuid(id),
            },
            Job::FinalizeInvoice {
                invoice: InvoiceId::from_uuid(id),
                at: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            },
            Job::RenewSubscription {
                subscription: SubscriptionId::from_uuid(id),
                period_start: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            },
            Job::ExpireIncomplete {
                subscription: SubscriptionId::from_uuid(id),
            },
            Job::AdvanceTestClock {
                clock: TestClockId::from_uuid(id),
                to: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            },
            Job::TrialWillEnd {
                subscription: SubscriptionId::from_uuid(id),
                trial_end: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            },
            Job::RefundPayment {
                refund: RefundId::from_uuid(id),
            },
            Job::CheckUsageLimits {
                subscription: SubscriptionId::from_uuid(id),
                window: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
            },
        ]
    }

    #[test]
    fn every_job_reads_back_from_its_row_as_itself() {
        for job in all() {
            assert_eq!(Job::parse(job.kind(), &job.payload()), Ok(job.clone()));
        }
    }

    #[test]
    fn one_key_gives_one_id_and_different_keys_different_ids() {
        let a = Job::ProcessStripeEvent {
            event_id: "evt_a".into(),
        };
        let b = Job::ProcessStripeEvent {
            event_id: "evt_b".into(),
        };
        assert_eq!(a.id(), a.clone().id());
        assert_ne!(a.id(), b.id());
        // Kinds about the same object are distinct jobs with distinct keys.
        let keys: std::collections::HashSet<String> = all().iter().map(Job::dedup_key).collect();
        assert_eq!(keys.len(), all().len());
    }

    #[test]
    fn unknown_kinds_and_bad_payloads_are_told_apart() {
        assert_eq!(
            Job::parse("invoice.renew", &json!({})),
            Err(JobParseError::UnknownKind("invoice.renew".into()))
        );
        assert_eq!(
            Job::parse(
                Job::PAY_INVOICE,
                &json!({"invoice_id": InvoiceId::new().to_string(), "attempt": 0})
            ),
            Err(JobParseError::BadPayload {
                kind: Job::PAY_INVOICE.into(),
                field: "attempt"
            })
        );
        assert_eq!(
            Job::parse(Job::SYNC_PRICE, &json!({"id": "nope"})),
            Err(JobParseError::BadPayload {
                kind: Job::SYNC_PRICE.into(),
                field: "id"
            })
        );
        assert!(Job::parse(Job::PROCESS_STRIPE_EVENT, &json!({"event_id": ""})).is_err());
    }

    #[test]
    fn deliveries_never_run_out_of_job_attempts_and_others_follow_their_queue() {
        for job in all() {
            let expected = match job {
                Job::DeliverWebhook { .. } => i32::MAX,
                Job::SyncCatalog { .. } | Job::ProcessStripeEvent { .. } => {
                    Queue::StripeSync.retry_policy().max_attempts
                }
                Job::CheckUsageLimits { .. } => Queue::Analytics.retry_policy().max_attempts,
                _ => Queue::Renewals.retry_policy().max_attempts,
            };
            assert_eq!(job.max_attempts(), expected, "{job:?}");
            assert_eq!(job.to_new(None, Utc::now()).id, job.id());
        }
    }
}
