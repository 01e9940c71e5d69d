//! Prometheus counters (CONTRACT §4), rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Counter names, in one place so that tests and dashboards agree.
pub const HTTP_REQUESTS: &str = "govcfs_http_requests_total";
pub const BLOB_BYTES_SENT: &str = "govcfs_blob_bytes_sent_total";
pub const BLOB_BYTES_RECEIVED: &str = "govcfs_blob_bytes_received_total";
pub const COMMITS: &str = "govcfs_commits_total";
pub const STREAM_SESSIONS_ACTIVE: &str = "govcfs_stream_sessions_active";

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Blob payload bytes sent on every route, before compression.
    pub blob_bytes_sent: AtomicU64,
    /// Blob payload bytes received (upload chunks and streamed uploads).
    pub blob_bytes_received: AtomicU64,
    /// Commits that landed.
    pub commits: AtomicU64,
    /// Open stream sessions (a gauge).
    pub stream_sessions_active: std::sync::Arc<AtomicI64>,
}

impl Metrics {
    /// Counts one answered request.
    pub fn record_request(&self, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    /// Adds blob bytes sent.
    pub fn add_sent(&self, n: u64) {
        self.blob_bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE {HTTP_REQUESTS} counter");
        for ((route, status), n) in self.requests.lock().expect("metrics lock").iter() {
            let route = route.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "{HTTP_REQUESTS}{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let counters = [
            (
                BLOB_BYTES_SENT,
                self.blob_bytes_sent.load(Ordering::Relaxed),
            ),
            (
                BLOB_BYTES_RECEIVED,
                self.blob_bytes_received.load(Ordering::Relaxed),
            ),
            (COMMITS, self.commits.load(Ordering::Relaxed)),
        ];
        for (name, value) in counters {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {value}");
        }
        let _ = writeln!(
            out,
            "# TYPE {STREAM_SESSIONS_ACTIVE} gauge\n{STREAM_SESSIONS_ACTIVE} {}",
            self.stream_sessions_active.load(Ordering::Relaxed)
        );
        out
    }
}

/// Reads one unlabelled sample from a rendered metrics page (used by clients and tests).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Sums a labelled counter over the samples whose labels contain `label_fragment`.
pub fn sum_labelled(text: &str, name: &str, label_fragment: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label_fragment))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_reads_back() {
        let m = Metrics::default();
        m.record_request("/api/v1/repos", 200);
        m.record_request("/api/v1/repos", 200);
        m.add_sent(42);
        let text = m.render();
        assert_eq!(sample(&text, BLOB_BYTES_SENT), Some(42.0));
        assert_eq!(
            sum_labelled(&text, HTTP_REQUESTS, "route=\"/api/v1/repos\""),
            2.0
        );
        assert_eq!(sample(&text, STREAM_SESSIONS_ACTIVE), Some(0.0));
    }
}
