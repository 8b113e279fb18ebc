//! The HTTP surface. One file per resource; this file assembles the router.

mod agent;
mod boot;
pub(crate) mod boot_events;
pub(crate) mod capacity;
pub(crate) mod certificates;
pub(crate) mod dhcp;
pub(crate) mod events;
pub(crate) mod images;
pub(crate) mod jobs;
pub(crate) mod leases;
pub(crate) mod machines;
mod peer;
pub(crate) mod people;
pub(crate) mod power;
pub(crate) mod reports;
pub(crate) mod signin;
mod sites;
mod system;

use crate::state::AppState;
use crate::ApiError;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, delete, get, post, put};
use axum::Router;

/// The member-facing API: everything but boot files and the agent's endpoints, which only
/// the boot listeners serve ([`boot_router`]); here those paths are 404 like any unknown one.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(system::openapi))
        .route("/whoami", get(system::whoami))
        .route("/sites", get(sites::list_sites).post(sites::add_site))
        .route("/instances", get(sites::list_instances))
        .route("/racks", get(sites::list_racks).post(sites::add_rack))
        .route("/machines", get(machines::list).post(machines::create))
        .route(
            "/machines/{name}",
            get(machines::show)
                .patch(machines::update)
                .delete(machines::remove),
        )
        .route("/machines/{name}/state", post(machines::set_state))
        .route("/machines/{name}/console", get(crate::console::ws::console))
        .route(
            "/machines/{name}/power",
            get(power::status).post(power::power),
        )
        .route("/machines/{name}/power/reading", get(power::reading))
        .route("/machines/{name}/bootdev", post(power::bootdev))
        .route("/machines/{name}/inspect", post(power::inspect))
        .route("/machines/{name}/bmc/check", post(power::check_bmc))
        .route(
            "/images",
            // Our own size limit applies while streaming; axum's 2 MB default must not.
            get(images::list)
                .post(images::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/images/import", post(images::import))
        .route(
            "/images/{reference}",
            get(images::show).delete(images::remove),
        )
        .route("/images/{reference}/content", get(images::content))
        .route("/images/{reference}/prefetch", post(images::prefetch))
        .route("/peer/blobs/{sha256}", get(peer::blob))
        .route("/groups", get(people::list_groups).post(people::add_group))
        .route(
            "/groups/{name}",
            get(people::show_group).patch(people::update_group),
        )
        .route("/leases", get(leases::list).post(leases::create))
        .route("/leases/{id}", get(leases::show))
        .route("/leases/{id}/console-log", get(leases::console_log))
        .route("/leases/{id}/extend", post(leases::extend))
        .route("/leases/{id}/release", post(leases::release))
        .route("/leases/{id}/revoke", post(leases::revoke))
        .route("/lease-pool/held-back", get(leases::held_back))
        .route("/reports/usage", get(reports::usage))
        .route("/capacity", get(capacity::outlook))
        .route(
            "/lease-policy/idle-power-off",
            axum::routing::put(leases::set_idle_power_off),
        )
        .route(
            "/lease-policy",
            get(leases::show_policy).put(leases::set_policy),
        )
        .route(
            "/groups/{name}/quota",
            get(leases::show_quota).put(leases::set_quota),
        )
        .route(
            "/groups/{name}/webhook",
            get(leases::show_webhook).put(leases::set_webhook),
        )
        .route(
            "/groups/{name}/ssh-keys",
            get(leases::list_keys).post(leases::add_key),
        )
        .route(
            "/groups/{name}/ssh-keys/{fingerprint}",
            delete(leases::remove_key),
        )
        .route("/users", get(people::list_users).post(people::add_user))
        .route("/users/{name}", delete(people::delete_user))
        .route("/users/{name}/disable", post(people::disable_user))
        .route("/users/{name}/enable", post(people::enable_user))
        .route(
            "/users/{name}/ssh-keys",
            get(people::list_user_keys).post(people::add_user_key),
        )
        .route(
            "/users/{name}/ssh-keys/{fingerprint}",
            delete(people::remove_user_key),
        )
        .route(
            "/tokens",
            get(people::list_tokens).post(people::create_token),
        )
        .route("/tokens/{prefix}", delete(people::revoke_token))
        .route("/users/{name}/password", put(signin::set_password))
        .route("/users/{name}/password/reset", post(signin::reset_password))
        .route("/sessions", get(signin::list_sessions))
        .route("/sessions/{id}", delete(signin::revoke_session))
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/jobs/{id}/console", get(jobs::console))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/events", get(events::list))
        .route("/trust/key", get(certificates::key))
        .route("/certificates", get(certificates::list))
        .route("/certificates/{id}", get(certificates::download))
        .route("/dhcp/leases", get(dhcp::list_leases))
        .route(
            "/machines/{name}/boot-events",
            get(boot_events::for_machine),
        )
        .route("/boot-events", get(boot_events::for_mac))
        .route("/export", get(system::export))
        .route(
            "/import",
            // A whole cooperative's inventory is larger than axum's 2 MB default; the role
            // is checked before the body is read (`Gated`).
            post(system::import).layer(DefaultBodyLimit::max(system::IMPORT_MAX_BYTES)),
        );
    let app = Router::new()
        .route("/healthz", get(system::healthz))
        .nest("/api/v1", v1)
        .merge(crate::web::router());
    finish(state, app)
}

/// The metrics listener's one route (`--metrics-listen`, loopback by default): counters are
/// for the operator's scraper, not for members, so the member listener answers 404 for it.
pub fn metrics_router(state: AppState) -> Router {
    finish(state, Router::new().route("/metrics", get(system::metrics)))
}

/// What a boot interface's own address serves in plain HTTP: boot files and scripts, for the
/// firmware. The agent's endpoints answer 404 here with where they are (decision 40): nothing
/// the agent sends or receives crosses the boot network in clear.
pub fn boot_router(state: AppState, agent_https_port: u16) -> Router {
    let elsewhere = move || async move {
        ApiError::not_found(format!(
            "the agent API is served over HTTPS only, on port {agent_https_port} of this address, its certificate pinned by rackshare.pin= (docs/agent-protocol.md)"
        ))
    };
    let app = Router::new()
        .route("/boot/{file}", get(boot::boot_file))
        .route("/api/v1/agent/{*rest}", any(elsewhere));
    finish(state, app)
}

/// What a boot interface's HTTPS listener serves: the agent's endpoints only. Nothing a member
/// reaches is here, and nothing here is on the member listener.
pub fn agent_router(state: AppState) -> Router {
    let agent = Router::new()
        .route("/claim", post(agent::claim))
        .route("/image", get(agent::image))
        .route("/progress", post(agent::progress))
        .route("/challenge", post(agent::challenge))
        .route("/result", post(agent::result));
    finish(state, Router::new().nest("/api/v1/agent", agent))
}

/// The JSON fallbacks and the layers every listener's router has.
fn finish(state: AppState, app: Router<AppState>) -> Router {
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(crate::origin::track))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: format!("{} is not supported on {}", req.method(), req.uri().path()),
        field: None,
    }
}

/// Every error answer is the one JSON shape, also those a layer or an extractor of axum or
/// tower-http makes in plain text (a bad path segment, a range not satisfiable, …).
/// An error answer to a request with a body also closes the connection: the body may be
/// unread (a refusal before it, a 413), and the client must not queue its next request behind it.
async fn json_errors(req: Request, next: Next) -> Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let mut resp = next.run(req).await;
    let status = resp.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    // JSON errors stay as they are, and so do the dashboard's pages: an HTML error page
    // (a refused sign-in, a foreign machine's 404) is a whole answer for a person.
    let is_whole = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_whole {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // Such bodies are a line of text; anything longer is not worth relaying.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error");
    let code = reason.to_ascii_lowercase().replace([' ', '-'], "_");
    let message = if text.is_empty() {
        reason.to_string()
    } else {
        text
    };
    let mut out = axum::Json(serde_json::json!({"error": {"code": code, "message": message}}))
        .into_response();
    *out.status_mut() = status;
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            // Copied as is: Connection, Retry-After, Allow and the like stay.
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Headers every answer carries: no MIME sniffing, no referrer leaks, never framed. API
/// answers are JSON, so their CSP allows nothing; HTML pages set their own, stricter-than-default
/// one and this layer leaves it alone.
async fn security_headers(req: Request, next: Next) -> Response {
    use axum::http::{header, HeaderValue};
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    resp
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let resp = next.run(req).await;
    state.http_metrics.observe(&method, resp.status().as_u16());
    resp
}
