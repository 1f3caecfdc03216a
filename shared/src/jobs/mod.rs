//! The job outbox in PostgreSQL.
//!
//! Work that must happen is a `jobs` row written in the same transaction as the change causing
//! it, due at `run_at` (read through the clock). The worker fleet's relay *leases* due jobs —
//! moving `run_at` forward by the lease and setting a fresh `lease_token` — and pushes
//! `{id, token}` messages to the Redis queue. A worker *claims* a message before running it
//! (the token must still match; claiming replaces it, so a duplicate message is dropped) and
//! *finishes* it with an outcome. A lease that runs out — Redis flushed, a worker killed — makes
//! the job due again, so nothing is lost, and every handler is safe to run twice.

pub mod contract;
pub mod queue;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

pub use self::{
    contract::{Job, JobParseError},
    queue::{Queue, QueueMap, RetryPolicy},
};
use crate::db::DbError;
use crate::tenancy::Scope;

/// The message carried by a Redis queue: which job, under which lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub id: Uuid,
    pub token: Uuid,
}

/// A job to add to the outbox.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// For jobs about one object, the object's own id keeps them one per object.
    pub id: Uuid,
    pub queue: Queue,
    pub kind: &'static str,
    pub tenant: Option<(Uuid, bool)>,
    pub payload: serde_json::Value,
    pub run_at: DateTime<Utc>,
    pub max_attempts: i32,
    /// The test clock whose time the job waits for (`None`: real time).
    pub test_clock: Option<Uuid>,
}

impl NewJob {
    /// The job waits for `clock`'s time instead of real time (when there is a clock).
    pub fn on_clock(mut self, clock: Option<Uuid>) -> Self {
        self.test_clock = clock;
        self
    }
}

/// The PostgreSQL notification channel that wakes relays.
pub const NOTIFY_CHANNEL: &str = "jobs_due";

/// Wakes the relays of a queue when the transaction commits (jobs were added due now).
pub async fn notify(conn: &mut PgConnection, queue: Queue) -> Result<(), DbError> {
    notify_queues(conn, std::iter::once(queue.as_str())).await
}

/// The queue whose jobs due later wait for a billing run ([`JobState::Scheduled`]) rather than
/// for the relay: billing work, made due by the fleet's schedule.
pub const SCHEDULED_QUEUE: Queue = Queue::Renewals;

/// Wakes the relays of each of `queues` (named any number of times) when the transaction
/// commits.
async fn notify_queues<'a>(
    conn: &mut PgConnection,
    queues: impl Iterator<Item = &'a str>,
) -> Result<(), DbError> {
    let mut queues: Vec<&str> = queues.collect();
    queues.sort_unstable();
    queues.dedup();
    for q in queues {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(q)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Adds jobs; one whose id (its deduplication key) is queued already, pending or done, is not
/// added again. Relays are woken when the transaction commits. A billing job due later (of
/// [`SCHEDULED_QUEUE`], off test clocks) is scheduled: a billing run makes it pending when
/// its time has come.
pub async fn enqueue(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    insert(conn, jobs, now, Adding::New).await.map(drop)
}

/// Adds jobs leased until `until` to the caller, which runs them itself once the transaction
/// commits, without a trip through the relay and Redis; returns the ones added, claimed as
/// [`claim`] would. A job queued already (same id) is not added, and not returned: its own
/// run does it. Should the caller not finish a job before its lease runs out (it crashed), the
/// job is due then and the relay hands it to the fleet.
pub async fn enqueue_held(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<Claimed>, DbError> {
    insert(conn, jobs, now, Adding::Held { until }).await
}

/// How [`insert`] treats the jobs it adds.
#[derive(Debug, Clone, Copy)]
enum Adding {
    /// Added as given; a job queued already stays as it is.
    New,
    /// Added, or made due again from scratch when queued already.
    Reset,
    /// Added leased to the caller until then.
    Held { until: DateTime<Utc> },
}

async fn insert(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    now: DateTime<Utc>,
    adding: Adding,
) -> Result<Vec<Claimed>, DbError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(jobs.len());
    let mut queues = Vec::with_capacity(jobs.len());
    let mut kinds = Vec::with_capacity(jobs.len());
    let mut tenants = Vec::with_capacity(jobs.len());
    let mut livemodes = Vec::with_capacity(jobs.len());
    let mut payloads = Vec::with_capacity(jobs.len());
    let mut run_ats = Vec::with_capacity(jobs.len());
    let mut maxes = Vec::with_capacity(jobs.len());
    let mut clocks = Vec::with_capacity(jobs.len());
    for j in jobs {
        ids.push(j.id);
        queues.push(j.queue.as_str());
        kinds.push(j.kind);
        tenants.push(j.tenant.map(|t| t.0));
        livemodes.push(j.tenant.map(|t| t.1));
        payloads.push(j.payload.clone());
        run_ats.push(j.run_at);
        maxes.push(j.max_attempts);
        clocks.push(j.test_clock);
    }
    let (on_conflict, lease) = match adding {
        Adding::Reset => (
            "ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, attempts = 0, \
             run_at = EXCLUDED.run_at, lease_token = NULL, last_error = NULL, \
             finished_at = NULL, payload = EXCLUDED.payload, updated_at = EXCLUDED.updated_at",
            None,
        ),
        // The same key is the same job: queued once.
        Adding::New => ("ON CONFLICT (id) DO NOTHING", None),
        Adding::Held { until } => (
            "ON CONFLICT (id) DO NOTHING RETURNING id, lease_token AS token, queue, kind, \
             tenant_id, livemode, payload, attempts, max_attempts",
            Some(until),
        ),
    };
    let held = sqlx::query_as::<_, Claimed>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO jobs (id, queue, kind, tenant_id, livemode, payload, max_attempts, run_at, \
         test_clock_id, created_at, updated_at, lease_token, state) \
         SELECT u.id, u.queue, u.kind, u.tenant_id, u.livemode, u.payload, u.max_attempts, \
         COALESCE($11, u.run_at), u.test_clock_id, $9, $9, \
         CASE WHEN $11::timestamptz IS NOT NULL THEN gen_random_uuid() END, \
         CASE WHEN $11::timestamptz IS NULL AND u.queue = $12 AND u.run_at > $9 \
             AND u.test_clock_id IS NULL THEN 'scheduled' ELSE 'pending' END \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::bool[], $6::jsonb[], \
         $7::int[], $8::timestamptz[], $10::uuid[]) AS u(id, queue, kind, tenant_id, livemode, \
         payload, max_attempts, run_at, test_clock_id) {on_conflict}"
    )))
    .bind(&ids)
    .bind(&queues)
    .bind(&kinds)
    .bind(&tenants)
    .bind(&livemodes)
    .bind(&payloads)
    .bind(&maxes)
    .bind(&run_ats)
    .bind(now)
    .bind(&clocks)
    .bind(lease)
    .bind(SCHEDULED_QUEUE.as_str())
    .fetch_all(&mut *conn)
    .await?;
    if lease.is_some() {
        // Nothing is due to the relays: the caller runs these.
        return Ok(held);
    }
    let due = jobs
        .iter()
        .filter(|j| j.run_at <= now && j.test_clock.is_none())
        .map(|j| j.queue.as_str());
    notify_queues(conn, due).await?;
    Ok(held)
}

/// Adds jobs, or makes existing ones (same id) due again from scratch: for work about one
/// object where only the latest state matters (a sync), one job per object. A run in progress
/// loses its lease, so its outcome is not recorded and the job runs again with the new state.
pub async fn enqueue_or_reset(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    insert(conn, jobs, now, Adding::Reset).await.map(drop)
}

/// Whether a job ended dead (its runs used up, or a fault no run could fix).
pub async fn is_dead(conn: &mut PgConnection, id: Uuid) -> Result<bool, DbError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND state = 'dead')")
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

/// Whether a job is queued and has not ended (scheduled, due, or running).
pub async fn is_waiting(conn: &mut PgConnection, id: Uuid) -> Result<bool, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND state IN ('scheduled', 'pending'))",
    )
    .bind(id)
    .fetch_one(conn)
    .await?)
}

/// Makes waiting jobs due at `at` instead of later: scheduled ones, and pending ones that no
/// run holds (a job running, or succeeded, is left as it is: its own outcome stands). A dead
/// one starts over, due at `at` with its attempts afresh: what it was to do is asked for anew.
/// Locks them in id order, as every statement on jobs does; returns how many it changed.
pub async fn bring_forward(
    conn: &mut PgConnection,
    ids: &[Uuid],
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    make_due(
        conn,
        ids,
        at,
        now,
        "UPDATE jobs SET updated_at = $3, \
         state = CASE WHEN queue = $4 AND test_clock_id IS NULL \
             AND (CASE WHEN state = 'dead' THEN $2 ELSE LEAST(run_at, $2) END) > $3 \
             THEN 'scheduled' ELSE 'pending' END, \
         run_at = CASE WHEN state = 'dead' THEN $2 ELSE LEAST(run_at, $2) END, \
         attempts = CASE WHEN state = 'dead' THEN 0 ELSE attempts END, \
         finished_at = CASE WHEN state = 'dead' THEN NULL ELSE finished_at END, \
         billing_run_id = CASE WHEN state = 'dead' THEN NULL ELSE billing_run_id END \
         WHERE id IN (SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE) \
         AND lease_token IS NULL \
         AND (state IN ('scheduled', 'dead') OR (state = 'pending' AND run_at > $2)) \
         RETURNING queue, test_clock_id IS NULL",
    )
    .await
}

/// The statement that makes the jobs `$1` that no run holds and that `$filter` picks due at `$2`
/// (scheduled when that is later than now, `$3`, on the queue `$4`), their attempts afresh,
/// locking them in id order ([`make_due`]).
macro_rules! afresh {
    ($filter:literal) => {
        concat!(
            "UPDATE jobs SET run_at = $2, attempts = 0, finished_at = NULL, \
             billing_run_id = NULL, updated_at = $3, \
             state = CASE WHEN queue = $4 AND test_clock_id IS NULL AND $2 > $3 \
                 THEN 'scheduled' ELSE 'pending' END \
             WHERE id IN (SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE) \
             AND lease_token IS NULL AND ",
            $filter,
            " RETURNING queue, test_clock_id IS NULL"
        )
    };
}

/// Makes succeeded jobs that no run holds due again at `at`, their attempts afresh: for work
/// whose effect is guarded by its own unique key (a charge attempt's number), asked for again
/// because what it found to do has changed since it ran (it found nothing to do then). Locks
/// them in id order, as every statement on jobs does; returns how many it changed.
pub async fn run_again(
    conn: &mut PgConnection,
    ids: &[Uuid],
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    make_due(conn, ids, at, now, afresh!("state = 'succeeded'")).await
}

/// Makes jobs that no run holds and that died, or wait to be tried again after failing, due
/// at `at` with their attempts afresh: for work that failed because of something that has
/// changed since (a charge waiting for its payment method's sync, which is done now). Jobs
/// still waiting for their first run are left as they are. Locks them in id order, as every
/// statement on jobs does; returns how many it changed.
pub async fn revive(
    conn: &mut PgConnection,
    ids: &[Uuid],
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    make_due(
        conn,
        ids,
        at,
        now,
        afresh!("(state = 'dead' OR (state = 'pending' AND attempts > 0 AND run_at > $2))"),
    )
    .await
}

/// Makes jobs that died due at `at` with their attempts afresh (others are left as they are):
/// for work that must end one way or another, and whose failures were not its own. Locks them
/// in id order, as every statement on jobs does; returns how many it changed.
pub async fn restart_dead(
    conn: &mut PgConnection,
    ids: &[Uuid],
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    make_due(conn, ids, at, now, afresh!("state = 'dead'")).await
}

/// Runs `sql` (an `UPDATE` of jobs `$1` due at `$2`, at `$3`, returning each changed job's
/// queue and whether it is off any test clock) with the ids in order, and wakes the queues of
/// jobs due now. `$4` is [`SCHEDULED_QUEUE`]: its jobs due later are `scheduled` (a billing
/// run makes them pending), as [`enqueue`] makes them.
async fn make_due(
    conn: &mut PgConnection,
    ids: &[Uuid],
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    sql: &'static str,
) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    let rows: Vec<(String, bool)> = sqlx::query_as(sql)
        .bind(&ids)
        .bind(at)
        .bind(now)
        .bind(SCHEDULED_QUEUE.as_str())
        .fetch_all(&mut *conn)
        .await?;
    let due = rows
        .iter()
        .filter(|r| r.1 && at <= now)
        .map(|r| r.0.as_str());
    notify_queues(conn, due).await?;
    Ok(rows.len() as u64)
}

/// Makes jobs due again from scratch (redeliveries); returns the ids found. Locks them in id
/// order, as every statement on jobs does.
pub async fn reset_many(
    conn: &mut PgConnection,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE jobs SET state = 'pending', attempts = 0, run_at = $2, lease_token = NULL, \
         last_error = NULL, finished_at = NULL, updated_at = $2 \
         WHERE id IN (SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE) \
         RETURNING id, queue",
    )
    .bind(ids)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    notify_queues(conn, rows.iter().map(|r| r.1.as_str())).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Leases up to `limit` due jobs of a queue for pushing to Redis, oldest due first.
/// Concurrent relays (one per worker process) never lease the same job. `relaxed` is a pool
/// whose commits do not wait for the disk ([`crate::db::relaxed_pool`]): losing a lease in a
/// database crash just makes the job due again.
pub async fn lease_due(
    relaxed: &PgPool,
    queue: Queue,
    now: DateTime<Utc>,
    lease: std::time::Duration,
    limit: usize,
) -> Result<Vec<JobMessage>, DbError> {
    let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE jobs SET run_at = $3, lease_token = gen_random_uuid(), updated_at = $2 \
         WHERE id IN (SELECT id FROM jobs WHERE queue = $1 AND state = 'pending' AND run_at <= $2 \
                      AND test_clock_id IS NULL \
                      ORDER BY run_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
         RETURNING id, lease_token",
    )
    .bind(queue.as_str())
    .bind(now)
    .bind(until)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(relaxed)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, token)| JobMessage { id, token })
        .collect())
}

/// Puts leased jobs back as due now (their push to Redis failed).
pub async fn unlease(
    pool: &PgPool,
    msgs: &[JobMessage],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let (ids, tokens) = sorted_messages(msgs);
    sqlx::query(
        "UPDATE jobs SET run_at = $3, lease_token = NULL FROM unnest($1::uuid[], $2::uuid[]) \
         AS u(id, token) WHERE jobs.id = u.id AND jobs.lease_token = u.token",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// A job claimed for running.
#[derive(Debug, Clone, FromRow)]
pub struct Claimed {
    pub id: Uuid,
    /// The token that finishes this run.
    pub token: Uuid,
    pub queue: String,
    pub kind: String,
    pub tenant_id: Option<Uuid>,
    pub livemode: Option<bool>,
    pub payload: serde_json::Value,
    /// Runs before this one.
    pub attempts: i32,
    pub max_attempts: i32,
}

impl Claimed {
    /// The tenant and mode the job works for (`None` for platform jobs): the one way, besides
    /// authentication, to act in a tenant's scope.
    pub fn scope(&self) -> Option<Scope> {
        Some(Scope {
            tenant_id: crate::ids::TenantId::from_uuid(self.tenant_id?),
            livemode: self.livemode?,
        })
    }
}

/// The statement that claims messages (`$1` ids, `$2` tokens, `$3` now, `$4` the run's lease
/// end, `$5` the time before which a lease is renewed), returning the claimed rows; put it
/// after `WITH`. The rows are locked in id order first, as every statement on jobs locks them.
/// Each message whose token still holds gets a new token; stale or duplicate messages (another
/// lease since, or already done) are left out. The relay's lease usually has most of its time
/// left when a run starts: it is kept then, so the claim changes no indexed column and
/// PostgreSQL can update the row in place (the `jobs` table leaves room on its pages for that).
pub const CLAIM_SQL: &str = "locked AS (SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id \
     FOR NO KEY UPDATE), \
     claimed AS (UPDATE jobs SET lease_token = gen_random_uuid(), \
     run_at = CASE WHEN jobs.run_at < $5 THEN $4 ELSE jobs.run_at END, updated_at = $3 \
     FROM unnest($1::uuid[], $2::uuid[]) AS u(id, token) JOIN locked ON locked.id = u.id \
     WHERE jobs.id = u.id AND jobs.lease_token = u.token AND jobs.state = 'pending' \
     RETURNING jobs.id, jobs.lease_token AS token, jobs.queue, jobs.kind, jobs.tenant_id, \
     jobs.livemode, jobs.payload, jobs.attempts, jobs.max_attempts)";

/// Ids and tokens of messages in id order: statements lock jobs in id order everywhere, so
/// concurrent ones never wait for each other in a cycle.
pub fn sorted_messages(msgs: &[JobMessage]) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut msgs = msgs.to_vec();
    msgs.sort_by_key(|m| m.id);
    msgs.iter().map(|m| (m.id, m.token)).unzip()
}

/// The binds of [`CLAIM_SQL`] after the messages: (now, lease end, renew before). A lease
/// with at least three quarters of `run_lease` left is kept.
pub fn claim_times(
    now: DateTime<Utc>,
    run_lease: std::time::Duration,
) -> (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) {
    let lease = chrono::Duration::from_std(run_lease).unwrap_or(chrono::Duration::seconds(60));
    (now, now + lease, now + lease * 3 / 4)
}

/// Claims messages for running, with at least three quarters of `run_lease` left (see
/// [`CLAIM_SQL`]). `relaxed` is a pool whose commits do not wait for the disk: a claim lost in
/// a database crash only makes the run's outcome stale, and the job runs again.
pub async fn claim(
    relaxed: &PgPool,
    msgs: &[JobMessage],
    now: DateTime<Utc>,
    run_lease: std::time::Duration,
) -> Result<Vec<Claimed>, DbError> {
    let (ids, tokens) = sorted_messages(msgs);
    let (now, until, renew_before) = claim_times(now, run_lease);
    let claimed = sqlx::query_as::<_, Claimed>(sqlx::AssertSqlSafe(format!(
        "WITH {CLAIM_SQL} SELECT * FROM claimed"
    )))
    .bind(&ids)
    .bind(&tokens)
    .bind(now)
    .bind(until)
    .bind(renew_before)
    .fetch_all(relaxed)
    .await?;
    Ok(claimed)
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    /// Run again at this time.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// No more runs: the job is dead (listed for operators, who can retry it).
    Dead {
        error: String,
    },
    /// Not a failure: run again at this time without counting an attempt (back-pressure, such
    /// as a rate limit).
    Defer {
        at: DateTime<Utc>,
    },
}

impl Outcome {
    /// Retry after a transient failure with the queue's backoff, or dead when the attempts
    /// are used up. `attempts` counts runs before the failed one.
    pub fn after_failure(
        policy: RetryPolicy,
        attempts: i32,
        max_attempts: i32,
        now: DateTime<Utc>,
        error: String,
    ) -> Self {
        let failures = attempts + 1;
        if failures >= max_attempts {
            return Outcome::Dead { error };
        }
        let wait = policy.backoff(failures, rand::random::<f64>());
        Outcome::Retry {
            at: now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1)),
            error,
        }
    }

    /// (state, run_at, error, whether the run counts as an attempt)
    pub fn parts(&self, now: DateTime<Utc>) -> (&'static str, DateTime<Utc>, Option<&str>, bool) {
        let (state, at, error, counts) = match self {
            Outcome::Succeeded => (JobState::Succeeded, now, None, true),
            Outcome::Retry { at, error } => (JobState::Pending, *at, Some(error.as_str()), true),
            Outcome::Dead { error } => (JobState::Dead, now, Some(error.as_str()), true),
            Outcome::Defer { at } => (JobState::Pending, *at, None, false),
        };
        (state.as_str(), at, error, counts)
    }
}

/// One finished run.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: Uuid,
    pub token: Uuid,
    pub outcome: Outcome,
}

/// Records outcomes of runs whose token still holds; returns the ids recorded (a run whose
/// lease was lost records nothing: a newer run owns the job). A job to run again (retried or
/// put off) leaves the billing run that queued it: that run's part in it is over, so the run
/// completes without waiting for it (and counts it neither succeeded nor failed).
pub async fn finish(
    conn: &mut PgConnection,
    runs: &[Finished],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    // In id order, as every statement locks jobs, so concurrent ones never wait in a cycle.
    let mut runs: Vec<&Finished> = runs.iter().collect();
    runs.sort_by_key(|r| r.id);
    let mut ids = Vec::with_capacity(runs.len());
    let mut tokens = Vec::with_capacity(runs.len());
    let mut states = Vec::with_capacity(runs.len());
    let mut run_ats = Vec::with_capacity(runs.len());
    let mut errors = Vec::with_capacity(runs.len());
    let mut counts = Vec::with_capacity(runs.len());
    for r in &runs {
        let (state, run_at, error, counted) = r.outcome.parts(now);
        ids.push(r.id);
        tokens.push(r.token);
        states.push(state);
        run_ats.push(run_at);
        errors.push(error.map(|e| truncate(e, 2000)));
        counts.push(i32::from(counted));
    }
    let done: Vec<(Uuid,)> = sqlx::query_as(
        "WITH locked AS (SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE) \
         UPDATE jobs SET state = u.state, run_at = u.run_at, attempts = jobs.attempts + u.counts, \
         billing_run_id = CASE WHEN u.state = 'pending' THEN NULL ELSE jobs.billing_run_id END, \
         lease_token = NULL, last_error = COALESCE(u.error, CASE WHEN u.counts = 0 \
         THEN jobs.last_error END), updated_at = $6, \
         finished_at = CASE WHEN u.state = 'pending' THEN NULL ELSE $6 END \
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $7::int[]) \
         AS u(id, token, state, run_at, error, counts) JOIN locked ON locked.id = u.id \
         WHERE jobs.id = u.id AND jobs.lease_token = u.token RETURNING jobs.id",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&states)
    .bind(&run_ats)
    .bind(&errors)
    .bind(now)
    .bind(&counts)
    .fetch_all(&mut *conn)
    .await?;
    Ok(done.into_iter().map(|(id,)| id).collect())
}

/// Gives jobs held by a stopping worker back as due now.
pub async fn release(
    pool: &PgPool,
    held: &[(Uuid, Uuid)],
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    let mut held = held.to_vec();
    held.sort_unstable();
    let (ids, tokens): (Vec<Uuid>, Vec<Uuid>) = held.into_iter().unzip();
    let done = sqlx::query(
        "UPDATE jobs SET run_at = $3, lease_token = NULL, updated_at = $3 \
         FROM unnest($1::uuid[], $2::uuid[]) AS u(id, token) \
         WHERE jobs.id = u.id AND jobs.lease_token = u.token AND jobs.state = 'pending'",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

crate::text_enum! {
    /// Where a job stands in the outbox.
    pub enum JobState {
        /// Billing work due later: a billing run makes it pending when its time has come.
        Scheduled = "scheduled",
        /// Due at `run_at` (or leased to a run until then).
        Pending = "pending",
        Succeeded = "succeeded",
        /// Out of attempts, or failed for good; an operator can retry it.
        Dead = "dead",
    }
}

/// A job as operators see it.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct JobRow {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub tenant_id: Option<Uuid>,
    pub livemode: Option<bool>,
    pub payload: serde_json::Value,
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Dead jobs, newest first.
pub async fn list_dead(
    pool: &PgPool,
    queue: Option<Queue>,
    limit: i64,
) -> Result<Vec<JobRow>, DbError> {
    sqlx::query_as::<_, JobRow>(
        "SELECT id, queue, kind, tenant_id, livemode, payload, state, attempts, max_attempts, \
         run_at, last_error, created_at, updated_at FROM jobs \
         WHERE state = 'dead' AND ($1::text IS NULL OR queue = $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(queue.map(Queue::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(Into::into)
}

/// Makes dead jobs due again (all of a queue's, or one); returns how many.
pub async fn retry_dead(
    pool: &PgPool,
    id: Option<Uuid>,
    queue: Option<Queue>,
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(String,)> = sqlx::query_as(
        "UPDATE jobs SET state = 'pending', attempts = 0, run_at = $3, lease_token = NULL, \
         finished_at = NULL, updated_at = $3 \
         WHERE state = 'dead' AND ($1::uuid IS NULL OR id = $1) AND ($2::text IS NULL OR queue = $2) \
         RETURNING queue",
    )
    .bind(id)
    .bind(queue.map(Queue::as_str))
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut queues: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    for q in queues {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(q)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Jobs of every queue by state, for metrics, in one statement: (queue, due now, scheduled
/// later, dead); a queue with none is left out.
pub async fn counts(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Vec<(String, i64, i64, i64)>, DbError> {
    sqlx::query_as(
        "SELECT queue, count(*) FILTER (WHERE state = 'pending' AND run_at <= $1 \
                    AND test_clock_id IS NULL), \
                count(*) FILTER (WHERE state = 'scheduled' OR (state = 'pending' \
                    AND (run_at > $1 OR test_clock_id IS NOT NULL))), \
                count(*) FILTER (WHERE state = 'dead') \
         FROM jobs WHERE state IN ('scheduled', 'pending', 'dead') GROUP BY queue",
    )
    .bind(now)
    .fetch_all(pool)
    .await
    .map_err(Into::into)
}

/// Deletes succeeded jobs finished before `before`, at most `limit` at a time.
pub async fn purge_succeeded(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, DbError> {
    let done = sqlx::query(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs j WHERE state = 'succeeded' \
         AND finished_at < $1 AND (billing_run_id IS NULL OR NOT EXISTS \
             (SELECT 1 FROM billing_runs r WHERE r.id = j.billing_run_id \
              AND r.status <> 'completed')) LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
