//! Prometheus text exposition, hand-rolled: a handful of counters does not need a framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Counters of the HTTP layer.
#[derive(Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

impl HttpMetrics {
    /// Counts one answered request.
    pub fn observe(&self, method: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_string(), status)).or_default() += 1;
        }
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP rackshare_http_requests_total API requests answered, by method and status."
        );
        let _ = writeln!(out, "# TYPE rackshare_http_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((method, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "rackshare_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
    }
}
