//! The Redfish service: routes, authentication (HTTP Basic and X-Auth-Token sessions), and the
//! resources of one System, its Chassis and its Manager.

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
}

type Shared = State<Arc<App>>;

/// The whole service for `machine`.
pub(crate) fn router(machine: Arc<Machine>, user: &str, password: &str) -> Router {
    let app = Arc::new(App {
        machine,
        user: user.to_string(),
        password: password.to_string(),
        sessions: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/redfish", get(versions))
        .route("/redfish/v1", get(service_root))
        .route("/redfish/v1/", get(service_root))
        .route("/redfish/v1/odata", get(odata))
        .route("/redfish/v1/Systems", get(systems))
        .route("/redfish/v1/Systems/{id}", get(system).patch(patch_system))
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
        .route(CHASSIS, get(chassis))
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

// ---- authentication ----------------------------------------------------------------------------

fn is_public(method: &Method, path: &str) -> bool {
    matches!(
        path,
        "/redfish" | "/redfish/" | "/redfish/v1" | "/redfish/v1/" | "/redfish/v1/odata"
    ) || (method == Method::POST && path == SESSIONS)
}

async fn authenticate(State(app): Shared, req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path()) || app.authorized(req.headers()) {
        return next.run(req).await;
    }
    let mut resp = RfError::new(
        StatusCode::UNAUTHORIZED,
        "NoValidSession",
        "authentication required: HTTP Basic or an X-Auth-Token from SessionService/Sessions",
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"rackshare-vbmc\""),
    );
    resp
}

/// Equal-time comparison, so a wrong password's timing says nothing about the right one.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl App {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        if let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
            let mut sessions = self.lock_sessions();
            if let Some(s) = sessions.get_mut(token) {
                s.last_used = Instant::now();
                return true;
            }
            return false;
        }
        let Some(basic) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        let Ok(pair) = String::from_utf8(decoded) else {
            return false;
        };
        match pair.split_once(':') {
            Some((u, p)) => self.credentials_match(u, p),
            None => false,
        }
    }

    fn credentials_match(&self, user: &str, password: &str) -> bool {
        // Both compared, always, so the time does not tell which one was wrong.
        same(user, &self.user) & same(password, &self.password)
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, v| v.last_used.elapsed() < SESSION_TIMEOUT);
        s
    }

    fn system_path(&self) -> String {
        format!("{ROOT}/Systems/{}", self.machine.spec.name)
    }

    /// 404 unless `id` is this vBMC's System.
    fn check_system(&self, id: &str) -> Result<String, RfError> {
        if id == self.machine.spec.name {
            Ok(self.system_path())
        } else {
            Err(RfError::new(
                StatusCode::NOT_FOUND,
                "ResourceMissingAtURI",
                format!("no System {id}"),
            ))
        }
    }
}

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

async fn login(State(app): Shared, body: Bytes) -> RfResult {
    let b = body_object(&body)?;
    let (Some(user), Some(password)) = (
        b.get("UserName").and_then(Value::as_str),
        b.get("Password").and_then(Value::as_str),
    ) else {
        return Err(RfError::bad(
            "PropertyMissing",
            "UserName and Password are required",
        ));
    };
    if !app.credentials_match(user, password) {
        return Err(RfError::new(
            StatusCode::UNAUTHORIZED,
            "NoValidSession",
            "wrong user name or password",
        ));
    }
    let token = hex::encode(rand::random::<[u8; 24]>());
    let id = hex::encode(rand::random::<[u8; 8]>());
    {
        let mut sessions = app.lock_sessions();
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            token.clone(),
            Session {
                id: id.clone(),
                user: user.to_string(),
                last_used: Instant::now(),
            },
        );
    }
    let location = format!("{SESSIONS}/{id}");
    let mut resp = (StatusCode::CREATED, Json(session_json(&id, user))).into_response();
    let h = resp.headers_mut();
    if let (Ok(t), Ok(l)) = (
        HeaderValue::from_str(&token),
        HeaderValue::from_str(&location),
    ) {
        h.insert("X-Auth-Token", t);
        h.insert(header::LOCATION, l);
    }
    Ok(resp)
}

fn session_json(id: &str, user: &str) -> Value {
    json!({
        "@odata.id": format!("{SESSIONS}/{id}"),
        "@odata.type": "#Session.v1_3_0.Session",
        "Id": id,
        "Name": "User session",
        "UserName": user,
    })
}

async fn session(State(app): Shared, Path(sid): Path<String>) -> RfResult {
    let sessions = app.lock_sessions();
    match sessions.values().find(|s| s.id == sid) {
        Some(s) => ok(session_json(&s.id, &s.user)),
        None => Err(RfError::new(
            StatusCode::NOT_FOUND,
            "ResourceMissingAtURI",
            format!("no session {sid}"),
        )),
    }
}

async fn logout(State(app): Shared, Path(sid): Path<String>) -> RfResult {
    let mut sessions = app.lock_sessions();
    let before = sessions.len();
    sessions.retain(|_, s| s.id != sid);
    if sessions.len() == before {
        return Err(RfError::new(
            StatusCode::NOT_FOUND,
            "ResourceMissingAtURI",
            format!("no session {sid}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn sessions(State(app): Shared) -> RfResult {
    let ids: Vec<String> = app
        .lock_sessions()
        .values()
        .map(|s| format!("{SESSIONS}/{}", s.id))
        .collect();
    ok(collection(SESSIONS, "SessionCollection", "Sessions", &ids))
}

async fn session_service() -> RfResult {
    ok(json!({
        "@odata.id": "/redfish/v1/SessionService",
        "@odata.type": "#SessionService.v1_1_8.SessionService",
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": true,
        "SessionTimeout": SESSION_TIMEOUT.as_secs(),
        "Sessions": { "@odata.id": SESSIONS },
    }))
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

// ---- the System --------------------------------------------------------------------------------

fn target_name(t: Option<BootTarget>) -> &'static str {
    match t {
        None => "None",
        Some(BootTarget::Pxe) => "Pxe",
        Some(BootTarget::Hdd) => "Hdd",
        Some(BootTarget::Cd) => "Cd",
    }
}

fn enabled_name(e: OverrideEnabled) -> &'static str {
    match e {
        OverrideEnabled::Disabled => "Disabled",
        OverrideEnabled::Once => "Once",
        OverrideEnabled::Continuous => "Continuous",
    }
}

impl App {
    fn allowed_targets(&self) -> Vec<&'static str> {
        let mut t = vec!["None", "Pxe", "Hdd"];
        if self.machine.spec.cd_drive {
            t.push("Cd");
        }
        t
    }

    async fn system_json(&self) -> Value {
        let spec = &self.machine.spec;
        let path = self.system_path();
        let on = self.machine.is_on().await;
        let boot = self.machine.boot_override().await;
        let mode = spec.firmware.boot_mode();
        json!({
            "@odata.id": path,
            "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
            "Id": spec.name,
            "Name": spec.name,
            "SystemType": "Virtual",
            "Manufacturer": "QEMU",
            "Model": "Standard PC (i440FX + PIIX, 1996)",
            "SerialNumber": spec.uuid,
            "UUID": spec.uuid,
            "PowerState": if on { "On" } else { "Off" },
            "Status": status_ok(),
            "Boot": {
                "BootSourceOverrideTarget": target_name(boot.target),
                "BootSourceOverrideTarget@Redfish.AllowableValues": self.allowed_targets(),
                "BootSourceOverrideEnabled": enabled_name(boot.enabled),
                "BootSourceOverrideEnabled@Redfish.AllowableValues": ["Disabled", "Once", "Continuous"],
                "BootSourceOverrideMode": mode,
                "BootSourceOverrideMode@Redfish.AllowableValues": [mode],
            },
            "ProcessorSummary": {
                "Count": spec.vcpus,
                "Model": "QEMU Virtual CPU",
                "Status": status_ok(),
            },
            "MemorySummary": {
                "TotalSystemMemoryGiB": f64::from(spec.memory_mib) / 1024.0,
                "Status": status_ok(),
            },
            "EthernetInterfaces": link(&format!("{path}/EthernetInterfaces")),
            "Storage": link(&format!("{path}/Storage")),
            "Links": {
                "Chassis": [link(CHASSIS)],
                "ManagedBy": [link(MANAGER)],
            },
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": format!("{path}/Actions/ComputerSystem.Reset"),
                    "ResetType@Redfish.AllowableValues": RESET_TYPES,
                }
            },
        })
    }
}

async fn system(State(app): Shared, Path(id): Path<String>) -> RfResult {
    app.check_system(&id)?;
    ok(app.system_json().await)
}

/// Properties of a System that exist but are not writable here.
const READ_ONLY: [&str; 16] = [
    "Id",
    "Name",
    "SystemType",
    "Manufacturer",
    "Model",
    "SerialNumber",
    "UUID",
    "PowerState",
    "Status",
    "ProcessorSummary",
    "MemorySummary",
    "EthernetInterfaces",
    "Storage",
    "Links",
    "Actions",
    "Description",
];

async fn patch_system(State(app): Shared, Path(id): Path<String>, body: Bytes) -> RfResult {
    app.check_system(&id)?;
    let b = body_object(&body)?;
    let mut boot = app.machine.boot_override().await;
    for (key, value) in &b {
        if key != "Boot" {
            if READ_ONLY.contains(&key.as_str()) || key.starts_with("@odata") {
                return Err(RfError::bad(
                    "PropertyNotWritable",
                    format!("the property {key} is read-only"),
                ));
            }
            return Err(RfError::bad(
                "PropertyUnknown",
                format!("the property {key} is not in the ComputerSystem resource"),
            ));
        }
        let Value::Object(fields) = value else {
            return Err(RfError::bad(
                "PropertyValueTypeError",
                "Boot must be an object",
            ));
        };
        for (field, v) in fields {
            let s = v.as_str().ok_or_else(|| {
                RfError::bad(
                    "PropertyValueTypeError",
                    format!("Boot/{field} must be a string"),
                )
            })?;
            let not_in_list = || {
                RfError::bad(
                    "PropertyValueNotInList",
                    format!("{s} is not an allowed value of Boot/{field}"),
                )
            };
            match field.as_str() {
                "BootSourceOverrideTarget" => {
                    if !app.allowed_targets().contains(&s) {
                        return Err(not_in_list());
                    }
                    boot.target = match s {
                        "Pxe" => Some(BootTarget::Pxe),
                        "Hdd" => Some(BootTarget::Hdd),
                        "Cd" => Some(BootTarget::Cd),
                        _ => None,
                    };
                }
                "BootSourceOverrideEnabled" => {
                    boot.enabled = match s {
                        "Disabled" => OverrideEnabled::Disabled,
                        "Once" => OverrideEnabled::Once,
                        "Continuous" => OverrideEnabled::Continuous,
                        _ => return Err(not_in_list()),
                    };
                }
                "BootSourceOverrideMode" => {
                    // The mode is the firmware's: a VM does not switch between BIOS and UEFI.
                    if s != app.machine.spec.firmware.boot_mode() {
                        return Err(not_in_list());
                    }
                }
                _ => {
                    return Err(RfError::bad(
                        "PropertyUnknown",
                        format!("the property Boot/{field} is not supported"),
                    ))
                }
            }
        }
    }
    app.machine
        .set_boot_override(BootOverride {
            target: boot.target,
            enabled: boot.enabled,
        })
        .await;
    ok(app.system_json().await)
}

async fn reset(State(app): Shared, Path(id): Path<String>, body: Bytes) -> RfResult {
    app.check_system(&id)?;
    let b = body_object(&body)?;
    let Some(kind) = b.get("ResetType").and_then(Value::as_str) else {
        return Err(RfError::bad(
            "ActionParameterMissing",
            "ResetType is required",
        ));
    };
    if let Some(other) = b.keys().find(|k| *k != "ResetType") {
        return Err(RfError::bad(
            "ActionParameterUnknown",
            format!("unknown parameter {other}"),
        ));
    }
    let m = &app.machine;
    let result = match kind {
        "On" | "ForceOn" => m.power_on().await,
        "ForceOff" => m.force_off().await,
        "GracefulShutdown" => match m.graceful_shutdown().await {
            // Already off is what was asked for.
            Err(VbmcError::PoweredOff) => Ok(()),
            r => r,
        },
        "ForceRestart" => m.force_restart().await,
        "PowerCycle" => m.power_cycle().await,
        "Nmi" => m.nmi().await,
        _ => {
            return Err(RfError::bad(
                "ActionParameterNotSupported",
                format!("ResetType {kind} is not one of {}", RESET_TYPES.join(", ")),
            ))
        }
    };
    result?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn nics(State(app): Shared, Path(id): Path<String>) -> RfResult {
    let path = app.check_system(&id)?;
    let base = format!("{path}/EthernetInterfaces");
    let members: Vec<String> = (0..app.machine.spec.nics.len())
        .map(|i| format!("{base}/nic{i}"))
        .collect();
    ok(collection(
        &base,
        "EthernetInterfaceCollection",
        "Ethernet Interfaces",
        &members,
    ))
}

fn index_of(name: &str, prefix: &str, len: usize) -> Result<usize, RfError> {
    name.strip_prefix(prefix)
        .and_then(|i| i.parse::<usize>().ok())
        .filter(|i| *i < len)
        .ok_or_else(|| {
            RfError::new(
                StatusCode::NOT_FOUND,
                "ResourceMissingAtURI",
                format!("no {name}"),
            )
        })
}

async fn nic(State(app): Shared, Path((id, nic)): Path<(String, String)>) -> RfResult {
    let path = app.check_system(&id)?;
    let i = index_of(&nic, "nic", app.machine.spec.nics.len())?;
    let mac = &app.machine.spec.nics[i].mac;
    let on = app.machine.is_on().await;
    ok(json!({
        "@odata.id": format!("{path}/EthernetInterfaces/{nic}"),
        "@odata.type": "#EthernetInterface.v1_6_0.EthernetInterface",
        "Id": nic,
        "Name": format!("virtio-net {i}"),
        "MACAddress": mac,
        "PermanentMACAddress": mac,
        "InterfaceEnabled": true,
        "LinkStatus": if on { "LinkUp" } else { "LinkDown" },
        "Status": status_ok(),
    }))
}

async fn storages(State(app): Shared, Path(id): Path<String>) -> RfResult {
    let path = app.check_system(&id)?;
    ok(collection(
        &format!("{path}/Storage"),
        "StorageCollection",
        "Storage",
        &[format!("{path}/Storage/1")],
    ))
}

async fn storage(State(app): Shared, Path(id): Path<String>) -> RfResult {
    let path = app.check_system(&id)?;
    let drives: Vec<Value> = (0..app.machine.spec.disks.len())
        .map(|i| link(&format!("{path}/Storage/1/Drives/disk{i}")))
        .collect();
    ok(json!({
        "@odata.id": format!("{path}/Storage/1"),
        "@odata.type": "#Storage.v1_9_0.Storage",
        "Id": "1",
        "Name": "Local storage",
        "Drives@odata.count": drives.len(),
        "Drives": drives,
        "Status": status_ok(),
    }))
}

async fn drive(State(app): Shared, Path((id, disk)): Path<(String, String)>) -> RfResult {
    let path = app.check_system(&id)?;
    let i = index_of(&disk, "disk", app.machine.spec.disks.len())?;
    let d = &app.machine.spec.disks[i];
    // The image's real size: it may have been made bigger or smaller than the spec asked.
    let size = std::fs::metadata(&d.path).map_or(d.size_bytes, |m| m.len());
    let model = match d.bus {
        crate::DiskBus::Nvme => "QEMU NVMe Ctrl",
        crate::DiskBus::Virtio => "QEMU virtio-blk",
    };
    ok(json!({
        "@odata.id": format!("{path}/Storage/1/Drives/{disk}"),
        "@odata.type": "#Drive.v1_9_0.Drive",
        "Id": disk,
        "Name": disk,
        "Model": model,
        "SerialNumber": d.serial,
        "CapacityBytes": size,
        "Protocol": d.bus.protocol(),
        "MediaType": "SSD",
        "Status": status_ok(),
    }))
}

// ---- Chassis and power -------------------------------------------------------------------------

async fn chassis(State(app): Shared) -> RfResult {
    let on = app.machine.is_on().await;
    ok(json!({
        "@odata.id": CHASSIS,
        "@odata.type": "#Chassis.v1_15_0.Chassis",
        "Id": "1",
        "Name": format!("{} chassis", app.machine.spec.name),
        "ChassisType": "RackMount",
        "Manufacturer": "QEMU",
        "PowerState": if on { "On" } else { "Off" },
        "Status": status_ok(),
        "Power": link("/redfish/v1/Chassis/1/Power"),
        "EnvironmentMetrics": link("/redfish/v1/Chassis/1/EnvironmentMetrics"),
        "Links": {
            "ComputerSystems": [link(&app.system_path())],
            "ManagedBy": [link(MANAGER)],
        },
    }))
}

async fn power(State(app): Shared) -> RfResult {
    let (watts, _) = app.machine.power_reading();
    ok(json!({
        "@odata.id": "/redfish/v1/Chassis/1/Power",
        "@odata.type": "#Power.v1_6_0.Power",
        "Id": "Power",
        "Name": "Power",
        "PowerControl": [{
            "@odata.id": "/redfish/v1/Chassis/1/Power#/PowerControl/0",
            "MemberId": "0",
            "Name": "System power",
            "PowerConsumedWatts": watts,
        }],
    }))
}

async fn environment(State(app): Shared) -> RfResult {
    let (watts, watt_hours) = app.machine.power_reading();
    ok(json!({
        "@odata.id": "/redfish/v1/Chassis/1/EnvironmentMetrics",
        "@odata.type": "#EnvironmentMetrics.v1_2_0.EnvironmentMetrics",
        "Id": "EnvironmentMetrics",
        "Name": "Chassis environment metrics",
        "PowerWatts": { "Reading": watts },
        "EnergykWh": { "Reading": watt_hours / 1000.0 },
    }))
}

// ---- the Manager and virtual media -------------------------------------------------------------

async fn manager(State(app): Shared) -> RfResult {
    ok(json!({
        "@odata.id": MANAGER,
        "@odata.type": "#Manager.v1_10_0.Manager",
        "Id": "1",
        "Name": "rackshare virtual BMC",
        "ManagerType": "BMC",
        "FirmwareVersion": env!("CARGO_PKG_VERSION"),
        "PowerState": "On",
        "Status": status_ok(),
        "VirtualMedia": link("/redfish/v1/Managers/1/VirtualMedia"),
        // The stream is offered by rackshare's console broker, not by this service itself.
        "SerialConsole": {
            "ServiceEnabled": true,
            "MaxConcurrentSessions": 1,
            "ConnectTypesSupported": ["Oem"],
        },
        "Links": {
            "ManagerForServers": [link(&app.system_path())],
            "ManagerForChassis": [link(CHASSIS)],
        },
    }))
}

async fn media_collection(State(app): Shared) -> RfResult {
    let members = if app.machine.spec.cd_drive {
        vec!["/redfish/v1/Managers/1/VirtualMedia/Cd".to_string()]
    } else {
        Vec::new()
    };
    ok(collection(
        "/redfish/v1/Managers/1/VirtualMedia",
        "VirtualMediaCollection",
        "Virtual Media",
        &members,
    ))
}

async fn cd(State(app): Shared) -> RfResult {
    if !app.machine.spec.cd_drive {
        return Err(VbmcError::NoCdDrive.into());
    }
    let medium = app.machine.medium().await;
    let base = "/redfish/v1/Managers/1/VirtualMedia/Cd/Actions";
    let image_name = medium
        .as_ref()
        .and_then(|m| m.path.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    ok(json!({
        "@odata.id": "/redfish/v1/Managers/1/VirtualMedia/Cd",
        "@odata.type": "#VirtualMedia.v1_3_0.VirtualMedia",
        "Id": "Cd",
        "Name": "Virtual CD",
        "MediaTypes": ["CD", "DVD"],
        "Image": medium.as_ref().map(|m| m.image.clone()),
        "ImageName": image_name,
        "Inserted": medium.is_some(),
        "WriteProtected": true,
        "ConnectedVia": if medium.is_some() { "URI" } else { "NotConnected" },
        "Actions": {
            "#VirtualMedia.InsertMedia": { "target": format!("{base}/VirtualMedia.InsertMedia") },
            "#VirtualMedia.EjectMedia": { "target": format!("{base}/VirtualMedia.EjectMedia") },
        },
    }))
}

const INSERT_PARAMETERS: [&str; 7] = [
    "Image",
    "Inserted",
    "WriteProtected",
    "TransferMethod",
    "TransferProtocolType",
    "UserName",
    "Password",
];

async fn insert_media(State(app): Shared, body: Bytes) -> RfResult {
    let b = body_object(&body)?;
    if let Some(other) = b.keys().find(|k| !INSERT_PARAMETERS.contains(&k.as_str())) {
        return Err(RfError::bad(
            "ActionParameterUnknown",
            format!("unknown parameter {other}"),
        ));
    }
    let Some(image) = b.get("Image").and_then(Value::as_str) else {
        return Err(RfError::bad("ActionParameterMissing", "Image is required"));
    };
    app.machine.insert_media(image).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn eject_media(State(app): Shared, body: Bytes) -> RfResult {
    // An empty body and `{}` are both fine: EjectMedia takes no parameters.
    if !body.is_empty() {
        let b = body_object(&body)?;
        if let Some(other) = b.keys().next() {
            return Err(RfError::bad(
                "ActionParameterUnknown",
                format!("unknown parameter {other}"),
            ));
        }
    }
    if !app.machine.spec.cd_drive {
        return Err(VbmcError::NoCdDrive.into());
    }
    app.machine.eject_media().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
