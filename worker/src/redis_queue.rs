//! The Redis side of a queue: apalis-redis storage configured for this platform, its depth,
//! pushing relayed jobs, acknowledging finished ones, and what the metrics read.
//!
//! apalis-redis 1.0.0 puts every pushed task in its scheduled set and promotes all due ones in
//! a single Lua `unpack`, which Redis refuses past about 8,000 values — and then every worker
//! dies. So Redis only ever holds a bounded window of work: the relay pushes while the queue is
//! below its high-water mark, in bounded batches, one relay per queue at a time.
//!
//! The same limit applies to a consumer's inflight set: when a consumer dies, apalis moves its
//! whole set back to the queue in one `unpack`. apalis acknowledges only when it also stores
//! results (which we keep in PostgreSQL), so we acknowledge ourselves: when a job ends, its id
//! leaves the consumer's inflight set and its data and metadata are deleted ([`ack`]). Redis
//! then holds only what is queued or running, whatever the traffic has been.

use std::time::Duration;

use apalis::prelude::TaskBuilder;
use apalis_redis::{Config, ConnectionManager, RedisStorage, RedisTask};
use redis::Script;
use shared::{
    config::Settings,
    jobs::{JobMessage, Queue},
};

/// The apalis-redis configuration of a queue.
pub fn config(settings: &Settings, queue: Queue) -> Config {
    Config::default()
        .queue(queue_name(settings, queue))
        // Fetch in batches: fewer round trips per job. apalis-redis also sizes the channel that
        // carries finished jobs' acknowledgements by it (four batches); a channel smaller than
        // the jobs running at once makes finished jobs wait for room, in lock-step.
        .batch_size((settings.worker.concurrency.get(queue) / 2).clamp(50, 1000))
        // A worker silent for three heartbeats is presumed dead; its jobs go to another one.
        .heartbeat_interval(settings.worker.heartbeat)
        .missed_heartbeats(3)
        // Per-task locks cost an O(queue length) LREM each; leases in PostgreSQL cover this.
        .lock_tasks(false)
        .emit_events(false)
        // No results in Redis (outcomes live in PostgreSQL). This also turns apalis'
        // acknowledgement off: [`ack`] removes finished jobs instead.
        .persist_results(false)
}

pub fn queue_name(settings: &Settings, queue: Queue) -> String {
    format!("{}queue:{}", settings.redis.key_prefix, queue.as_str())
}

pub fn storage(
    conn: ConnectionManager,
    settings: &Settings,
    queue: Queue,
) -> RedisStorage<JobMessage> {
    RedisStorage::new(conn).with_config(config(settings, queue))
}

/// Jobs waiting in Redis: the active list plus the scheduled set (where pushes land first).
pub async fn depth(
    conn: &mut ConnectionManager,
    config: &Config,
) -> Result<i64, redis::RedisError> {
    let (active, scheduled): (i64, i64) = redis::pipe()
        .cmd("LLEN")
        .arg(config.active_jobs_list())
        .cmd("ZCARD")
        .arg(config.scheduled_jobs_set())
        .query_async(conn)
        .await?;
    Ok(active + scheduled)
}

/// Pushes job messages (one Lua call for the batch).
pub async fn push(
    conn: &mut ConnectionManager,
    config: &Config,
    msgs: &[JobMessage],
) -> Result<(), apalis_redis::Error> {
    let tasks: Vec<RedisTask> = msgs
        .iter()
        .map(|m| TaskBuilder::new(serde_json::to_vec(m).unwrap_or_default()).build())
        .collect();
    apalis_redis::queries::push_tasks(conn, config, &tasks).await?;
    Ok(())
}

/// Takes the relay lock of a queue for `ttl`: one relay pushes to a queue at a time, so
/// concurrent relays cannot overshoot the high-water mark together.
pub async fn try_lock(
    conn: &mut ConnectionManager,
    settings: &Settings,
    queue: Queue,
    owner: &str,
    ttl: Duration,
) -> Result<bool, redis::RedisError> {
    let key = format!("{}relay-lock:{}", settings.redis.key_prefix, queue.as_str());
    let set: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(owner)
        .arg("NX")
        .arg("PX")
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(5000))
        .query_async(conn)
        .await?;
    Ok(set.is_some())
}

pub async fn unlock(
    conn: &mut ConnectionManager,
    settings: &Settings,
    queue: Queue,
    owner: &str,
) -> Result<(), redis::RedisError> {
    let key = format!("{}relay-lock:{}", settings.redis.key_prefix, queue.as_str());
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
    .key(key)
    .arg(owner)
    .invoke_async::<i64>(conn)
    .await?;
    Ok(())
}

/// Deletes what consumers that are gone left behind: apalis keeps a metadata hash per consumer
/// name (a new name at every start) after the consumer leaves the workers set. One `SCAN`
/// step of about `count` keys per call, from `cursor` (0 to start over), so Redis is never
/// blocked for long; returns the next cursor and how many keys were deleted.
pub async fn reap_consumers(
    conn: &mut ConnectionManager,
    settings: &Settings,
    queue: Queue,
    cursor: u64,
    count: usize,
) -> Result<(u64, i64), redis::RedisError> {
    let config = config(settings, queue);
    let prefix = format!("{}:workers:metadata:", queue_name(settings, queue));
    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(format!("{prefix}*"))
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let mut reaped = 0;
    for key in keys {
        let name = key.strip_prefix(&prefix).unwrap_or_default();
        let alive: Option<f64> = redis::cmd("ZSCORE")
            .arg(config.workers_set())
            .arg(name)
            .query_async(conn)
            .await?;
        if alive.is_none() {
            reaped += redis::cmd("DEL").arg(&key).query_async::<i64>(conn).await?;
        }
    }
    Ok((next, reaped))
}

/// Acknowledges finished tasks of one consumer (`worker` is its apalis name): each id still in
/// the consumer's inflight set leaves it, and its data and metadata are deleted. An id that is
/// no longer there was handed to another consumer (this one was presumed dead): its data stays
/// for that run, which acknowledges it in turn. Returns how many were removed.
pub async fn ack(
    conn: &mut ConnectionManager,
    config: &Config,
    worker: &str,
    task_ids: &[String],
) -> Result<i64, redis::RedisError> {
    if task_ids.is_empty() {
        return Ok(0);
    }
    static SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
        Script::new(
            r"
            local removed = 0
            for _, id in ipairs(ARGV) do
                if redis.call('SREM', KEYS[1], id) == 1 then
                    redis.call('HDEL', KEYS[2], id)
                    redis.call('DEL', KEYS[3] .. ':' .. id)
                    removed = removed + 1
                end
            end
            return removed
            ",
        )
    });
    let mut invocation = SCRIPT.prepare_invoke();
    invocation
        .key(format!("{}:{worker}", config.inflight_jobs_set()))
        .key(config.job_data_hash())
        .key(config.job_meta_hash());
    for id in task_ids {
        invocation.arg(id);
    }
    invocation.invoke_async(conn).await
}

/// What Redis holds for a queue, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Task data entries (queued, scheduled or running).
    pub data: i64,
    /// The largest inflight set of any consumer, live or dead.
    pub largest_inflight: i64,
    /// Consumers registered (live, or dead and not yet reaped).
    pub consumers: i64,
}

/// Measures a queue's footprint in Redis.
pub async fn footprint(
    conn: &mut ConnectionManager,
    config: &Config,
) -> Result<Footprint, redis::RedisError> {
    let (data, workers): (i64, Vec<String>) = redis::pipe()
        .cmd("HLEN")
        .arg(config.job_data_hash())
        .cmd("ZRANGE")
        .arg(config.workers_set())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let mut largest_inflight = 0;
    if !workers.is_empty() {
        let mut pipe = redis::pipe();
        for w in &workers {
            pipe.cmd("SCARD")
                .arg(format!("{}:{w}", config.inflight_jobs_set()));
        }
        let sizes: Vec<i64> = pipe.query_async(conn).await?;
        largest_inflight = sizes.into_iter().max().unwrap_or(0);
    }
    Ok(Footprint {
        data,
        largest_inflight,
        consumers: i64::try_from(workers.len()).unwrap_or(i64::MAX),
    })
}

/// Memory Redis uses, in bytes (`used_memory` of `INFO memory`).
pub async fn used_memory(conn: &mut ConnectionManager) -> Result<i64, redis::RedisError> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}
