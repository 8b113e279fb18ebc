//! Where a request comes from: its source address (from the connection), made the audit
//! origin of everything the request records, and the audit of failed authentication (one event
//! per source or token prefix per window, from the limiter in `auth_limit.rs`).

use crate::auth_limit::{AuthLimiter, FailureKey, FailureReport};
use crate::boot::BootConnection;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use inventory::{AuditOrigin, AuditOutcome, Inventory, NewAuditEvent};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client's address, in every request's extensions (None only when the listener gave
/// no connection info, as in-process router tests do).
#[derive(Debug, Clone, Copy)]
pub struct Source(pub Option<SocketAddr>);

impl Source {
    /// The client's IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        self.0.map(|a| a.ip())
    }
}

/// Middleware: records the source address in the request and runs the rest of the request
/// with it as the audit origin (the token prefix is added once a token authenticates).
pub async fn track(mut req: Request, next: Next) -> Response {
    let ext = req.extensions();
    let addr = ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| {
            ext.get::<ConnectInfo<BootConnection>>()
                .and_then(|c| c.0.peer)
        });
    req.extensions_mut().insert(Source(addr));
    let origin = AuditOrigin {
        source: addr.map(|a| a.to_string()),
        token_prefix: None,
    };
    origin.scope(next.run(req)).await
}

/// The process's failure counters (one per process, shared by every listener).
pub type SharedLimiter = Arc<Mutex<AuthLimiter>>;

/// Reports at most this many windows per flush and keeps at most this many waiting for a
/// database that does not answer; the rest are logged and dropped.
const MAX_PENDING: usize = 10_000;

/// Writes each finished window of failed authentication as one audit event, every `every`
/// and once more, for the windows still open, at shutdown.
pub fn spawn_failure_audit(
    inv: Inventory,
    limiter: SharedLimiter,
    every: Duration,
    stop: pxe::Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pending: Vec<FailureReport> = Vec::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.cancelled() => true,
            };
            let now = if last { i64::MAX } else { inventory::now_ms() };
            let (closed, untracked) = match limiter.lock() {
                Ok(mut l) => l.take_closed(now),
                Err(_) => (Vec::new(), 0),
            };
            if untracked > 0 {
                tracing::warn!(
                    untracked,
                    "failed authentications from more sources than the limiter tracks"
                );
            }
            pending.extend(closed);
            if pending.len() > MAX_PENDING {
                let dropped = pending.len() - MAX_PENDING;
                tracing::error!(
                    dropped,
                    "could not audit these failed-authentication windows"
                );
                pending.truncate(MAX_PENDING);
            }
            let mut kept = Vec::new();
            for r in pending.drain(..) {
                if let Err(e) = record_report(&inv, &r).await {
                    // Kept for the next flush: a database hiccup must not lose the record.
                    tracing::warn!(error = %e, "could not audit failed authentication; retrying");
                    kept.push(r);
                }
            }
            pending = kept;
            if last {
                break;
            }
        }
    })
}

async fn record_report(inv: &Inventory, r: &FailureReport) -> inventory::Result<()> {
    let (kind, target, origin) = match &r.key {
        FailureKey::Source(ip) => (
            "source",
            ip.to_string(),
            AuditOrigin {
                source: Some(ip.to_string()),
                token_prefix: None,
            },
        ),
        FailureKey::Prefix(p) => (
            "token",
            p.clone(),
            AuditOrigin {
                source: None,
                token_prefix: Some(p.clone()),
            },
        ),
        FailureKey::Account(name) => (
            "user",
            name.chars().take(64).collect(),
            AuditOrigin::default(),
        ),
    };
    let ev = NewAuditEvent::ok("anonymous", "auth.failed", kind, &target)
        .outcome(AuditOutcome::Denied)
        .detail(serde_json::json!({
            "failures": r.failures,
            "refused": r.refused,
            "window_started_at": r.started_ms,
        }));
    origin.scope(inv.record(ev)).await
}
