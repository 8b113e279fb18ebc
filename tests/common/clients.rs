//! Clients the tests play: a scripted agent inside the lab, and the boot-script fetch.
#![allow(dead_code)]

use super::lab::{LAB_AGENT_API, LAB_API};
use serde_json::Value;
use std::time::Duration;
use testkit::netns::Lab;

/// The lab URL of `path`: the agent's endpoints on the HTTPS agent listener, boot files and
/// scripts on the plain one.
pub fn lab_url(path: &str) -> String {
    if path.starts_with("/api/v1/agent/") {
        format!("{LAB_AGENT_API}{path}")
    } else {
        format!("{LAB_API}{path}")
    }
}

/// One HTTP call from inside the lab, as the agent makes it: (status, body).
pub fn agent_call(
    lab: &Lab,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Vec<u8>) {
    agent_call_with(lab, method, path, token, body, &[])
}

pub fn agent_call_with(
    lab: &Lab,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
    extra: &[&str],
) -> (u16, Vec<u8>) {
    lab_call(lab, &lab_url(path), method, token, body, extra)
}

/// One HTTP call to `url` from the lab's server namespace: (status, body).
pub fn lab_call(
    lab: &Lab,
    url: &str,
    method: &str,
    token: &str,
    body: Option<&Value>,
    extra: &[&str],
) -> (u16, Vec<u8>) {
    call_in(lab, &lab.srv, url, method, token, body, extra)
}

/// One HTTP call to `url` from namespace `ns`: (status, body).
pub fn call_in(
    lab: &Lab,
    ns: &str,
    url: &str,
    method: &str,
    token: &str,
    body: Option<&Value>,
    extra: &[&str],
) -> (u16, Vec<u8>) {
    let out_file = lab.path(&format!("curl-{}.out", rand_tag()));
    let auth = format!("Authorization: Bearer {token}");
    let out_path = out_file.display().to_string();
    let data = body.map(|b| b.to_string());
    let mut argv = vec![
        "curl",
        "-s",
        "-o",
        &out_path,
        "-w",
        "%{http_code}",
        "-X",
        method,
        "-H",
        &auth,
    ];
    if let Some(d) = &data {
        argv.extend(["-H", "Content-Type: application/json", "--data-binary", d]);
    }
    // The scripted agents do not pin: the real agent's pin is tested in
    // agent/tests/pinned_tls.rs and by the VM tests.
    if url.starts_with("https://") {
        argv.push("-k");
    }
    argv.extend(extra);
    argv.push(url);
    let out = lab.exec(ns, &argv, Duration::from_secs(30));
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {argv:?}: {}", String::from_utf8_lossy(&out.stderr)));
    (code, std::fs::read(&out_file).unwrap_or_default())
}

fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

pub fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// The boot script the machine would fetch, and the one-time token in it (None: local boot).
pub fn boot_token(lab: &Lab, mac: &str) -> (String, Option<String>) {
    let (code, body) = agent_call(lab, "GET", &format!("/boot/{mac}.ipxe"), "-", None);
    assert_eq!(code, 200);
    let script = String::from_utf8_lossy(&body).into_owned();
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rackshare.token="))
        .map(str::to_string);
    (script, token)
}

/// The address the tests reserve for a machine's MAC on the lab segment (10.77.0.100 + the
/// MAC's last byte), e.g. `s.cli(&["machine", "add", n, "--mac", &reserved(mac)])`.
pub fn machine_ip(mac: &str) -> String {
    let last = mac
        .rsplit([':', '-'])
        .next()
        .and_then(|b| u8::from_str_radix(b, 16).ok())
        .expect("a MAC");
    format!("10.77.0.{}", 100 + u16::from(last) % 150)
}

/// `MAC=IP`: the `--mac` argument that reserves [`machine_ip`] for `mac`.
pub fn reserved(mac: &str) -> String {
    format!("{mac}={}", machine_ip(mac))
}

/// The agent's claim as the machine makes it: from a host on the boot segment (a veth on
/// br0 with the machine's MAC and its reserved address [`machine_ip`]), reporting its MAC.
pub fn agent_claim(lab: &Lab, mac: &str, token: &str) -> (u16, Vec<u8>) {
    let colons = mac.replace('-', ":");
    let body = serde_json::json!({ "macs": [colons] });
    claim_from_host(lab, mac, token, &body)
}

/// A claim with `body` from the machine's host (see [`agent_claim`]).
pub fn claim_from_host(lab: &Lab, mac: &str, token: &str, body: &Value) -> (u16, Vec<u8>) {
    let ns = machine_host(lab, mac);
    call_in(
        lab,
        &ns,
        &lab_url("/api/v1/agent/claim"),
        "POST",
        token,
        Some(body),
        &[],
    )
}

/// The namespace that plays the machine with `mac` on br0, made on first use.
pub fn machine_host(lab: &Lab, mac: &str) -> String {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static MADE: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let colons = mac.replace('-', ":");
    let role = format!("m{}", colons.replace(':', ""));
    let ns = format!("{}-{role}", lab.prefix);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if made.get_or_insert_with(HashSet::new).insert(ns.clone()) {
        lab.add_host(&role, &colons, Some(&format!("{}/24", machine_ip(mac))));
    }
    ns
}

/// One DHCP exchange from `ns` with a PXE vendor class (BIOS, arch 0) and option 93.
pub fn pxe_udhcpc(lab: &Lab, ns: &str) {
    let out = lab.exec(
        ns,
        &[
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-i",
            "eth0",
            "-s",
            "/bin/true",
            "-V",
            "PXEClient:Arch:00000:UNDI:002001",
            "-x",
            "0x5d:0000",
            "-t",
            "5",
            "-T",
            "1",
        ],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "udhcpc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
