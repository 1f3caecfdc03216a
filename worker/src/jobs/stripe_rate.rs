//! The per-account Stripe rate limit, shared by every worker through Redis: Stripe allows
//! about 100 requests a second per account live and 25 in test mode, and answers 429 beyond.

use std::time::Duration;

use shared::ratelimit::{self, Decision};

use crate::Runtime;

/// How many windows a call waits for before giving up (the job is then put off).
const MAX_WAITS: usize = 3;

/// Takes one request from the account's budget for this second, waiting for the next second
/// when it is spent. `false` when it stayed spent.
pub async fn acquire(rt: &Runtime, livemode: bool, account: &str) -> bool {
    let limit = rt.settings.stripe.rate_limit(livemode);
    let bucket = format!(
        "stripe:{account}:{}",
        if livemode { "live" } else { "test" }
    );
    let mut redis = rt.redis.clone();
    for _ in 0..MAX_WAITS {
        let now_ms = rt.clock.now().timestamp_millis();
        let now = u64::try_from(now_ms / 1000).unwrap_or(0);
        match ratelimit::hit(
            &mut redis,
            &rt.settings.redis.key_prefix,
            &bucket,
            limit,
            1,
            now,
        )
        .await
        {
            Ok(Decision::Allowed { .. }) => return true,
            Ok(Decision::Limited { .. }) => {
                let into_second = u64::try_from(now_ms.rem_euclid(1000)).unwrap_or(0);
                let jitter = rand::random::<u64>() % 50;
                tokio::time::sleep(Duration::from_millis(1000 - into_second + jitter)).await;
            }
            Err(e) => {
                // Without Redis the limit cannot be shared; Stripe's own 429 still protects.
                tracing::warn!(error = %e, "Stripe rate limit unavailable; calling anyway");
                return true;
            }
        }
    }
    false
}
