//! `GET /api/v1/machines/{name}/console`: a console viewer over a WebSocket (the wire is in
//! the README's consoles section). Binary frames carry bytes both ways (the replay first);
//! text frames are JSON control messages.

use super::route::ConsoleRoute;
use super::ticket::{TicketRefusal, TICKET_HEADER};
use super::{ConsoleEvent, ConsoleViewer};
use crate::auth::Caller;
use crate::state::AppState;
use crate::web::session::{same_token, Visitor};
use crate::ApiError;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::response::{IntoResponse, Response};
use inventory::{AuditOrigin, AuditOutcome, NewAuditEvent};
use serde::Deserialize;

/// A client's control message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientControl {
    Take,
    Give,
}

/// The upgrade: a bearer token, or the web session's cookie with `?csrf=TOKEN` (a browser
/// cannot set headers on a WebSocket, and the CSRF token shows the page asked).
pub async fn console(
    State(st): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    if let Some(ticket) = parts.headers.get(TICKET_HEADER).cloned() {
        return ticketed(st, name, parts, ticket).await;
    }
    let caller = if parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        match Caller::from_request_parts(&mut parts, &st).await {
            Ok(c) => c,
            Err(r) => return r,
        }
    } else {
        let csrf = parts.uri.query().and_then(|q| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                .ok()?
                .into_iter()
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v)
        });
        match Visitor::from_request_parts(&mut parts, &st).await {
            Ok(v) if csrf.is_some_and(|t| same_token(&t, &v.session.csrf_token)) => v.caller,
            Ok(v) => {
                let path = parts.uri.path().to_string();
                return crate::web::session::refuse_csrf(
                    &st,
                    v.caller.name(),
                    v.caller.0.member_group.clone(),
                    &path,
                )
                .await;
            }
            Err(_) => return ApiError::unauthenticated(
                "the console needs 'Authorization: Bearer TOKEN', or a web session and ?csrf=TOKEN",
            )
            .into_response(),
        }
    };
    // Who may is answered before the upgrade: a refusal is the usual JSON error.
    if let Err(e) = st.consoles.admit(&st, &name, &caller.0, "websocket").await {
        return e.into_response();
    }
    // The instance of the machine's site brokers it; elsewhere the request is proxied there.
    let route = match st.console_routing.route(&st.inv, &name).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &st).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    match route {
        ConsoleRoute::Local => {}
        ConsoleRoute::Peers { site, peers } => {
            return match super::proxy::open(&st, &caller.0, "websocket", &name, &site, &peers).await
            {
                Ok(link) => upgrade.on_upgrade(move |socket| super::proxy::relay(socket, link)),
                Err(e) => e.into_response(),
            };
        }
    }
    let viewer = match st.consoles.attach(&st, &name, &caller.0, "websocket").await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    upgrade.on_upgrade(move |socket| carry(socket, viewer))
}

/// A console proxied from another instance: the ticket names the person, who is then let in
/// (or not) by the same rule as anyone here. Refused tickets are audited as `console.ticket`.
async fn ticketed(
    st: AppState,
    name: String,
    mut parts: axum::http::request::Parts,
    ticket: axum::http::HeaderValue,
) -> Response {
    let peer = AuditOrigin::current().source.unwrap_or_default();
    let routing = &st.console_routing;
    let opened = ticket
        .to_str()
        .map_err(|_| TicketRefusal::Malformed)
        .and_then(|t| {
            routing
                .tickets
                .open(t, &routing.instance_id, &name, inventory::now_ms())
        });
    let ticket = match opened {
        Ok(t) => t,
        Err(refusal) => {
            let ev = NewAuditEvent::ok("-", "console.ticket", "machine", &name)
                .outcome(AuditOutcome::Denied)
                .machine(Some(name.clone()))
                .detail(serde_json::json!({"reason": refusal.to_string(), "from": peer}));
            super::audit(&st.inv, AuditOrigin::current(), ev).await;
            return ApiError::unauthenticated(refusal.to_string()).into_response();
        }
    };
    let owner = ticket.owner();
    let via = format!("{} via instance {}", ticket.via, ticket.issuer);
    // Events name the person's own address and credential, and the instance it came through.
    let origin = AuditOrigin {
        source: Some(format!("{} via {peer}", ticket.source)),
        token_prefix: Some(owner.token_prefix.clone()),
    };
    origin
        .scope(async move {
            if let Err(e) = st.consoles.admit(&st, &name, &owner, &via).await {
                return e.into_response();
            }
            // A ticket is for the instance that serves the machine: never proxied on.
            match st.console_routing.route(&st.inv, &name).await {
                Ok(ConsoleRoute::Local) => {}
                Ok(ConsoleRoute::Peers { site, .. }) => {
                    return ApiError {
                        status: axum::http::StatusCode::CONFLICT,
                        code: "other_site",
                        message: format!("machine '{name}' is at site '{site}', not served here"),
                        field: Some("site".into()),
                    }
                    .into_response()
                }
                Err(e) => return e.into_response(),
            }
            let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &st).await {
                Ok(u) => u,
                Err(r) => return r.into_response(),
            };
            match st.consoles.attach(&st, &name, &owner, &via).await {
                Ok(viewer) => upgrade.on_upgrade(move |socket| carry(socket, viewer)),
                Err(e) => e.into_response(),
            }
        })
        .await
}

fn control_text(value: serde_json::Value) -> Message {
    Message::Text(value.to_string().into())
}

/// Carries the viewer's events to the socket and the socket's frames to the viewer until
/// either side ends.
async fn carry(mut socket: WebSocket, mut viewer: ConsoleViewer) {
    let replay = viewer.replay();
    if !replay.is_empty() && socket.send(Message::Binary(replay)).await.is_err() {
        return;
    }
    let first =
        control_text(serde_json::json!({"type": "control", "writer": viewer.writer_at_join()}));
    if socket.send(first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            ev = viewer.next() => {
                let msg = match ev {
                    Some(ConsoleEvent::Output(b)) => Message::Binary(b),
                    Some(ConsoleEvent::Control { writer }) => {
                        control_text(serde_json::json!({"type": "control", "writer": writer}))
                    }
                    Some(ConsoleEvent::Closed { reason }) => {
                        let closing = control_text(serde_json::json!({"type": "closed", "reason": reason}));
                        let _peer_may_be_gone = socket.send(closing).await;
                        let _peer_may_be_gone = socket.send(Message::Close(None)).await;
                        return;
                    }
                    None => return,
                };
                if socket.send(msg).await.is_err() {
                    return;
                }
            }
            frame = socket.recv() => {
                let refusal = match frame {
                    Some(Ok(Message::Binary(keys))) => viewer.input(&keys).await.err(),
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientControl>(&text) {
                        Ok(ClientControl::Take) => viewer.take_control().err(),
                        Ok(ClientControl::Give) => {
                            viewer.give_control();
                            None
                        }
                        Err(_) => {
                            let msg = control_text(serde_json::json!({
                                "type": "error",
                                "message": "a text frame must be {\"type\":\"take\"} or {\"type\":\"give\"}",
                            }));
                            if socket.send(msg).await.is_err() {
                                return;
                            }
                            None
                        }
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => None,
                };
                if let Some(r) = refusal {
                    let msg = control_text(serde_json::json!({"type": "error", "message": r.to_string()}));
                    if socket.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
