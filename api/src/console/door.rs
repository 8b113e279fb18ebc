//! The console hub behind the SSH front door (`console_ssh::ConsoleDoor`): the door knows
//! nothing of BMCs or leases, the hub nothing of SSH; this is the one place they meet.

use super::proxy::ProxyViewer;
use super::route::ConsoleRoute;
use super::{ConsoleEvent, ConsoleViewer};
use crate::console_ssh::{ConsoleDoor, DoorRefusal, DoorViewer};
use crate::state::AppState;
use axum::body::Bytes;
use inventory::{AuditOrigin, TokenOwner};

/// [`super::ConsoleHub`] as the SSH door sees it.
pub struct HubDoor {
    /// The service's state (the hub is `state.consoles`).
    pub state: AppState,
}

#[async_trait::async_trait]
impl ConsoleDoor for HubDoor {
    async fn attach(
        &self,
        machine: &str,
        who: &TokenOwner,
        origin: &str,
    ) -> Result<Box<dyn DoorViewer>, DoorRefusal> {
        // Every event of this login names where it came from and which key it used.
        let scope = AuditOrigin {
            source: Some(origin.to_string()),
            token_prefix: Some(who.token_prefix.clone()),
        };
        let st = &self.state;
        let refusal = |e: crate::ApiError| DoorRefusal(e.message);
        scope
            .scope(async {
                // Who may is asked first, so a foreign machine says nothing of its site.
                st.consoles
                    .admit(st, machine, who, "ssh")
                    .await
                    .map_err(refusal)?;
                match st.console_routing.route(&st.inv, machine).await {
                    Ok(ConsoleRoute::Local) => st
                        .consoles
                        .attach(st, machine, who, "ssh")
                        .await
                        .map(|v| Box::new(HubViewer(v)) as Box<dyn DoorViewer>)
                        .map_err(refusal),
                    Ok(ConsoleRoute::Peers { site, peers }) => {
                        super::proxy::open(st, who, "ssh", machine, &site, &peers)
                            .await
                            .map(|link| Box::new(ProxyViewer::new(link)) as Box<dyn DoorViewer>)
                            .map_err(refusal)
                    }
                    Err(e) => Err(refusal(e)),
                }
            })
            .await
    }
}

/// One hub viewer behind the door.
struct HubViewer(ConsoleViewer);

#[async_trait::async_trait]
impl DoorViewer for HubViewer {
    fn replay(&self) -> Bytes {
        self.0.replay()
    }

    async fn next(&mut self) -> Option<ConsoleEvent> {
        self.0.next().await
    }

    async fn input(&self, bytes: &[u8]) -> Result<(), DoorRefusal> {
        self.0
            .input(bytes)
            .await
            .map_err(|e| DoorRefusal(e.to_string()))
    }

    fn take_control(&self) -> Result<(), DoorRefusal> {
        self.0
            .take_control()
            .map_err(|e| DoorRefusal(e.to_string()))
    }
}
