//! A machine's serial console as a byte stream: IPMI Serial-over-LAN through `ipmitool sol
//! activate` in a pseudo-terminal, or the Redfish Manager's serial console over SSH.
//!
//! Opening a console never takes the per-BMC command slot of [`crate::Controller`]: the stream
//! is long-lived, and power or boot commands must still go through while it is open.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::{BmcError, BmcUrl, Credentials, DriverOptions, IpmiDriver};

/// How long `sol activate` may take to say the session is operational.
const ACTIVATE_DEADLINE: Duration = Duration::from_secs(15);
/// What `ipmitool` prints once the SOL payload is up.
const OPERATIONAL: &[u8] = b"SOL Session operational";
/// ipmitool's escape character (`~.` after a newline ends its session).
const IPMITOOL_ESCAPE: u8 = b'~';

/// Where a machine's serial console is reached.
pub enum SerialEndpoint {
    /// IPMI Serial-over-LAN through `ipmitool -I lanplus ... sol activate` in a pty.
    IpmiSol {
        /// BMC host.
        host: String,
        /// BMC UDP port.
        port: u16,
        /// BMC user.
        username: String,
        /// BMC password (in the child's environment only).
        password: String,
    },
    /// The Redfish Manager's SerialConsole over SSH (the lab's vbmc offers this; real BMCs too).
    RedfishSsh {
        /// SSH host.
        host: String,
        /// SSH port.
        port: u16,
        /// BMC user.
        username: String,
        /// BMC password.
        password: String,
    },
}

impl std::fmt::Debug for SerialEndpoint {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, host, port, username) = match self {
            SerialEndpoint::IpmiSol {
                host,
                port,
                username,
                ..
            } => ("IpmiSol", host, port, username),
            SerialEndpoint::RedfishSsh {
                host,
                port,
                username,
                ..
            } => ("RedfishSsh", host, port, username),
        };
        f.debug_struct(kind)
            .field("host", host)
            .field("port", port)
            .field("username", username)
            .finish_non_exhaustive()
    }
}

/// An open serial console: bytes from the machine, bytes to it.
pub struct SerialLink {
    /// Bytes from the machine's serial port; EOF when the BMC session ended.
    pub output: Pin<Box<dyn AsyncRead + Send>>,
    /// Bytes to the machine's serial port.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// Opens the machine's serial console. The link is closed (the `ipmitool` child killed) when
/// both halves are dropped.
pub async fn open_serial(endpoint: &SerialEndpoint) -> Result<SerialLink, BmcError> {
    match endpoint {
        SerialEndpoint::IpmiSol {
            host,
            port,
            username,
            password,
        } => open_ipmi_sol(host, *port, username, password, "ipmitool").await,
        SerialEndpoint::RedfishSsh {
            host,
            port,
            username,
            password,
        } => crate::serial_ssh::open(host, *port, username, password).await,
    }
}

/// `sol deactivate` (a stale session would refuse ours), then `sol activate` in a pty.
/// `program` is `ipmitool`, or a stand-in in tests.
pub(crate) async fn open_ipmi_sol(
    host: &str,
    port: u16,
    username: &str,
    password: &str,
    program: &str,
) -> Result<SerialLink, BmcError> {
    let host_part = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let url: BmcUrl =
        format!("ipmi://{host_part}:{port}")
            .parse()
            .map_err(|e| BmcError::Command {
                bmc: format!("{host}:{port}"),
                op: "sol activate".into(),
                cause: format!("bad BMC address: {e}"),
            })?;
    let driver = IpmiDriver::new(
        &url,
        Credentials::new(username, password),
        DriverOptions {
            request_timeout: Duration::from_secs(10),
            ..DriverOptions::default()
        },
    )?
    .with_program(program);
    let cipher = driver.sol_deactivate().await?;
    let bmc = driver.address().to_string();
    let failed = |cause: String| BmcError::Command {
        bmc: bmc.clone(),
        op: "sol activate".into(),
        cause,
    };

    let pty = nix::pty::openpty(None, None)
        .map_err(|e| failed(format!("could not open a pseudo-terminal: {e}")))?;
    let io_err = |e: io::Error| failed(format!("pseudo-terminal: {e}"));
    let stdin: OwnedFd = pty.slave.try_clone().map_err(io_err)?;
    let stdout: OwnedFd = pty.slave.try_clone().map_err(io_err)?;
    let inv = driver.invocation(cipher, &["sol", "activate"]);
    let child = tokio::process::Command::new(&inv.program)
        .args(&inv.args)
        .env("IPMI_PASSWORD", inv.password.expose())
        .env_remove("IPMITOOL_PASSWORD")
        .stdin(std::process::Stdio::from(stdin))
        .stdout(std::process::Stdio::from(stdout))
        .stderr(std::process::Stdio::from(pty.slave))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BmcError::ToolMissing {
                bmc: bmc.clone(),
                tool: "ipmitool".into(),
                package: "ipmitool".into(),
            },
            _ => failed(format!("could not run ipmitool: {e}")),
        })?;
    // Blocking descriptors driven by tokio's file threads (registering a raw descriptor with
    // the reactor would need unsafe code): one for reads, one for writes, so a read waiting
    // for the machine never holds up a keystroke.
    let master = File::from(pty.master);
    let write_half = master.try_clone().map_err(io_err)?;
    let shared = Arc::new(ChildGuard { _child: child });
    let mut reader = PtyReader {
        file: tokio::fs::File::from_std(master),
        _child: shared.clone(),
    };

    // Wait for the banner, so a refusal ("payload already active", a wrong password) is an
    // error here rather than a stream that ends at once.
    let mut seen = Vec::new();
    let waited = tokio::time::timeout(ACTIVATE_DEADLINE, async {
        let mut buf = [0u8; 1024];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, io::Error>(false);
            }
            seen.extend_from_slice(&buf[..n]);
            if let Some(at) = find(&seen, OPERATIONAL) {
                // Drop the banner line; keep what the machine sent after it.
                let end = seen[at..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map(|p| at + p + 1);
                if let Some(end) = end {
                    seen.drain(..end);
                    return Ok(true);
                }
            }
            if seen.len() > 64 * 1024 {
                return Ok(false);
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Ok(Err(_)) => {
            let said = driver.scrubbed(&String::from_utf8_lossy(&seen));
            return Err(failed(if said.is_empty() {
                "ipmitool ended before the session was operational".into()
            } else {
                said
            }));
        }
        Err(_) => {
            return Err(BmcError::Timeout {
                bmc,
                op: "sol activate".into(),
                secs: ACTIVATE_DEADLINE.as_secs_f64(),
            })
        }
    }
    Ok(SerialLink {
        output: Box::pin(AsyncReadExt::chain(io::Cursor::new(seen), reader)),
        input: Box::pin(PtyWriter {
            file: tokio::fs::File::from_std(write_half),
            _child: shared,
            guard: EscapeGuard::default(),
            pending: Vec::new(),
        }),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `ipmitool` child, killed when the last half of the link is dropped.
struct ChildGuard {
    _child: tokio::process::Child,
}

struct PtyReader {
    file: tokio::fs::File,
    _child: Arc<ChildGuard>,
}

impl AsyncRead for PtyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().file).poll_read(cx, buf)) {
            // The slave side closed: ipmitool ended, and with it the session.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EIO as i32) => {
                Poll::Ready(Ok(()))
            }
            other => Poll::Ready(other),
        }
    }
}

struct PtyWriter {
    file: tokio::fs::File,
    _child: Arc<ChildGuard>,
    guard: EscapeGuard,
    /// Escaped bytes not yet taken by the pty.
    pending: Vec<u8>,
}

impl PtyWriter {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.file).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PtyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let mut escaped = std::mem::take(&mut this.pending);
        this.guard.escape(buf, &mut escaped);
        this.pending = escaped;
        // The bytes are taken; a later write or flush pushes out what the pty did not take.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Keeps a viewer's keystrokes from reaching ipmitool's own escapes (`~.` ends the session,
/// `~B` sends a break, `~^Z` suspends): ipmitool reads its escape character only right after
/// a newline, and sends one `~` for `~~`, so a `~` there is doubled.
#[derive(Debug, Clone)]
pub(crate) struct EscapeGuard {
    after_newline: bool,
}

impl Default for EscapeGuard {
    fn default() -> Self {
        // ipmitool starts as if a newline had just been typed.
        EscapeGuard {
            after_newline: true,
        }
    }
}

impl EscapeGuard {
    /// Appends `input` to `out`, a `~` that follows a newline doubled.
    pub(crate) fn escape(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if b == IPMITOOL_ESCAPE && self.after_newline {
                out.push(IPMITOOL_ESCAPE);
            }
            out.push(b);
            self.after_newline = b == b'\r' || b == b'\n';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn a_tilde_after_a_newline_is_doubled_elsewhere_kept() {
        let mut g = EscapeGuard::default();
        let mut out = Vec::new();
        g.escape(b"~.a~b\r~.\n~~", &mut out);
        assert_eq!(out, b"~~.a~b\r~~.\n~~~".to_vec());
        // The state carries across writes.
        let mut g = EscapeGuard::default();
        let mut out = Vec::new();
        g.escape(b"ls\r", &mut out);
        g.escape(b"~.", &mut out);
        assert_eq!(out, b"ls\r~~.".to_vec());
    }

    /// A stand-in for ipmitool: `sol deactivate` answers as ipmitool does when no session is
    /// active, `sol activate` prints the banner and then echoes each line it reads, and says
    /// whether the password came through the environment and stayed out of the argv.
    fn fake_ipmitool(dir: &std::path::Path) -> String {
        let path = dir.join("ipmitool");
        std::fs::write(
            &path,
            r#"#!/bin/sh
case "$*" in
  *"sol deactivate"*) echo "Info: SOL payload already de-activated"; exit 0 ;;
  *"sol activate"*)
    case "$*" in *sekret*) echo "password in argv"; exit 1 ;; esac
    [ "$IPMI_PASSWORD" = sekret ] || { echo "no password in env"; exit 1; }
    [ -t 0 ] || { echo "stdin is not a terminal"; exit 1; }
    stty raw -echo
    echo "[SOL Session operational.  Use ~? for help]"
    echo "boot log line"
    while read -r line; do echo "got:$line"; done
    ;;
esac
"#,
        )
        .expect("write the stand-in");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
        path.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn sol_runs_in_a_pty_with_the_password_in_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = fake_ipmitool(dir.path());
        let mut link = open_ipmi_sol("127.0.0.1", 623, "admin", "sekret", &program)
            .await
            .expect("open");
        link.input.write_all(b"hello\n").await.expect("write");
        link.input.flush().await.expect("flush");
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            while !String::from_utf8_lossy(&seen).contains("got:hello") {
                let n = link.output.read(&mut buf).await.expect("read");
                assert!(n > 0, "ended early: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        let text = String::from_utf8_lossy(&seen);
        assert!(read.is_ok(), "no echo: {text}");
        assert!(text.contains("boot log line"), "{text}");
        assert!(
            !text.contains("operational"),
            "the banner is dropped: {text}"
        );
    }

    #[tokio::test]
    async fn a_missing_ipmitool_names_the_package() {
        let e = open_ipmi_sol("127.0.0.1", 623, "a", "b", "/nonexistent/ipmitool")
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, BmcError::ToolMissing { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_redfish_ssh_console_nobody_answers_is_unreachable() {
        // A port just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let e = open_serial(&SerialEndpoint::RedfishSsh {
            host: "127.0.0.1".into(),
            port,
            username: "a".into(),
            password: "b".into(),
        })
        .await
        .err()
        .expect("refused");
        assert!(matches!(e, BmcError::Unreachable { .. }), "{e}");
    }
}
