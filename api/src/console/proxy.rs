//! The proxying side of a console at another site (decision P): a WebSocket to the site
//! instance's console route carrying a ticket, then frames forwarded both ways — to the
//! person's WebSocket (`relay`) or behind the SSH door (`ProxyViewer`). The site instance
//! decides who may and cuts the session when the lease ends; the proxy closes when it does.

use super::ticket::TICKET_HEADER;
use super::ConsoleEvent;
use crate::console_ssh::{DoorRefusal, DoorViewer};
use crate::state::AppState;
use crate::ApiError;
use axum::body::Bytes;
use axum::extract::ws::{Message as ClientMessage, WebSocket};
use axum::http::StatusCode;
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use inventory::{AuditOrigin, AuditOutcome, NewAuditEvent, TokenOwner};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as PeerMessage;

/// How long connecting to one peer instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> PeerStream for T {}

type PeerSocket = tokio_tungstenite::WebSocketStream<Box<dyn PeerStream>>;

/// An open console at the site's instance.
pub struct PeerLink {
    socket: PeerSocket,
}

/// Why one peer could not be used.
enum PeerError {
    /// It answered, refusing (its JSON error, relayed as it is).
    Refused(ApiError),
    /// It did not answer; the next one is tried.
    Unreachable(String),
}

/// The stable code for a status the peer answered (its own code is not `'static`).
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        429 => "too_many_requests",
        503 => "site_unavailable",
        _ => "peer_refused",
    }
}

/// Connects to `api_url`'s console route for `machine` with `ticket`; https only to exactly
/// the TLS identity this instance has (every instance has the same one).
async fn connect(
    st: &AppState,
    api_url: &str,
    machine: &str,
    ticket: &str,
) -> Result<PeerSocket, PeerError> {
    let unreachable = |e: &dyn std::fmt::Display| PeerError::Unreachable(e.to_string());
    let url = url::Url::parse(api_url).map_err(|e| unreachable(&e))?;
    let host = url
        .host_str()
        .ok_or_else(|| PeerError::Unreachable(format!("{api_url} has no host")))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| PeerError::Unreachable(format!("{api_url} has no port")))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| unreachable(&e))?;
    let _ = tcp.set_nodelay(true);
    let (scheme, stream): (&str, Box<dyn PeerStream>) = match url.scheme() {
        "https" => {
            let pin = st
                .console_routing
                .tls
                .as_ref()
                .and_then(|t| crate::tls::parse_fingerprint(&t.fingerprint()))
                .ok_or_else(|| {
                    PeerError::Unreachable(
                        "the peer speaks https and this instance has no TLS identity to pin".into(),
                    )
                })?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(pin::PinnedVerifier::new(pin, provider.clone()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| unreachable(&e))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| unreachable(&e))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(&e))?;
            ("wss", Box::new(tls))
        }
        _ => ("ws", Box::new(tcp)),
    };
    let ws_url = format!(
        "{scheme}://{}/api/v1/machines/{}/console",
        url.authority(),
        url::form_urlencoded::byte_serialize(machine.as_bytes()).collect::<String>()
    );
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| unreachable(&e))?;
    let value = ticket.parse().map_err(|e| unreachable(&e))?;
    request.headers_mut().insert(TICKET_HEADER, value);
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = resp.body().as_deref().unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let message = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("the site's instance answered {status}"));
            Err(PeerError::Refused(ApiError {
                status,
                code: code_for(status),
                message,
                field: v["error"]["field"].as_str().map(str::to_string),
            }))
        }
        Err(e) => Err(unreachable(&e)),
    }
}

/// Opens `who`'s console of `machine` at the first of `peers` (id, api_url) that answers,
/// auditing `console.proxy`; no peer answering is the site's consoles being unavailable.
pub async fn open(
    st: &AppState,
    who: &TokenOwner,
    via: &str,
    machine: &str,
    site: &str,
    peers: &[(String, String)],
) -> Result<PeerLink, ApiError> {
    let source = AuditOrigin::current().source.unwrap_or_default();
    let event = || {
        NewAuditEvent::ok(&who.user, "console.proxy", "machine", machine)
            .group(who.member_group.clone())
            .machine(Some(machine.to_string()))
    };
    let mut tried = Vec::new();
    for (id, api_url) in peers {
        let ticket = st.console_routing.ticket(who, &source, via, machine, id);
        let outcome = tokio::time::timeout(CONNECT_TIMEOUT, connect(st, api_url, machine, &ticket))
            .await
            .unwrap_or_else(|_| Err(PeerError::Unreachable("no answer in 5 s".into())));
        match outcome {
            Ok(socket) => {
                let ev = event().detail(serde_json::json!({"via": via, "site": site, "to": id}));
                super::audit(&st.inv, AuditOrigin::current(), ev).await;
                return Ok(PeerLink { socket });
            }
            Err(PeerError::Refused(e)) => {
                let ev = event()
                    .outcome(AuditOutcome::Denied)
                    .detail(serde_json::json!({
                        "via": via, "site": site, "to": id, "reason": e.message,
                    }));
                super::audit(&st.inv, AuditOrigin::current(), ev).await;
                return Err(e);
            }
            Err(PeerError::Unreachable(why)) => {
                tracing::warn!(instance = %id, %api_url, error = %why, "console peer did not answer");
                tried.push(serde_json::json!({"instance": id, "error": why}));
            }
        }
    }
    let ev = event()
        .outcome(AuditOutcome::Failed)
        .detail(serde_json::json!({
            "via": via, "site": site, "reason": "no live instance of the site", "tried": tried,
        }));
    super::audit(&st.inv, AuditOrigin::current(), ev).await;
    Err(super::route::site_unavailable(site))
}

fn closed_text(reason: &str) -> String {
    serde_json::json!({"type": "closed", "reason": reason}).to_string()
}

/// Forwards frames between the person's WebSocket and the site instance's until either ends.
pub async fn relay(mut client: WebSocket, link: PeerLink) {
    let (mut to_peer, mut from_peer) = link.socket.split();
    loop {
        tokio::select! {
            frame = client.recv() => {
                let forward = match frame {
                    Some(Ok(ClientMessage::Binary(b))) => PeerMessage::Binary(b),
                    Some(Ok(ClientMessage::Text(t))) => PeerMessage::Text(t.as_str().into()),
                    Some(Ok(ClientMessage::Close(_))) | None | Some(Err(_)) => {
                        let _peer_may_be_gone = to_peer.send(PeerMessage::Close(None)).await;
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                if to_peer.send(forward).await.is_err() {
                    let gone = closed_text("the site's instance went away");
                    let _client_may_be_gone = client.send(ClientMessage::Text(gone.into())).await;
                    let _client_may_be_gone = client.send(ClientMessage::Close(None)).await;
                    return;
                }
            }
            frame = from_peer.next() => {
                let forward = match frame {
                    Some(Ok(PeerMessage::Binary(b))) => ClientMessage::Binary(b),
                    Some(Ok(PeerMessage::Text(t))) => ClientMessage::Text(t.as_str().into()),
                    Some(Ok(PeerMessage::Close(_))) => {
                        let _client_may_be_gone = client.send(ClientMessage::Close(None)).await;
                        return;
                    }
                    None | Some(Err(_)) => {
                        let gone = closed_text("the site's instance went away");
                        let _client_may_be_gone = client.send(ClientMessage::Text(gone.into())).await;
                        let _client_may_be_gone = client.send(ClientMessage::Close(None)).await;
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                if client.send(forward).await.is_err() {
                    let _peer_may_be_gone = to_peer.send(PeerMessage::Close(None)).await;
                    return;
                }
            }
        }
    }
}

/// A proxied console behind the SSH door: the site instance's frames as [`ConsoleEvent`]s.
pub struct ProxyViewer {
    to_peer: mpsc::Sender<PeerMessage>,
    from_peer: SplitStream<PeerSocket>,
    done: bool,
}

impl ProxyViewer {
    /// Starts the writer half (it closes the peer's socket when the viewer is dropped).
    pub fn new(link: PeerLink) -> Self {
        let (mut sink, from_peer) = link.socket.split();
        let (to_peer, mut rx) = mpsc::channel::<PeerMessage>(64);
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            let _peer_may_be_gone = sink.send(PeerMessage::Close(None)).await;
        });
        ProxyViewer {
            to_peer,
            from_peer,
            done: false,
        }
    }

    fn closed(&mut self, reason: &str) -> Option<ConsoleEvent> {
        self.done = true;
        Some(ConsoleEvent::Closed {
            reason: reason.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl DoorViewer for ProxyViewer {
    fn replay(&self) -> Bytes {
        // The site instance sends its replay as the first output frame.
        Bytes::new()
    }

    async fn next(&mut self) -> Option<ConsoleEvent> {
        while !self.done {
            let text = match self.from_peer.next().await {
                Some(Ok(PeerMessage::Binary(b))) => return Some(ConsoleEvent::Output(b)),
                Some(Ok(PeerMessage::Text(t))) => t,
                Some(Ok(PeerMessage::Close(_))) => return self.closed("the console session ended"),
                None | Some(Err(_)) => return self.closed("the site's instance went away"),
                Some(Ok(_)) => continue,
            };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            let said = |k: &str| v[k].as_str().map(str::to_string);
            match v["type"].as_str() {
                Some("control") => {
                    return Some(ConsoleEvent::Control {
                        writer: said("writer"),
                    })
                }
                Some("closed") => {
                    let reason =
                        said("reason").unwrap_or_else(|| "the console session ended".into());
                    return self.closed(&reason);
                }
                Some("error") => {
                    let words =
                        format!("\r\nrackshare: {}\r\n", said("message").unwrap_or_default());
                    return Some(ConsoleEvent::Output(Bytes::from(words)));
                }
                _ => continue,
            }
        }
        None
    }

    async fn input(&self, bytes: &[u8]) -> Result<(), DoorRefusal> {
        self.to_peer
            .send(PeerMessage::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .map_err(|_| DoorRefusal("this console session is closed".into()))
    }

    fn take_control(&self) -> Result<(), DoorRefusal> {
        // The site instance answers with a control event (or an error) in order.
        self.to_peer
            .try_send(PeerMessage::Text(r#"{"type":"take"}"#.into()))
            .map_err(|_| DoorRefusal("the console is not taking input now".into()))
    }
}
