//! The worker's Prometheus metrics, per queue.

use std::{
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use shared::{
    jobs::{Queue, QueueMap},
    metrics::Histogram,
};

#[derive(Debug, Default)]
pub struct QueueMetrics {
    /// Messages taken from Redis and claimed.
    pub started: AtomicU64,
    pub succeeded: AtomicU64,
    /// Runs that failed (whatever came next).
    pub failed: AtomicU64,
    /// Failed runs scheduled to run again.
    pub retried: AtomicU64,
    /// Runs after which the job is dead.
    pub dead: AtomicU64,
    /// Messages dropped because their lease was stale (duplicates, or the job was done).
    pub stale: AtomicU64,
    /// Runs put off by back-pressure (a rate limit), not counted as failures.
    pub deferred: AtomicU64,
    /// Jobs moved from PostgreSQL to Redis by this process's relay.
    pub relayed: AtomicU64,
    pub duration: Mutex<Histogram>,
    /// Jobs waiting in Redis.
    pub redis_depth: AtomicI64,
    /// Jobs due now in PostgreSQL (not yet relayed), scheduled later, and dead.
    pub due: AtomicI64,
    pub scheduled: AtomicI64,
    pub dead_now: AtomicI64,
    /// Task data entries in Redis (queued, scheduled or running).
    pub redis_tasks: AtomicI64,
    /// The largest inflight set of any consumer of the queue in Redis.
    pub redis_largest_inflight: AtomicI64,
}

/// A per-queue series: name, help text, and how to read it.
type Series<T> = (&'static str, &'static str, fn(&QueueMetrics) -> T);

#[derive(Debug, Default)]
pub struct Metrics {
    pub queues: QueueMap<QueueMetrics>,
    pub idempotency_keys_purged: AtomicU64,
    pub events_purged: AtomicU64,
    /// Keys of gone consumers deleted from Redis.
    pub redis_reaped: AtomicU64,
    /// Apalis workers restarted after their backend failed.
    pub restarts: AtomicU64,
    /// Finished tasks whose acknowledgement in Redis failed.
    pub ack_failures: AtomicU64,
    /// Billing jobs run in a batch that succeeded together (renewals, charges).
    pub batched: AtomicU64,
    /// Batches of billing jobs that failed together and ran one by one.
    pub batch_failures: AtomicU64,
    /// Jobs run at once by the process that queued them, without the relay (the charges of
    /// the invoices its renewals made).
    pub run_at_once: AtomicU64,
    /// Billing runs this process made (or took over).
    pub billing_runs: AtomicU64,
    /// Jobs those runs moved to the queue.
    pub billing_run_queued: AtomicU64,
    /// How late the last run this process made started after its tick, in milliseconds.
    pub billing_run_lag_ms: AtomicI64,
    /// Memory Redis uses, in bytes.
    pub redis_memory: AtomicI64,
}

/// How a run ended, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Succeeded,
    Retried,
    Dead,
    Stale,
    /// Put off without a failure (back-pressure).
    Deferred,
}

impl Metrics {
    pub fn q(&self, q: Queue) -> &QueueMetrics {
        self.queues.get(q)
    }

    pub fn ended(&self, q: Queue, end: RunEnd, took: Duration) {
        let m = self.q(q);
        match end {
            RunEnd::Succeeded => {
                m.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            RunEnd::Retried => {
                m.failed.fetch_add(1, Ordering::Relaxed);
                m.retried.fetch_add(1, Ordering::Relaxed);
            }
            RunEnd::Dead => {
                m.failed.fetch_add(1, Ordering::Relaxed);
                m.dead.fetch_add(1, Ordering::Relaxed);
            }
            RunEnd::Stale => {
                m.stale.fetch_add(1, Ordering::Relaxed);
                return;
            }
            RunEnd::Deferred => {
                m.deferred.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        m.duration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [Series<u64>; 8] = [
            (
                "worker_jobs_started_total",
                "Jobs claimed and started.",
                |m| m.started.load(Ordering::Relaxed),
            ),
            (
                "worker_jobs_succeeded_total",
                "Job runs that succeeded.",
                |m| m.succeeded.load(Ordering::Relaxed),
            ),
            ("worker_jobs_failed_total", "Job runs that failed.", |m| {
                m.failed.load(Ordering::Relaxed)
            }),
            (
                "worker_jobs_retried_total",
                "Failed runs scheduled again.",
                |m| m.retried.load(Ordering::Relaxed),
            ),
            (
                "worker_jobs_dead_total",
                "Runs after which the job is dead.",
                |m| m.dead.load(Ordering::Relaxed),
            ),
            (
                "worker_jobs_stale_total",
                "Duplicate or stale messages dropped.",
                |m| m.stale.load(Ordering::Relaxed),
            ),
            (
                "worker_jobs_relayed_total",
                "Jobs moved from PostgreSQL to Redis.",
                |m| m.relayed.load(Ordering::Relaxed),
            ),
            (
                "worker_jobs_deferred_total",
                "Runs put off by back-pressure (rate limits).",
                |m| m.deferred.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for q in Queue::ALL {
                let _ = writeln!(out, "{name}{{queue=\"{q}\"}} {}", get(self.q(q)));
            }
        }
        let gauges: [Series<i64>; 6] = [
            ("worker_queue_depth", "Jobs waiting in Redis.", |m| {
                m.redis_depth.load(Ordering::Relaxed)
            }),
            (
                "worker_jobs_due",
                "Jobs due in PostgreSQL, not yet in Redis.",
                |m| m.due.load(Ordering::Relaxed),
            ),
            (
                "worker_jobs_scheduled",
                "Jobs due later (retries, schedules).",
                |m| m.scheduled.load(Ordering::Relaxed),
            ),
            ("worker_jobs_dead", "Dead jobs awaiting an operator.", |m| {
                m.dead_now.load(Ordering::Relaxed)
            }),
            (
                "worker_redis_tasks",
                "Tasks held in Redis (queued, scheduled or running).",
                |m| m.redis_tasks.load(Ordering::Relaxed),
            ),
            (
                "worker_redis_inflight_max",
                "The largest inflight set of any consumer in Redis.",
                |m| m.redis_largest_inflight.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, get) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for q in Queue::ALL {
                let _ = writeln!(out, "{name}{{queue=\"{q}\"}} {}", get(self.q(q)));
            }
        }
        out.push_str("# HELP worker_job_duration_seconds Job run time by queue.\n");
        out.push_str("# TYPE worker_job_duration_seconds histogram\n");
        for q in Queue::ALL {
            let h = self
                .q(q)
                .duration
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            h.render(
                &mut out,
                "worker_job_duration_seconds",
                &format!("queue=\"{q}\""),
            );
        }
        let singles = [
            (
                "worker_idempotency_keys_purged_total",
                "Expired idempotency keys deleted.",
                &self.idempotency_keys_purged,
            ),
            (
                "worker_events_purged_total",
                "Events deleted after the retention period.",
                &self.events_purged,
            ),
            (
                "worker_redis_reaped_total",
                "Keys of gone queue consumers deleted from Redis.",
                &self.redis_reaped,
            ),
            (
                "worker_restarts_total",
                "Queue consumers restarted after a Redis failure.",
                &self.restarts,
            ),
            (
                "worker_redis_ack_failures_total",
                "Finished tasks whose removal from Redis failed (they return and are dropped).",
                &self.ack_failures,
            ),
            (
                "worker_billing_jobs_batched_total",
                "Renewals and charges run in a batch that succeeded together.",
                &self.batched,
            ),
            (
                "worker_billing_batch_failures_total",
                "Batches of renewals or charges that failed together and ran one by one.",
                &self.batch_failures,
            ),
            (
                "worker_jobs_run_at_once_total",
                "Jobs run at once by the process that queued them (the charges of the invoices \
                 its renewals made), without a trip through the relay and Redis.",
                &self.run_at_once,
            ),
            (
                "worker_billing_runs_total",
                "Billing runs this process made (one per tick of the schedule across the fleet) \
                 or took over.",
                &self.billing_runs,
            ),
            (
                "worker_billing_run_jobs_queued_total",
                "Billing jobs due by their run's time that those runs moved to the queue.",
                &self.billing_run_queued,
            ),
        ];
        for (name, help, v) in singles {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP worker_redis_memory_bytes Memory Redis uses (INFO used_memory).\n\
             # TYPE worker_redis_memory_bytes gauge\nworker_redis_memory_bytes {}",
            self.redis_memory.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP worker_billing_run_lag_seconds How late the last billing run this process \
             made started after its tick.\n\
             # TYPE worker_billing_run_lag_seconds gauge\nworker_billing_run_lag_seconds {}",
            self.billing_run_lag_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted_per_queue() {
        let m = Metrics::default();
        m.q(Queue::Webhooks).started.fetch_add(2, Ordering::Relaxed);
        m.ended(Queue::Webhooks, RunEnd::Succeeded, Duration::from_millis(3));
        m.ended(Queue::Webhooks, RunEnd::Retried, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("worker_jobs_started_total{queue=\"webhooks\"} 2"));
        assert!(text.contains("worker_jobs_succeeded_total{queue=\"webhooks\"} 1"));
        assert!(text.contains("worker_jobs_failed_total{queue=\"webhooks\"} 1"));
        assert!(text.contains("worker_jobs_retried_total{queue=\"webhooks\"} 1"));
        assert!(text.contains("worker_jobs_succeeded_total{queue=\"renewals\"} 0"));
        assert!(text.contains("worker_job_duration_seconds_count{queue=\"webhooks\"} 2"));
    }
}
