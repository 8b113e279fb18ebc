//! The VM's serial console over SSH, the way real BMCs offer it (Redfish `SerialConsole.SSH`):
//! password login with the BMC's Redfish credentials, then the replay and the live output, and
//! keystrokes to the guest. The host key is made at start (the lab's BMCs live for one run).

use crate::console::SerialConsole;
use bytes::Bytes;
use russh::keys::PrivateKey;
use russh::server::{Auth, Handler, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;

/// Open SSH sessions at once (a lab BMC has one console and few users).
const MAX_SESSIONS: usize = 8;

/// A fresh Ed25519 host key.
fn host_key() -> PrivateKey {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
        &seed,
    ))
}

/// Serves `console` on `listener` to whoever logs in as `user` with `password`.
pub(crate) async fn serve(
    listener: TcpListener,
    console: SerialConsole,
    user: String,
    password: String,
) {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::Password);
    let config = Arc::new(russh::server::Config {
        methods,
        keys: vec![host_key()],
        max_auth_attempts: 3,
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(place) = open.clone().try_acquire_owned() else {
            continue;
        };
        let handler = ConsoleSession {
            console: console.clone(),
            user: user.clone(),
            password: password.clone(),
            authenticated: false,
            streaming: false,
        };
        let config = config.clone();
        tokio::spawn(async move {
            let _place = place;
            if let Ok(session) = russh::server::run_stream(config, stream, handler).await {
                let _ = session.await;
            }
        });
    }
}

struct ConsoleSession {
    console: SerialConsole,
    user: String,
    password: String,
    authenticated: bool,
    streaming: bool,
}

impl Handler for ConsoleSession {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.authenticated = user == self.user && password == self.password;
        Ok(if self.authenticated {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
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
        if !self.authenticated || self.streaming {
            return session.channel_failure(channel);
        }
        self.streaming = true;
        session.channel_success(channel)?;
        let handle = session.handle();
        let (replay, mut live) = self.console.subscribe();
        let console = self.console.clone();
        tokio::spawn(async move {
            if !replay.is_empty() && handle.data(channel, Bytes::from(replay)).await.is_err() {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(b) => {
                        if handle.data(channel, Bytes::from(b)).await.is_err() {
                            return;
                        }
                    }
                    // Behind: start again from the replay (what a viewer that lagged sees).
                    Err(RecvError::Lagged(_)) => {
                        let (_, rx) = console.subscribe();
                        live = rx;
                    }
                    Err(RecvError::Closed) => {
                        let _ = handle.close(channel).await;
                        return;
                    }
                }
            }
        });
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.streaming {
            return Ok(());
        }
        if let Err(e) = self.console.write(data).await {
            session.data(channel, Bytes::from(format!("\r\n[vbmc: {e}]\r\n")))?;
        }
        Ok(())
    }
}
