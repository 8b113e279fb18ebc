//! The agent's side of docs/agent-protocol.md: HTTPS to the boot listener with the
//! certificate pinned by `rackshare.pin=` (ureq on rustls, [`crate::tls`]), so a passive
//! listener on the boot network reads no user-data, key or image.

use crate::error::Error;
use crate::source::ImageSource;
use crate::tls::PinnedTls;
use proto::{
    AgentResult, Challenge, ChallengeRequest, ClaimRequest, ClaimResponse, ProgressReport,
    ResultAnswer,
};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long and how often requests are retried (the protocol's numbers by default; tests
/// shrink them).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// First pause after a failure; doubles each time.
    pub first: Duration,
    /// Longest pause.
    pub max: Duration,
    /// Give up after this long.
    pub total: Duration,
    /// Pause between claims refused with 401 (the token is not valid yet: `none`).
    pub claim_pause: Duration,
    /// Give up claiming after this long of 401s.
    pub claim_total: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            first: Duration::from_secs(1),
            max: Duration::from_secs(15),
            total: Duration::from_secs(15 * 60),
            claim_pause: Duration::from_secs(10),
            claim_total: Duration::from_secs(10 * 60),
        }
    }
}

/// A client of the agent endpoints.
pub struct Client {
    base: String,
    http: ureq::Agent,
    tls: Option<Arc<PinnedTls>>,
    retry: Retry,
    session: String,
    last_progress: Option<(Instant, String)>,
}

fn agent(tls: Option<Arc<PinnedTls>>) -> ureq::Agent {
    let b = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .timeout_write(Duration::from_secs(60));
    match tls {
        // https_only: a redirect (or a URL in the task) can never take the token to plain HTTP.
        Some(t) => b.tls_connector(t).https_only(true).build(),
        None => b.build(),
    }
}

/// How the agent talks to `api` given the command line's `pin` (decision 40): HTTPS needs a
/// pin; a pin with a plain-HTTP URL is refused (the token would go out in clear); plain HTTP
/// without a pin is what an older server's script says, and is kept for it.
pub fn transport(api: &str, pin: Option<&str>) -> Result<Option<Arc<PinnedTls>>, Error> {
    let https = api.starts_with("https://");
    match (https, pin) {
        (true, Some(p)) => {
            let pin = crate::tls::parse_pin(p).ok_or_else(|| {
                Error::Api(format!(
                    "rackshare.pin={p} is not a SHA-256 fingerprint (64 hex digits)"
                ))
            })?;
            let tls = PinnedTls::new(pin).map_err(|e| Error::Api(format!("TLS: {e}")))?;
            Ok(Some(Arc::new(tls)))
        }
        (true, None) => Err(Error::Api(format!(
            "rackshare.api={api} is HTTPS but the command line has no rackshare.pin=: \
             the agent trusts only the pinned certificate, so it does not connect"
        ))),
        (false, Some(_)) => Err(Error::Api(format!(
            "rackshare.pin= is set but rackshare.api={api} is not HTTPS: \
             refusing to send the token in clear"
        ))),
        (false, None) => Ok(None),
    }
}

/// One failed request: whether the protocol says to try again.
enum Failure {
    Retry(String),
    Final(u16, String),
}

fn classify(e: ureq::Error, tls: Option<&PinnedTls>) -> Failure {
    // The pin refused the server: no retry can fix that (a new boot brings a new script).
    if let Some(seen) = tls.and_then(|t| t.refused()) {
        return Failure::Final(0, format!("{e} (the server presented {seen})"));
    }
    match e {
        ureq::Error::Status(code, resp) => {
            let body = resp.into_string().unwrap_or_default();
            let msg = format!("HTTP {code}: {}", body.trim());
            if code >= 500 || code == 429 || code == 408 {
                Failure::Retry(msg)
            } else {
                Failure::Final(code, msg)
            }
        }
        ureq::Error::Transport(t) => Failure::Retry(t.to_string()),
    }
}

impl Client {
    /// A client of the API at `base` (e.g. `https://10.0.0.1:8443`) with the certificate
    /// pinned by `pin` ([`transport`] says which combinations are refused).
    pub fn new(base: &str, pin: Option<&str>, retry: Retry) -> Result<Client, Error> {
        let tls = transport(base, pin)?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http: agent(tls.clone()),
            tls,
            retry,
            session: String::new(),
            last_progress: None,
        })
    }

    /// POSTs JSON with `bearer`, retrying with backoff; the answer's JSON body (or null).
    fn post(
        &self,
        path: &str,
        bearer: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, (u16, String)> {
        let url = format!("{}{path}", self.base);
        let start = Instant::now();
        let mut pause = self.retry.first;
        loop {
            let r = self
                .http
                .post(&url)
                .set("Authorization", &format!("Bearer {bearer}"))
                .send_json(body);
            match r {
                Ok(resp) => {
                    let text = resp.into_string().unwrap_or_default();
                    return Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null));
                }
                Err(e) => match classify(e, self.tls.as_deref()) {
                    Failure::Final(code, msg) => return Err((code, msg)),
                    Failure::Retry(msg) => {
                        if start.elapsed() + pause > self.retry.total {
                            return Err((
                                0,
                                format!("POST {url}: {msg} (gave up after {:?})", start.elapsed()),
                            ));
                        }
                        crate::log!("POST {url}: {msg}; again in {pause:?}");
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(self.retry.max);
                    }
                },
            }
        }
    }

    /// Claims the task with the one-time token; a 401 is retried every `claim_pause` (the
    /// boot script may carry `none` until the job is ready).
    pub fn claim(&mut self, token: &str, macs: &[String]) -> Result<ClaimResponse, Error> {
        let body = serde_json::to_value(ClaimRequest {
            macs: macs.to_vec(),
        })
        .map_err(|e| Error::Api(e.to_string()))?;
        let start = Instant::now();
        loop {
            match self.post("/api/v1/agent/claim", token, &body) {
                Ok(v) => {
                    let c: ClaimResponse = serde_json::from_value(v).map_err(|e| {
                        Error::Api(format!("the claim answer is not understood: {e}"))
                    })?;
                    self.session = c.session.clone();
                    return Ok(c);
                }
                Err((401, msg)) if start.elapsed() < self.retry.claim_total => {
                    crate::log!(
                        "claim refused ({msg}); again in {:?}",
                        self.retry.claim_pause
                    );
                    std::thread::sleep(self.retry.claim_pause);
                }
                Err((_, msg)) => return Err(Error::Api(format!("claiming the task: {msg}"))),
            }
        }
    }

    /// Sends the result; the action the API asks for.
    pub fn result(&self, result: &AgentResult) -> Result<ResultAnswer, Error> {
        let body = serde_json::to_value(result).map_err(|e| Error::Api(e.to_string()))?;
        match self.post("/api/v1/agent/result", &self.session, &body) {
            // An answer we do not understand (a newer API's action): do nothing.
            Ok(v) => Ok(serde_json::from_value(v).unwrap_or_default()),
            Err((code @ (401 | 404), _)) => Err(Error::JobGone(code)),
            Err((_, msg)) => Err(Error::Api(format!("sending the result: {msg}"))),
        }
    }

    /// An image source for `url` with this client's session.
    pub fn image(&self, url: &str) -> HttpImage {
        HttpImage {
            http: self.http.clone(),
            tls: self.tls.clone(),
            url: url.to_string(),
            session: self.session.clone(),
            retry: self.retry,
        }
    }
}

impl crate::Challenger for Client {
    /// Asks the server which ranges to read back (retried like every POST; the server hands
    /// out the same ranges again).
    fn challenge(&mut self, req: &ChallengeRequest) -> Result<Challenge, Error> {
        let body = serde_json::to_value(req).map_err(|e| Error::Api(e.to_string()))?;
        match self.post("/api/v1/agent/challenge", &self.session, &body) {
            Ok(v) => serde_json::from_value(v)
                .map_err(|e| Error::Api(format!("the challenge is not understood: {e}"))),
            Err((code @ (401 | 404), _)) => Err(Error::JobGone(code)),
            Err((_, msg)) => Err(Error::Api(format!("asking for the challenge: {msg}"))),
        }
    }
}

impl crate::Progress for Client {
    /// At most one report a second (a new phase always goes out). A report is sent once,
    /// not retried: the next one supersedes it, and the disk must not wait on the API.
    fn report(&mut self, phase: &str, bytes: u64, total: u64) -> Result<(), Error> {
        if let Some((at, p)) = &self.last_progress {
            if p == phase && at.elapsed() < Duration::from_secs(1) && bytes < total {
                return Ok(());
            }
        }
        self.last_progress = Some((Instant::now(), phase.to_string()));
        let body = ProgressReport {
            phase: phase.to_string(),
            bytes,
            total,
            message: None,
        };
        let r = self
            .http
            .post(&format!("{}/api/v1/agent/progress", self.base))
            .set("Authorization", &format!("Bearer {}", self.session))
            .timeout(Duration::from_secs(5))
            .send_json(&body);
        match r {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code @ (401 | 404), _)) => Err(Error::JobGone(code)),
            Err(e) => {
                crate::log!("progress not sent: {e}");
                Ok(())
            }
        }
    }
}

/// The job's image over HTTP, with ranged requests.
pub struct HttpImage {
    http: ureq::Agent,
    tls: Option<Arc<PinnedTls>>,
    url: String,
    session: String,
    retry: Retry,
}

impl HttpImage {
    fn get(&self, range: Option<String>) -> Result<(u16, Box<dyn Read + Send>), Error> {
        let start = Instant::now();
        let mut pause = self.retry.first;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut req = self
                .http
                .get(&self.url)
                .set("Authorization", &format!("Bearer {}", self.session));
            if let Some(r) = &range {
                req = req.set("Range", r);
            }
            let last = match req.call() {
                Ok(resp) => return Ok((resp.status(), Box::new(resp.into_reader()))),
                Err(e) => match classify(e, self.tls.as_deref()) {
                    Failure::Final(code @ (401 | 404), _) => return Err(Error::JobGone(code)),
                    Failure::Final(_, msg) => {
                        return Err(Error::Download {
                            attempts,
                            last: format!("GET {}: {msg}", self.url),
                        })
                    }
                    Failure::Retry(msg) => msg,
                },
            };
            if start.elapsed() + pause > self.retry.total || attempts >= 10 {
                return Err(Error::Download {
                    attempts,
                    last: format!("GET {}: {last}", self.url),
                });
            }
            crate::log!("GET {}: {last}; again in {pause:?}", self.url);
            std::thread::sleep(pause);
            pause = (pause * 2).min(self.retry.max);
        }
    }
}

impl ImageSource for HttpImage {
    fn open_at(&mut self, offset: u64) -> Result<Box<dyn Read + Send>, Error> {
        if offset == 0 {
            return Ok(self.get(None)?.1);
        }
        let (status, mut body) = self.get(Some(format!("bytes={offset}-")))?;
        if status == 200 {
            // The server ignored the range: skip what we already have.
            let skipped = std::io::copy(&mut (&mut body).take(offset), &mut std::io::sink())
                .map_err(crate::error::io("skipping the start of the image"))?;
            if skipped < offset {
                return Err(Error::Image(format!(
                    "the image is shorter than {offset} bytes"
                )));
            }
        }
        Ok(body)
    }

    fn read_range(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (status, body) = self.get(Some(format!("bytes={offset}-{}", offset + len - 1)))?;
        let mut body: Box<dyn Read + Send> = if status == 200 {
            let mut b = body;
            std::io::copy(&mut (&mut b).take(offset), &mut std::io::sink())
                .map_err(crate::error::io("skipping the start of the image"))?;
            b
        } else {
            body
        };
        let mut buf = Vec::with_capacity(len.min(64 << 20) as usize);
        (&mut body)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(crate::error::io(format!(
                "reading {len} bytes of the image at {offset}"
            )))?;
        if (buf.len() as u64) < len {
            return Err(Error::Image(format!(
                "the image ends before byte {}",
                offset + len
            )));
        }
        Ok(buf)
    }

    fn retry_delay(&self, n: u32) -> Duration {
        (self.retry.first * n).min(self.retry.max)
    }
}
