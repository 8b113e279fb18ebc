//! `GET /boot/{file}`: what firmware and iPXE fetch over HTTP. `MAC.ipxe` is the machine's
//! boot script, decided here from its state and job (and where a job waits for its agent,
//! with the boot attempt's one-time token); anything else is a file of the boot root.

use crate::boot::{intent_for, AgentApi, BootConnection};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use inventory::{JobKind, JobState, MacAddress, Machine, NewAuditEvent, NewJob};
use pxe::{AgentBoot, AgentMode, BootIntent, BootScript, MacAddr};

/// `GET /boot/{file}`: `MAC.ipxe` renders the machine's script; anything else is a file of the
/// boot root (plain names only: no directories, no escapes), streamed with Range support.
pub async fn boot_file(
    State(st): State<AppState>,
    Path(file): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(boot) = st.boot.clone() else {
        return Err(ApiError::not_found(
            "the boot services are not configured (start with --pxe-interface)",
        ));
    };
    if let Some(mac) = file.strip_suffix(".ipxe") {
        let mac: MacAddr = mac
            .parse()
            .map_err(|_| ApiError::invalid("mac", format!("'{mac}' is not a MAC address")))?;
        // The machine is sent URLs on the address of the interface it asked on.
        let local = req
            .extensions()
            .get::<axum::extract::ConnectInfo<BootConnection>>()
            .and_then(|c| c.0.local)
            .map(|a| a.ip());
        let base = boot.base_for(local).to_string();
        let api = boot.agent_api_for(local);
        let from = peer_v4(&req);
        if let Some(ip) = from {
            boot.events.address(ip, mac);
        }
        let served = boot_script(&st, mac, &base, &api).await;
        let detail = match &served {
            Ok((_, kind)) => serde_json::json!({ "script": kind, "from": from }),
            Err(e) => serde_json::json!({ "error": e.message, "from": from }),
        };
        // Wait scripts come back every few seconds and would push out everything else.
        if !matches!(served, Ok((_, "wait"))) {
            boot.events
                .record(pxe::BootEvent::now(mac, "http.script", detail));
        }
        return served.map(|(r, _)| r);
    }
    if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
        return Err(ApiError::not_found(format!("no boot file '{file}'")));
    }
    let path = boot.root.join(&file);
    // Symlinks out of the root are refused like in TFTP.
    let canon_root = std::fs::canonicalize(&boot.root).map_err(ApiError::internal)?;
    let found = matches!(std::fs::canonicalize(&path),
        Ok(p) if p.starts_with(&canon_root) && p.is_file());
    // Range requests (the kernel fetched in pieces) would fill a MAC's record: the first
    // request of a file is the event.
    if !req.headers().contains_key(axum::http::header::RANGE) {
        if let Some(ip) = peer_v4(&req) {
            let detail = match found {
                true => serde_json::json!({ "file": file }),
                false => serde_json::json!({ "file": file, "error": "not found" }),
            };
            boot.events.record_from(ip, "http.file", detail);
        }
    }
    if !found {
        return Err(ApiError::not_found(format!("no boot file '{file}'")));
    }
    crate::boot::serve_file(path, req).await
}

/// The IPv4 address a boot request came from (IPv4-mapped IPv6 too).
fn peer_v4(req: &Request) -> Option<std::net::Ipv4Addr> {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<BootConnection>>()
        .and_then(|c| c.0.peer)?;
    match peer.ip() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

/// Renders the iPXE script of the machine with `mac`: files on `base`, the agent told `api`.
/// Also says which script it was (`local-disk`, `agent`, `discovery`, `wait`).
async fn boot_script(
    st: &AppState,
    mac: MacAddr,
    base: &str,
    api: &AgentApi,
) -> Result<(Response, &'static str), ApiError> {
    let machine = st.inv.machine_by_mac(MacAddress(mac.0)).await?;
    let script = match &machine {
        Some(m) => script_for(st, m, base, api).await?,
        // Not enrolled (discovery is on, or DHCP would not have sent it here): the agent
        // inspects it once it is enrolled.
        None => BootScript::Discovery(agent_boot(base, api, AgentMode::Inspect, "none".into())),
    };
    let self_url = format!("{base}/boot/{}.ipxe", mac.to_url_form());
    let text = pxe::try_render_boot_script(mac, &script, &self_url).map_err(ApiError::internal)?;
    let kind = match script {
        BootScript::LocalDisk => "local-disk",
        BootScript::Agent(_) => "agent",
        BootScript::Discovery(_) => "discovery",
        BootScript::Wait { .. } => "wait",
    };
    // Wait scripts come back every few seconds: not worth an audit line each.
    if let Some(m) = machine
        .as_ref()
        .filter(|_| !matches!(script, BootScript::Wait { .. }))
    {
        tracing::info!(machine = %m.name, state = %m.state, "served boot script");
        let ev = NewAuditEvent::ok("pxe", "machine.boot_script", "machine", &m.name)
            .detail(serde_json::json!({ "script": kind }));
        // A read, audited after the fact: the script is served even when the audit log
        // cannot take the line (the machine must boot either way).
        if let Err(e) = st.inv.record(ev).await {
            tracing::warn!(machine = %m.name, error = %e, "could not audit a boot script");
        }
    }
    Ok((
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        kind,
    ))
}

/// The agent's kernel and command line: files on `base` (plain HTTP, for the firmware), the
/// API at `api` (HTTPS, pinned).
fn agent_boot(base: &str, api: &AgentApi, mode: AgentMode, token: String) -> AgentBoot {
    AgentBoot {
        kernel_url: format!("{base}/boot/agent-vmlinuz"),
        initrd_url: format!("{base}/boot/agent-initrd.img"),
        initrd_name: "agent-initrd.img".into(),
        api_url: api.url.clone(),
        pin: api.pin.clone(),
        token,
        mode,
        extra_cmdline: "console=ttyS0 console=tty0".into(),
    }
}

/// What an enrolled machine boots: the agent with a token when its job waits for one, a
/// short wait while its job prepares, else its disk. A machine nobody has looked at yet
/// gets an inspect job (MAAS commissions what it enlists), then it is `available` with its
/// hardware recorded.
async fn script_for(
    st: &AppState,
    m: &Machine,
    base: &str,
    api: &AgentApi,
) -> Result<BootScript, ApiError> {
    let intent = intent_for(m.state);
    if matches!(intent, BootIntent::LocalDisk | BootIntent::Ignore) {
        return Ok(BootScript::LocalDisk);
    }
    // Only a job whose boot attempt waits for its agent gets a token: the attempt's own
    // (the conductor armed it; a fetch never makes or changes one), single use.
    if let Some((_, token, kind)) = st.inv.armed_agent_token(m.id).await? {
        return Ok(BootScript::Agent(agent_boot(
            base,
            api,
            kind.agent_mode(),
            token,
        )));
    }
    if intent == BootIntent::Discover {
        if st.inv.active_job_of(m.id).await?.is_none() {
            let job = st
                .inv
                .create_job(
                    "pxe",
                    &NewJob {
                        kind: JobKind::Inspect,
                        machine_id: m.id,
                        image_id: None,
                        lease_id: None,
                        user_data: None,
                    },
                )
                .await?;
            st.conductor.wake();
            tracing::info!(machine = %m.name, job = job.id, "new machine PXE-booted: inspecting it");
        }
        return Ok(BootScript::Wait {
            seconds: 3,
            reason: "its inspection is starting".into(),
        });
    }
    waiting_or_disk(st, m.id).await
}

/// For a machine whose job is not (or no longer) waiting for its agent: wait while the job is
/// queued or still preparing (boot device, power), else boot the disk (the job is past the
/// agent: this is the reboot into the new image).
async fn waiting_or_disk(st: &AppState, machine_id: i64) -> Result<BootScript, ApiError> {
    Ok(match st.inv.active_job_of(machine_id).await? {
        Some(j) if j.state == JobState::Queued || j.step.is_some_and(|s| s.prepares_boot()) => {
            BootScript::Wait {
                seconds: 5,
                reason: format!(
                    "job {} ({}) is {}",
                    j.id,
                    j.kind,
                    if j.state == JobState::Queued {
                        "queued"
                    } else {
                        "starting"
                    }
                ),
            }
        }
        _ => BootScript::LocalDisk,
    })
}
