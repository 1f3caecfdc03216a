//! Prometheus metrics: requests by operation and status, and a latency histogram.

use std::{collections::HashMap, fmt::Write, sync::Mutex, time::Duration};

use shared::metrics::Histogram;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(&'static str, u16), u64>>,
    latency: Mutex<HashMap<&'static str, Histogram>>,
}

impl Metrics {
    pub fn observe(&self, route: &'static str, status: u16, elapsed: Duration) {
        {
            let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            *r.entry((route, status)).or_default() += 1;
        }
        let mut l = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        l.entry(route).or_default().observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE http_requests_total counter\n");
        {
            let r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let mut rows: Vec<_> = r.iter().collect();
            rows.sort();
            for ((route, status), n) in rows {
                let _ = writeln!(
                    out,
                    "http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP http_request_duration_seconds HTTP request latency by route.\n");
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        let l = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let mut routes: Vec<_> = l.iter().collect();
        routes.sort_by_key(|(k, _)| *k);
        for (route, h) in routes {
            h.render(
                &mut out,
                "http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_counts_requests_and_fills_buckets() {
        let m = Metrics::default();
        m.observe("users.list", 200, Duration::from_millis(3));
        m.observe("users.list", 200, Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains("http_requests_total{route=\"users.list\",status=\"200\"} 2"));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("http_request_duration_seconds_count{route=\"users.list\"} 2"));
    }
}
