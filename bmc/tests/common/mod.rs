//! Test harness: real emulators (sushy-tools, pyghmi, from the shared `testkit`) and a
//! tiny HTTP server/proxy that counts concurrency and injects faults. Everything on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

#[allow(unused_imports)]
pub use testkit::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- a tiny HTTP/1.1 server: enough for a mock BMC and a counting proxy ----------------------

/// A parsed request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw_head: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response to write.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} X\r\n", self.status);
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body,
        raw_head: head,
    })
}

/// Counters kept by [`serve`].
#[derive(Default)]
pub struct Stats {
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub total: AtomicUsize,
    pub log: Mutex<Vec<(String, String)>>,
}

impl Stats {
    pub fn max(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| m == method && p.contains(path_contains))
            .count()
    }
}

type Handler = Arc<dyn Fn(Request) -> futures_like::BoxFut + Send + Sync>;

pub mod futures_like {
    use std::future::Future;
    use std::pin::Pin;
    pub type BoxFut = Pin<Box<dyn Future<Output = super::Response> + Send>>;
}

/// Serves HTTP on 127.0.0.1 (one request per connection), counting requests in flight.
/// Returns the port, the stats and the task (abort it to stop).
pub async fn serve(handler: Handler) -> (u16, Arc<Stats>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stats = Arc::new(Stats::default());
    let st = stats.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let st = st.clone();
            tokio::spawn(async move {
                let Some(req) = read_request(&mut sock).await else {
                    return;
                };
                let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                st.max_in_flight.fetch_max(now, Ordering::SeqCst);
                st.total.fetch_add(1, Ordering::SeqCst);
                st.log
                    .lock()
                    .unwrap()
                    .push((req.method.clone(), req.path.clone()));
                let resp = handler(req).await;
                // Counted as done before the client can see the answer.
                st.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = sock.write_all(&resp.to_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (port, stats, task)
}

/// What the proxy does to each request.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Forward unchanged.
    None,
    /// Wait, then forward.
    Delay(Duration),
    /// Answer this status without forwarding (for all methods, or one).
    Status(u16, Option<&'static str>),
}

/// Forwards one request to 127.0.0.1:`upstream` and returns the whole response.
pub async fn forward(upstream: u16, req: &Request) -> Response {
    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return Response::json(
            502,
            &serde_json::json!({"error": {"message": "proxy: upstream down"}}),
        );
    };
    let mut head = String::new();
    for (i, line) in req.raw_head.split("\r\n").enumerate() {
        if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&req.body);
    if up.write_all(&out).await.is_err() {
        return Response::json(
            502,
            &serde_json::json!({"error": {"message": "proxy: write failed"}}),
        );
    }
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), up.read_to_end(&mut raw)).await;
    if !matches!(read, Ok(Ok(_))) {
        return Response::json(
            504,
            &serde_json::json!({"error": {"message": "proxy: upstream timeout"}}),
        );
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k != "content-length" && k != "connection" && k != "transfer-encoding"
        })
        .collect();
    Response {
        status,
        headers,
        body,
    }
}

/// A proxy to 127.0.0.1:`upstream` that applies `fault` (changeable at run time).
pub async fn proxy(
    upstream: u16,
    fault: Arc<Mutex<Fault>>,
) -> (u16, Arc<Stats>, tokio::task::JoinHandle<()>) {
    let handler: Handler = Arc::new(move |req: Request| {
        let fault = *fault.lock().unwrap();
        Box::pin(async move {
            match fault {
                Fault::None => forward(upstream, &req).await,
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    forward(upstream, &req).await
                }
                Fault::Status(code, method) if method.is_none_or(|m| m == req.method) => {
                    Response::json(
                        code,
                        &serde_json::json!({"error": {"code": "Base.1.0.GeneralError",
                        "message": "injected fault: service temporarily overloaded"}}),
                    )
                }
                Fault::Status(..) => forward(upstream, &req).await,
            }
        })
    });
    serve(handler).await
}

/// A Policy with short delays for tests.
pub fn fast_policy() -> bmc::Policy {
    bmc::Policy {
        driver: bmc::DriverOptions {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(15),
        },
        op_timeout: Duration::from_secs(60),
        queue_timeout: Duration::from_secs(120),
        attempts: 3,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        power_deadline: Duration::from_secs(45),
        poll_interval: Duration::from_millis(500),
    }
}
