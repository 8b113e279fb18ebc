//! The HTTP surface. One file per resource; this file assembles the router.

mod agent;
mod boot;
mod certificates;
mod dhcp;
mod events;
pub(crate) mod images;
mod jobs;
mod leases;
pub(crate) mod machines;
mod people;
mod power;
mod sites;
mod system;

use crate::state::AppState;
use crate::ApiError;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, delete, get, post};
use axum::Router;

/// The member-facing API: everything but boot files and the agent's endpoints, which only
/// the boot listeners serve ([`boot_router`]); here those paths are 404 like any unknown one.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(system::openapi))
        .route("/whoami", get(system::whoami))
        .route("/sites", get(sites::list_sites).post(sites::add_site))
        .route("/racks", get(sites::list_racks).post(sites::add_rack))
        .route("/machines", get(machines::list).post(machines::create))
        .route(
            "/machines/{name}",
            get(machines::show)
                .patch(machines::update)
                .delete(machines::remove),
        )
        .route("/machines/{name}/state", post(machines::set_state))
        .route(
            "/machines/{name}/power",
            get(power::status).post(power::power),
        )
        .route("/machines/{name}/power/reading", get(power::reading))
        .route("/machines/{name}/bootdev", post(power::bootdev))
        .route("/machines/{name}/inspect", post(power::inspect))
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
        .route("/groups", get(people::list_groups).post(people::add_group))
        .route(
            "/groups/{name}",
            get(people::show_group).patch(people::update_group),
        )
        .route("/leases", get(leases::list).post(leases::create))
        .route("/leases/{id}", get(leases::show))
        .route("/leases/{id}/extend", post(leases::extend))
        .route("/leases/{id}/release", post(leases::release))
        .route("/leases/{id}/revoke", post(leases::revoke))
        .route(
            "/lease-policy",
            get(leases::show_policy).put(leases::set_policy),
        )
        .route(
            "/groups/{name}/quota",
            get(leases::show_quota).put(leases::set_quota),
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
        .route(
            "/tokens",
            get(people::list_tokens).post(people::create_token),
        )
        .route("/tokens/{prefix}", delete(people::revoke_token))
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/events", get(events::list))
        .route("/trust/key", get(certificates::key))
        .route("/certificates/{id}", get(certificates::download))
        .route("/dhcp/leases", get(dhcp::list_leases))
        .route("/export", get(system::export))
        .route(
            "/import",
            // A whole cooperative's inventory is larger than axum's 2 MB default.
            post(system::import).layer(DefaultBodyLimit::max(512 * 1024 * 1024)),
        );
    let app = Router::new()
        .route("/healthz", get(system::healthz))
        .nest("/api/v1", v1);
    finish(state, app)
}

/// The metrics listener's one route (`--metrics-listen`, loopback by default): counters are
/// for the operator's scraper, not for members, so the member listener answers 404 for it.
pub fn metrics_router(state: AppState) -> Router {
    finish(state, Router::new().route("/metrics", get(system::metrics)))
}

/// What a boot interface's own address serves in plain HTTP: boot files and scripts, for the
/// firmware. The agent's endpoints answer 404 here with where they are (decision 33): nothing
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
        .layer(middleware::from_fn(security_headers))
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
