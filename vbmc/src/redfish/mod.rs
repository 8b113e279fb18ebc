//! The Redfish service: routes, authentication (HTTP Basic and X-Auth-Token sessions), and the
//! resources of one System, its Chassis and its Manager.

mod auth;
mod chassis;
mod system;

use auth::{authenticate, login, logout, session, session_service, sessions};
use chassis::{
    cd, eject_media, environment, get_chassis, insert_media, manager, media_collection, power,
};
use system::{drive, get_system, nic, nics, patch_system, reset, storage, storages};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::machine::{BootOverride, Machine, OverrideEnabled};
use crate::spec::BootTarget;
use crate::VbmcError;

const ROOT: &str = "/redfish/v1";
const CHASSIS: &str = "/redfish/v1/Chassis/1";
const MANAGER: &str = "/redfish/v1/Managers/1";
const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 32;
/// A session unused this long is gone.
const SESSION_TIMEOUT: Duration = Duration::from_secs(1800);
/// Request bodies are small JSON documents.
const MAX_BODY: usize = 64 * 1024;
const RESET_TYPES: [&str; 7] = [
    "On",
    "ForceOn",
    "ForceOff",
    "GracefulShutdown",
    "ForceRestart",
    "PowerCycle",
    "Nmi",
];

struct Session {
    id: String,
    user: String,
    last_used: Instant,
}

struct App {
    machine: Arc<Machine>,
    user: String,
    password: String,
    sessions: Mutex<HashMap<String, Session>>,
    /// The serial console's SSH port (on the Redfish address).
    console_ssh_port: u16,
}

type Shared = State<Arc<App>>;

/// The whole service for `machine`.
pub(crate) fn router(
    machine: Arc<Machine>,
    user: &str,
    password: &str,
    console_ssh_port: u16,
) -> Router {
    let app = Arc::new(App {
        machine,
        user: user.to_string(),
        password: password.to_string(),
        sessions: Mutex::new(HashMap::new()),
        console_ssh_port,
    });
    Router::new()
        .route("/redfish", get(versions))
        .route("/redfish/v1", get(service_root))
        .route("/redfish/v1/", get(service_root))
        .route("/redfish/v1/odata", get(odata))
        .route("/redfish/v1/Systems", get(systems))
        .route(
            "/redfish/v1/Systems/{id}",
            get(get_system).patch(patch_system),
        )
        .route(
            "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
            post(reset),
        )
        .route("/redfish/v1/Systems/{id}/EthernetInterfaces", get(nics))
        .route(
            "/redfish/v1/Systems/{id}/EthernetInterfaces/{nic}",
            get(nic),
        )
        .route("/redfish/v1/Systems/{id}/Storage", get(storages))
        .route("/redfish/v1/Systems/{id}/Storage/1", get(storage))
        .route(
            "/redfish/v1/Systems/{id}/Storage/1/Drives/{disk}",
            get(drive),
        )
        .route("/redfish/v1/Chassis", get(chassis_collection))
        .route(CHASSIS, get(get_chassis))
        .route("/redfish/v1/Chassis/1/Power", get(power))
        .route("/redfish/v1/Chassis/1/EnvironmentMetrics", get(environment))
        .route("/redfish/v1/Managers", get(managers))
        .route(MANAGER, get(manager))
        .route("/redfish/v1/Managers/1/VirtualMedia", get(media_collection))
        .route("/redfish/v1/Managers/1/VirtualMedia/Cd", get(cd))
        .route(
            "/redfish/v1/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia",
            post(insert_media),
        )
        .route(
            "/redfish/v1/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia",
            post(eject_media),
        )
        .route("/redfish/v1/SessionService", get(session_service))
        .route(SESSIONS, get(sessions).post(login))
        .route(
            "/redfish/v1/SessionService/Sessions/{sid}",
            get(session).delete(logout),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .layer(middleware::from_fn(odata_headers))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

// ---- errors ------------------------------------------------------------------------------------

/// A Redfish error: status, and a Base message registry id with its message.
struct RfError {
    status: StatusCode,
    id: &'static str,
    message: String,
}

impl RfError {
    fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        RfError {
            status,
            id,
            message: message.into(),
        }
    }
    fn bad(id: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, id, message)
    }
}

impl From<VbmcError> for RfError {
    fn from(e: VbmcError) -> Self {
        let status = match e {
            VbmcError::PoweredOff => StatusCode::CONFLICT,
            VbmcError::BadMedia { .. } | VbmcError::NoCdDrive => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        RfError::new(status, "GeneralError", e.to_string())
    }
}

impl IntoResponse for RfError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "code": format!("Base.1.8.{}", self.id),
                "message": self.message,
                "@Message.ExtendedInfo": [{
                    "@odata.type": "#Message.v1_1_1.Message",
                    "MessageId": format!("Base.1.8.{}", self.id),
                    "Message": self.message,
                    "Severity": if self.status.is_server_error() { "Critical" } else { "Warning" },
                    "Resolution": "See the message.",
                }],
            }
        });
        (self.status, Json(body)).into_response()
    }
}

/// The request body as a JSON object, or a Redfish MalformedJSON error.
fn body_object(body: &Bytes) -> Result<Map<String, Value>, RfError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(RfError::bad(
            "MalformedJSON",
            "the body must be a JSON object",
        )),
        Err(e) => Err(RfError::bad("MalformedJSON", format!("invalid JSON: {e}"))),
    }
}

type RfResult = Result<Response, RfError>;

fn ok(v: Value) -> RfResult {
    Ok(Json(v).into_response())
}

async fn not_found(uri: axum::http::Uri) -> RfError {
    RfError::new(
        StatusCode::NOT_FOUND,
        "ResourceMissingAtURI",
        format!("no resource at {}", uri.path()),
    )
}

/// OData-Version on every response, and Allow (what the resource takes) as Redfish asks.
async fn odata_headers(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let allow = if path.contains("/Actions/") {
        "POST"
    } else if path == SESSIONS {
        "GET, POST"
    } else if path.starts_with(SESSIONS) {
        "GET, DELETE"
    } else if path.starts_with("/redfish/v1/Systems/") && path.matches('/').count() == 4 {
        "GET, PATCH"
    } else {
        "GET"
    };
    let h = resp.headers_mut();
    h.insert("OData-Version", HeaderValue::from_static("4.0"));
    h.insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

// ---- service root and collections --------------------------------------------------------------

fn link(path: &str) -> Value {
    json!({ "@odata.id": path })
}

fn collection(path: &str, kind: &str, name: &str, members: &[String]) -> Value {
    json!({
        "@odata.id": path,
        "@odata.type": format!("#{kind}.{kind}"),
        "Name": name,
        "Members": members.iter().map(|m| link(m)).collect::<Vec<_>>(),
        "Members@odata.count": members.len(),
    })
}

fn status_ok() -> Value {
    json!({ "State": "Enabled", "Health": "OK" })
}

async fn versions() -> RfResult {
    ok(json!({ "v1": "/redfish/v1/" }))
}

async fn odata() -> RfResult {
    let names = ["Systems", "Chassis", "Managers", "SessionService"];
    let value: Vec<Value> = names
        .iter()
        .map(|n| json!({ "name": n, "kind": "Singleton", "url": format!("{ROOT}/{n}") }))
        .collect();
    ok(json!({ "@odata.context": "/redfish/v1/$metadata", "value": value }))
}

async fn service_root(State(app): Shared) -> RfResult {
    ok(json!({
        "@odata.id": "/redfish/v1/",
        "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
        "Id": "RootService",
        "Name": "rackshare virtual BMC",
        "RedfishVersion": "1.11.0",
        "UUID": app.machine.spec.uuid,
        "Systems": link("/redfish/v1/Systems"),
        "Chassis": link("/redfish/v1/Chassis"),
        "Managers": link("/redfish/v1/Managers"),
        "SessionService": link("/redfish/v1/SessionService"),
        "Links": { "Sessions": link(SESSIONS) },
    }))
}

async fn systems(State(app): Shared) -> RfResult {
    ok(collection(
        "/redfish/v1/Systems",
        "ComputerSystemCollection",
        "Computer Systems",
        &[app.system_path()],
    ))
}

async fn chassis_collection() -> RfResult {
    ok(collection(
        "/redfish/v1/Chassis",
        "ChassisCollection",
        "Chassis",
        &[CHASSIS.to_string()],
    ))
}

async fn managers() -> RfResult {
    ok(collection(
        "/redfish/v1/Managers",
        "ManagerCollection",
        "Managers",
        &[MANAGER.to_string()],
    ))
}
