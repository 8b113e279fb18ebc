//! The SSH front door to machines' consoles: `ssh -p PORT MACHINE@HOST`. The user name is the
//! machine; public keys only; the key names one user or one group (inventory's
//! `ssh_key_owners`), which becomes the [`TokenOwner`] the console broker checks. The broker is
//! reached through [`ConsoleDoor`], so this file knows nothing of BMCs or leases.

pub use crate::console::ConsoleEvent;
use bytes::Bytes;
use inventory::{
    ssh_key_fingerprint, AuditOrigin, AuditOutcome, Inventory, NewAuditEvent, Role, SshKeyOwner,
    TokenOwner,
};
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, Handler, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A refusal, in words a person reads on their terminal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DoorRefusal(pub String);

/// One viewer of a machine's console (the broker's `ConsoleViewer` behind this seam).
#[async_trait::async_trait]
pub trait DoorViewer: Send {
    /// The recent output to show first.
    fn replay(&self) -> Bytes;
    /// The next event; None when the session is closed.
    async fn next(&mut self) -> Option<ConsoleEvent>;
    /// Sends keystrokes (refused unless this viewer holds control).
    async fn input(&self, bytes: &[u8]) -> Result<(), DoorRefusal>;
    /// Takes the one writer seat.
    fn take_control(&self) -> Result<(), DoorRefusal>;
}

/// Joins a machine's console as someone (the broker's `ConsoleHub::attach`; it checks who may
/// and audits `console.open`).
#[async_trait::async_trait]
pub trait ConsoleDoor: Send + Sync + 'static {
    /// Attaches `who` to `machine`'s console; `origin` is the client's address.
    async fn attach(
        &self,
        machine: &str,
        who: &TokenOwner,
        origin: &str,
    ) -> Result<Box<dyn DoorViewer>, DoorRefusal>;
}

/// Bounds of the SSH door.
#[derive(Debug, Clone, Copy)]
pub struct SshDoorLimits {
    /// Open connections at once, all sources together.
    pub max_sessions: usize,
    /// Open connections at once from one address.
    pub max_per_source: usize,
    /// Authentication attempts per connection.
    pub max_auth_attempts: usize,
}

impl Default for SshDoorLimits {
    fn default() -> Self {
        SshDoorLimits {
            max_sessions: 64,
            max_per_source: 8,
            max_auth_attempts: 6,
        }
    }
}

/// Loads the door's host key from `path`, or makes one (Ed25519, file mode 0600) at first start.
pub fn load_or_create_host_key(path: &Path) -> std::io::Result<PrivateKey> {
    let bad = |e: russh::keys::ssh_key::Error| std::io::Error::other(e.to_string());
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text).map_err(bad),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::RngCore;
            let mut seed = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
            let key = PrivateKey::from(pair);
            let text = key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .map_err(bad)?;
            write_private(path, text.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The host key's `SHA256:…` fingerprint (what `ssh` shows on first connection).
pub fn host_key_fingerprint(key: &PrivateKey) -> String {
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

/// Open connections per source, bounded (a guard per connection gives its place back).
#[derive(Default)]
struct Admission {
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &SshDoorLimits) -> Option<Admitted> {
        let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = map.values().sum();
        let mine = map.get(&ip).copied().unwrap_or(0);
        if total >= limits.max_sessions || mine >= limits.max_per_source {
            return None;
        }
        map.insert(ip, mine + 1);
        Some(Admitted {
            admission: self.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut map = self
            .admission
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves the SSH door on `listener` until `shutdown` (rackshare's one shutdown signal).
pub async fn serve(
    listener: TcpListener,
    host_key: PrivateKey,
    inv: Inventory,
    door: Arc<dyn ConsoleDoor>,
    limits: SshDoorLimits,
    shutdown: pxe::Shutdown,
) {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let config = Arc::new(russh::server::Config {
        methods,
        keys: vec![host_key],
        max_auth_attempts: limits.max_auth_attempts,
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(60)),
        nodelay: true,
        ..Default::default()
    });
    let admission = Arc::new(Admission::default());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "console SSH accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(place) = admission.admit(peer.ip(), &limits) else {
            tracing::warn!(%peer, "console SSH connection refused: too many open");
            continue;
        };
        let handler = DoorSession {
            inv: inv.clone(),
            door: door.clone(),
            peer,
            login: None,
            channel: None,
            input: None,
        };
        let config = config.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _place = place;
            let session = match russh::server::run_stream(config, stream, handler).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "console SSH handshake failed");
                    return;
                }
            };
            let handle = session.handle();
            tokio::select! {
                r = session => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "console SSH session ended");
                },
                _ = stop.cancelled() => {
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, "rackshare is stopping".into(), "en".into())
                        .await;
                }
            }
        });
    }
}

/// Who logged in, for which machine.
struct Login {
    machine: String,
    owner: TokenOwner,
}

/// One SSH connection.
struct DoorSession {
    inv: Inventory,
    door: Arc<dyn ConsoleDoor>,
    peer: SocketAddr,
    login: Option<Login>,
    channel: Option<ChannelId>,
    input: Option<mpsc::Sender<Bytes>>,
}

/// `ssh:` and the fingerprint's first characters: how audits name an SSH key.
fn key_label(fp: &str) -> String {
    format!(
        "ssh:{}",
        fp.trim_start_matches("SHA256:")
            .chars()
            .take(12)
            .collect::<String>()
    )
}

impl DoorSession {
    /// The identity a key names, or the reason it names none.
    async fn owner_of(&self, fp: &str) -> Result<TokenOwner, String> {
        let found = self.inv.ssh_key_owner(fp).await.map_err(|e| {
            tracing::warn!(error = %e, "console SSH key lookup failed");
            "the inventory could not be read".to_string()
        })?;
        match found {
            None => Err("the key belongs to no user or group".into()),
            Some(SshKeyOwner::User(u)) if u.disabled_at.is_some() => {
                Err(format!("user '{}' is disabled", u.name))
            }
            Some(SshKeyOwner::User(u)) => Ok(TokenOwner {
                user_id: u.id,
                user: u.name,
                role: u.role,
                member_group: u.member_group,
                token_prefix: key_label(fp),
            }),
            Some(SshKeyOwner::Group { name, comment }) => Ok(TokenOwner {
                user_id: 0,
                // Never the comment alone: it is the member's own text, and a key commented
                // "ops" must not act (or be audited) as the user ops.
                user: group_key_actor(&name, comment.as_deref()),
                role: Role::Member,
                member_group: Some(name),
                token_prefix: key_label(fp),
            }),
        }
    }

    async fn audit_refusal(&self, machine: &str, fp: Option<&str>, reason: &str) {
        let origin = AuditOrigin {
            source: Some(self.peer.to_string()),
            token_prefix: fp.map(key_label),
        };
        let ev = NewAuditEvent::ok(
            fp.map(key_label).as_deref().unwrap_or("-"),
            "console.ssh.login",
            "machine",
            machine,
        )
        .outcome(AuditOutcome::Denied)
        .machine(Some(machine.to_string()))
        .detail(serde_json::json!({"reason": reason, "fingerprint": fp}));
        if let Err(e) = origin.scope(self.inv.record(ev)).await {
            tracing::warn!(error = %e, "recording a refused console SSH login failed");
        }
    }
}

/// How a login by a group's key is named (actor in the audit log, writer seat): `group:NAME`,
/// with the key's comment after a slash; `:` cannot appear in a user name, so it never is one.
fn group_key_actor(group: &str, comment: Option<&str>) -> String {
    match comment.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("group:{group}/{}", c.chars().take(64).collect::<String>()),
        None => format!("group:{group}"),
    }
}

impl Handler for DoorSession {
    type Error = russh::Error;

    async fn auth_publickey(&mut self, user: &str, key: &PublicKey) -> Result<Auth, Self::Error> {
        let fp = key
            .to_openssh()
            .ok()
            .and_then(|line| ssh_key_fingerprint(&line).ok());
        let Some(fp) = fp else {
            self.audit_refusal(user, None, "the key could not be read")
                .await;
            return Ok(Auth::reject());
        };
        match self.owner_of(&fp).await {
            Ok(owner) => {
                self.login = Some(Login {
                    machine: user.to_string(),
                    owner,
                });
                Ok(Auth::Accept)
            }
            Err(reason) => {
                self.audit_refusal(user, Some(&fp), &reason).await;
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // One console per connection; output goes through the session's handle.
        if self.channel.is_some() {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.channel = Some(channel.id());
        reply.accept().await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = &self.login else {
            return session.channel_failure(channel);
        };
        if self.input.is_some() {
            return session.channel_failure(channel);
        }
        session.channel_success(channel)?;
        let handle = session.handle();
        let (tx, rx) = mpsc::channel(64);
        self.input = Some(tx);
        let door = self.door.clone();
        let machine = login.machine.clone();
        let owner = login.owner.clone();
        let origin = self.peer.to_string();
        tokio::spawn(async move {
            let status = match door.attach(&machine, &owner, &origin).await {
                Ok(viewer) => bridge(viewer, rx, &handle, channel, &owner).await,
                Err(refusal) => {
                    let words = format!("rackshare: {machine}: {refusal}\r\n");
                    let _ = handle.data(channel, Bytes::from(words)).await;
                    1
                }
            };
            let _ = handle.exit_status_request(channel, status).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.data(
            channel,
            Bytes::from_static(b"rackshare: a console takes no command; connect without one\r\n"),
        )?;
        session.channel_failure(channel)
    }

    async fn data(
        &mut self,
        _channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = &self.input {
            // Bounded: a stuck console holds this connection's keystrokes, nobody else's.
            if tx.send(Bytes::copy_from_slice(data)).await.is_err() {
                self.input = None;
            }
        }
        Ok(())
    }
}

/// Moves bytes between one viewer and one SSH channel until either side ends; the exit status.
async fn bridge(
    mut viewer: Box<dyn DoorViewer>,
    mut keys: mpsc::Receiver<Bytes>,
    handle: &russh::server::Handle,
    channel: ChannelId,
    owner: &TokenOwner,
) -> u32 {
    let send = |b: Bytes| handle.data(channel, b);
    let replay = viewer.replay();
    if !replay.is_empty() && send(replay).await.is_err() {
        return 0;
    }
    // The SSH door has no take/give keys: a viewer takes the seat when it is free.
    let mut writer = viewer.take_control().is_ok();
    if !writer {
        let note = "rackshare: someone else holds control; you are watching\r\n";
        if send(Bytes::from_static(note.as_bytes())).await.is_err() {
            return 0;
        }
    }
    loop {
        tokio::select! {
            ev = viewer.next() => match ev {
                Some(ConsoleEvent::Output(b)) => {
                    if send(b).await.is_err() {
                        return 0;
                    }
                }
                Some(ConsoleEvent::Control { writer: w }) => {
                    writer = w.as_deref() == Some(owner.user.as_str());
                    if !writer && w.is_none() {
                        writer = viewer.take_control().is_ok();
                    }
                }
                Some(ConsoleEvent::Closed { reason }) => {
                    let words = format!("\r\nrackshare: console closed: {reason}\r\n");
                    let _ = send(Bytes::from(words)).await;
                    return 0;
                }
                None => return 0,
            },
            k = keys.recv() => match k {
                Some(b) => {
                    if !writer {
                        writer = viewer.take_control().is_ok();
                    }
                    if let Err(refusal) = viewer.input(&b).await {
                        let words = format!("\r\nrackshare: {refusal}\r\n");
                        if send(Bytes::from(words)).await.is_err() {
                            return 0;
                        }
                    }
                }
                None => return 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_key_never_passes_for_a_user() {
        assert_eq!(group_key_actor("red", Some("ops")), "group:red/ops");
        assert_eq!(group_key_actor("red", Some("  ")), "group:red");
        assert_eq!(group_key_actor("red", None), "group:red");
    }
}
