//! The bridge between the inventory's BMC records and the `bmc` crate's controller: builds
//! handles from stored (decrypted) settings, records every outcome in the machine's BMC
//! health record, and samples power for the energy ledger.

use crate::ApiError;
use axum::http::StatusCode;
use bmc::{BmcError, BmcHandle, BmcUrl, Controller, Credentials, Policy, TlsPolicy};
use futures::StreamExt;
use inventory::{BmcAccess, BmcHealth, Inventory, MachineFilter, SiteScope};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// Talks to machines' BMCs on behalf of the API and the job runner.
pub struct BmcService {
    controller: Controller,
    inv: Inventory,
    /// Handles by machine, with a digest of the settings they were built from: a Redfish
    /// session survives between calls, and an edited BMC gets a fresh handle.
    handles: Mutex<HashMap<String, ([u8; 32], BmcHandle)>>,
    /// Energy sampler rounds so far (machines that are off are read every
    /// [`OFF_SAMPLE_EVERY`]th round).
    energy_rounds: std::sync::atomic::AtomicU64,
    /// The machines this instance may call the BMCs of (a site's BMCs are reachable only
    /// from there).
    scope: SiteScope,
}

/// Checks a BMC URL as the user typed it.
pub fn validate_url(url: &str) -> Result<BmcUrl, ApiError> {
    url.parse::<BmcUrl>()
        .map_err(|e| ApiError::invalid("bmc", e.to_string()))
}

fn digest(a: &BmcAccess) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [
        a.url.as_str(),
        a.username.as_str(),
        a.password.as_deref().unwrap_or(""),
        a.tls_ca_pem.as_deref().unwrap_or(""),
        a.tls_fingerprint.as_deref().unwrap_or(""),
        if a.tls_insecure { "insecure" } else { "verify" },
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// How a BMC's certificate is trusted, from its stored settings (the one home of the rule:
/// commands and the console's Redfish lookups both use it).
pub fn tls_policy(a: &BmcAccess) -> Result<TlsPolicy, ApiError> {
    Ok(if a.tls_insecure {
        TlsPolicy::Insecure
    } else if let Some(fp) = &a.tls_fingerprint {
        TlsPolicy::fingerprint(fp).map_err(|e| ApiError::invalid("bmc.tls_fingerprint", e))?
    } else if let Some(ca) = &a.tls_ca_pem {
        TlsPolicy::CaPem(ca.clone())
    } else {
        TlsPolicy::Verify
    })
}

impl BmcService {
    /// A service with the given politeness policy, calling the BMCs of machines in `scope`.
    pub fn new(inv: Inventory, policy: Policy, scope: SiteScope) -> Self {
        BmcService {
            controller: Controller::new(policy),
            inv,
            handles: Mutex::new(HashMap::new()),
            energy_rounds: std::sync::atomic::AtomicU64::new(0),
            scope,
        }
    }

    fn build(&self, machine: &str, a: &BmcAccess) -> Result<BmcHandle, ApiError> {
        let url = validate_url(&a.url)?;
        let tls = tls_policy(a)?;
        let creds = Credentials::new(a.username.clone(), a.password.clone().unwrap_or_default());
        self.controller
            .connect(&url, creds, &tls)
            .map_err(|e| bmc_error(machine, &e))
    }

    /// The handle for a machine's BMC.
    pub async fn handle(&self, machine: &str) -> Result<BmcHandle, ApiError> {
        let access = self.inv.bmc_access(machine).await.map_err(|e| match e {
            inventory::Error::NotFound { .. } => ApiError {
                status: StatusCode::CONFLICT,
                code: "no_bmc",
                message: format!("machine '{machine}' has no BMC; add one with 'rackshare machine edit {machine} --bmc URL …'"),
                field: Some("bmc".into()),
            },
            other => other.into(),
        })?;
        if !self.scope.serves(access.site.as_deref()) {
            let site = access.site.as_deref().unwrap_or_default();
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                code: "other_site",
                message: format!(
                    "machine '{machine}' is at site '{site}': its BMC is reachable only from an instance of that site (see 'rackshare status')"
                ),
                field: Some("site".into()),
            });
        }
        let d = digest(&access);
        let mut map = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((old, h)) = map.get(machine) {
            if *old == d {
                return Ok(h.clone());
            }
        }
        let h = self.build(machine, &access)?;
        map.insert(machine.to_string(), (d, h.clone()));
        Ok(h)
    }

    /// Runs one BMC operation for a machine and records its outcome in the health record.
    pub async fn run<T, F, Fut>(&self, machine: &str, op: F) -> Result<T, ApiError>
    where
        F: FnOnce(BmcHandle) -> Fut,
        Fut: Future<Output = Result<T, BmcError>>,
        T: PowerHint,
    {
        let h = self.handle(machine).await?;
        let res = op(h).await;
        let health = match &res {
            Ok(v) => BmcHealth::Success {
                power_state: v.power_hint(),
            },
            Err(e) => BmcHealth::Failure(e.to_string()),
        };
        if let Err(e) = self.inv.record_bmc_health(machine, &health).await {
            tracing::warn!(%machine, error = %e, "could not record BMC health");
        }
        res.map_err(|e| bmc_error(machine, &e))
    }

    /// Samples every machine's power draw once and adds the energy since the last sample;
    /// machines last seen off (idle power-off) only every [`OFF_SAMPLE_EVERY`]th round, as
    /// they draw little and their BMCs need not be asked every interval.
    /// Only machines at a site `covers` are read (the sites this instance leads).
    pub async fn sample_energy(&self, interval: Duration, covers: impl Fn(Option<&str>) -> bool) {
        let round = self
            .energy_rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let off_round = round % OFF_SAMPLE_EVERY == 0;
        let machines = match self.inv.machines(&MachineFilter::default()).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "energy sampler: cannot list machines");
                return;
            }
        };
        // Several BMCs at once: one slow or dead BMC must not stretch the tick for all the
        // others. Each BMC still sees one command at a time (the controller's rule).
        let names: Vec<(String, Duration)> = machines
            .into_iter()
            .filter(|m| m.state != inventory::MachineState::Retired)
            .filter(|m| self.scope.serves(m.site.as_deref()) && covers(m.site.as_deref()))
            .filter_map(|m| {
                let off = m.bmc.as_ref()?.power_state.as_deref() == Some("off");
                match (off, off_round) {
                    (false, _) => Some((m.name, interval)),
                    (true, true) => Some((m.name, interval * OFF_SAMPLE_EVERY as u32)),
                    (true, false) => None,
                }
            })
            .collect();
        futures::stream::iter(names)
            .for_each_concurrent(ENERGY_PARALLELISM, |(name, every)| async move {
                self.sample_one(&name, every).await
            })
            .await;
    }

    async fn sample_one(&self, name: &str, interval: Duration) {
        let reading = self
            .run(name, |h| async move { h.meter_reading().await.map(Meter) })
            .await;
        match reading {
            Ok(Meter(bmc::MeterReading {
                watts: Some(w),
                energy_kwh,
            })) => {
                // Gaps longer than 2.5 intervals (the service was down, the BMC was
                // unreachable) are not bridged: nobody knows what was drawn meanwhile.
                let max_gap_ms = (interval.as_millis() as i64).saturating_mul(5) / 2;
                if let Err(e) = self
                    .inv
                    .add_power_sample(name, inventory::now_ms(), w, energy_kwh, max_gap_ms)
                    .await
                {
                    tracing::warn!(machine = %name, error = %e, "energy sampler: cannot store sample");
                }
            }
            Ok(Meter(_)) => {}
            Err(e) => {
                tracing::debug!(machine = %name, error = %e.message, "energy sampler: no reading")
            }
        }
    }
}

/// A machine that is off is sampled every this many sampler rounds.
pub const OFF_SAMPLE_EVERY: u64 = 10;

/// How many BMCs the energy sampler reads at once.
const ENERGY_PARALLELISM: usize = 16;

/// A power reading in watts, if the BMC measures it.
pub struct Watts(pub Option<f64>);

/// A meter reading (watts and energy counter), for the health record.
pub struct Meter(pub bmc::MeterReading);

/// What an operation's result says about the power state, for the health record.
pub trait PowerHint {
    /// The power state, if the result tells it.
    fn power_hint(&self) -> Option<String> {
        None
    }
}
impl PowerHint for bmc::PowerState {
    fn power_hint(&self) -> Option<String> {
        Some(self.to_string())
    }
}
impl PowerHint for () {}
impl PowerHint for Watts {}
impl PowerHint for Meter {}
impl PowerHint for bmc::HardwareInfo {}

/// A BMC failure as an API error: 502, naming the machine; the message never holds a secret.
pub fn bmc_error(machine: &str, e: &BmcError) -> ApiError {
    let status = match e {
        BmcError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError {
        status,
        code: "bmc_error",
        message: format!("machine '{machine}': {e}"),
        field: None,
    }
}
