//! Prometheus text exposition, hand-rolled: a handful of counters does not need a framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Counters of the HTTP layer.
#[derive(Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    agent_claims_refused: std::sync::atomic::AtomicU64,
    connections_open: std::sync::atomic::AtomicU64,
    connections_refused: std::sync::atomic::AtomicU64,
}

impl HttpMetrics {
    /// Counts one answered request.
    pub fn observe(&self, method: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_string(), status)).or_default() += 1;
        }
    }

    /// Counts one refused agent claim (wrong address, foreign MACs, bad token).
    pub fn agent_claim_refused(&self) {
        self.agent_claims_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one connection accepted and being served.
    pub fn connection_opened(&self) {
        self.connections_open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one served connection closed.
    pub fn connection_closed(&self) {
        self.connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts one connection closed at once for being over a cap (per source or in total).
    pub fn connection_refused(&self) {
        self.connections_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP rackshare_agent_claims_refused_total Agent claims refused (address, MACs or token).\n# TYPE rackshare_agent_claims_refused_total counter\nrackshare_agent_claims_refused_total {}",
            self.agent_claims_refused
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP rackshare_http_connections_open HTTP connections open (member and boot listeners).\n# TYPE rackshare_http_connections_open gauge\nrackshare_http_connections_open {}\n# HELP rackshare_http_connections_refused_total Connections closed at once for being over a connection cap.\n# TYPE rackshare_http_connections_refused_total counter\nrackshare_http_connections_refused_total {}",
            self.connections_open
                .load(std::sync::atomic::Ordering::Relaxed),
            self.connections_refused
                .load(std::sync::atomic::Ordering::Relaxed)
        );
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
