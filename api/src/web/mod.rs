//! The web dashboard: HTML rendered on the server from embedded minijinja templates, one
//! embedded stylesheet, a few small scripts of our own and vendored xterm.js (`assets.rs`),
//! none needed to use a page but the console's (decision 34). Served at `/` on the member listener beside
//! `/api/v1`. Pages act as the signed-in person through the API's own handlers, so nothing is
//! possible in a browser that the API forbids; sign-in, sessions and CSRF live in
//! `session.rs` and `login.rs`.

mod assets;
mod certificates;
mod console;
mod login;
mod member;
mod member_images;
mod member_keys;
mod reimage;
mod render;
pub(crate) mod session;
mod staff;
mod staff_dhcp;
mod staff_groups;
mod staff_jobs;
mod staff_machines;
mod staff_ops;
mod tokens;

use crate::state::AppState;
use axum::routing::{get, post};
use axum::Router;
use inventory::SessionLifetime;
use serde::Serialize;
use tower_http::compression::CompressionLayer;

/// What the pages need beyond the API's state.
#[derive(Debug)]
pub struct WebState {
    /// The member listener speaks TLS: session cookies get `Secure`.
    pub tls: bool,
    /// Idle and absolute lifetime of a session.
    pub lifetime: SessionLifetime,
    /// The port of `serve --console-ssh-listen`, for the console page's ssh line (None: the
    /// page says PORT).
    pub console_ssh_port: Option<u16>,
}

/// A session ends after 30 minutes without a request…
pub const DEFAULT_IDLE_MS: i64 = 30 * 60_000;
/// …and 12 hours after sign-in in any case.
pub const DEFAULT_ABSOLUTE_MS: i64 = 12 * 3_600_000;

impl WebState {
    /// The pages' state; `tls`: whether the member listener serves TLS.
    pub fn new(tls: bool, lifetime: SessionLifetime) -> Self {
        WebState {
            tls,
            lifetime,
            console_ssh_port: None,
        }
    }
}

impl Default for WebState {
    fn default() -> Self {
        WebState::new(
            false,
            SessionLifetime {
                idle_ms: DEFAULT_IDLE_MS,
                absolute_ms: DEFAULT_ABSOLUTE_MS,
            },
        )
    }
}

/// The signed-in person as every page's header shows them, with the form token.
#[derive(Serialize)]
struct Me {
    name: String,
    role: String,
    group: Option<String>,
    staff: bool,
    csrf: String,
}

impl Me {
    fn of(v: &session::Visitor) -> Me {
        Me {
            name: v.caller.name().to_string(),
            role: v.caller.role().as_str().to_string(),
            group: v.caller.0.member_group.clone(),
            staff: v.caller.sees_bmc_details(),
            csrf: v.session.csrf_token.clone(),
        }
    }
}

/// The pages' routes (merged into the member listener's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(member::overview))
        .route("/login", get(login::show).post(login::submit))
        .route("/logout", post(login::logout))
        .route(
            "/password",
            get(login::password_page).post(login::change_password),
        )
        .route("/sessions", get(login::sessions))
        .route("/sessions/{id}/revoke", post(login::revoke))
        .route("/leases/new", get(member::new_lease))
        .route("/leases", post(member::create_lease))
        .route("/leases/{id}/extend", post(member::extend_lease))
        .route("/leases/{id}/release", post(member::release_lease))
        .route("/machines/{name}", get(member::machine))
        .route(
            "/machines/{name}/power",
            get(member::confirm_power).post(member::power_action),
        )
        .route(
            "/machines/{name}/reimage",
            get(reimage::form).post(reimage::start),
        )
        .route("/jobs/{id}", get(reimage::progress))
        .route("/jobs", get(staff_jobs::list))
        .route(
            "/jobs/{id}/cancel",
            get(staff_jobs::confirm_cancel).post(staff_jobs::cancel),
        )
        .route(
            "/machines/new",
            get(staff_machines::new_form).post(staff_machines::enrol),
        )
        .route(
            "/machines/{name}/edit",
            get(staff_machines::edit_form).post(staff_machines::edit),
        )
        .route("/machines/{name}/bmc-check", post(staff_machines::check))
        .route("/fleet", get(staff::fleet))
        .route("/ledger", get(member::ledger))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{prefix}/revoke", post(tokens::revoke))
        .route("/machines/{name}/timeline", get(staff::machine_timeline))
        .route("/machines/{name}/state", post(staff::change_state))
        .route("/users", get(staff::users))
        .route("/dhcp-leases", get(staff_dhcp::leases))
        .route(
            "/users/{name}/password",
            post(staff::set_temporary_password),
        )
        .route("/users/{name}/reset", post(staff::reset_password))
        .route("/static/{*path}", get(assets::asset))
        .route("/keys", get(member_keys::list).post(member_keys::add))
        .route("/keys/remove", post(member_keys::remove))
        .route(
            "/images",
            // The store's own limit applies while streaming; axum's 2 MB default must not.
            get(member_images::list)
                .post(member_images::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/machines/{name}/console", get(console::page))
        .route("/certificates", get(certificates::list))
        .route("/certificates/{id}", get(certificates::show))
        .route("/certificates/{id}/download", get(certificates::download))
        .merge(staff_pages_ii())
        // Pages are gzipped as they are sent; static assets come precompressed (assets.rs)
        // and keep their own Content-Encoding, which this layer leaves alone.
        .layer(CompressionLayer::new())
}

/// Groups against quota, lease policy, BMC health, energy per month, capacity.
fn staff_pages_ii() -> Router<AppState> {
    Router::new()
        .route("/groups", get(staff_groups::list))
        .route("/groups/{name}", get(staff_groups::show))
        .route("/groups/{name}/quota", post(staff_groups::set_quota))
        .route(
            "/policy",
            get(staff_ops::policy).post(staff_ops::set_max_length),
        )
        .route("/policy/idle-power-off", post(staff_ops::set_idle))
        .route("/bmc-health", get(staff_ops::bmc_health))
        .route("/energy", get(staff_ops::energy))
        .route("/capacity", get(staff_ops::capacity))
}
