//! One machine's console session: the BMC link (reopened with backoff when it drops), the
//! replay buffer, the viewers' seats and the writer, and the watcher that closes member viewers
//! whose lease ended and the session itself once its last viewer (and its last hold, see
//! `holds.rs`) has been gone a while.

use super::holds::{HoldFor, Holds};
use super::recorder::Output;
use super::{ConsoleEvent, ConsoleRefusal, ConsoleSettings, RecordingCounters, Sessions};
use axum::body::Bytes;
use bmc::{BmcProtocol, BmcUrl, SerialEndpoint};
use inventory::Inventory;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};

/// Keystroke writes waiting for the BMC link.
const INPUT_QUEUE: usize = 64;

/// One viewer's place in a session.
pub(super) struct Seat {
    pub name: String,
    /// The group whose lease must hold the machine (members only).
    pub member_group: Option<String>,
    pub privileged: bool,
    /// Set to the reason when the viewer is closed by the broker.
    pub kick: watch::Sender<Option<String>>,
    pub kicked: bool,
}

struct SessionState {
    replay: VecDeque<u8>,
    writer: Option<u64>,
    seats: HashMap<u64, Seat>,
    holds: Holds,
}

/// A machine's console session.
pub(super) struct Session {
    machine: String,
    settings: ConsoleSettings,
    events: broadcast::Sender<ConsoleEvent>,
    input: mpsc::Sender<Bytes>,
    state: Mutex<SessionState>,
    stop: watch::Sender<bool>,
    /// Output on its way to the lease's recording (written off the console's path).
    recording: mpsc::Sender<Output>,
    /// The hub's recording counters, shared by every session.
    recording_counters: Arc<RecordingCounters>,
}

impl Session {
    /// A new session whose link and watcher run until it is stopped.
    pub fn start(
        machine: String,
        inv: Inventory,
        settings: ConsoleSettings,
        sessions: Sessions,
        recording_counters: Arc<RecordingCounters>,
    ) -> Arc<Session> {
        let (events, _) = broadcast::channel(settings.viewer_queue.max(1));
        let (input, input_rx) = mpsc::channel(INPUT_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let (recording, recording_rx) = mpsc::channel(settings.recording_queue.max(1));
        let session = Arc::new(Session {
            machine,
            settings,
            events,
            input,
            state: Mutex::new(SessionState {
                replay: VecDeque::new(),
                writer: None,
                seats: HashMap::new(),
                holds: Holds::default(),
            }),
            stop,
            recording,
            recording_counters,
        });
        tokio::spawn(super::recorder::record(
            session.machine.clone(),
            inv.clone(),
            session.settings.recording_bytes,
            recording_rx,
            Arc::downgrade(&session),
        ));
        tokio::spawn(link(
            session.clone(),
            inv.clone(),
            input_rx,
            stop_rx.clone(),
        ));
        tokio::spawn(watch_leases(session.clone(), inv, sessions, stop_rx));
        session
    }

    pub fn machine(&self) -> &str {
        &self.machine
    }

    fn state(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer_name(st: &SessionState) -> Option<String> {
        st.writer
            .and_then(|w| st.seats.get(&w))
            .map(|s| s.name.clone())
    }

    /// Adds a viewer: its event stream, the replay and the current writer.
    pub fn join(
        &self,
        id: u64,
        seat: Seat,
    ) -> (broadcast::Receiver<ConsoleEvent>, Bytes, Option<String>) {
        let mut st = self.state();
        st.seats.insert(id, seat);
        // Subscribed under the lock that guards the replay: no output falls between the two.
        let rx = self.events.subscribe();
        let replay = Bytes::from(st.replay.iter().copied().collect::<Vec<u8>>());
        (rx, replay, Self::writer_name(&st))
    }

    /// Holds the session open with no viewer (hold ids come from the hub's viewer counter).
    pub fn hold(&self, id: u64, why: HoldFor) {
        self.state().holds.take(id, why);
    }

    /// Releases a hold.
    pub fn release(&self, id: u64) {
        self.state().holds.release(id);
    }

    pub fn leave(&self, id: u64) {
        let mut st = self.state();
        st.seats.remove(&id);
        if st.writer == Some(id) {
            st.writer = None;
            let _no_viewers_left = self.events.send(ConsoleEvent::Control { writer: None });
        }
    }

    pub fn input(&self, id: u64, bytes: Bytes) -> Result<(), ConsoleRefusal> {
        {
            let st = self.state();
            if st.seats.get(&id).is_none_or(|s| s.kicked) {
                return Err(ConsoleRefusal::Closed);
            }
            if st.writer != Some(id) {
                return Err(ConsoleRefusal::NotWriter);
            }
        }
        self.input.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ConsoleRefusal::Busy,
            mpsc::error::TrySendError::Closed(_) => ConsoleRefusal::Closed,
        })
    }

    pub fn take(&self, id: u64) -> Result<(), ConsoleRefusal> {
        let mut st = self.state();
        let Some(me) = st.seats.get(&id) else {
            return Err(ConsoleRefusal::Closed);
        };
        if me.kicked {
            return Err(ConsoleRefusal::Closed);
        }
        let privileged = me.privileged;
        match st.writer {
            Some(w) if w == id => return Ok(()),
            Some(w) if !privileged => {
                let by = st.seats.get(&w).map(|s| s.name.clone()).unwrap_or_default();
                return Err(ConsoleRefusal::SeatHeld { by });
            }
            _ => {}
        }
        st.writer = Some(id);
        let writer = Self::writer_name(&st);
        let _no_viewers_left = self.events.send(ConsoleEvent::Control { writer });
        Ok(())
    }

    /// Gives the seat up; true if this viewer held it.
    pub fn give(&self, id: u64) -> bool {
        let mut st = self.state();
        if st.writer != Some(id) {
            return false;
        }
        st.writer = None;
        let _no_viewers_left = self.events.send(ConsoleEvent::Control { writer: None });
        true
    }

    fn output(&self, bytes: Bytes) {
        let mut st = self.state();
        // Never waits: a full queue (the database slow) costs recording, not the console. The
        // jobs are the ones holding the session now, when the bytes are seen.
        let out = Output {
            at: inventory::now_ms(),
            bytes: bytes.clone(),
            jobs: st.holds.jobs(),
        };
        if self.recording.try_send(out).is_err() {
            self.count_unrecorded(1);
        }
        st.replay.extend(bytes.iter().copied());
        let over = st.replay.len().saturating_sub(self.settings.replay_bytes);
        st.replay.drain(..over);
        // No receiver (nobody watching during the linger) is fine: the replay keeps it.
        let _no_viewers_left = self.events.send(ConsoleEvent::Output(bytes));
    }

    /// Counts bytes written to the recording.
    pub fn count_recorded(&self, bytes: u64) {
        self.recording_counters
            .recorded_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts output chunks that did not reach the recording.
    pub fn count_unrecorded(&self, chunks: u64) {
        let before = self
            .recording_counters
            .dropped_chunks
            .fetch_add(chunks, Ordering::Relaxed);
        // Said once, then every 1000th (hub-wide), so a stuck database does not flood the log.
        if before == 0 || (before + chunks) / 1000 > before / 1000 {
            tracing::warn!(machine = %self.machine, dropped = before + chunks, "console output not recorded");
        }
    }

    /// Closes the member viewers whose lease no longer holds the machine.
    fn kick_members(&self, holder: Option<&str>, reason: &str) {
        let mut st = self.state();
        let mut kicked = Vec::new();
        for (id, seat) in st.seats.iter_mut() {
            if seat.privileged || seat.kicked {
                continue;
            }
            if holder.is_none() || seat.member_group.as_deref() != holder {
                seat.kicked = true;
                seat.kick.send_replace(Some(reason.to_string()));
                kicked.push(*id);
            }
        }
        if st.writer.is_some_and(|w| kicked.contains(&w)) {
            st.writer = None;
            let _no_viewers_left = self.events.send(ConsoleEvent::Control { writer: None });
        }
    }
}

/// The machine's serial endpoint from its stored BMC settings (never shown to a viewer).
async fn endpoint_for(inv: &Inventory, machine: &str) -> Result<SerialEndpoint, String> {
    let access = inv.bmc_access(machine).await.map_err(|e| e.to_string())?;
    let url: BmcUrl = access.url.parse().map_err(|e| format!("{e}"))?;
    let password = access.password.clone().unwrap_or_default();
    Ok(match url.protocol() {
        BmcProtocol::Ipmi => SerialEndpoint::IpmiSol {
            host: url.host().to_string(),
            port: url.port(),
            username: access.username,
            password,
        },
        // Where the BMC offers its serial console over SSH is asked of Redfish each time the
        // link opens (System's or Manager's `SerialConsole`).
        BmcProtocol::RedfishHttps | BmcProtocol::RedfishHttp => {
            let tls = crate::bmc_service::tls_policy(&access).map_err(|e| e.message)?;
            let creds = bmc::Credentials::new(access.username.clone(), password.clone());
            let driver = bmc::RedfishDriver::new(&url, creds, &tls, bmc::DriverOptions::default())
                .map_err(|e| e.to_string())?;
            let ssh = bmc::serial_ssh::discover(&driver)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    "this BMC offers no serial console over SSH (Redfish SerialConsole)".to_string()
                })?;
            SerialEndpoint::RedfishSsh {
                host: url.host().to_string(),
                port: ssh.port,
                username: access.username,
                password,
            }
        }
    })
}

/// Resolves once the session stops (or its sender is gone, which means the same).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: dropped here, never held across an await.
    let _seen = stop.wait_for(|s| *s).await.is_ok();
}

/// Waits `d` or until the session stops; true if it stopped.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let woke = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(stop) => true,
    };
    woke || *stop.borrow()
}

/// Keeps the BMC link open while the session runs: output to the viewers, the writer's
/// keystrokes to the machine; reopened with backoff when it drops.
async fn link(
    session: Arc<Session>,
    inv: Inventory,
    mut input: mpsc::Receiver<Bytes>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return;
        }
        let opened = match endpoint_for(&inv, &session.machine).await {
            Ok(ep) => bmc::open_serial(&ep).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match opened {
            Ok(mut serial) => {
                tracing::info!(machine = %session.machine, "console link open");
                backoff = Duration::from_millis(500);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    tokio::select! {
                        _ = stopped(&mut stop) => return,
                        n = serial.output.read(&mut buf) => match n {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                tracing::trace!(machine = %session.machine, bytes = n, "console output");
                                session.output(Bytes::copy_from_slice(&buf[..n]))
                            }
                        },
                        keys = input.recv() => match keys {
                            Some(keys) => {
                                tracing::trace!(machine = %session.machine, bytes = keys.len(), "console input");
                                let wrote = async {
                                    serial.input.write_all(&keys).await?;
                                    serial.input.flush().await
                                };
                                if let Err(e) = wrote.await {
                                    tracing::warn!(machine = %session.machine, error = %e, "console input failed");
                                    break;
                                }
                            }
                            None => return,
                        },
                    }
                }
                tracing::info!(machine = %session.machine, "console link dropped; reopening");
            }
            Err(e) => {
                tracing::warn!(machine = %session.machine, error = %e, "console link could not open");
            }
        }
        // Keystrokes typed while the link was down are not replayed into a new session.
        while input.try_recv().is_ok() {}
        if pause(&mut stop, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(session.settings.max_backoff);
    }
}

/// Every `lease_poll`: closes member viewers whose group's lease no longer holds the machine,
/// and ends the session once it has had no viewer and no hold for `linger`.
async fn watch_leases(
    session: Arc<Session>,
    inv: Inventory,
    sessions: Sessions,
    mut stop: watch::Receiver<bool>,
) {
    let mut empty_since: Option<Instant> = None;
    loop {
        if pause(&mut stop, session.settings.lease_poll).await {
            return;
        }
        let has_members = session
            .state()
            .seats
            .values()
            .any(|s| !s.privileged && !s.kicked);
        if has_members {
            match inv.machine(&session.machine).await {
                Ok(m) => {
                    let holder = m.lease_id.and(m.member_group.clone());
                    session
                        .kick_members(holder.as_deref(), "the lease no longer holds this machine");
                }
                Err(inventory::Error::NotFound { .. }) => {
                    session.kick_members(None, "the machine is gone");
                }
                // Fail closed: a lease that cannot be checked does not keep a member in.
                Err(e) => {
                    tracing::warn!(machine = %session.machine, error = %e, "console lease check failed");
                    session.kick_members(None, "the lease could not be checked");
                }
            }
        }
        // Under the hub's lock, so an attach either finds this session alive or a new one.
        let Ok(mut map) = sessions.lock() else {
            return;
        };
        let idle = {
            let st = session.state();
            !st.holds.keep_open(st.seats.len())
        };
        if idle {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= session.settings.linger {
                if map
                    .get(&session.machine)
                    .is_some_and(|s| Arc::ptr_eq(s, &session))
                {
                    map.remove(&session.machine);
                }
                session.stop.send_replace(true);
                tracing::info!(machine = %session.machine, "console session closed (no viewer, no job)");
                return;
            }
        } else {
            empty_since = None;
        }
    }
}
