//! What the benchmarks share.

/// Deletes the benchmark's Redis keys.
pub async fn clear_prefix(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
            .unwrap_or((0, Vec::new()));
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
}
