//! Redfish driver: reqwest + rustls, session login with basic-auth fallback, small serde models.

use std::error::Error as _;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, ETAG, IF_MATCH, LOCATION};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::error::{one_line, scrub};
use crate::types::normalize_mac;
use crate::{
    BmcDriver, BmcError, BmcProtocol, BmcUrl, BootDevice, BootMode, Credentials, DiskInfo,
    DriverOptions, HardwareInfo, MeterReading, PowerAction, PowerState, Secret, TlsPolicy,
};

/// At most this many members of any collection are read (bounded work on odd BMCs).
const MAX_MEMBERS: usize = 64;

mod models;
#[cfg(test)]
mod tests;

use models::*;

// ---- the driver -----------------------------------------------------------------------------

#[derive(Clone)]
enum Auth {
    Unknown,
    Basic,
    Session {
        token: Secret,
        location: Option<String>,
    },
}

struct State {
    auth: Auth,
    system_path: Option<String>,
}

/// A response, whatever its status.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// Talks Redfish to one BMC.
pub struct RedfishDriver {
    bmc: String,
    base: String,
    client: reqwest::Client,
    credentials: Credentials,
    request_timeout_secs: f64,
    state: Mutex<State>,
}

impl RedfishDriver {
    /// A driver for a `redfish+https://` or `redfish+http://` URL; nothing is sent yet.
    pub fn new(
        url: &BmcUrl,
        credentials: Credentials,
        tls: &TlsPolicy,
        options: DriverOptions,
    ) -> Result<Self, BmcError> {
        let bmc = url.address();
        let scheme = match url.protocol() {
            BmcProtocol::RedfishHttps => "https",
            BmcProtocol::RedfishHttp => "http",
            BmcProtocol::Ipmi => {
                return Err(BmcError::Unsupported {
                    bmc,
                    what: "an ipmi:// URL needs the IPMI driver".into(),
                })
            }
        };
        let client = crate::tls::http_client(tls, &options).map_err(|cause| BmcError::Tls {
            bmc: bmc.clone(),
            cause,
        })?;
        Ok(RedfishDriver {
            base: format!("{scheme}://{}:{}", url.host_for_url(), url.port()),
            bmc,
            client,
            credentials,
            request_timeout_secs: options.request_timeout.as_secs_f64(),
            state: Mutex::new(State {
                auth: Auth::Unknown,
                system_path: url
                    .system_id()
                    .map(|id| format!("/redfish/v1/Systems/{id}")),
            }),
        })
    }

    fn err_from_reqwest(&self, e: &reqwest::Error, method: &Method, path: &str) -> BmcError {
        let mut chain = Vec::new();
        let mut src = e.source();
        while let Some(s) = src {
            chain.push(s.to_string());
            src = s.source();
        }
        let cause = scrub(
            &if chain.is_empty() {
                e.to_string()
            } else {
                chain.join(": ")
            },
            self.credentials.password.expose(),
        );
        let lower = cause.to_ascii_lowercase();
        if e.is_timeout() {
            BmcError::Timeout {
                bmc: self.bmc.clone(),
                op: format!("{method} {path}"),
                secs: self.request_timeout_secs,
            }
        } else if lower.contains("certificate")
            || lower.contains("fingerprint")
            || lower.contains("unknownissuer")
            || lower.contains("handshake")
        {
            BmcError::Tls {
                bmc: self.bmc.clone(),
                cause,
            }
        } else {
            BmcError::Unreachable {
                bmc: self.bmc.clone(),
                cause: format!("{method} {path}: {cause}"),
            }
        }
    }

    fn http_error(&self, method: &Method, path: &str, reply: &Reply) -> BmcError {
        let message = scrub(
            &redfish_message(&reply.body),
            self.credentials.password.expose(),
        );
        if reply.status == StatusCode::UNAUTHORIZED {
            return BmcError::AuthFailed {
                bmc: self.bmc.clone(),
                user: self.credentials.username.clone(),
                cause: format!("HTTP 401 from {method} {path}: {message}"),
            };
        }
        BmcError::Http {
            bmc: self.bmc.clone(),
            status: reply.status.as_u16(),
            method: method.to_string(),
            path: path.to_string(),
            message,
        }
    }

    /// One HTTP exchange without retry; `auth` decides the credentials sent.
    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        auth: &Auth,
        if_match: Option<&str>,
    ) -> Result<Reply, BmcError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header("Accept", "application/json");
        match auth {
            Auth::Unknown => {}
            Auth::Basic => {
                req = req.basic_auth(
                    &self.credentials.username,
                    Some(self.credentials.password.expose()),
                )
            }
            Auth::Session { token, .. } => {
                let mut v =
                    HeaderValue::from_str(token.expose()).map_err(|_| BmcError::BadResponse {
                        bmc: self.bmc.clone(),
                        what: "session login".into(),
                        cause: "X-Auth-Token is not a valid header value".into(),
                    })?;
                v.set_sensitive(true);
                req = req.header("X-Auth-Token", v);
            }
        }
        if let Some(tag) = if_match {
            req = req.header(IF_MATCH, tag);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        tracing::debug!(bmc = %self.bmc, %method, path, "redfish request");
        let resp = req
            .send()
            .await
            .map_err(|e| self.err_from_reqwest(&e, method, path))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .map_err(|e| self.err_from_reqwest(&e, method, path))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Logs in (once): a Redfish session when the service offers one, else basic auth.
    async fn ensure_auth(&self) -> Result<Auth, BmcError> {
        let mut state = self.state.lock().await;
        if !matches!(state.auth, Auth::Unknown) {
            return Ok(state.auth.clone());
        }
        let root = self
            .exchange(&Method::GET, "/redfish/v1/", None, &Auth::Unknown, None)
            .await?;
        let sessions_path = if root.status.is_success() {
            let root: ServiceRoot = self.parse("/redfish/v1/", &root.body)?;
            root.links
                .and_then(|l| l.sessions)
                .map(|l| l.id)
                .or_else(|| {
                    root.session_service
                        .map(|s| format!("{}/Sessions", s.id.trim_end_matches('/')))
                })
        } else {
            Some("/redfish/v1/SessionService/Sessions".to_string())
        };
        let auth = match sessions_path {
            None => Auth::Basic,
            Some(path) => {
                let body = json!({
                    "UserName": self.credentials.username,
                    "Password": self.credentials.password.expose(),
                });
                let reply = self
                    .exchange(&Method::POST, &path, Some(&body), &Auth::Unknown, None)
                    .await?;
                let token = reply
                    .headers
                    .get("x-auth-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match (reply.status, token) {
                    (s, Some(token)) if s.is_success() => Auth::Session {
                        token: Secret::new(token),
                        location: reply
                            .headers
                            .get(LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .map(|l| self.path_of(l)),
                    },
                    (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => {
                        return Err(BmcError::AuthFailed {
                            bmc: self.bmc.clone(),
                            user: self.credentials.username.clone(),
                            cause: format!(
                                "session login rejected (HTTP {}): {}",
                                reply.status.as_u16(),
                                scrub(
                                    &redfish_message(&reply.body),
                                    self.credentials.password.expose()
                                )
                            ),
                        })
                    }
                    (s, _) => {
                        tracing::debug!(bmc = %self.bmc, status = s.as_u16(),
                            "no Redfish session service; falling back to basic auth");
                        Auth::Basic
                    }
                }
            }
        };
        state.auth = auth.clone();
        Ok(auth)
    }

    /// Turns an absolute URL from the BMC into a path on this BMC.
    fn path_of(&self, location: &str) -> String {
        match location.find("://") {
            Some(i) => {
                let rest = &location[i + 3..];
                rest.find('/')
                    .map_or("/".to_string(), |j| rest[j..].to_string())
            }
            None => location.to_string(),
        }
    }

    /// An authenticated request; a stale session is renewed once.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, BmcError> {
        let auth = self.ensure_auth().await?;
        let reply = self.exchange(&method, path, body, &auth, if_match).await?;
        if reply.status == StatusCode::UNAUTHORIZED && matches!(auth, Auth::Session { .. }) {
            self.state.lock().await.auth = Auth::Unknown;
            let auth = self.ensure_auth().await?;
            return self.exchange(&method, path, body, &auth, if_match).await;
        }
        Ok(reply)
    }

    fn parse<T: DeserializeOwned>(&self, path: &str, body: &str) -> Result<T, BmcError> {
        serde_json::from_str(body).map_err(|e| BmcError::BadResponse {
            bmc: self.bmc.clone(),
            what: path.to_string(),
            cause: format!("invalid JSON ({e}): {}", one_line(body, 120)),
        })
    }

    async fn get_reply(&self, path: &str) -> Result<Reply, BmcError> {
        let reply = self.request(Method::GET, path, None, None).await?;
        if !reply.status.is_success() {
            return Err(self.http_error(&Method::GET, path, &reply));
        }
        Ok(reply)
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, BmcError> {
        let reply = self.get_reply(path).await?;
        self.parse(path, &reply.body)
    }

    /// The System resource path: from the URL, or the only member of the Systems collection.
    pub(crate) async fn system_path(&self) -> Result<String, BmcError> {
        if let Some(p) = self.state.lock().await.system_path.clone() {
            return Ok(p);
        }
        let root: ServiceRoot = self.get("/redfish/v1/").await?;
        let systems = root
            .systems
            .map(|l| l.id)
            .unwrap_or_else(|| "/redfish/v1/Systems".into());
        let coll: Collection = self.get(&systems).await?;
        let path = match coll.members.as_slice() {
            [one] => one.id.clone(),
            [] => {
                return Err(BmcError::Unsupported {
                    bmc: self.bmc.clone(),
                    what: format!("{systems} lists no System"),
                })
            }
            many => {
                return Err(BmcError::Unsupported {
                    bmc: self.bmc.clone(),
                    what: format!(
                        "{systems} lists {} Systems ({}); name one in the URL",
                        many.len(),
                        many.iter()
                            .map(|l| l.id.as_str())
                            .take(8)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
            }
        };
        self.state.lock().await.system_path = Some(path.clone());
        Ok(path)
    }

    async fn members(&self, path: &str) -> Result<Vec<String>, BmcError> {
        let coll: Collection = self.get(path).await?;
        Ok(coll
            .members
            .into_iter()
            .take(MAX_MEMBERS)
            .map(|l| l.id)
            .collect())
    }

    /// The chassis whose power is read: the System's first linked Chassis, else the only one.
    async fn chassis_path(&self, system: &System) -> Result<Option<String>, BmcError> {
        if let Some(l) = system.links.as_ref().and_then(|l| l.chassis.first()) {
            return Ok(Some(l.id.clone()));
        }
        let root: ServiceRoot = self.get("/redfish/v1/").await?;
        let Some(chassis) = root.chassis else {
            return Ok(None);
        };
        Ok(self.members(&chassis.id).await?.into_iter().next())
    }
}

/// Soft failures of a sub-resource become warnings; connection and auth failures stop inspection.
fn soft<T>(
    result: Result<T, BmcError>,
    what: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<T>, BmcError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e @ (BmcError::Http { .. } | BmcError::BadResponse { .. })) => {
            warnings.push(format!("{what}: {e}"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The human part of a Redfish error body, or the body itself, on one bounded line.
fn redfish_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let err = &v["error"];
        let mut parts = Vec::new();
        if let Some(m) = err["message"].as_str() {
            parts.push(m.to_string());
        }
        if let Some(infos) = err["@Message.ExtendedInfo"].as_array() {
            for i in infos.iter().take(3) {
                if let Some(m) = i["Message"].as_str() {
                    if !parts.iter().any(|p| p == m) {
                        parts.push(m.to_string());
                    }
                }
            }
        }
        if !parts.is_empty() {
            return one_line(&parts.join("; "), 300);
        }
    }
    if body.trim().is_empty() {
        "(empty body)".into()
    } else {
        one_line(body, 200)
    }
}

fn power_state_from(s: Option<&str>) -> PowerState {
    match s {
        Some("On") => PowerState::On,
        Some("Off") => PowerState::Off,
        Some("PoweringOn") => PowerState::PoweringOn,
        Some("PoweringOff") => PowerState::PoweringOff,
        _ => PowerState::Unknown,
    }
}

fn etag_of(reply: &Reply, body_etag: Option<&str>) -> Option<String> {
    reply
        .headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| body_etag.map(str::to_string))
}

/// The ResetType to send for an action, given what the BMC allows (empty: not advertised).
fn reset_type(action: PowerAction, allowed: &[String]) -> Option<&'static str> {
    let prefs: &[&'static str] = match action {
        PowerAction::On => &["On", "ForceOn"],
        PowerAction::Off => &["ForceOff"],
        PowerAction::SoftOff => &["GracefulShutdown"],
        PowerAction::Cycle => &["PowerCycle", "ForceRestart"],
        PowerAction::Reset => &["ForceRestart", "PowerCycle"],
    };
    if allowed.is_empty() {
        return prefs
            .iter()
            .copied()
            .find(|p| *p != "PowerCycle")
            .or(prefs.first().copied());
    }
    prefs
        .iter()
        .copied()
        .find(|p| allowed.iter().any(|a| a == p))
}

#[async_trait]
impl BmcDriver for RedfishDriver {
    fn address(&self) -> &str {
        &self.bmc
    }

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        let path = self.system_path().await?;
        let sys: System = self.get(&path).await?;
        Ok(power_state_from(sys.power_state.as_deref()))
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let path = self.system_path().await?;
        let sys: System = self.get(&path).await?;
        let reset = sys.actions.and_then(|a| a.reset).unwrap_or_default();
        let target = reset
            .target
            .map(|t| self.path_of(&t))
            .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
        let allowed = reset.allowed.unwrap_or_default();
        let Some(kind) = reset_type(action, &allowed) else {
            return Err(BmcError::Unsupported {
                bmc: self.bmc.clone(),
                what: format!(
                    "power {action} (ResetType allows only {})",
                    allowed.join(", ")
                ),
            });
        };
        let body = json!({ "ResetType": kind });
        let reply = self
            .request(Method::POST, &target, Some(&body), None)
            .await?;
        if !reply.status.is_success() {
            return Err(self.http_error(&Method::POST, &target, &reply));
        }
        Ok(())
    }

    async fn set_boot_device(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: BootMode,
    ) -> Result<(), BmcError> {
        let path = self.system_path().await?;
        let reply = self.get_reply(&path).await?;
        let sys: System = self.parse(&path, &reply.body)?;
        let boot = sys.boot.unwrap_or_default();
        let target = match device {
            BootDevice::Pxe => "Pxe",
            BootDevice::Disk => "Hdd",
            BootDevice::Cd => "Cd",
        };
        if let Some(allowed) = &boot.allowed_targets {
            if !allowed.iter().any(|a| a == target) {
                return Err(BmcError::Unsupported {
                    bmc: self.bmc.clone(),
                    what: format!(
                        "boot target {target} (BootSourceOverrideTarget allows {})",
                        allowed.join(", ")
                    ),
                });
            }
        }
        let mut patch = json!({
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": if persistent { "Continuous" } else { "Once" },
        });
        let wanted_mode = match mode {
            BootMode::Uefi => Some("UEFI"),
            BootMode::Legacy => Some("Legacy"),
            BootMode::Unchanged => None,
        };
        // Quirk (e.g. Supermicro): a system that does not list BootSourceOverrideMode rejects it.
        if let Some(m) = wanted_mode {
            let listed = boot.mode.is_some() || boot.allowed_modes.is_some();
            let allowed = boot
                .allowed_modes
                .as_ref()
                .is_none_or(|a| a.iter().any(|x| x == m));
            if listed && allowed {
                patch["BootSourceOverrideMode"] = json!(m);
            } else {
                tracing::info!(bmc = %self.bmc, mode = m,
                    "BootSourceOverrideMode not offered by this BMC; leaving the mode unchanged");
            }
        }
        let body = json!({ "Boot": patch });
        let etag = etag_of(&reply, sys.etag.as_deref());
        let mut reply = self
            .request(Method::PATCH, &path, Some(&body), etag.as_deref())
            .await?;
        // Quirk: some BMCs demand If-Match (428) or reject a stale one (412): fetch, retry once.
        if matches!(reply.status.as_u16(), 412 | 428) {
            let fresh = self.get_reply(&path).await?;
            let fresh_sys: System = self.parse(&path, &fresh.body)?;
            let tag = etag_of(&fresh, fresh_sys.etag.as_deref()).unwrap_or_else(|| "*".into());
            reply = self
                .request(Method::PATCH, &path, Some(&body), Some(&tag))
                .await?;
        }
        if !reply.status.is_success() {
            return Err(self.http_error(&Method::PATCH, &path, &reply));
        }
        // Read back: the target must be set. Some BMCs (sushy-tools) keep Enabled=Continuous.
        let after: System = self.get(&path).await?;
        let after_boot = after.boot.unwrap_or_default();
        if after_boot.target.as_deref() != Some(target) {
            return Err(BmcError::Command {
                bmc: self.bmc.clone(),
                op: format!("set boot device {device}"),
                cause: format!(
                    "BMC accepted the PATCH but BootSourceOverrideTarget reads {:?}",
                    after_boot.target
                ),
            });
        }
        let wanted_enabled = if persistent { "Continuous" } else { "Once" };
        if after_boot.enabled.as_deref() != Some(wanted_enabled) {
            tracing::warn!(bmc = %self.bmc, wanted = wanted_enabled, got = ?after_boot.enabled,
                "BootSourceOverrideEnabled did not take the requested value");
        }
        Ok(())
    }

    async fn inspect(&self) -> Result<HardwareInfo, BmcError> {
        let path = self.system_path().await?;
        let sys: System = self.get(&path).await?;
        let mut info = HardwareInfo {
            vendor: sys.manufacturer.clone().filter(|s| !s.trim().is_empty()),
            model: sys.model.clone().filter(|s| !s.trim().is_empty()),
            serial: sys.serial_number.clone().filter(|s| !s.trim().is_empty()),
            ..HardwareInfo::default()
        };
        let mut warnings = Vec::new();
        if let Some(ps) = &sys.processor_summary {
            info.cpu_count = ps.count;
            info.cpu_model = ps.model.clone();
        }
        if info.cpu_model.is_none() {
            if let Some(procs) = &sys.processors {
                if let Some(members) =
                    soft(self.members(&procs.id).await, "Processors", &mut warnings)?
                {
                    if let Some(first) = members.first() {
                        if let Some(p) =
                            soft(self.get::<Processor>(first).await, first, &mut warnings)?
                        {
                            info.cpu_model = p.model;
                        }
                    }
                }
            }
        }
        info.ram_bytes = sys
            .memory_summary
            .as_ref()
            .and_then(|m| m.total_gib)
            .filter(|g| g.is_finite() && *g > 0.0)
            .map(|g| (g * 1024.0 * 1024.0 * 1024.0).round() as u64);
        if let Some(nics) = &sys.ethernet_interfaces {
            if let Some(members) = soft(
                self.members(&nics.id).await,
                "EthernetInterfaces",
                &mut warnings,
            )? {
                for m in members {
                    if let Some(nic) =
                        soft(self.get::<EthernetInterface>(&m).await, &m, &mut warnings)?
                    {
                        let mac = nic
                            .permanent_mac
                            .as_deref()
                            .and_then(normalize_mac)
                            .or_else(|| nic.mac.as_deref().and_then(normalize_mac));
                        if let Some(mac) = mac {
                            if !info.nic_macs.contains(&mac) {
                                info.nic_macs.push(mac);
                            }
                        }
                    }
                }
            }
        }
        let mut got_disks = false;
        if let Some(storage) = &sys.storage {
            if let Some(members) = soft(self.members(&storage.id).await, "Storage", &mut warnings)?
            {
                got_disks = true;
                'outer: for m in members {
                    if let Some(st) = soft(self.get::<Storage>(&m).await, &m, &mut warnings)? {
                        for d in st.drives {
                            if info.disks.len() >= MAX_MEMBERS {
                                break 'outer;
                            }
                            if let Some(drive) =
                                soft(self.get::<Drive>(&d.id).await, &d.id, &mut warnings)?
                            {
                                info.disks.push(DiskInfo {
                                    name: drive.name,
                                    model: drive.model,
                                    serial: drive.serial,
                                    size_bytes: drive.capacity,
                                });
                            }
                        }
                    }
                }
            }
        }
        if !got_disks {
            if let Some(simple) = &sys.simple_storage {
                if let Some(members) = soft(
                    self.members(&simple.id).await,
                    "SimpleStorage",
                    &mut warnings,
                )? {
                    for m in members {
                        if let Some(ss) =
                            soft(self.get::<SimpleStorage>(&m).await, &m, &mut warnings)?
                        {
                            for d in ss.devices.into_iter().take(MAX_MEMBERS) {
                                info.disks.push(DiskInfo {
                                    name: d.name,
                                    model: d.model,
                                    serial: d.serial,
                                    size_bytes: d.capacity,
                                });
                            }
                        }
                    }
                }
            }
        }
        info.warnings = warnings;
        Ok(info)
    }

    async fn power_reading(&self) -> Result<Option<f64>, BmcError> {
        Ok(self.meter_reading().await?.watts)
    }

    async fn meter_reading(&self) -> Result<MeterReading, BmcError> {
        let path = self.system_path().await?;
        let sys: System = self.get(&path).await?;
        let Some(chassis_path) = self.chassis_path(&sys).await? else {
            return Ok(MeterReading::default());
        };
        let chassis: Chassis = self.get(&chassis_path).await?;
        let mut meter = MeterReading::default();
        if let Some(env) = chassis.environment_metrics {
            match self.get::<EnvironmentMetrics>(&env.id).await {
                Ok(m) => {
                    meter.energy_kwh = m.energy_kwh.and_then(|e| e.reading);
                    meter.watts = m.power_watts.and_then(|p| p.reading);
                    if meter.watts.is_some() {
                        return Ok(meter);
                    }
                }
                Err(BmcError::Http { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(power) = chassis.power {
            match self.get::<Power>(&power.id).await {
                Ok(p) => {
                    meter.watts = p.power_control.first().and_then(|c| c.consumed_watts);
                }
                Err(BmcError::Http { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(meter)
    }

    async fn close(&self) {
        let auth = std::mem::replace(&mut self.state.lock().await.auth, Auth::Unknown);
        if let Auth::Session {
            location: Some(loc),
            ..
        } = &auth
        {
            if let Err(e) = self.exchange(&Method::DELETE, loc, None, &auth, None).await {
                tracing::debug!(bmc = %self.bmc, error = %e, "session logout failed");
            }
        }
    }
}

impl Drop for RedfishDriver {
    fn drop(&mut self) {
        // Best effort: a driver dropped without close() still logs out of its session.
        let auth = std::mem::replace(&mut self.state.get_mut().auth, Auth::Unknown);
        if let Auth::Session {
            token,
            location: Some(loc),
        } = auth
        {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let req = self
                    .client
                    .delete(format!("{}{}", self.base, loc))
                    .header("X-Auth-Token", token.expose());
                rt.spawn(async move {
                    let _ = req.send().await;
                });
            }
        }
    }
}
