//! Vendor behaviour sushy-tools does not show, on a small scripted Redfish BMC: session login
//! (X-Auth-Token, DELETE on close, renewal), ETag / If-Match (412/428), a Supermicro-like System
//! without BootSourceOverrideMode, power readings from Chassis Power and EnvironmentMetrics,
//! inspection of NICs and drives, and a service root listing several Systems.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::{Arc, Mutex};

use bmc::{BmcError, BootDevice, BootMode, Controller, Credentials, PowerState, TlsPolicy};
use common::*;
use serde_json::{json, Value};

#[derive(Default)]
struct Bmc {
    port: u16,
    token: Option<String>,
    logins: usize,
    deletes: Vec<String>,
    patches: Vec<(Option<String>, Value)>,
    etag_in_get: bool,
    etag: u32,
    target: String,
    enabled: String,
    env_metrics: bool,
    two_systems: bool,
}

fn handle(st: &Arc<Mutex<Bmc>>, req: Request) -> Response {
    let mut s = st.lock().unwrap();
    let path = req.path.trim_end_matches('/').to_string();
    if req.method == "GET" && path == "/redfish/v1" {
        return Response::json(
            200,
            &json!({
                "Systems": {"@odata.id": "/redfish/v1/Systems"},
                "Chassis": {"@odata.id": "/redfish/v1/Chassis"},
                "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
                "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}
            }),
        );
    }
    if req.method == "POST" && path == "/redfish/v1/SessionService/Sessions" {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if body["UserName"] == "ADMIN" && body["Password"] == "supermicro-pw" {
            s.logins += 1;
            let token = format!("tok-{}", s.logins);
            s.token = Some(token.clone());
            let loc = format!(
                "http://127.0.0.1:{}/redfish/v1/SessionService/Sessions/{}",
                s.port, s.logins
            );
            return Response::json(201, &json!({"Id": s.logins.to_string()}))
                .with_header("X-Auth-Token", &token)
                .with_header("Location", &loc);
        }
        return Response::json(
            401,
            &json!({"error": {"message": "Invalid username or password"}}),
        );
    }
    if s.token.is_none() || req.header("X-Auth-Token") != s.token.as_deref() {
        return Response::json(401, &json!({"error": {"message": "Session required"}}));
    }
    if req.header("Authorization").is_some() {
        return Response::json(
            400,
            &json!({"error": {"message": "both token and basic auth sent"}}),
        );
    }
    let etag = format!("W/\"{}\"", s.etag);
    match (req.method.as_str(), path.as_str()) {
        ("DELETE", p) if p.starts_with("/redfish/v1/SessionService/Sessions/") => {
            s.deletes.push(p.to_string());
            s.token = None;
            Response::json(204, &json!({}))
        }
        ("GET", "/redfish/v1/Systems") => {
            let mut members = vec![json!({"@odata.id": "/redfish/v1/Systems/1"})];
            if s.two_systems {
                members.push(json!({"@odata.id": "/redfish/v1/Systems/2"}));
            }
            Response::json(200, &json!({"Members": members}))
        }
        ("GET", "/redfish/v1/Systems/1") => {
            let r = Response::json(
                200,
                &json!({
                    "Id": "1", "Manufacturer": "Supermicro", "Model": "SYS-1029U-TRT", "SerialNumber": "S1234567",
                    "PowerState": "On",
                    "ProcessorSummary": {"Count": 2, "Model": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"},
                    "MemorySummary": {"TotalSystemMemoryGiB": 384},
                    "Boot": {
                        "BootSourceOverrideEnabled": s.enabled, "BootSourceOverrideTarget": s.target,
                        "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "Cd", "BiosSetup"]
                    },
                    "EthernetInterfaces": {"@odata.id": "/redfish/v1/Systems/1/EthernetInterfaces"},
                    "Storage": {"@odata.id": "/redfish/v1/Systems/1/Storage"},
                    "Links": {"Chassis": [{"@odata.id": "/redfish/v1/Chassis/1"}]},
                    "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"}}
                }),
            );
            if s.etag_in_get {
                r.with_header("ETag", &etag)
            } else {
                r
            }
        }
        ("PATCH", "/redfish/v1/Systems/1") => {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let if_match = req.header("If-Match").map(str::to_string);
            s.patches.push((if_match.clone(), body.clone()));
            match if_match.as_deref() {
                None => {
                    return Response::json(
                        428,
                        &json!({"error": {"message": "If-Match header required"}}),
                    )
                }
                Some("*") => {}
                Some(t) if t == etag => {}
                Some(_) => {
                    return Response::json(412, &json!({"error": {"message": "ETag mismatch"}}))
                }
            }
            if body["Boot"].get("BootSourceOverrideMode").is_some() {
                return Response::json(
                    400,
                    &json!({"error": {"message": "PropertyUnknown: BootSourceOverrideMode"}}),
                );
            }
            s.target = body["Boot"]["BootSourceOverrideTarget"]
                .as_str()
                .unwrap_or("?")
                .into();
            s.enabled = body["Boot"]["BootSourceOverrideEnabled"]
                .as_str()
                .unwrap_or("?")
                .into();
            s.etag += 1;
            Response::json(204, &json!({}))
        }
        ("GET", "/redfish/v1/Systems/1/EthernetInterfaces") => Response::json(
            200,
            &json!({"Members": [
            {"@odata.id": "/redfish/v1/Systems/1/EthernetInterfaces/1"},
            {"@odata.id": "/redfish/v1/Systems/1/EthernetInterfaces/2"}]}),
        ),
        ("GET", "/redfish/v1/Systems/1/EthernetInterfaces/1") => {
            Response::json(200, &json!({"MACAddress": "7C:C2:55:00:11:22"}))
        }
        ("GET", "/redfish/v1/Systems/1/EthernetInterfaces/2") => Response::json(
            200,
            &json!({"MACAddress": "7C:C2:55:00:11:23", "PermanentMACAddress": "7c:c2:55:00:11:24"}),
        ),
        ("GET", "/redfish/v1/Systems/1/Storage") => Response::json(
            200,
            &json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1/Storage/1"}]}),
        ),
        ("GET", "/redfish/v1/Systems/1/Storage/1") => Response::json(
            200,
            &json!({"Drives": [{"@odata.id": "/redfish/v1/Systems/1/Storage/1/Drives/0"}]}),
        ),
        ("GET", "/redfish/v1/Systems/1/Storage/1/Drives/0") => Response::json(
            200,
            &json!({
            "Name": "Disk.Bay.0", "Model": "MZ7LH960HAJR", "SerialNumber": "D0001", "CapacityBytes": 960197124096u64}),
        ),
        ("GET", "/redfish/v1/Chassis/1") => {
            let mut c = json!({"Id": "1", "Power": {"@odata.id": "/redfish/v1/Chassis/1/Power"}});
            if s.env_metrics {
                c["EnvironmentMetrics"] =
                    json!({"@odata.id": "/redfish/v1/Chassis/1/EnvironmentMetrics"});
            }
            Response::json(200, &c)
        }
        ("GET", "/redfish/v1/Chassis/1/Power") => Response::json(
            200,
            &json!({
            "PowerControl": [{"PowerConsumedWatts": 344, "PowerMetrics": {"AverageConsumedWatts": 319}}]}),
        ),
        ("GET", "/redfish/v1/Chassis/1/EnvironmentMetrics") => {
            Response::json(200, &json!({"PowerWatts": {"Reading": 374.5}}))
        }
        _ => Response::json(
            404,
            &json!({"error": {"message": format!("no {} {}", req.method, req.path)}}),
        ),
    }
}

async fn start() -> (Arc<Mutex<Bmc>>, u16, tokio::task::JoinHandle<()>) {
    let st = Arc::new(Mutex::new(Bmc {
        target: "None".into(),
        enabled: "Disabled".into(),
        etag_in_get: true,
        ..Default::default()
    }));
    let st2 = st.clone();
    let handler: Arc<dyn Fn(Request) -> futures_like::BoxFut + Send + Sync> =
        Arc::new(move |req| {
            let resp = handle(&st2, req);
            Box::pin(async move { resp })
        });
    let (port, _stats, task) = serve(handler).await;
    st.lock().unwrap().port = port;
    (st, port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_etags_supermicro_boot_and_power_readings() {
    let (st, port, task) = start().await;
    let ctl = Controller::new(fast_policy());
    let url: bmc::BmcUrl = format!("redfish+http://127.0.0.1:{port}").parse().unwrap();
    let h = ctl
        .connect(
            &url,
            Credentials::new("ADMIN", "supermicro-pw"),
            &TlsPolicy::Verify,
        )
        .unwrap();

    assert_eq!(h.power_state().await.unwrap(), PowerState::On);

    // ETag from the GET goes into If-Match; UEFI is asked for but this System does not list
    // BootSourceOverrideMode, so it is left out (the BMC would reject it).
    h.set_boot_device(BootDevice::Pxe, false, BootMode::Uefi)
        .await
        .unwrap();
    {
        let s = st.lock().unwrap();
        assert_eq!((s.target.as_str(), s.enabled.as_str()), ("Pxe", "Once"));
        assert_eq!(s.patches.len(), 1);
        assert_eq!(s.patches[0].0.as_deref(), Some("W/\"0\""));
        assert!(s.patches[0].1["Boot"]
            .get("BootSourceOverrideMode")
            .is_none());
    }
    // No ETag offered: the first PATCH gets 428, the retry carries If-Match.
    st.lock().unwrap().etag_in_get = false;
    h.set_boot_device(BootDevice::Disk, true, BootMode::Unchanged)
        .await
        .unwrap();
    {
        let s = st.lock().unwrap();
        assert_eq!(
            (s.target.as_str(), s.enabled.as_str()),
            ("Hdd", "Continuous")
        );
        assert_eq!(s.patches.len(), 3);
        assert_eq!(s.patches[1].0, None);
        assert_eq!(s.patches[2].0.as_deref(), Some("*"));
    }

    let info = h.inspect().await.unwrap();
    assert_eq!(info.vendor.as_deref(), Some("Supermicro"));
    assert_eq!(info.model.as_deref(), Some("SYS-1029U-TRT"));
    assert_eq!(info.serial.as_deref(), Some("S1234567"));
    assert_eq!(info.cpu_count, Some(2));
    assert!(info.cpu_model.unwrap().contains("Gold 6230"));
    assert_eq!(info.ram_bytes, Some(384 * 1024 * 1024 * 1024));
    assert_eq!(info.nic_macs, ["7c:c2:55:00:11:22", "7c:c2:55:00:11:24"]);
    assert_eq!(info.disks.len(), 1);
    assert_eq!(info.disks[0].size_bytes, Some(960197124096));
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);

    assert_eq!(h.power_reading().await.unwrap(), Some(344.0));
    st.lock().unwrap().env_metrics = true;
    assert_eq!(h.power_reading().await.unwrap(), Some(374.5));

    // One session for all of that; an expired token is renewed once, transparently.
    assert_eq!(st.lock().unwrap().logins, 1);
    st.lock().unwrap().token = Some("expired-elsewhere".into());
    assert_eq!(h.power_state().await.unwrap(), PowerState::On);
    assert_eq!(st.lock().unwrap().logins, 2);

    // close() logs out: DELETE on the session's Location (given as an absolute URL).
    h.close().await;
    assert_eq!(
        st.lock().unwrap().deletes,
        ["/redfish/v1/SessionService/Sessions/2"]
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_login_rejected_and_ambiguous_service_root() {
    let (st, port, task) = start().await;
    let ctl = Controller::new(fast_policy());
    let url: bmc::BmcUrl = format!("redfish+http://127.0.0.1:{port}").parse().unwrap();
    let bad = ctl
        .connect(
            &url,
            Credentials::new("ADMIN", "wrong-pw-123"),
            &TlsPolicy::Verify,
        )
        .unwrap();
    let err = bad.power_state().await.unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, BmcError::AuthFailed { .. }), "{err}");
    assert!(err.to_string().contains("session login rejected"), "{err}");
    assert!(!err.to_string().contains("wrong-pw-123"), "{err}");

    st.lock().unwrap().two_systems = true;
    let ctl = Controller::new(fast_policy());
    let h = ctl
        .connect(
            &url,
            Credentials::new("ADMIN", "supermicro-pw"),
            &TlsPolicy::Verify,
        )
        .unwrap();
    let err = h.power_state().await.unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, BmcError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("name one in the URL"), "{err}");
    let named: bmc::BmcUrl = format!("redfish+http://127.0.0.1:{port}/redfish/v1/Systems/1")
        .parse()
        .unwrap();
    let h = ctl
        .connect(
            &named,
            Credentials::new("ADMIN", "supermicro-pw"),
            &TlsPolicy::Verify,
        )
        .unwrap();
    assert_eq!(h.power_state().await.unwrap(), PowerState::On);
    task.abort();
}
