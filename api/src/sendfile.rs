//! Zero-copy file answers on the plain-HTTP boot listener (decision 49).
//!
//! hyper still parses every request and writes every head, and the answer still passes
//! through every layer (counters, security headers, errors); only the bytes of a file body go
//! out by `sendfile(2)` from the page cache straight to the socket. The handler's answer
//! carries a [`SendfileBody`]; the connection's stream is a [`SendfileStream`]. Both share one
//! [`SendfileSocket`]:
//!
//! 1. hyper buffers the head and polls the body, which queues its file range and waits;
//! 2. hyper writes the head and flushes the stream; the stream's flush sends the range with
//!    `sendfile` (in slices, yielding between them) before it reports the flush done;
//! 3. the body then yields as many placeholder bytes (a static zero page, never read) as it
//!    promised, and the stream swallows exactly that many, so hyper's framing (Content-Length,
//!    keep-alive, the next request) stays its own.
//!
//! TLS connections cannot use this (the bytes must be encrypted) and keep the stream.

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use http_body::{Frame, SizeHint};
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The placeholder hyper "writes" for a body already sent: never read, so never touched.
static PLACEHOLDER: [u8; PLACEHOLDER_LEN] = [0; PLACEHOLDER_LEN];
const PLACEHOLDER_LEN: usize = 1 << 20;
/// At most this much goes out per flush before the task yields to the others on its thread.
const SLICE: u64 = 16 << 20;

/// One plain boot connection's hand-over point between the answer's body and the stream
/// (in every request's extensions on such a connection).
#[derive(Clone, Default)]
pub(crate) struct SendfileSocket(Arc<Mutex<Transfer>>);

#[derive(Default)]
enum Transfer {
    /// No file answer in flight.
    #[default]
    Idle,
    /// A body's range waits for the head to be flushed, then goes out.
    Queued {
        file: Arc<File>,
        offset: i64,
        left: u64,
        total: u64,
        body: Option<Waker>,
    },
    /// The range went out; this many of hyper's placeholder bytes are still to be swallowed.
    Swallowing(u64),
    /// A transfer failed or its body went away half-way: the connection cannot go on.
    Broken,
}

impl SendfileSocket {
    fn lock(&self) -> MutexGuard<'_, Transfer> {
        // A panic while holding it leaves a connection's transfer, not shared state: go on.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Turns a file answer (`resp`, as tower-http's `ServeFile` made it for `path`, with its
/// status, Content-Length and Content-Range decided) into a zero-copy one. Anything else —
/// an error, a HEAD, an empty or multi-part range, a file that changed — is returned as is.
pub(crate) fn zero_copy(resp: Response, path: &Path, socket: SendfileSocket) -> Response {
    let Some((offset, len)) = range_of(&resp) else {
        return resp;
    };
    let Ok(file) = File::open(path) else {
        return resp;
    };
    match file.metadata() {
        Ok(m) if m.len() >= offset.saturating_add(len) => {}
        _ => return resp,
    }
    let Ok(offset_i) = i64::try_from(offset) else {
        return resp;
    };
    let (parts, _streamed) = resp.into_parts();
    let body = SendfileBody {
        socket,
        file: Some(Arc::new(file)),
        offset: offset_i,
        len,
        yielded: 0,
    };
    Response::from_parts(parts, Body::new(body))
}

/// (offset, length) of the single range a 200 or 206 file answer sends; None otherwise.
fn range_of(resp: &Response) -> Option<(u64, u64)> {
    let h = resp.headers();
    let len: u64 = h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
    if len == 0 {
        return None;
    }
    match resp.status() {
        StatusCode::OK => Some((0, len)),
        StatusCode::PARTIAL_CONTENT => {
            // "bytes FIRST-LAST/SIZE"; multipart answers have no Content-Range of their own.
            let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
            let (first, last) = v
                .strip_prefix("bytes ")?
                .split('/')
                .next()?
                .split_once('-')?;
            let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
            (last.checked_sub(first)?.checked_add(1)? == len).then_some((first, len))
        }
        _ => None,
    }
}

/// A file answer's body: its range is sent by the stream, and it yields placeholders for it.
pub(crate) struct SendfileBody {
    socket: SendfileSocket,
    /// Until the range is queued.
    file: Option<Arc<File>>,
    offset: i64,
    len: u64,
    yielded: u64,
}

impl http_body::Body for SendfileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let mut t = this.socket.lock();
        match &mut *t {
            Transfer::Broken => return Poll::Ready(Some(Err(io::ErrorKind::BrokenPipe.into()))),
            Transfer::Queued { body, .. } => {
                *body = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Transfer::Idle if this.file.is_some() => {
                *t = Transfer::Queued {
                    file: this.file.take().expect("checked above"),
                    offset: this.offset,
                    left: this.len,
                    total: this.len,
                    body: Some(cx.waker().clone()),
                };
                return Poll::Pending;
            }
            // The previous answer's placeholders are still going out: cannot happen, as
            // hyper writes one answer after the other, but never send out of order.
            Transfer::Swallowing(_) if this.file.is_some() => {
                return Poll::Ready(Some(Err(io::ErrorKind::InvalidInput.into())))
            }
            Transfer::Idle | Transfer::Swallowing(_) => {}
        }
        drop(t);
        let left = this.len - this.yielded;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(PLACEHOLDER_LEN as u64) as usize;
        this.yielded += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&PLACEHOLDER[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.file.is_none() && self.yielded == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.yielded)
    }
}

impl Drop for SendfileBody {
    fn drop(&mut self) {
        // Queued but not all placeholders handed to hyper: the client got a head promising
        // bytes the connection can no longer frame.
        if self.file.is_none() && self.yielded < self.len {
            *self.socket.lock() = Transfer::Broken;
        }
    }
}

/// A plain boot connection's TCP stream, sending queued file ranges itself.
pub(crate) struct SendfileStream {
    tcp: TcpStream,
    socket: SendfileSocket,
}

impl SendfileStream {
    /// `tcp`, handing over file answers through `socket`.
    pub(crate) fn new(tcp: TcpStream, socket: SendfileSocket) -> Self {
        SendfileStream { tcp, socket }
    }

    /// How many of `want` bytes hyper writes are placeholders to swallow; None: all real.
    fn swallow(&self, want: usize) -> io::Result<Option<usize>> {
        let mut t = self.socket.lock();
        match &mut *t {
            Transfer::Swallowing(left) => {
                let n = (*left).min(want as u64);
                *left -= n;
                if *left == 0 {
                    *t = Transfer::Idle;
                }
                Ok(Some(n as usize))
            }
            Transfer::Broken => Err(io::ErrorKind::BrokenPipe.into()),
            _ => Ok(None),
        }
    }

    /// Sends a queued range; Ready once none is left.
    fn poll_send(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut t = self.socket.lock();
        let mut sent = 0;
        loop {
            let Transfer::Queued {
                file,
                offset,
                left,
                total,
                body,
            } = &mut *t
            else {
                return Poll::Ready(Ok(()));
            };
            if *left == 0 {
                if let Some(w) = body.take() {
                    w.wake();
                }
                *t = Transfer::Swallowing(*total);
                return Poll::Ready(Ok(()));
            }
            if sent >= SLICE {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let count = (*left).min(SLICE) as usize;
            let r = self.tcp.try_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(self.tcp.as_fd(), file.as_fd(), Some(offset), count)
                    .map_err(io::Error::from)
            });
            match r {
                // The file shrank under us: the promised length cannot be sent.
                Ok(0) => {
                    *t = Transfer::Broken;
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(n) => {
                    *left -= n as u64;
                    sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.tcp.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            *t = Transfer::Broken;
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) => {
                    *t = Transfer::Broken;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.swallow(buf.len())? {
            Some(n) => Poll::Ready(Ok(n)),
            None => Pin::new(&mut self.tcp).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let want = bufs.iter().map(|b| b.len()).sum();
        match self.swallow(want)? {
            Some(n) => Poll::Ready(Ok(n)),
            None => Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        // hyper then queues body chunks instead of copying them into one buffer.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes after it has written everything it buffered (the head included):
        // the place where a queued range may go out.
        std::task::ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use crate::listener::{serve, ConnectionLimits, Listening};
    use axum::extract::Request;
    use axum::routing::get;
    use axum::Router;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Reads one answer: its head (lower-cased) and its Content-Length body (none for a HEAD).
    async fn answer(s: &mut TcpStream, head_only: bool) -> (String, Vec<u8>) {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("head byte");
            head.push(b[0]);
        }
        let head = String::from_utf8(head)
            .expect("utf-8 head")
            .to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().expect("length"));
        let mut body = vec![0u8; if head_only { 0 } else { len }];
        s.read_exact(&mut body).await.expect("body");
        (head, body)
    }

    /// Whole and ranged GETs, a HEAD and a 404 on one keep-alive plain boot connection: the
    /// bytes are the file's and hyper's framing survives every answer.
    #[tokio::test]
    async fn whole_and_ranged_files_go_out_by_sendfile_on_one_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.bin");
        let data: Vec<u8> = (0..(3u32 << 20) + 17)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &data).expect("write file");
        let app = Router::new().route(
            "/f",
            get(move |req: Request| crate::boot::serve_file(path.clone(), req)),
        );
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = pxe::Shutdown::new();
        let what = Listening {
            app,
            tls: None,
            hsts: false,
            boot: true,
            limits: ConnectionLimits::default(),
            metrics: Arc::new(Default::default()),
        };
        let server = tokio::spawn(serve(l, what, stop.clone()));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        for round in 0..2 {
            s.write_all(b"GET /f HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .expect("send");
            let (head, body) = answer(&mut s, false).await;
            assert!(head.starts_with("http/1.1 200"), "round {round}: {head}");
            assert!(body == data, "round {round}: whole file differs");
            s.write_all(b"GET /f HTTP/1.1\r\nHost: t\r\nRange: bytes=1000-2000000\r\n\r\n")
                .await
                .expect("send");
            let (head, body) = answer(&mut s, false).await;
            assert!(head.starts_with("http/1.1 206"), "{head}");
            assert!(body == data[1000..=2_000_000], "range differs");
            s.write_all(b"GET /f HTTP/1.1\r\nHost: t\r\nRange: bytes=-5\r\n\r\n")
                .await
                .expect("send");
            let (head, body) = answer(&mut s, false).await;
            assert!(head.starts_with("http/1.1 206"), "{head}");
            assert_eq!(body, data[data.len() - 5..]);
            s.write_all(b"HEAD /f HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .expect("send");
            let (head, _) = answer(&mut s, true).await;
            assert!(
                head.contains(&format!("content-length: {}", data.len())),
                "{head}"
            );
            s.write_all(b"GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .expect("send");
            let (head, _) = answer(&mut s, false).await;
            assert!(head.starts_with("http/1.1 404"), "{head}");
        }
        stop.cancel();
        drop(s);
        server.await.expect("server task");
    }
}
