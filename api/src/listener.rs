//! Our accept loop, for the member listener and the boot listeners: optional TLS, a cap on
//! connections per source and in total, a deadline for every request head (a new connection's
//! and an idle keep-alive one's), and a minimum rate for request bodies. Handlers see the
//! peer as `ConnectInfo<SocketAddr>` (and boot listeners' as `ConnectInfo<BootConnection>`).

use crate::boot::BootConnection;
use crate::metrics::HttpMetrics;
use crate::sendfile::{SendfileSocket, SendfileStream};
use crate::tls::ReloadableTls;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::Router;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Bounds on a listener's connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// A request head (and a TLS handshake) must be complete this long after the connection
    /// is ready for it: when it opens, or when the previous answer ended (so this is also the
    /// idle keep-alive timeout).
    pub header_timeout: Duration,
    /// Request bodies must arrive at least this fast (bytes per second), measured over
    /// [`BODY_RATE_WINDOW`] of time the handler spent waiting for them; 0: no minimum.
    pub min_body_rate: u64,
    /// Open connections at most, all sources together.
    pub max_connections: usize,
    /// Open connections at most from one source (an IPv4 address, an IPv6 /64).
    pub max_per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(15),
            min_body_rate: 1024,
            max_connections: 4096,
            max_per_source: 256,
        }
    }
}

/// How long a body's rate is measured over before it is judged.
pub const BODY_RATE_WINDOW: Duration = Duration::from_secs(20);

/// What a listener serves and how.
#[derive(Clone)]
pub(crate) struct Listening {
    /// The routes.
    pub app: Router,
    /// TLS, or plain HTTP.
    pub tls: Option<Arc<ReloadableTls>>,
    /// Send `Strict-Transport-Security` (an operator's certificate only).
    pub hsts: bool,
    /// Also put `ConnectInfo<BootConnection>` in requests (the boot listeners).
    pub boot: bool,
    /// The bounds.
    pub limits: ConnectionLimits,
    /// Where refused connections are counted.
    pub metrics: Arc<HttpMetrics>,
}

/// Raises this process's open-file soft limit to its hard limit (every connection is a
/// descriptor); returns the soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-file limit");
            1024
        }
    }
}

/// Serves `l` until `stop`; then stops accepting, lets open connections finish their
/// requests (idle ones close at once) and returns.
pub(crate) async fn serve(l: TcpListener, what: Listening, stop: pxe::Shutdown) {
    let slots = Arc::new(Slots::default());
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = l.accept() => a,
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before accept: wait a
                // little instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let Some(slot) = slots.take(peer.ip(), &what.limits) else {
            what.metrics.connection_refused();
            tracing::debug!(%peer, "connection refused: too many open connections");
            drop(stream);
            continue;
        };
        let what = what.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _slot = slot;
            what.metrics.connection_opened();
            connection(stream, peer, &what, stop).await;
            what.metrics.connection_closed();
        });
    }
    drop(l);
    while conns.join_next().await.is_some() {}
}

async fn connection(stream: TcpStream, peer: SocketAddr, what: &Listening, stop: pxe::Shutdown) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let deadline = what.limits.header_timeout;
    match &what.tls {
        // Plain boot connections send files with sendfile(2) (crate::sendfile).
        None if what.boot => {
            let socket = SendfileSocket::default();
            let stream = SendfileStream::new(stream, socket.clone());
            http(stream, peer, local, what, Some(socket), stop).await
        }
        None => http(stream, peer, local, what, None, stop).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                Ok(Ok(s)) => http(s, peer, local, what, None, stop).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn http<S>(
    io: S,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    what: &Listening,
    zero_copy: Option<SendfileSocket>,
    stop: pxe::Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = what.app.clone();
    let hsts = what.hsts;
    let boot = what.boot;
    let rate = what.limits.min_body_rate;
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req =
            req.map(|b| axum::body::Body::new(MinRateBody::new(b, rate, BODY_RATE_WINDOW)));
        req.extensions_mut().insert(ConnectInfo(peer));
        if boot {
            req.extensions_mut().insert(ConnectInfo(BootConnection {
                local,
                peer: Some(peer),
            }));
        }
        if let Some(socket) = &zero_copy {
            req.extensions_mut().insert(socket.clone());
        }
        let app = app.clone();
        async move {
            let mut resp = tower::ServiceExt::oneshot(app, req).await?;
            if hsts {
                resp.headers_mut().insert(
                    axum::http::header::STRICT_TRANSPORT_SECURITY,
                    axum::http::HeaderValue::from_static("max-age=31536000"),
                );
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(what.limits.header_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}

/// Open connections, counted per source and in total.
#[derive(Default)]
struct Slots {
    /// (all open connections, open connections per source).
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place; given back on drop.
struct Slot {
    slots: Arc<Slots>,
    source: IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &ConnectionLimits) -> Option<Slot> {
        let source = source_of(ip);
        let mut open = self.open.lock().ok()?;
        let (total, per_source) = &mut *open;
        let mine = per_source.get(&source).copied().unwrap_or(0);
        if *total >= limits.max_connections || mine >= limits.max_per_source {
            return None;
        }
        per_source.insert(source, mine + 1);
        *total += 1;
        Some(Slot {
            slots: self.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock() {
            let (total, per_source) = &mut *open;
            *total = total.saturating_sub(1);
            if let Some(n) = per_source.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    per_source.remove(&self.source);
                }
            }
        }
    }
}

/// The source a connection counts against: an IPv4 address (also IPv4-mapped), an IPv6 /64
/// (one host usually has a whole /64).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A request body that fails when it arrives slower than `min_rate` bytes per second over a
/// window (on the listeners, [`BODY_RATE_WINDOW`]). Only time the handler spends waiting for the body counts,
/// so a slow disk behind an upload is never the client's fault.
struct MinRateBody<B> {
    inner: B,
    min_rate: u64,
    window: Duration,
    /// Bytes received in the current window.
    bytes: u64,
    /// Time spent waiting in the current window, before `waiting_since`.
    waited: Duration,
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> MinRateBody<B> {
    fn new(inner: B, min_rate: u64, window: Duration) -> Self {
        MinRateBody {
            inner,
            min_rate,
            window,
            bytes: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    fn needed(&self) -> u64 {
        let per_ms = self.min_rate.saturating_mul(self.window.as_millis() as u64);
        per_ms / 1000
    }

    /// Starts a new window once this one has shown the rate (or was long enough).
    fn next_window(&mut self) {
        self.bytes = 0;
        self.waited = Duration::ZERO;
    }
}

/// The error a too-slow body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {0} bytes per second")]
struct TooSlow(u64);

impl<B> Body for MinRateBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                this.timer = None;
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.bytes >= this.needed() || this.waited >= this.window {
                    if this.bytes < this.needed() {
                        return Poll::Ready(Some(Err(TooSlow(this.min_rate).into())));
                    }
                    this.next_window();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.min_rate == 0 => Poll::Pending,
            Poll::Pending => loop {
                let now = Instant::now();
                let since = *this.waiting_since.get_or_insert(now);
                let waited = this.waited + now.saturating_duration_since(since);
                if waited >= this.window {
                    if this.bytes < this.needed() {
                        return Poll::Ready(Some(Err(TooSlow(this.min_rate).into())));
                    }
                    this.next_window();
                    this.waiting_since = Some(now);
                    continue;
                }
                let at = tokio::time::Instant::from_std(now + (this.window - waited));
                match &mut this.timer {
                    Some(t) => t.as_mut().reset(at),
                    None => this.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                }
                if let Some(t) = &mut this.timer {
                    if t.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_addresses_and_v6_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(source_of(ip("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(source_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa::1")),
            source_of(ip("2001:db8:1:2:bbbb::2"))
        );
    }

    #[test]
    fn slots_cap_each_source_and_the_total() {
        let limits = ConnectionLimits {
            max_connections: 3,
            max_per_source: 2,
            ..ConnectionLimits::default()
        };
        let slots = Arc::new(Slots::default());
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        let a1 = slots.take(a, &limits).expect("first");
        let _a2 = slots.take(a, &limits).expect("second");
        assert!(slots.take(a, &limits).is_none(), "third from one source");
        let _b1 = slots.take(b, &limits).expect("another source");
        assert!(slots.take(b, &limits).is_none(), "the total");
        drop(a1);
        assert!(
            slots.take(a, &limits).is_some(),
            "a closed one frees its slot"
        );
    }

    /// One chunk, then nothing ever again.
    struct Trickle(Option<Bytes>);

    impl Body for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn a_body_slower_than_the_minimum_fails() {
        let chunk = Bytes::from_static(b"a little");
        let mut slow = MinRateBody::new(Trickle(Some(chunk)), 1024, Duration::from_millis(50));
        let first = std::future::poll_fn(|cx| Pin::new(&mut slow).poll_frame(cx)).await;
        assert!(matches!(first, Some(Ok(_))));
        let then = std::future::poll_fn(|cx| Pin::new(&mut slow).poll_frame(cx)).await;
        assert!(
            matches!(then, Some(Err(_))),
            "nothing more for a whole window"
        );
    }
}
