//! A group's wipe certificates in the browser: the list, one certificate (machine, method,
//! disks, the ranges the server sampled, times), its signed file, and whether its signature
//! verifies — checked here on the server with the `trust` crate against this instance's keys,
//! the same check `rackshare certificate verify` makes offline.

use super::render::{page, when, PageError};
use super::session::Visitor;
use super::Me;
use crate::routes::certificates;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use minijinja::context;
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
struct CertificateRow {
    id: i64,
    machine: String,
    group: String,
    wiped: String,
    verified: bool,
    detail: String,
}

/// GET /certificates: the certificates the API lists for this person.
pub async fn list(State(st): State<AppState>, v: Visitor) -> Result<Response, PageError> {
    let Json(all) = certificates::list(State(st), v.caller.clone()).await?;
    let rows: Vec<CertificateRow> = all
        .into_iter()
        .map(|c| CertificateRow {
            id: c.id,
            machine: c.machine,
            group: c.member_group.unwrap_or_default(),
            wiped: when(c.created_at),
            verified: c.verification.verified,
            detail: c.verification.detail,
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        "certificates.html",
        context! { title => "Wipe certificates", me => Me::of(&v), rows => rows },
    ))
}

#[derive(Serialize)]
struct DiskRow {
    name: String,
    serial: String,
    size: String,
    method: String,
    nist: String,
    verified_by_agent: bool,
    sampled: String,
}

fn text_at(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn size_words(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{b} bytes"),
        None => "unknown".into(),
    }
}

fn disks_of(body: &Value) -> Vec<DiskRow> {
    body.get("disks")
        .and_then(Value::as_array)
        .map(|disks| {
            disks
                .iter()
                .map(|d| DiskRow {
                    name: text_at(d, "name"),
                    serial: text_at(d, "serial"),
                    size: size_words(d.get("size_bytes").and_then(Value::as_u64)),
                    method: text_at(d, "method"),
                    nist: text_at(d, "nist_sp800_88"),
                    verified_by_agent: d.get("verified").and_then(Value::as_bool) == Some(true),
                    sampled: text_at(d, "server_verification"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A time field of the certificate (unix ms) as the pages show times.
fn time_at(body: &Value, key: &str) -> String {
    body.get(key)
        .and_then(Value::as_i64)
        .map(when)
        .unwrap_or_else(|| "not recorded".into())
}

/// GET /certificates/{id}: one certificate, its disks and its signature check (404 for
/// another group's, as the API answers).
pub async fn show(
    State(st): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let cert = certificates::readable(&st, &v.caller, &id).await?;
    let keys = certificates::verifying_keys(&st).await?;
    let check = certificates::verify_stored(&cert, &keys);
    let body = &cert.body;
    Ok(page(
        StatusCode::OK,
        "certificate.html",
        context! {
            title => format!("Wipe certificate {}", cert.id), me => Me::of(&v),
            id => cert.id, machine => cert.machine.clone(),
            serial => text_at(body, "machine_serial"),
            group => cert.member_group.clone(),
            lease => text_at(body, "lease_id"), job => cert.job_id,
            started => time_at(body, "started_at"), completed => time_at(body, "completed_at"),
            requested_by => text_at(body, "requested_by"),
            agent_version => text_at(body, "agent_version"),
            disks => disks_of(body), verified => check.verified, detail => check.detail,
            signed => cert.signature.is_some(),
        },
    ))
}

/// GET /certificates/{id}/download: the signed file, as the API serves it.
pub async fn download(
    State(st): State<AppState>,
    v: Visitor,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    Ok(certificates::download(State(st), v.caller, Path(id)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn disks_are_read_from_the_certificate() {
        let body = json!({"disks": [{"name": "vda", "serial": "S1", "size_bytes": 8_589_934_592_u64,
            "method": "blkdiscard+zero", "verified": true, "nist_sp800_88": "clear",
            "server_verification": "3 ranges read back as zeros"}]});
        let d = disks_of(&body);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].size, "8.0 GiB");
        assert!(d[0].verified_by_agent);
        assert_eq!(d[0].sampled, "3 ranges read back as zeros");
        assert!(disks_of(&json!({})).is_empty());
        assert_eq!(time_at(&json!({}), "started_at"), "not recorded");
    }
}
