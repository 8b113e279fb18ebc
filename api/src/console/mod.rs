//! The console broker: one serial session to the BMC per machine, shared by many viewers, one
//! of whom at a time may type (take / give control). Who may join is decided here and nowhere
//! else: a member only while their group's lease holds the machine, staff, technicians and
//! admins always. The front doors (the WebSocket in `ws.rs`, the SSH server, the web page) only
//! carry bytes and control messages to and from a [`ConsoleViewer`].

mod door;
mod holds;
mod proxy;
mod recorder;
pub mod route;
mod session;
pub mod text;
pub mod ticket;
pub mod ws;

pub use door::HubDoor;
pub use holds::HoldFor;

use crate::auth::Caller;
use crate::state::AppState;
use crate::ApiError;
use axum::body::Bytes;
use axum::http::StatusCode;
use inventory::{AuditOrigin, AuditOutcome, NewAuditEvent, Role, TokenOwner};
use session::{Seat, Session};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// What a viewer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// Bytes from the machine's serial port.
    Output(Bytes),
    /// Who holds the writer seat now (None: nobody).
    Control {
        /// The writer's name.
        writer: Option<String>,
    },
    /// This viewer's session ended (lease ended, console closed); no event follows.
    Closed {
        /// Why, in words.
        reason: String,
    },
}

/// Why a viewer's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleRefusal {
    /// Keystrokes from a viewer that does not hold the writer seat.
    #[error("you do not hold control of this console; take it first")]
    NotWriter,
    /// Another viewer holds the seat.
    #[error("{by} holds control of this console")]
    SeatHeld {
        /// Who holds it.
        by: String,
    },
    /// The keystroke queue to the BMC is full.
    #[error("the console is not taking input now (the BMC link is down or slow)")]
    Busy,
    /// The viewer's session has ended.
    #[error("this console session is closed")]
    Closed,
}

/// The broker's bounds and pace.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// Recent output kept for someone who joins (the last screen).
    pub replay_bytes: usize,
    /// Output chunks a viewer may be behind before it skips ahead.
    pub viewer_queue: usize,
    /// How long a session stays open after its last viewer left.
    pub linger: Duration,
    /// How often the lease of each member viewer is checked.
    pub lease_poll: Duration,
    /// Longest wait between attempts to reopen a dropped BMC link.
    pub max_backoff: Duration,
    /// Bytes of console output kept per lease (the newest).
    pub recording_bytes: i64,
    /// Output chunks waiting for the recorder; beyond this they are dropped and counted.
    pub recording_queue: usize,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            replay_bytes: 64 * 1024,
            viewer_queue: 256,
            linger: Duration::from_secs(5),
            lease_poll: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            recording_bytes: inventory::CONSOLE_RECORDING_BYTES,
            recording_queue: 1024,
        }
    }
}

type Sessions = Arc<Mutex<HashMap<String, Arc<Session>>>>;

/// What the recorders of every session did (for `/metrics`).
#[derive(Debug, Default)]
pub struct RecordingCounters {
    /// Console output bytes written to lease recordings.
    pub recorded_bytes: AtomicU64,
    /// Output chunks not recorded (queue full or the database refusing).
    pub dropped_chunks: AtomicU64,
}

/// Every machine's console session.
pub struct ConsoleHub {
    sessions: Sessions,
    next_viewer: AtomicU64,
    settings: ConsoleSettings,
    recording: Arc<RecordingCounters>,
}

impl Default for ConsoleHub {
    fn default() -> Self {
        ConsoleHub::new(ConsoleSettings::default())
    }
}

fn privileged(role: Role) -> bool {
    matches!(role, Role::Admin | Role::Staff | Role::Technician)
}

/// Audits one console event in the given origin (the request's, carried into later tasks).
async fn audit(inv: &inventory::Inventory, origin: AuditOrigin, ev: NewAuditEvent) {
    if let Err(e) = origin.scope(inv.record(ev)).await {
        tracing::warn!(error = %e, "could not audit a console event");
    }
}

impl ConsoleHub {
    /// A hub with the given bounds.
    pub fn new(settings: ConsoleSettings) -> Self {
        ConsoleHub {
            sessions: Arc::new(Mutex::new(HashMap::new())),
            next_viewer: AtomicU64::new(1),
            settings,
            recording: Arc::new(RecordingCounters::default()),
        }
    }

    /// The recorders' counters.
    pub fn recording_counters(&self) -> &RecordingCounters {
        &self.recording
    }

    /// How many machines have a console session open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The machine's session, started if there is none (call under the hub's lock, so the
    /// session's watcher cannot close it between this and the join or hold that follows).
    fn session_in(
        &self,
        sessions: &mut HashMap<String, Arc<Session>>,
        inv: &inventory::Inventory,
        machine: &str,
    ) -> Arc<Session> {
        sessions
            .entry(machine.to_string())
            .or_insert_with(|| {
                Session::start(
                    machine.to_string(),
                    inv.clone(),
                    self.settings.clone(),
                    self.sessions.clone(),
                    self.recording.clone(),
                )
            })
            .clone()
    }

    /// Keeps the machine's console session open with no viewer for as long as the returned
    /// hold lives (opening the BMC link if no one watches). The engine holds it while a job
    /// runs, so the job's console output is recorded into the job's tail (and the lease's
    /// recording, if a lease holds the machine). Whether a machine has a BMC is the caller's
    /// to check; a session whose BMC offers no console keeps retrying with backoff.
    pub fn hold(
        &self,
        inv: &inventory::Inventory,
        machine: &str,
        why: HoldFor,
    ) -> Option<ConsoleHold> {
        let id = self.next_viewer.fetch_add(1, Ordering::Relaxed);
        let mut sessions = match self.sessions.lock() {
            Ok(s) => s,
            Err(_) => return None,
        };
        let session = self.session_in(&mut sessions, inv, machine);
        session.hold(id, why);
        Some(ConsoleHold { session, id })
    }

    /// Whether `who` may open the machine's console now (the rule of [`ConsoleHub::attach`],
    /// without joining); refusals are audited. Front doors call it before upgrading a
    /// connection, so a refusal is an ordinary JSON error.
    pub async fn admit(
        &self,
        state: &AppState,
        machine: &str,
        who: &TokenOwner,
        origin: &str,
    ) -> Result<(), ApiError> {
        let caller = Caller(who.clone());
        let m = crate::visibility::visible_machine(state, &caller, machine).await?;
        let open_event = || {
            NewAuditEvent::ok(&who.user, "console.open", "machine", machine)
                .group(who.member_group.clone())
                .machine(Some(machine.to_string()))
        };
        if !privileged(who.role) && m.lease_id.is_none() {
            let ev = open_event()
                .outcome(AuditOutcome::Denied)
                .detail(serde_json::json!({"via": origin, "reason": "no lease holds the machine"}));
            audit(&state.inv, AuditOrigin::current(), ev).await;
            return Err(ApiError::forbidden(format!(
                "the console of '{machine}' is open to your group only while its lease holds the machine"
            )));
        }
        // The BMC must be known; its address and credentials stay in the broker.
        if let Err(e) = state.inv.bmc_access(machine).await {
            return Err(match e {
                inventory::Error::NotFound { .. } => ApiError {
                    status: StatusCode::CONFLICT,
                    code: "no_bmc",
                    message: format!("machine '{machine}' has no BMC, so no console"),
                    field: Some("bmc".into()),
                },
                other => other.into(),
            });
        }
        Ok(())
    }

    /// Join a machine's console as `who`; checks who may (member: only while their group's lease
    /// holds the machine; staff/technician always), audits `console.open`, opens the BMC session if none.
    /// `origin` names the front door (`websocket`, `ssh`, `cli`), for the audit log.
    pub async fn attach(
        &self,
        state: &AppState,
        machine: &str,
        who: &TokenOwner,
        origin: &str,
    ) -> Result<ConsoleViewer, ApiError> {
        self.admit(state, machine, who, origin).await?;
        let open_event = || {
            NewAuditEvent::ok(&who.user, "console.open", "machine", machine)
                .group(who.member_group.clone())
                .machine(Some(machine.to_string()))
        };
        let id = self.next_viewer.fetch_add(1, Ordering::Relaxed);
        let (kick_tx, kick_rx) = watch::channel(None);
        let seat = Seat {
            name: who.user.clone(),
            member_group: (!privileged(who.role))
                .then(|| who.member_group.clone())
                .flatten(),
            privileged: privileged(who.role),
            kick: kick_tx,
            kicked: false,
        };
        let (session, events, replay, writer) = {
            let mut sessions = self.sessions.lock().map_err(ApiError::internal)?;
            let session = self.session_in(&mut sessions, &state.inv, machine);
            let (events, replay, writer) = session.join(id, seat);
            (session, events, replay, writer)
        };
        let origin_now = AuditOrigin::current();
        audit(
            &state.inv,
            origin_now.clone(),
            open_event().detail(serde_json::json!({"via": origin, "role": who.role})),
        )
        .await;
        Ok(ConsoleViewer {
            id,
            name: who.user.clone(),
            group: who.member_group.clone(),
            privileged: privileged(who.role),
            via: origin.to_string(),
            session,
            events,
            kick: kick_rx,
            replay,
            first_writer: writer,
            inv: state.inv.clone(),
            origin: origin_now,
            done: false,
        })
    }
}

/// A hold on a machine's console session ([`ConsoleHub::hold`]); released when dropped.
pub struct ConsoleHold {
    session: Arc<Session>,
    id: u64,
}

impl Drop for ConsoleHold {
    fn drop(&mut self) {
        self.session.release(self.id);
    }
}

/// One viewer of a machine's console.
pub struct ConsoleViewer {
    id: u64,
    name: String,
    group: Option<String>,
    privileged: bool,
    via: String,
    session: Arc<Session>,
    events: broadcast::Receiver<ConsoleEvent>,
    kick: watch::Receiver<Option<String>>,
    replay: Bytes,
    first_writer: Option<String>,
    inv: inventory::Inventory,
    origin: AuditOrigin,
    done: bool,
}

impl ConsoleViewer {
    /// The recent output to show first (the last screen).
    pub fn replay(&self) -> Bytes {
        self.replay.clone()
    }

    /// Who held the writer seat when this viewer joined.
    pub fn writer_at_join(&self) -> Option<String> {
        self.first_writer.clone()
    }

    /// The machine's name.
    pub fn machine(&self) -> &str {
        self.session.machine()
    }

    /// The next event; None when the session is closed.
    pub async fn next(&mut self) -> Option<ConsoleEvent> {
        if self.done {
            return None;
        }
        loop {
            tokio::select! {
                biased;
                changed = self.kick.changed() => {
                    let reason = match changed {
                        Ok(()) => self.kick.borrow().clone(),
                        Err(_) => None,
                    };
                    if changed.is_ok() && reason.is_none() {
                        continue;
                    }
                    self.done = true;
                    return Some(ConsoleEvent::Closed {
                        reason: reason.unwrap_or_else(|| "the console session ended".into()),
                    });
                }
                ev = self.events.recv() => match ev {
                    Ok(ev) => return Some(ev),
                    // A slow viewer skips what it missed rather than holding the others up.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        self.done = true;
                        return Some(ConsoleEvent::Closed {
                            reason: "the console session ended".into(),
                        });
                    }
                },
            }
        }
    }

    /// Send keystrokes (refused unless this viewer holds control).
    pub async fn input(&self, bytes: &[u8]) -> Result<(), ConsoleRefusal> {
        self.session.input(self.id, Bytes::copy_from_slice(bytes))
    }

    /// Take the one writer seat (staff, technicians and admins may take it from a member).
    pub fn take_control(&self) -> Result<(), ConsoleRefusal> {
        let res = self.session.take(self.id);
        let ev = NewAuditEvent::ok(&self.name, "console.control", "machine", self.machine())
            .group(self.group.clone())
            .machine(Some(self.machine().to_string()));
        let ev = match &res {
            Ok(()) => ev.detail(serde_json::json!({"control": "take", "via": self.via})),
            Err(e) => ev.outcome(AuditOutcome::Denied).detail(
                serde_json::json!({"control": "take", "via": self.via, "reason": e.to_string()}),
            ),
        };
        self.spawn_audit(ev);
        res
    }

    /// Give up the writer seat (no-op unless held).
    pub fn give_control(&self) {
        if self.session.give(self.id) {
            let ev = NewAuditEvent::ok(&self.name, "console.control", "machine", self.machine())
                .group(self.group.clone())
                .machine(Some(self.machine().to_string()))
                .detail(serde_json::json!({"control": "give", "via": self.via}));
            self.spawn_audit(ev);
        }
    }

    fn spawn_audit(&self, ev: NewAuditEvent) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inv = self.inv.clone();
            let origin = self.origin.clone();
            rt.spawn(async move { audit(&inv, origin, ev).await });
        }
    }
}

impl Drop for ConsoleViewer {
    fn drop(&mut self) {
        self.session.leave(self.id);
        let ev = NewAuditEvent::ok(&self.name, "console.close", "machine", self.machine())
            .group(self.group.clone())
            .machine(Some(self.machine().to_string()))
            .detail(serde_json::json!({"via": self.via, "staff": self.privileged}));
        self.spawn_audit(ev);
    }
}
