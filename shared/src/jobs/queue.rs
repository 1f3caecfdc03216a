//! The job queues and their retry policies.

use std::time::Duration;

/// A Redis-backed queue of the worker fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Queue {
    /// Signed webhook deliveries.
    Webhooks,
    /// Products, prices and customers kept in step with Stripe.
    StripeSync,
    /// Invoice and charge for one subscription period.
    Renewals,
    /// Retrying failed charges, then the final action.
    Dunning,
    /// Rollups.
    Analytics,
}

/// How a queue retries a job whose run failed for a transient reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs in all, the first included.
    pub max_attempts: i32,
    /// Wait after the first failure; doubled after each further one.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
}

impl RetryPolicy {
    /// The wait after `failures` failed runs (1 = the first), with ±20 % jitter drawn from
    /// `jitter` in `[0, 1)` so retries of many jobs spread out.
    pub fn backoff(&self, failures: i32, jitter: f64) -> Duration {
        let exp = u32::try_from(failures.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let raw = self
            .base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.cap);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        raw.mul_f64(factor)
    }
}

impl Queue {
    pub const ALL: [Queue; 5] = [
        Queue::Webhooks,
        Queue::StripeSync,
        Queue::Renewals,
        Queue::Dunning,
        Queue::Analytics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Webhooks => "webhooks",
            Queue::StripeSync => "stripe_sync",
            Queue::Renewals => "renewals",
            Queue::Dunning => "dunning",
            Queue::Analytics => "analytics",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.as_str() == s)
    }

    /// `webhooks, stripe_sync, …` for messages.
    pub fn names() -> String {
        Self::ALL.map(Queue::as_str).join(", ")
    }

    fn index(self) -> usize {
        match self {
            Queue::Webhooks => 0,
            Queue::StripeSync => 1,
            Queue::Renewals => 2,
            Queue::Dunning => 3,
            Queue::Analytics => 4,
        }
    }

    /// The variable setting this queue's concurrency.
    pub fn concurrency_var(self) -> &'static str {
        match self {
            Queue::Webhooks => "WORKER_CONCURRENCY_WEBHOOKS",
            Queue::StripeSync => "WORKER_CONCURRENCY_STRIPE_SYNC",
            Queue::Renewals => "WORKER_CONCURRENCY_RENEWALS",
            Queue::Dunning => "WORKER_CONCURRENCY_DUNNING",
            Queue::Analytics => "WORKER_CONCURRENCY_ANALYTICS",
        }
    }

    /// Webhook deliveries mostly wait on the network; the rest mostly on PostgreSQL. Renewals
    /// and charges run in batches of up to 32 per transaction, four at once: many of them in
    /// flight make full batches.
    pub fn default_concurrency(self) -> usize {
        match self {
            Queue::Webhooks => 256,
            Queue::StripeSync => 8,
            Queue::Renewals => 512,
            Queue::Dunning => 8,
            Queue::Analytics => 2,
        }
    }

    /// The retry policy for transient failures. (Webhook deliveries follow their own
    /// schedule, see `domain::webhook`.)
    pub fn retry_policy(self) -> RetryPolicy {
        let (max_attempts, base, cap) = match self {
            Queue::Webhooks => (8, 5, 36_000),
            Queue::StripeSync => (10, 2, 3_600),
            Queue::Renewals => (8, 10, 3_600),
            Queue::Dunning => (8, 10, 3_600),
            Queue::Analytics => (5, 30, 3_600),
        };
        RetryPolicy {
            max_attempts,
            base: Duration::from_secs(base),
            cap: Duration::from_secs(cap),
        }
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value per queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueMap<T>([T; 5]);

impl<T> QueueMap<T> {
    pub fn get(&self, q: Queue) -> &T {
        &self.0[q.index()]
    }

    pub fn set(&mut self, q: Queue, v: T) {
        self.0[q.index()] = v;
    }

    pub fn get_mut(&mut self, q: Queue) -> &mut T {
        &mut self.0[q.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_parses_back_from_its_name() {
        for q in Queue::ALL {
            assert_eq!(Queue::parse(q.as_str()), Some(q));
        }
        assert_eq!(Queue::parse("nope"), None);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_secs(10),
            cap: Duration::from_secs(60),
        };
        assert_eq!(p.backoff(1, 0.5), Duration::from_secs(10));
        assert_eq!(p.backoff(2, 0.5), Duration::from_secs(20));
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(40));
        assert_eq!(p.backoff(4, 0.5), Duration::from_secs(60));
        assert_eq!(p.backoff(30, 0.5), Duration::from_secs(60));
        assert_eq!(p.backoff(1, 0.0), Duration::from_secs(8));
        assert!(p.backoff(1, 0.999) < Duration::from_secs(12));
    }
}
