//! The CLI's HTTP client: one place that knows the URL, the token and the error format.

use crate::client_tls::Trust;
use anyhow::{anyhow, Context};
use reqwest::Method;
use serde_json::Value;

/// A client of one rackshare API.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// The certificate check of an https:// URL, read to explain a refusal.
    verifier: Option<std::sync::Arc<crate::client_tls::Verifier>>,
}

impl Client {
    /// A client for `base` (e.g. `https://rack.example.org:8443`). Refuses, before any
    /// connection, to send a token over plain HTTP to a host that is not loopback unless
    /// `trust.insecure_http`.
    pub fn new(base: &str, token: Option<String>, trust: &Trust) -> anyhow::Result<Self> {
        let url = url::Url::parse(base).with_context(|| format!("--url '{base}' is not a URL"))?;
        let token = token.filter(|t| !t.is_empty());
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(120));
        let mut verifier = None;
        match url.scheme() {
            "https" => {
                let (config, v) = crate::client_tls::client_config(trust)?;
                builder = builder.use_preconfigured_tls(config);
                verifier = Some(v);
            }
            "http" => {
                if token.is_some() && !trust.insecure_http && !crate::client_tls::is_loopback(&url)
                {
                    return Err(anyhow!(
                        "refusing to send the API token in clear over http:// to {}: use an https:// --url \
                         (rackshare serve speaks HTTPS beyond loopback), or pass --insecure-http to send it anyway",
                        url.host_str().unwrap_or(base)
                    ));
                }
            }
            _ => return Err(anyhow!("--url must be http:// or https://, got '{base}'")),
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: builder.build().context("building the HTTP client")?,
            verifier,
        })
    }

    /// Sends a request and returns the JSON body (Null for an empty one), or the API's error
    /// message as the error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.exchange(req, "reach", &format!("{method} {path}"))
            .await
    }

    /// Sends `req` and decodes the answer: its JSON (Null for an empty body), or the API's
    /// error message as the error. `verb` says what failed when nothing answers.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        verb: &str,
        what: &str,
    ) -> anyhow::Result<Value> {
        let resp = req.send().await.map_err(|e| {
            if let Some(why) = self
                .verifier
                .as_deref()
                .and_then(crate::client_tls::explain)
            {
                return anyhow!("cannot {verb} rackshare at {}: {why}", self.base);
            }
            anyhow!(
                "cannot {verb} rackshare at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the response")?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text)
                .with_context(|| format!("{what}: the response is not JSON"));
        }
        Err(api_error(status, &text))
    }

    /// GET of a raw (non-JSON) body, e.g. a console log; the API's error message as the error.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach rackshare at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the response")?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        Err(api_error(status, &String::from_utf8_lossy(&body)))
    }
}

/// The API's error message in an error body (or the status and body when it is not JSON).
fn api_error(status: reqwest::StatusCode, text: &str) -> anyhow::Error {
    let message = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{} {}", status, text.trim()));
    anyhow!("{message} (HTTP {})", status.as_u16())
}

impl Client {
    /// POSTs a file as the raw body, streamed (never read into memory whole).
    pub async fn upload(&self, path: &str, file: &std::path::Path) -> anyhow::Result<Value> {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .timeout(std::time::Duration::from_secs(24 * 3600))
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.exchange(req, "upload to", &format!("POST {path}"))
            .await
    }

    /// GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }
    /// POST.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }
    /// PATCH.
    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(Method::PATCH, path, Some(body)).await
    }
    /// DELETE.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::DELETE, path, None).await
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
