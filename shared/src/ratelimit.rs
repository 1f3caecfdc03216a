//! Fixed-window rate limits in Redis, shared by every API replica.

use redis::aio::ConnectionManager;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        remaining: u32,
    },
    /// Refused; retry after this many seconds.
    Limited {
        retry_after_secs: u64,
    },
}

/// Counts one hit on `bucket` in the current window of `window_secs` and decides.
pub async fn hit(
    redis: &mut ConnectionManager,
    prefix: &str,
    bucket: &str,
    limit: u32,
    window_secs: u64,
    now_unix: u64,
) -> Result<Decision, redis::RedisError> {
    let window = now_unix / window_secs.max(1);
    let key = format!("{prefix}rl:{bucket}:{window}");
    let (count,): (u64,) = redis::pipe()
        .atomic()
        .incr(&key, 1u64)
        .expire(&key, i64::try_from(window_secs * 2).unwrap_or(i64::MAX))
        .ignore()
        .query_async(redis)
        .await?;
    if count > u64::from(limit) {
        let window_end = (window + 1) * window_secs.max(1);
        Ok(Decision::Limited {
            retry_after_secs: window_end.saturating_sub(now_unix).max(1),
        })
    } else {
        Ok(Decision::Allowed {
            remaining: limit - u32::try_from(count).unwrap_or(limit),
        })
    }
}

/// A Redis client for the configured URL with `TCP_NODELAY` set (redis-rs leaves Nagle's
/// algorithm on by default, which delays pipelined and scripted commands).
pub fn client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}
