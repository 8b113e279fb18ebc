//! Which instance brokers a machine's console (decision P): the instance of the machine's site,
//! since only it reaches the site's BMCs. An instance asked for a console it does not serve
//! finds a live instance of that site in the instances table and proxies to it (`proxy.rs`),
//! naming the person in a ticket (`ticket.rs`).

use super::ticket::{ConsoleTicket, TicketKeys, TICKET_TTL_MS};
use crate::ApiError;
use axum::http::StatusCode;
use inventory::{Inventory, SiteScope, TokenOwner};
use std::sync::Arc;

/// What an instance needs to route consoles: who it is, what it serves, the shared ticket key
/// and the TLS identity it pins when a peer speaks https.
pub struct ConsoleRouting {
    /// This instance's id.
    pub instance_id: String,
    /// The machines it serves.
    pub scope: SiteScope,
    /// The instances' shared ticket key.
    pub tickets: TicketKeys,
    /// This instance's member-listener TLS identity (every instance has the same one).
    pub tls: Option<Arc<crate::tls::ReloadableTls>>,
}

/// Where a console is brokered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleRoute {
    /// Here: this instance serves the machine's site.
    Local,
    /// At another site, by one of these live instances (id, api_url), best first.
    Peers {
        /// The machine's site.
        site: String,
        /// The candidates.
        peers: Vec<(String, String)>,
    },
}

/// The refusal when no instance of `site` is there to broker its consoles.
pub fn site_unavailable(site: &str) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "site_unavailable",
        message: format!(
            "site {site} has no live instance; its consoles are unavailable until one starts"
        ),
        field: Some("site".into()),
    }
}

impl ConsoleRouting {
    /// A standalone instance's routing (every console is local); the key is never used.
    pub fn standalone(instance_id: String) -> Self {
        ConsoleRouting {
            instance_id,
            scope: SiteScope::All,
            tickets: TicketKeys::new(rand::random()),
            tls: None,
        }
    }

    /// Where `machine`'s console is brokered (the machine is known to exist and be visible).
    pub async fn route(&self, inv: &Inventory, machine: &str) -> Result<ConsoleRoute, ApiError> {
        let m = inv.machine(machine).await?;
        let site = match m.site {
            Some(site) if !self.scope.serves(Some(&site)) => site,
            _ => return Ok(ConsoleRoute::Local),
        };
        let peers = inv
            .live_instances_for_site(&site, &self.instance_id)
            .await?;
        if peers.is_empty() {
            return Err(site_unavailable(&site));
        }
        Ok(ConsoleRoute::Peers { site, peers })
    }

    /// A ticket for `who` to open `machine`'s console at instance `audience`.
    pub fn ticket(
        &self,
        who: &TokenOwner,
        source: &str,
        via: &str,
        machine: &str,
        audience: &str,
    ) -> String {
        self.tickets.seal(&ConsoleTicket {
            user_id: who.user_id,
            user: who.user.clone(),
            role: who.role,
            member_group: who.member_group.clone(),
            token_prefix: who.token_prefix.clone(),
            source: source.to_string(),
            via: via.to_string(),
            machine: machine.to_string(),
            issuer: self.instance_id.clone(),
            audience: audience.to_string(),
            expires_at: inventory::now_ms() + TICKET_TTL_MS,
            nonce: hex::encode(rand::random::<[u8; 16]>()),
        })
    }
}
