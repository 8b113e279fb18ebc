//! A minimal Redfish BMC that reports a power draw, for what sushy-tools' fake driver does not
//! offer (it has no Chassis Power), and optionally a cumulative energy counter the test sets
//! (`EnvironmentMetrics.EnergykWh`). On 127.0.0.1, a free port; stopped on drop.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A running fake BMC.
pub struct FakeRedfish {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Requests served so far.
    pub hits: Arc<AtomicU64>,
    /// The energy counter in kWh as f64 bits (only served by [`FakeRedfish::start_metered`]).
    energy_kwh: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct St {
    watts: f64,
    hits: Arc<AtomicU64>,
    energy_kwh: Arc<AtomicU64>,
}

async fn json_of(State(st): State<St>, v: Value) -> Json<Value> {
    st.hits.fetch_add(1, Ordering::Relaxed);
    Json(v)
}

impl FakeRedfish {
    /// Starts a BMC whose single System draws `watts`.
    pub async fn start(watts: f64) -> FakeRedfish {
        Self::serve(watts, None).await
    }

    /// Starts a BMC whose System draws `watts` and keeps an energy counter starting at
    /// `energy_kwh` ([`FakeRedfish::set_energy_kwh`] moves it).
    pub async fn start_metered(watts: f64, energy_kwh: f64) -> FakeRedfish {
        Self::serve(watts, Some(energy_kwh)).await
    }

    /// Sets the energy counter (kWh).
    pub fn set_energy_kwh(&self, v: f64) {
        self.energy_kwh.store(v.to_bits(), Ordering::Relaxed);
    }

    async fn serve(watts: f64, energy_kwh: Option<f64>) -> FakeRedfish {
        let hits = Arc::new(AtomicU64::new(0));
        let energy = Arc::new(AtomicU64::new(energy_kwh.unwrap_or(0.0).to_bits()));
        let st = St {
            watts,
            hits: hits.clone(),
            energy_kwh: energy.clone(),
        };
        let chassis = if energy_kwh.is_some() {
            json!({"Id": "1", "Power": {"@odata.id": "/redfish/v1/Chassis/1/Power"}, "EnvironmentMetrics": {"@odata.id": "/redfish/v1/Chassis/1/EnvironmentMetrics"}})
        } else {
            json!({"Id": "1", "Power": {"@odata.id": "/redfish/v1/Chassis/1/Power"}})
        };
        let app = Router::new()
            .route(
                "/redfish/v1/",
                get(|s: State<St>| json_of(s, json!({"Systems": {"@odata.id": "/redfish/v1/Systems"}, "Chassis": {"@odata.id": "/redfish/v1/Chassis"}}))),
            )
            .route(
                "/redfish/v1/Systems",
                get(|s: State<St>| json_of(s, json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}))),
            )
            .route(
                "/redfish/v1/Systems/1",
                get(|s: State<St>| {
                    json_of(s, json!({"Id": "1", "PowerState": "On", "Manufacturer": "Fake", "Links": {"Chassis": [{"@odata.id": "/redfish/v1/Chassis/1"}]}}))
                }),
            )
            .route(
                "/redfish/v1/Chassis/1",
                get(move |s: State<St>| json_of(s, chassis.clone())),
            )
            .route(
                "/redfish/v1/Chassis/1/EnvironmentMetrics",
                get(|s: State<St>| {
                    let w = s.0.watts;
                    let e = f64::from_bits(s.0.energy_kwh.load(Ordering::Relaxed));
                    json_of(s, json!({"Id": "EnvironmentMetrics", "PowerWatts": {"Reading": w}, "EnergykWh": {"Reading": e}}))
                }),
            )
            .route(
                "/redfish/v1/Chassis/1/Power",
                get(|s: State<St>| {
                    let w = s.0.watts;
                    json_of(s, json!({"PowerControl": [{"PowerConsumedWatts": w}]}))
                }),
            )
            .with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake BMC");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRedfish {
            port,
            hits,
            energy_kwh: energy,
            task,
        }
    }

    /// Its URL in rackshare's BMC URL form.
    pub fn url(&self) -> String {
        format!("redfish+http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeRedfish {
    fn drop(&mut self) {
        self.task.abort();
    }
}
