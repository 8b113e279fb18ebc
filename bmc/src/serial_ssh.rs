//! The Redfish Manager's serial console over SSH: `discover` reads where a Manager offers it
//! (`SerialConsole.SSH`), `open` logs in with the BMC's credentials (password) and returns the
//! console as a byte stream. The lab's vbmc offers the same, so one backend serves both.

use crate::console::SerialLink;
use crate::{BmcError, RedfishDriver};
use russh::client::{self, Handle};
use russh::keys::PublicKeyOrCertificate;
use serde_json::Value;
use std::any::Any;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::ReadBuf;
use tokio::io::{AsyncRead, AsyncWrite};

/// What keeps the SSH connection open: shared by both halves, so it closes when both are gone.
type Keep = Arc<Mutex<Box<dyn Any + Send>>>;

/// A half of the channel's stream that holds the connection alive.
struct Holding<T> {
    inner: T,
    _keep: Keep,
}

impl<T: AsyncRead + Unpin> AsyncRead for Holding<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Holding<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where a Manager offers its serial console over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConsole {
    /// The SSH port on the BMC's address.
    pub port: u16,
}

/// Reads a System's or Manager's `SerialConsole`: Some when SSH is offered and enabled. Both
/// shapes are read: `SerialConsole.SSH {ServiceEnabled, Port}` (Redfish 2023.1 and later) and
/// the older `SerialConsole {ServiceEnabled, ConnectTypesSupported: ["SSH"]}` (port 22).
pub fn ssh_console_of(manager: &Value) -> Option<SshConsole> {
    let sc = manager.get("SerialConsole")?;
    if let Some(ssh) = sc.get("SSH") {
        if ssh.get("ServiceEnabled").and_then(Value::as_bool) != Some(true) {
            return None;
        }
        let port = ssh.get("Port").and_then(Value::as_u64).unwrap_or(22);
        return u16::try_from(port).ok().map(|port| SshConsole { port });
    }
    let enabled = sc.get("ServiceEnabled").and_then(Value::as_bool) == Some(true);
    let ssh = sc
        .get("ConnectTypesSupported")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|x| x.as_str() == Some("SSH")));
    (enabled && ssh).then_some(SshConsole { port: 22 })
}

/// Asks the BMC behind `driver` where the host's serial console is offered over SSH: the
/// System's `SerialConsole.SSH` (where Redfish puts the host console), else the first Manager's.
pub async fn discover(driver: &RedfishDriver) -> Result<Option<SshConsole>, BmcError> {
    let system: Value = driver.get(&driver.system_path().await?).await?;
    if let Some(found) = ssh_console_of(&system) {
        return Ok(Some(found));
    }
    let managers: Value = driver.get("/redfish/v1/Managers").await?;
    let Some(first) = managers
        .get("Members")
        .and_then(Value::as_array)
        .and_then(|m| m.first())
        .and_then(|m| m.get("@odata.id"))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let manager: Value = driver.get(first).await?;
    Ok(ssh_console_of(&manager))
}

/// Trusts the BMC's host key: the BMC was reached and authenticated over Redfish already, and
/// BMC host keys change with firmware; pinning them is a later step.
struct BmcSsh;

impl client::Handler for BmcSsh {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Keeps the SSH connection open while the link lives.
struct Connection(#[allow(dead_code)] Handle<BmcSsh>);

/// Logs in to `host:port` with the BMC's user and password, asks for a pty and a shell, and
/// returns the console's byte stream.
pub async fn open(
    host: &str,
    port: u16,
    username: &str,
    password: &str,
) -> Result<SerialLink, BmcError> {
    let bmc = format!("{host}:{port}");
    let unreachable = |cause: String| BmcError::Unreachable {
        bmc: bmc.clone(),
        cause,
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    });
    let mut session = tokio::time::timeout(
        Duration::from_secs(20),
        client::connect(config, (host, port), BmcSsh),
    )
    .await
    .map_err(|_| unreachable("SSH connection timed out".into()))?
    .map_err(|e| unreachable(format!("SSH: {e}")))?;
    let auth = session
        .authenticate_password(username, password)
        .await
        .map_err(|e| unreachable(format!("SSH authentication: {e}")))?;
    if !auth.success() {
        return Err(BmcError::AuthFailed {
            bmc,
            user: username.to_string(),
            cause: "the serial console's SSH service refused the password".into(),
        });
    }
    let channel = session
        .channel_open_session()
        .await
        .map_err(|e| unreachable(format!("SSH session: {e}")))?;
    channel
        .request_pty(true, "vt100", 80, 24, 0, 0, &[])
        .await
        .map_err(|e| unreachable(format!("SSH pty: {e}")))?;
    channel
        .request_shell(true)
        .await
        .map_err(|e| unreachable(format!("SSH shell: {e}")))?;
    let (output, input) = tokio::io::split(channel.into_stream());
    let keep: Keep = Arc::new(Mutex::new(Box::new(Connection(session))));
    Ok(SerialLink {
        output: Box::pin(Holding {
            inner: output,
            _keep: keep.clone(),
        }),
        input: Box::pin(Holding {
            inner: input,
            _keep: keep,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_manager_says_where_its_console_is() {
        let new = json!({"SerialConsole": {"SSH": {"ServiceEnabled": true, "Port": 2200}}});
        assert_eq!(ssh_console_of(&new), Some(SshConsole { port: 2200 }));
        let off = json!({"SerialConsole": {"SSH": {"ServiceEnabled": false, "Port": 2200}}});
        assert_eq!(ssh_console_of(&off), None);
        let old = json!({"SerialConsole": {"ServiceEnabled": true, "ConnectTypesSupported": ["IPMI", "SSH"]}});
        assert_eq!(ssh_console_of(&old), Some(SshConsole { port: 22 }));
        let ipmi =
            json!({"SerialConsole": {"ServiceEnabled": true, "ConnectTypesSupported": ["IPMI"]}});
        assert_eq!(ssh_console_of(&ipmi), None);
        assert_eq!(ssh_console_of(&json!({})), None);
    }
}
