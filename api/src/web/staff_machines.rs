//! Staff enrol and edit machines: one form for both (name, MACs, site and rack, tags, arch,
//! the BMC), sent to the API's own create and PATCH handlers, and a "check BMC" that runs
//! the API's BMC check and says in words what the BMC answered. A stored BMC password is never
//! shown; an edit keeps it unless a new one is typed.

use super::render::{page, PageError};
use super::session::{CsrfForm, Visitor};
use super::Me;
use crate::auth::{Gated, GatedPath, STAFF};
use crate::json::ApiJson;
use crate::routes::{machines, power};
use crate::state::AppState;
use crate::ApiError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use inventory::{Machine, MachinePatch, NewBmc, NewMachine, Nic};
use minijinja::context;
use serde::{Deserialize, Serialize};

/// The BMC kinds the form offers: URL scheme and label.
const BMC_KINDS: &[(&str, &str)] = &[
    ("redfish+https", "Redfish over HTTPS"),
    ("redfish+http", "Redfish over plain HTTP"),
    ("ipmi", "IPMI"),
];

/// The enrol/edit form as the browser sends it (and as the page shows it back).
#[derive(Deserialize, Serialize, Default, Clone)]
pub struct MachineForm {
    #[serde(default)]
    name: String,
    /// MAC addresses separated by commas, spaces or lines; the first PXE-boots.
    #[serde(default)]
    macs: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    rack: String,
    /// Tags separated by commas or spaces.
    #[serde(default)]
    tags: String,
    #[serde(default)]
    arch: String,
    #[serde(default)]
    bmc_kind: String,
    /// host[:port][/path]; empty: no BMC.
    #[serde(default)]
    bmc_address: String,
    #[serde(default)]
    bmc_user: String,
    /// Never sent back to the browser (skipped when the form is shown again).
    #[serde(default, skip_serializing)]
    bmc_password: String,
    /// "on" when the BMC is to be checked after saving.
    #[serde(default)]
    check: String,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn opt(t: &str) -> Option<String> {
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

impl MachineForm {
    /// The form filled from a stored machine (the password field empty).
    fn of(m: &Machine) -> MachineForm {
        let (kind, address) = match &m.bmc {
            Some(b) => match b.url.split_once("://") {
                Some((k, a)) => (k.to_string(), a.to_string()),
                None => (String::new(), b.url.clone()),
            },
            None => ("redfish+https".into(), String::new()),
        };
        MachineForm {
            name: m.name.clone(),
            macs: m
                .nics
                .iter()
                .map(|n| n.mac.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            site: m.site.clone().unwrap_or_default(),
            rack: m.rack.clone().unwrap_or_default(),
            tags: m.tags.join(", "),
            arch: m.arch.clone(),
            bmc_kind: kind,
            bmc_address: address,
            bmc_user: m
                .bmc
                .as_ref()
                .map(|b| b.username.clone())
                .unwrap_or_default(),
            bmc_password: String::new(),
            check: "on".into(),
        }
    }

    /// The BMC URL the form names, if it names one.
    fn bmc_url(&self) -> Option<String> {
        let address = opt(&self.bmc_address)?;
        if address.contains("://") {
            return Some(address);
        }
        let kind = opt(&self.bmc_kind).unwrap_or_else(|| "redfish+https".into());
        Some(format!("{kind}://{address}"))
    }

    fn macs(&self) -> Result<Vec<inventory::MacAddress>, ApiError> {
        words(&self.macs)
            .iter()
            .map(|w| {
                w.parse().map_err(|_| {
                    ApiError::invalid(
                        "macs",
                        format!("'{w}' is not a MAC address (aa:bb:cc:dd:ee:ff)"),
                    )
                })
            })
            .collect()
    }

    /// The API's enrolment request.
    fn new_machine(&self) -> Result<NewMachine, ApiError> {
        Ok(NewMachine {
            name: self.name.trim().to_string(),
            macs: self.macs()?,
            arch: opt(&self.arch),
            tags: words(&self.tags),
            site: opt(&self.site),
            rack: opt(&self.rack),
            bmc: self.bmc_url().map(|url| NewBmc {
                url,
                username: self.bmc_user.trim().to_string(),
                password: opt(&self.bmc_password),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// The API's PATCH: only what differs from `m`, the stored password kept unless retyped.
    fn patch(&self, m: &Machine) -> Result<MachinePatch, ApiError> {
        let was = MachineForm::of(m);
        let changed =
            |new: &str, old: &str| (new.trim() != old.trim()).then(|| new.trim().to_string());
        let mut p = MachinePatch {
            site: changed(&self.site, &was.site),
            rack: changed(&self.rack, &was.rack),
            arch: changed(&self.arch, &was.arch).filter(|a| !a.is_empty()),
            ..Default::default()
        };
        if words(&self.tags) != words(&was.tags) {
            p.tags = Some(words(&self.tags));
        }
        let macs = self.macs()?;
        if macs.iter().map(|m| m.to_string()).collect::<Vec<_>>() != words(&was.macs) {
            // NICs that stay keep their name, boot flag and reserved address.
            let mut nics: Vec<Nic> = macs
                .into_iter()
                .map(|mac| {
                    m.nics
                        .iter()
                        .find(|n| n.mac == mac)
                        .cloned()
                        .unwrap_or(Nic {
                            mac,
                            name: String::new(),
                            pxe: false,
                            ip: None,
                        })
                })
                .collect();
            if !nics.iter().any(|n| n.pxe) {
                if let Some(first) = nics.first_mut() {
                    first.pxe = true;
                }
            }
            p.nics = Some(nics);
        }
        let bmc_changed = self.bmc_url() != was.bmc_url()
            || self.bmc_user.trim() != was.bmc_user.trim()
            || opt(&self.bmc_password).is_some();
        match (&m.bmc, self.bmc_url()) {
            (Some(_), None) => p.remove_bmc = true,
            (old, Some(url)) if bmc_changed => {
                if old.as_ref().is_some_and(|b| b.has_ca) {
                    return Err(ApiError::invalid(
                        "bmc",
                        "this BMC is verified with its own CA certificate, which this page cannot carry: change it with 'rackshare machine edit NAME --bmc … --bmc-ca FILE'",
                    ));
                }
                p.bmc = Some(NewBmc {
                    url,
                    username: self.bmc_user.trim().to_string(),
                    password: opt(&self.bmc_password),
                    keep_password: true,
                    tls_fingerprint: old.as_ref().and_then(|b| b.tls_fingerprint.clone()),
                    tls_insecure: old.as_ref().is_some_and(|b| b.tls_insecure),
                    ..Default::default()
                });
            }
            _ => {}
        }
        Ok(p)
    }
}

/// What the BMC check said, for the page.
#[derive(Serialize, Default)]
struct CheckResult {
    ok: bool,
    text: String,
}

/// Runs the API's BMC check for `name` and puts its answer in words.
async fn check_in_words(st: &AppState, v: &Visitor, name: &str) -> CheckResult {
    let gated = match GatedPath::check(st, v.caller.clone(), name).await {
        Ok(g) => g,
        Err(e) => {
            return CheckResult {
                ok: false,
                text: e.message,
            }
        }
    };
    match power::check_bmc(State(st.clone()), gated, Path(name.to_string())).await {
        Ok(Json(f)) => {
            let text = |k: &str| f[k].as_str().map(str::to_string);
            let mut parts = vec![format!(
                "The BMC at {} answered: power is {}",
                text("bmc").unwrap_or_default(),
                text("power_state").unwrap_or_else(|| "unknown".into())
            )];
            let system: Vec<String> = [text("vendor"), text("model")]
                .into_iter()
                .flatten()
                .collect();
            if !system.is_empty() {
                parts.push(format!("system {}", system.join(" ")));
            }
            if let Some(s) = text("serial") {
                parts.push(format!("serial {s}"));
            }
            CheckResult {
                ok: true,
                text: format!("{}.", parts.join(", ")),
            }
        }
        Err(e) => CheckResult {
            ok: false,
            text: e.message,
        },
    }
}

struct Shown<'a> {
    /// None: the enrol form; Some: the edit form of this machine.
    machine: Option<&'a Machine>,
    form: MachineForm,
    status: StatusCode,
    problem: Option<String>,
    notice: Option<String>,
    check: Option<CheckResult>,
}

fn show(v: &Visitor, s: Shown<'_>) -> Response {
    let bmc = s.machine.and_then(|m| m.bmc.as_ref());
    let title = match s.machine {
        Some(m) => format!("Edit {}", m.name),
        None => "Enrol a machine".to_string(),
    };
    page(
        s.status,
        "machine_form.html",
        context! {
            title => title, me => Me::of(v), f => s.form, editing => s.machine.map(|m| m.name.clone()),
            kinds => BMC_KINDS, has_password => bmc.is_some_and(|b| b.has_password),
            has_bmc => bmc.is_some(), problem => s.problem, notice => s.notice, check => s.check,
        },
    )
}

/// GET /machines/new: the enrol form (staff only).
pub async fn new_form(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    Gated::<machines::MachineCreateGate>::check(&st, v.caller.clone()).await?;
    let form = MachineForm {
        bmc_kind: "redfish+https".into(),
        check: "on".into(),
        ..Default::default()
    };
    Ok(show(
        &v,
        Shown {
            machine: None,
            form,
            status: StatusCode::OK,
            problem: None,
            notice: None,
            check: None,
        },
    ))
}

/// POST /machines/new: the API's enrolment, then (if asked) its BMC check; the edit form with
/// both answers.
pub async fn enrol(
    State(st): State<AppState>,
    CsrfForm { visitor, form }: CsrfForm<MachineForm>,
) -> Result<Response, PageError> {
    let gated = Gated::<machines::MachineCreateGate>::check(&st, visitor.caller.clone()).await?;
    let created = match form.new_machine() {
        Ok(body) => machines::create(State(st.clone()), gated, ApiJson(body)).await,
        Err(e) => Err(e),
    };
    let m = match created {
        Ok((_, Json(m))) => m,
        Err(e) => {
            let shown = Shown {
                machine: None,
                form,
                status: e.status,
                problem: Some(e.message),
                notice: None,
                check: None,
            };
            return Ok(show(&visitor, shown));
        }
    };
    let check = match (&m.bmc, form.check.as_str()) {
        (Some(_), "on") => Some(check_in_words(&st, &visitor, &m.name).await),
        _ => None,
    };
    let Json(m) = machines::show(State(st), visitor.caller.clone(), Path(m.name)).await?;
    let notice = Some(format!("{} is enrolled (state {}).", m.name, m.state));
    let shown = Shown {
        machine: Some(&m),
        form: MachineForm::of(&m),
        status: StatusCode::CREATED,
        problem: None,
        notice,
        check,
    };
    Ok(show(&visitor, shown))
}

/// The staff-only machine behind an edit page: 404 outside the caller's scope, 403 for
/// non-staff (both audited by the API's checks).
async fn editable(st: &AppState, v: &Visitor, name: String) -> Result<Machine, PageError> {
    let Json(m) = machines::show(State(st.clone()), v.caller.clone(), Path(name)).await?;
    v.caller
        .require(st, STAFF, "machine.update", &m.name)
        .await?;
    Ok(m)
}

/// GET /machines/{name}/edit.
pub async fn edit_form(
    State(st): State<AppState>,
    v: Visitor,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let m = editable(&st, &v, name).await?;
    let form = MachineForm::of(&m);
    Ok(show(
        &v,
        Shown {
            machine: Some(&m),
            form,
            status: StatusCode::OK,
            problem: None,
            notice: None,
            check: None,
        },
    ))
}

/// POST /machines/{name}/edit: the API's PATCH with what changed, then (if asked) the BMC check.
pub async fn edit(
    State(st): State<AppState>,
    Path(name): Path<String>,
    CsrfForm { visitor, form }: CsrfForm<MachineForm>,
) -> Result<Response, PageError> {
    let m = editable(&st, &visitor, name).await?;
    let updated = match form.patch(&m) {
        Ok(p) => match GatedPath::check(&st, visitor.caller.clone(), &m.name).await {
            Ok(g) => machines::update(State(st.clone()), g, Path(m.name.clone()), ApiJson(p)).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let m = match updated {
        Ok(Json(m)) => m,
        Err(e) => {
            let shown = Shown {
                machine: Some(&m),
                form,
                status: e.status,
                problem: Some(e.message),
                notice: None,
                check: None,
            };
            return Ok(show(&visitor, shown));
        }
    };
    let check = match (&m.bmc, form.check.as_str()) {
        (Some(_), "on") => Some(check_in_words(&st, &visitor, &m.name).await),
        _ => None,
    };
    let Json(m) = machines::show(State(st), visitor.caller.clone(), Path(m.name)).await?;
    let notice = Some(format!("{} is saved.", m.name));
    let shown = Shown {
        machine: Some(&m),
        form: MachineForm::of(&m),
        status: StatusCode::OK,
        problem: None,
        notice,
        check,
    };
    Ok(show(&visitor, shown))
}

/// The check form (no fields but the CSRF token).
#[derive(Deserialize)]
pub struct NoFields {}

/// POST /machines/{name}/bmc-check: the API's BMC check of the stored settings, in words.
pub async fn check(
    State(st): State<AppState>,
    Path(name): Path<String>,
    CsrfForm { visitor, .. }: CsrfForm<NoFields>,
) -> Result<Response, PageError> {
    let m = editable(&st, &visitor, name).await?;
    let check = Some(check_in_words(&st, &visitor, &m.name).await);
    let Json(m) = machines::show(State(st), visitor.caller.clone(), Path(m.name)).await?;
    let shown = Shown {
        machine: Some(&m),
        form: MachineForm::of(&m),
        status: StatusCode::OK,
        problem: None,
        notice: None,
        check,
    };
    Ok(show(&visitor, shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(bmc: Option<inventory::Bmc>) -> Machine {
        serde_json::from_value(serde_json::json!({
            "id": 1, "name": "m1", "serial": null, "vendor": null, "model": null, "arch": "x86_64",
            "cpu_count": null, "cpu_model": null, "ram_mib": null, "disks": [],
            "nics": [{"mac": "52:54:00:00:00:01", "name": "eno1", "pxe": true, "ip": "10.0.0.5"}],
            "tags": ["a", "b"], "site": "hall", "rack": "r1", "rack_unit": null, "notes": "",
            "state": "new", "state_reason": "", "state_changed_at": 0, "lease_id": null,
            "member_group": null, "bmc": bmc, "energy_wh": 0.0, "created_at": 0, "updated_at": 0,
        }))
        .unwrap_or_else(|e| panic!("machine: {e}"))
    }

    fn bmc() -> inventory::Bmc {
        serde_json::from_value(serde_json::json!({
            "protocol": "redfish", "url": "redfish+http://127.0.0.1:8000", "username": "admin",
            "has_password": true, "tls_insecure": false, "tls_fingerprint": null, "has_ca": false,
            "last_success_at": null, "last_failure_at": null, "consecutive_failures": 0,
            "last_error": null, "power_state": null,
        }))
        .unwrap_or_else(|e| panic!("bmc: {e}"))
    }

    #[test]
    fn an_unchanged_form_patches_nothing_and_keeps_the_password() {
        let m = machine(Some(bmc()));
        let p = MachineForm::of(&m)
            .patch(&m)
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert!(p.site.is_none() && p.rack.is_none() && p.tags.is_none() && p.nics.is_none());
        assert!(p.bmc.is_none() && !p.remove_bmc && p.arch.is_none());
    }

    #[test]
    fn a_new_user_keeps_the_stored_password_and_a_kept_nic_its_address() {
        let m = machine(Some(bmc()));
        let mut f = MachineForm::of(&m);
        f.bmc_user = "root".into();
        f.macs = "52:54:00:00:00:01 52:54:00:00:00:02".into();
        let p = f.patch(&m).unwrap_or_else(|e| panic!("{}", e.message));
        let b = p.bmc.unwrap_or_else(|| panic!("a BMC change"));
        assert!(b.keep_password && b.password.is_none() && b.username == "root");
        let nics = p.nics.unwrap_or_default();
        assert_eq!(nics.len(), 2);
        assert!(nics[0].pxe && nics[0].ip.is_some() && !nics[1].pxe);
    }

    #[test]
    fn an_empty_address_removes_the_bmc_and_a_bad_mac_is_named() {
        let m = machine(Some(bmc()));
        let mut f = MachineForm::of(&m);
        f.bmc_address.clear();
        assert!(f.patch(&m).map(|p| p.remove_bmc).unwrap_or(false));
        f.macs = "52:54:00:00:00:01, nope".into();
        let e = f.patch(&m).err().map(|e| e.message).unwrap_or_default();
        assert!(e.contains("'nope' is not a MAC address"), "{e}");
    }

    #[test]
    fn the_password_is_never_shown_back() {
        let f = MachineForm {
            bmc_password: "s3cret".into(),
            ..Default::default()
        };
        let shown = serde_json::to_string(&f).unwrap_or_default();
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
