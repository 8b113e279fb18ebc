//! A small async QMP client: greeting, `qmp_capabilities`, one command at a time, events.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, Mutex};

/// How long one QMP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// A QMP line longer than this is a broken peer, not a reply.
const MAX_LINE: usize = 1 << 20;

/// What went wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened or broke.
    #[error("QMP socket {path}: {cause}")]
    Io {
        /// The socket path.
        path: String,
        /// The OS error.
        cause: String,
    },
    /// QEMU did not answer in time.
    #[error("QMP {command}: no answer within {secs} s")]
    Timeout {
        /// The command sent.
        command: String,
        /// The bound.
        secs: u64,
    },
    /// QEMU answered with an error object.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        /// The command sent.
        command: String,
        /// QMP's error class.
        class: String,
        /// QMP's description.
        desc: String,
    },
    /// The peer is not QMP, or closed the connection.
    #[error("QMP: {0}")]
    Protocol(String),
}

/// One connection to a QEMU monitor.
pub struct Qmp {
    path: String,
    writer: Mutex<OwnedWriteHalf>,
    replies: Mutex<mpsc::Receiver<Value>>,
    events: broadcast::Sender<Value>,
}

impl Qmp {
    /// Connects (retrying until `deadline` while QEMU creates the socket), reads the greeting and
    /// negotiates capabilities.
    pub async fn connect(path: &Path, deadline: Duration) -> Result<Self, QmpError> {
        let shown = path.display().to_string();
        let started = tokio::time::Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if started.elapsed() >= deadline => {
                    return Err(QmpError::Io {
                        path: shown,
                        cause: e.to_string(),
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, read_line(&mut lines))
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
                secs: COMMAND_TIMEOUT.as_secs(),
            })??;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("no QMP greeting: {greeting}")));
        }
        let (reply_tx, reply_rx) = mpsc::channel(8);
        let (events, _) = broadcast::channel(64);
        let events_tx = events.clone();
        tokio::spawn(async move {
            // Ends when QEMU closes the socket (it exited) or a line is malformed.
            while let Ok(v) = read_line(&mut lines).await {
                if v.get("event").is_some() {
                    let _ = events_tx.send(v);
                } else if reply_tx.send(v).await.is_err() {
                    break;
                }
            }
        });
        let qmp = Qmp {
            path: shown,
            writer: Mutex::new(write),
            replies: Mutex::new(reply_rx),
            events,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut replies = self.replies.lock().await;
        // A reply left over from a command that timed out belongs to nobody now.
        while replies.try_recv().is_ok() {}
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            w.write_all(line.as_bytes())
                .await
                .map_err(|e| QmpError::Io {
                    path: self.path.clone(),
                    cause: e.to_string(),
                })?;
        }
        let reply = tokio::time::timeout(COMMAND_TIMEOUT, replies.recv())
            .await
            .map_err(|_| QmpError::Timeout {
                command: command.into(),
                secs: COMMAND_TIMEOUT.as_secs(),
            })?
            .ok_or_else(|| QmpError::Protocol(format!("{command}: QEMU closed the monitor")))?;
        if let Some(err) = reply.get("error") {
            return Err(QmpError::Command {
                command: command.into(),
                class: err["class"].as_str().unwrap_or("?").into(),
                desc: err["desc"].as_str().unwrap_or("?").into(),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Asynchronous events (`SHUTDOWN`, `RESET`, …) from now on.
    pub fn events(&self) -> broadcast::Receiver<Value> {
        self.events.subscribe()
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Value, QmpError> {
    let mut buf = Vec::new();
    let mut limited = (&mut *r).take(MAX_LINE as u64);
    let n = limited
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| QmpError::Protocol(e.to_string()))?;
    if n == 0 {
        return Err(QmpError::Protocol("monitor closed".into()));
    }
    serde_json::from_slice(&buf).map_err(|e| QmpError::Protocol(format!("bad JSON: {e}")))
}
