//! The vBMC's Redfish surface without booting anything: authentication, sessions, errors.
//! (The VM stays off; QEMU is never started.)
#![allow(clippy::unwrap_used, missing_docs)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use vbmc::{Accel, Firmware, VirtualBmc, VirtualMachineSpec};

async fn vbmc(dir: &std::path::Path) -> VirtualBmc {
    let spec = VirtualMachineSpec {
        name: "lab-9".into(),
        uuid: "5e0f0c1a-7b7e-4d3e-9a55-0c4c2b1a0f09".into(),
        memory_mib: 128,
        vcpus: 2,
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        disks: Vec::new(),
        nics: Vec::new(),
        serial_socket: dir.join("serial.sock"),
        serial_log: dir.join("serial.log"),
        cd_drive: false,
    };
    VirtualBmc::start(spec, "127.0.0.1:0".parse().unwrap(), "admin", "pw", dir)
        .await
        .unwrap()
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<(&str, &str)>,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        }
        if let Some(t) = token {
            r = r.header("X-Auth-Token", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let resp = self
            .send(method, path, Some(("admin", "pw")), None, body)
            .await;
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn message_id(body: &Value) -> String {
    body["error"]["@Message.ExtendedInfo"][0]["MessageId"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn authentication_sessions_and_redfish_errors() {
    let dir = tempfile::tempdir().unwrap();
    let v = vbmc(dir.path()).await;
    assert!(v.addr().ip().is_loopback());
    let c = Client {
        base: v.url(),
        http: reqwest::Client::new(),
    };

    // The service root is public; everything else needs credentials.
    let root = c.send(Method::GET, "/redfish/v1/", None, None, None).await;
    assert_eq!(root.status(), StatusCode::OK);
    assert_eq!(root.headers()["OData-Version"], "4.0");
    let root: Value = root.json().await.unwrap();
    assert_eq!(
        root["Links"]["Sessions"]["@odata.id"],
        "/redfish/v1/SessionService/Sessions"
    );
    let anon = c
        .send(Method::GET, "/redfish/v1/Systems", None, None, None)
        .await;
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    assert!(anon.headers().contains_key("www-authenticate"));
    let body: Value = anon.json().await.unwrap();
    assert!(message_id(&body).ends_with("NoValidSession"), "{body}");
    let wrong = c
        .send(
            Method::GET,
            "/redfish/v1/Systems",
            Some(("admin", "nope")),
            None,
            None,
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Sessions: login, use, logout.
    let sessions = "/redfish/v1/SessionService/Sessions";
    let bad_login = c
        .send(
            Method::POST,
            sessions,
            None,
            None,
            Some(json!({"UserName": "admin", "Password": "x"})),
        )
        .await;
    assert_eq!(bad_login.status(), StatusCode::UNAUTHORIZED);
    let login = c
        .send(
            Method::POST,
            sessions,
            None,
            None,
            Some(json!({"UserName": "admin", "Password": "pw"})),
        )
        .await;
    assert_eq!(login.status(), StatusCode::CREATED);
    let token = login.headers()["x-auth-token"]
        .to_str()
        .unwrap()
        .to_string();
    let location = login.headers()["location"].to_str().unwrap().to_string();
    let sys = c
        .send(
            Method::GET,
            "/redfish/v1/Systems/lab-9",
            None,
            Some(&token),
            None,
        )
        .await;
    assert_eq!(sys.status(), StatusCode::OK);
    assert_eq!(sys.headers()["allow"], "GET, PATCH");
    let sys: Value = sys.json().await.unwrap();
    assert_eq!(sys["PowerState"], "Off");
    assert_eq!(sys["MemorySummary"]["TotalSystemMemoryGiB"], 0.125);
    assert_eq!(
        sys["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"],
        json!(["None", "Pxe", "Hdd"])
    );
    let out = c
        .send(Method::DELETE, &location, None, Some(&token), None)
        .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let after = c
        .send(
            Method::GET,
            "/redfish/v1/Systems/lab-9",
            None,
            Some(&token),
            None,
        )
        .await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // PATCH: unknown, read-only and out-of-list values are 400s with a message id.
    let sys = "/redfish/v1/Systems/lab-9";
    for (body, id) in [
        (json!({"Colour": "red"}), "PropertyUnknown"),
        (json!({"PowerState": "On"}), "PropertyNotWritable"),
        (
            json!({"Boot": {"BootSourceOverrideTarget": "Floppy"}}),
            "PropertyValueNotInList",
        ),
        (
            json!({"Boot": {"BootSourceOverrideTarget": "Cd"}}),
            "PropertyValueNotInList",
        ),
        (
            json!({"Boot": {"BootSourceOverrideMode": "UEFI"}}),
            "PropertyValueNotInList",
        ),
        (
            json!({"Boot": {"BootSourceOverrideEnabled": 1}}),
            "PropertyValueTypeError",
        ),
        (json!({"Boot": {"Colour": "red"}}), "PropertyUnknown"),
    ] {
        let (s, b) = c.admin(Method::PATCH, sys, Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {b}");
        assert!(message_id(&b).ends_with(id), "{body}: {b}");
    }
    let (s, b) = c
        .admin(
            Method::PATCH,
            sys,
            Some(json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideMode": "Legacy"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["Boot"]["BootSourceOverrideEnabled"], "Continuous");

    // Actions while off: a graceful shutdown is already done, an NMI has nobody to go to.
    let reset = "/redfish/v1/Systems/lab-9/Actions/ComputerSystem.Reset";
    let (s, _) = c
        .admin(
            Method::POST,
            reset,
            Some(json!({"ResetType": "GracefulShutdown"})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = c
        .admin(Method::POST, reset, Some(json!({"ResetType": "Nmi"})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, b) = c
        .admin(Method::POST, reset, Some(json!({"ResetType": "Explode"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(message_id(&b).ends_with("ActionParameterNotSupported"));
    let (s, _) = c.admin(Method::POST, reset, Some(json!({}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // No CD drive: no virtual media. Other systems and paths: 404.
    let (s, b) = c
        .admin(Method::GET, "/redfish/v1/Managers/1/VirtualMedia", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["Members@odata.count"], 0);
    let (s, _) = c
        .admin(Method::GET, "/redfish/v1/Systems/other", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = c.admin(Method::GET, "/redfish/v1/Nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(message_id(&b).ends_with("ResourceMissingAtURI"));

    // Off: 0 W, and the energy counter does not move.
    let (_, env) = c
        .admin(
            Method::GET,
            "/redfish/v1/Chassis/1/EnvironmentMetrics",
            None,
        )
        .await;
    assert_eq!(env["PowerWatts"]["Reading"], 0.0);
    assert_eq!(env["EnergykWh"]["Reading"], 0.0);
    v.shutdown().await;
}
