//! `rackshare console NAME`: a machine's serial console over the API's WebSocket. On a terminal
//! it runs in raw mode and `~.` after a newline disconnects; with piped standard input it sends
//! the input, prints the output, and exits once the input ended and the output has been quiet
//! for [`QUIET`].

use crate::client_tls::Trust;
use anyhow::{anyhow, Context};
use futures::{SinkExt, StreamExt};
use std::io::IsTerminal;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// After piped input ended: how long the output must be quiet before the command exits.
const QUIET: Duration = Duration::from_secs(2);

/// A byte stream the WebSocket runs over (TCP or TLS).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Opens the console and carries bytes until it closes, the input asks to leave, or (piped)
/// input ended and the output went quiet.
pub async fn run(
    base: &str,
    token: Option<String>,
    trust: &Trust,
    name: &str,
) -> anyhow::Result<()> {
    let url = url::Url::parse(base).with_context(|| format!("--url '{base}' is not a URL"))?;
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("--url '{base}' has no host"))?
        .to_string();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| anyhow!("--url '{base}' has no port"))?;
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let (scheme, stream): (&str, Box<dyn Stream>) = match url.scheme() {
        "https" => {
            let (config, verifier) = crate::client_tls::client_config(trust)?;
            let server =
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                    .with_context(|| format!("'{host}' is not a TLS server name"))?;
            let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(server, tcp)
                .await
                .map_err(|e| match crate::client_tls::explain(&verifier) {
                    Some(why) => anyhow!("{why}"),
                    None => anyhow!("TLS handshake with {host}:{port}: {e}"),
                })?;
            ("wss", Box::new(tls))
        }
        _ => ("ws", Box::new(tcp)),
    };
    let base_path = url.path().trim_end_matches('/');
    let ws_url = format!(
        "{scheme}://{host}:{port}{base_path}/api/v1/machines/{}/console",
        crate::client::enc(name)
    );
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .context("building the WebSocket request")?;
    if let Some(t) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .context("the token is not a valid header value")?,
        );
    }
    let (socket, _) = match tokio_tungstenite::client_async(request, stream).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .to_string();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or(body);
            return Err(anyhow!("console of '{name}': {} {message}", resp.status()));
        }
        Err(e) => return Err(anyhow!("console of '{name}': {e}")),
    };
    let (mut tx, mut rx) = socket.split();
    tx.send(Message::Text(r#"{"type":"take"}"#.into()))
        .await
        .context("asking for control")?;

    let terminal = std::io::stdin().is_terminal();
    let _raw = if terminal {
        eprintln!("[console of {name}; ~. after a newline disconnects]\r");
        Some(RawMode::enter()?)
    } else {
        None
    };
    let (keys_tx, mut keys_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    tokio::spawn(read_input(terminal, keys_tx));

    let mut stdout = tokio::io::stdout();
    let mut input_done = false;
    loop {
        let quiet = async {
            if input_done {
                tokio::time::sleep(QUIET).await
            } else {
                std::future::pending::<()>().await
            }
        };
        tokio::select! {
            frame = rx.next() => match frame {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    let said = |k: &str| v.get(k).and_then(|m| m.as_str()).unwrap_or("").to_string();
                    match v.get("type").and_then(|t| t.as_str()) {
                        Some("closed") => {
                            eprintln!("\r\n[console closed: {}]\r", said("reason"));
                            return Ok(());
                        }
                        Some("error") => eprintln!("\r\n[console: {}]\r", said("message")),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(anyhow!("console of '{name}': {e}")),
            },
            keys = keys_rx.recv(), if !input_done => match keys {
                Some(Some(bytes)) => {
                    tx.send(Message::Binary(bytes.into())).await.context("sending keystrokes")?;
                }
                // `~.` on a terminal: leave now.
                Some(None) => {
                    let _closing_anyway = tx.send(Message::Close(None)).await;
                    return Ok(());
                }
                None => input_done = true,
            },
            _ = quiet => {
                let _closing_anyway = tx.send(Message::Close(None)).await;
                return Ok(());
            }
        }
    }
}

/// Reads standard input and sends it on; `None` asks to disconnect (`~.` after a newline, on
/// a terminal). The channel closes when the input ends.
async fn read_input(terminal: bool, keys: tokio::sync::mpsc::Sender<Option<Vec<u8>>>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 4096];
    let mut escape = TildeDot::default();
    loop {
        let n = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (bytes, leave) = if terminal {
            escape.feed(&buf[..n])
        } else {
            (buf[..n].to_vec(), false)
        };
        if !bytes.is_empty() && keys.send(Some(bytes)).await.is_err() {
            return;
        }
        if leave {
            let _leaving_anyway = keys.send(None).await;
            return;
        }
    }
}

/// Finds `~.` typed right after a newline (or first); any other `~` passes through.
#[derive(Debug)]
struct TildeDot {
    after_newline: bool,
    tilde_held: bool,
}

impl Default for TildeDot {
    fn default() -> Self {
        TildeDot {
            after_newline: true,
            tilde_held: false,
        }
    }
}

impl TildeDot {
    /// The bytes to send, and whether `~.` was typed.
    fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.tilde_held {
                self.tilde_held = false;
                if b == b'.' {
                    return (out, true);
                }
                out.push(b'~');
                if b == b'~' {
                    self.after_newline = false;
                    continue;
                }
            } else if b == b'~' && self.after_newline {
                self.tilde_held = true;
                continue;
            }
            out.push(b);
            self.after_newline = b == b'\r' || b == b'\n';
        }
        (out, false)
    }
}

/// The terminal in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("setting the terminal to raw mode")?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        if let Err(e) = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0) {
            eprintln!("could not restore the terminal: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TildeDot;

    #[test]
    fn tilde_dot_after_a_newline_disconnects_other_tildes_pass() {
        let mut t = TildeDot::default();
        assert_eq!(t.feed(b"a~.b\r"), (b"a~.b\r".to_vec(), false));
        // `~~` sends one `~`, as ssh does.
        assert_eq!(t.feed(b"~~x"), (b"~x".to_vec(), false));
        assert_eq!(t.feed(b"\n~"), (b"\n".to_vec(), false));
        assert_eq!(t.feed(b"q"), (b"~q".to_vec(), false));
        let mut t = TildeDot::default();
        assert_eq!(t.feed(b"ls\r~."), (b"ls\r".to_vec(), true));
    }
}
