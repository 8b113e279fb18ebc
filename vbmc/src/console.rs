//! The serial console: QEMU's serial port on a unix socket, a bounded replay buffer, a broadcast
//! of new bytes, and a log file.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

/// Bytes of recent output kept for new subscribers.
pub const REPLAY_BYTES: usize = 64 * 1024;

/// Why console input was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No QEMU is connected (the VM is off).
    #[error("the serial console is not connected (is the VM on?)")]
    NotConnected,
    /// The write failed.
    #[error("serial console write: {0}")]
    Io(String),
}

struct Shared {
    replay: Mutex<VecDeque<u8>>,
    output: broadcast::Sender<Vec<u8>>,
    input: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    log: PathBuf,
}

/// A cheap handle on one VM's serial console.
#[derive(Clone)]
pub struct SerialConsole {
    shared: Arc<Shared>,
}

impl SerialConsole {
    pub(crate) fn new(log: PathBuf) -> Self {
        // QEMU writes a few bytes at a time: room for bursts; a reader that lags anyway is told.
        let (output, _) = broadcast::channel(1024);
        SerialConsole {
            shared: Arc::new(Shared {
                replay: Mutex::new(VecDeque::with_capacity(REPLAY_BYTES)),
                output,
                input: tokio::sync::Mutex::new(None),
                log,
            }),
        }
    }

    /// The latest output (up to [`REPLAY_BYTES`]) and a receiver of everything after it, with no
    /// gap between them. A receiver that falls behind gets `Lagged` and should subscribe again.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Vec<u8>>) {
        let replay = self.shared.replay.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.shared.output.subscribe();
        (replay.iter().copied().collect(), rx)
    }

    /// Sends keystrokes to the guest.
    pub async fn write(&self, bytes: &[u8]) -> Result<(), ConsoleError> {
        let mut input = self.shared.input.lock().await;
        let w = input.as_mut().ok_or(ConsoleError::NotConnected)?;
        w.write_all(bytes)
            .await
            .map_err(|e| ConsoleError::Io(e.to_string()))
    }

    fn record(&self, bytes: &[u8]) {
        {
            let mut replay = self.shared.replay.lock().unwrap_or_else(|p| p.into_inner());
            replay.extend(bytes.iter().copied());
            let excess = replay.len().saturating_sub(REPLAY_BYTES);
            replay.drain(..excess);
            // Sent under the lock so subscribe() sees each byte either in the replay or live.
            let _ = self.shared.output.send(bytes.to_vec());
        }
    }

    /// Accepts QEMU's connections on `listener` for as long as the task lives: one QEMU process
    /// at a time, a new one after each power-on.
    pub(crate) async fn serve(self, listener: UnixListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "serial console accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            self.pump(stream).await;
        }
    }

    async fn pump(&self, stream: UnixStream) {
        let (mut read, write) = stream.into_split();
        *self.shared.input.lock().await = Some(write);
        let mut log = match tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.shared.log)
            .await
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(log = %self.shared.log.display(), error = %e, "serial log not writable");
                None
            }
        };
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.record(&buf[..n]);
            if let Some(f) = log.as_mut() {
                if let Err(e) = f.write_all(&buf[..n]).await {
                    tracing::warn!(error = %e, "serial log write failed; logging stops");
                    log = None;
                }
            }
        }
        *self.shared.input.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_bounded_and_keeps_the_latest() {
        let c = SerialConsole::new("/nonexistent/log".into());
        c.record(&vec![b'a'; REPLAY_BYTES]);
        c.record(b"tail");
        let (replay, _rx) = c.subscribe();
        assert_eq!(replay.len(), REPLAY_BYTES);
        assert!(replay.ends_with(b"aatail"));
    }
}
