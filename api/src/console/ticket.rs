//! The inter-instance console ticket (decision P): when an instance proxies a console to the
//! instance of the machine's site, it names the person in a ticket that instance can check —
//! HMAC-SHA256 under a key every instance shares (sealed in `shared_secrets`), bound to the
//! person, the machine, the receiving instance and a 10-second expiry, and used once. The SSH
//! door has no token to forward; a ticket is also worth less to whoever sees it on the wire.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use inventory::{Role, TokenOwner};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;

/// The request header a proxying instance carries the ticket in (only the console route reads it).
pub const TICKET_HEADER: &str = "x-rackshare-console-ticket";

/// How long a ticket is good for: it is minted just before the proxy connects.
pub const TICKET_TTL_MS: i64 = 10_000;

/// Nonces remembered at most (tickets are minted only by instances, each used within seconds).
const MAX_REMEMBERED: usize = 65_536;

/// Who a proxied console is for, and where it may be opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleTicket {
    /// The person's user id (0 for a group's SSH key).
    pub user_id: i64,
    /// The person's name.
    pub user: String,
    /// Their role.
    pub role: Role,
    /// Their group (members).
    pub member_group: Option<String>,
    /// How they authenticated (token prefix or `ssh:` key label).
    pub token_prefix: String,
    /// Their address as the proxying instance saw it.
    pub source: String,
    /// Their front door (`websocket`, `ssh`).
    pub via: String,
    /// The machine whose console this opens.
    pub machine: String,
    /// The proxying instance.
    pub issuer: String,
    /// The instance that may accept it.
    pub audience: String,
    /// Unix ms after which it is refused.
    pub expires_at: i64,
    /// Random; a ticket is accepted once.
    pub nonce: String,
}

impl ConsoleTicket {
    /// The person as the console broker knows them.
    pub fn owner(&self) -> TokenOwner {
        TokenOwner {
            user_id: self.user_id,
            user: self.user.clone(),
            role: self.role,
            member_group: self.member_group.clone(),
            token_prefix: self.token_prefix.clone(),
        }
    }
}

/// Why a ticket was refused (audited as `console.ticket`, answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    /// Not `BASE64.BASE64` of a ticket.
    #[error("the console ticket is malformed")]
    Malformed,
    /// The MAC does not match: not made with the instances' shared key.
    #[error("the console ticket's signature does not match")]
    BadSignature,
    /// Past its expiry.
    #[error("the console ticket has expired")]
    Expired,
    /// Minted for another instance.
    #[error("the console ticket is for another instance")]
    WrongAudience,
    /// Minted for another machine.
    #[error("the console ticket is for another machine")]
    WrongMachine,
    /// Already used.
    #[error("the console ticket was already used")]
    Replayed,
    /// Too many live tickets to remember (fail closed).
    #[error("too many console tickets at once")]
    Overloaded,
}

/// The shared key and the nonces this instance has accepted (until they expire).
pub struct TicketKeys {
    key: [u8; 32],
    seen: Mutex<HashMap<String, i64>>,
}

impl TicketKeys {
    /// Keys from the shared secret.
    pub fn new(key: [u8; 32]) -> Self {
        TicketKeys {
            key,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length: this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// The ticket as the header carries it.
    pub fn seal(&self, ticket: &ConsoleTicket) -> String {
        let body = serde_json::to_vec(ticket).unwrap_or_default();
        let mut mac = self.mac();
        mac.update(&body);
        let tag = mac.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&body),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks a ticket presented to instance `me` for `machine` at `now`, and uses it up.
    pub fn open(
        &self,
        text: &str,
        me: &str,
        machine: &str,
        now: i64,
    ) -> Result<ConsoleTicket, TicketRefusal> {
        let (body, tag) = text
            .trim()
            .split_once('.')
            .ok_or(TicketRefusal::Malformed)?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TicketRefusal::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TicketRefusal::Malformed)?;
        let mut mac = self.mac();
        mac.update(&body);
        mac.verify_slice(&tag)
            .map_err(|_| TicketRefusal::BadSignature)?;
        let t: ConsoleTicket =
            serde_json::from_slice(&body).map_err(|_| TicketRefusal::Malformed)?;
        if t.expires_at < now {
            return Err(TicketRefusal::Expired);
        }
        if t.audience != me {
            return Err(TicketRefusal::WrongAudience);
        }
        if t.machine != machine {
            return Err(TicketRefusal::WrongMachine);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, until| *until >= now);
        if seen.contains_key(&t.nonce) {
            return Err(TicketRefusal::Replayed);
        }
        if seen.len() >= MAX_REMEMBERED {
            return Err(TicketRefusal::Overloaded);
        }
        seen.insert(t.nonce.clone(), t.expires_at);
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(now: i64) -> ConsoleTicket {
        ConsoleTicket {
            user_id: 7,
            user: "ann".into(),
            role: Role::Member,
            member_group: Some("alpha".into()),
            token_prefix: "rs_abc".into(),
            source: "127.0.0.1:5000".into(),
            via: "websocket".into(),
            machine: "ma".into(),
            issuer: "b-1".into(),
            audience: "a-1".into(),
            expires_at: now + TICKET_TTL_MS,
            nonce: "n1".into(),
        }
    }

    #[test]
    fn a_ticket_opens_once_for_its_instance_and_machine() {
        let keys = TicketKeys::new([1; 32]);
        let sealed = keys.seal(&ticket(1000));
        assert_eq!(
            keys.open(&sealed, "a-2", "ma", 1000),
            Err(TicketRefusal::WrongAudience)
        );
        assert_eq!(
            keys.open(&sealed, "a-1", "mb", 1000),
            Err(TicketRefusal::WrongMachine)
        );
        assert_eq!(
            keys.open(&sealed, "a-1", "ma", 1000).map(|t| t.user),
            Ok("ann".into())
        );
        assert_eq!(
            keys.open(&sealed, "a-1", "ma", 1001),
            Err(TicketRefusal::Replayed)
        );
    }

    #[test]
    fn forged_tampered_and_expired_tickets_are_refused() {
        let keys = TicketKeys::new([1; 32]);
        let other = TicketKeys::new([2; 32]);
        let t = ticket(1000);
        assert_eq!(
            keys.open(&other.seal(&t), "a-1", "ma", 1000),
            Err(TicketRefusal::BadSignature)
        );
        // A staff role written into a member's ticket breaks its MAC.
        let sealed = keys.seal(&t);
        let (_, tag) = sealed.split_once('.').expect("dot");
        let mut raised = t.clone();
        raised.role = Role::Staff;
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&raised).expect("json"));
        assert_eq!(
            keys.open(&format!("{body}.{tag}"), "a-1", "ma", 1000),
            Err(TicketRefusal::BadSignature)
        );
        assert_eq!(
            keys.open("nonsense", "a-1", "ma", 1000),
            Err(TicketRefusal::Malformed)
        );
        assert_eq!(
            keys.open(&sealed, "a-1", "ma", 1000 + TICKET_TTL_MS + 1),
            Err(TicketRefusal::Expired)
        );
    }
}
