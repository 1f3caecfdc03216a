//! A Prometheus histogram, shared by the API's and the workers' `/metrics`.

use std::fmt::Write;

/// Upper bounds in seconds.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        self.count += 1;
        self.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
    }

    /// Writes `name_bucket`, `name_sum` and `name_count` lines; `labels` is `key="value",…`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        let mut out = String::new();
        h.render(&mut out, "x", "q=\"a\"");
        assert!(out.contains("x_bucket{q=\"a\",le=\"0.001\"} 0"));
        assert!(out.contains("x_bucket{q=\"a\",le=\"0.005\"} 1"));
        assert!(out.contains("x_bucket{q=\"a\",le=\"0.25\"} 2"));
        assert!(out.contains("x_count{q=\"a\"} 2"));
    }
}
