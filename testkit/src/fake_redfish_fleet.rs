//! Many simulated Redfish BMCs in one process, for scale benchmarks: one listener on
//! 127.0.0.1 serving `count` Systems (`/redfish/v1/Systems/bmc-N`), each with its own power
//! state and boot override, so every machine's BMC URL is distinct
//! ([`FakeRedfishFleet::url_of`]) and the controller keeps one command in flight per URL as it
//! would per BMC. It answers what rackshare's Redfish driver asks for power and boot (no
//! session service: basic auth), and counts resets; `GET /stats` reports the counts.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One simulated system's state.
#[derive(Debug, Clone)]
struct System {
    on: bool,
    boot_target: String,
    boot_enabled: String,
}

#[derive(Clone)]
struct Fleet {
    systems: Arc<Vec<Mutex<System>>>,
    requests: Arc<AtomicU64>,
    resets: Arc<AtomicU64>,
    /// Unix ms of the last reset.
    last_reset_ms: Arc<AtomicU64>,
}

impl Fleet {
    fn index(&self, id: &str) -> Option<usize> {
        let n: usize = id.strip_prefix("bmc-")?.parse().ok()?;
        (n < self.systems.len()).then_some(n)
    }
}

/// A running fleet of fake BMCs; stopped on drop.
pub struct FakeRedfishFleet {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Requests served so far.
    pub requests: Arc<AtomicU64>,
    /// ComputerSystem.Reset actions served so far.
    pub resets: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn system_json(id: &str, s: &System) -> Value {
    json!({
        "Id": id, "Manufacturer": "Fake", "Model": "Fleet",
        "PowerState": if s.on { "On" } else { "Off" },
        "Boot": {"BootSourceOverrideTarget": s.boot_target, "BootSourceOverrideEnabled": s.boot_enabled,
                 "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "Cd"]},
        "Actions": {"#ComputerSystem.Reset": {
            "target": format!("/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset"),
            "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "ForceRestart", "PowerCycle"]}},
    })
}

async fn root(State(f): State<Fleet>) -> Json<Value> {
    f.requests.fetch_add(1, Ordering::Relaxed);
    Json(json!({"Systems": {"@odata.id": "/redfish/v1/Systems"}}))
}

async fn show(State(f): State<Fleet>, Path(id): Path<String>) -> Result<Json<Value>, StatusCode> {
    f.requests.fetch_add(1, Ordering::Relaxed);
    let i = f.index(&id).ok_or(StatusCode::NOT_FOUND)?;
    let s = f.systems[i]
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Json(system_json(&id, &s)))
}

async fn patch(
    State(f): State<Fleet>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<StatusCode, StatusCode> {
    f.requests.fetch_add(1, Ordering::Relaxed);
    let i = f.index(&id).ok_or(StatusCode::NOT_FOUND)?;
    let mut s = f.systems[i].lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = body["Boot"]["BootSourceOverrideTarget"].as_str() {
        s.boot_target = t.to_string();
    }
    if let Some(e) = body["Boot"]["BootSourceOverrideEnabled"].as_str() {
        s.boot_enabled = e.to_string();
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn reset(
    State(f): State<Fleet>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<StatusCode, StatusCode> {
    f.requests.fetch_add(1, Ordering::Relaxed);
    let i = f.index(&id).ok_or(StatusCode::NOT_FOUND)?;
    let on = !matches!(body["ResetType"].as_str(), Some("ForceOff"));
    f.systems[i].lock().unwrap_or_else(|p| p.into_inner()).on = on;
    f.resets.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    f.last_reset_ms.store(now, Ordering::Relaxed);
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(f): State<Fleet>) -> Json<Value> {
    Json(json!({
        "requests": f.requests.load(Ordering::Relaxed),
        "resets": f.resets.load(Ordering::Relaxed),
        "last_reset_ms": f.last_reset_ms.load(Ordering::Relaxed),
    }))
}

impl FakeRedfishFleet {
    /// Starts `count` systems (all off) on `port` of 127.0.0.1 (0: a free one).
    pub async fn start(count: usize, port: u16) -> std::io::Result<FakeRedfishFleet> {
        let fleet = Fleet {
            systems: Arc::new(
                (0..count)
                    .map(|_| {
                        Mutex::new(System {
                            on: false,
                            boot_target: "None".into(),
                            boot_enabled: "Disabled".into(),
                        })
                    })
                    .collect(),
            ),
            requests: Arc::new(AtomicU64::new(0)),
            resets: Arc::new(AtomicU64::new(0)),
            last_reset_ms: Arc::new(AtomicU64::new(0)),
        };
        let (requests, resets) = (fleet.requests.clone(), fleet.resets.clone());
        let app = Router::new()
            .route("/redfish/v1/", get(root))
            .route("/redfish/v1/Systems/{id}", get(show).patch(patch))
            .route(
                "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
                post(reset),
            )
            .route("/stats", get(stats))
            .with_state(fleet);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeRedfishFleet {
            port,
            requests,
            resets,
            task,
        })
    }

    /// The BMC URL of system `n`, in rackshare's form.
    pub fn url_of(port: u16, n: usize) -> String {
        format!("redfish+http://127.0.0.1:{port}/redfish/v1/Systems/bmc-{n}")
    }
}

impl Drop for FakeRedfishFleet {
    fn drop(&mut self) {
        self.task.abort();
    }
}
