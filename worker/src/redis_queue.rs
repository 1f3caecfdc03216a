//! The Redis side of a queue: apalis-redis storage configured for this platform, its depth,
//! pushing relayed jobs, and vacuuming finished ones.
//!
//! apalis-redis 1.0.0 puts every pushed task in its scheduled set and promotes all due ones in
//! a single Lua `unpack`, which Redis refuses past about 8,000 values — and then every worker
//! dies. So Redis only ever holds a bounded window of work: the relay pushes while the queue is
//! below its high-water mark, in bounded batches, one relay per queue at a time.

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

/// Removes up to `max` finished tasks (done or dead) with their data, in one short script.
/// apalis-redis keeps finished tasks forever otherwise.
pub async fn vacuum(
    conn: &mut ConnectionManager,
    config: &Config,
    max: usize,
) -> Result<i64, redis::RedisError> {
    Script::new(
        r"
        local removed = 0
        for _, set in ipairs({KEYS[1], KEYS[2]}) do
            local ids = redis.call('SPOP', set, ARGV[1])
            for _, id in ipairs(ids) do
                redis.call('HDEL', KEYS[3], id)
                redis.call('DEL', KEYS[4] .. ':' .. id)
                removed = removed + 1
            end
        end
        return removed
        ",
    )
    .key(config.done_jobs_set())
    .key(config.dead_jobs_set())
    .key(config.job_data_hash())
    .key(config.job_meta_hash())
    .arg(max)
    .invoke_async(conn)
    .await
}
