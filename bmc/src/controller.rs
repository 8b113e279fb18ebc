//! Politeness: one command in flight per BMC, bounded timeouts, retries of idempotent operations,
//! polling after power actions.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{
    BmcDriver, BmcError, BmcUrl, BootDevice, BootMode, Credentials, DriverOptions, HardwareInfo,
    PowerAction, PowerState, TlsPolicy,
};

/// Timeouts, retries and polling, shared by all BMCs of a [`Controller`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Per-exchange timeouts given to drivers built by [`Controller::connect`].
    pub driver: DriverOptions,
    /// Upper bound for one driver call (one attempt), queue wait excluded.
    pub op_timeout: Duration,
    /// Upper bound for waiting for the BMC's queue (the command before this one).
    pub queue_timeout: Duration,
    /// Attempts for idempotent operations (reads, boot device); power actions get one.
    pub attempts: u32,
    /// First backoff delay between attempts; doubles each time.
    pub backoff_initial: Duration,
    /// Largest backoff delay.
    pub backoff_max: Duration,
    /// After a power action, how long to poll for the target state.
    pub power_deadline: Duration,
    /// First interval between state polls (grows by half each poll, up to 10 s).
    pub poll_interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            driver: DriverOptions::default(),
            op_timeout: Duration::from_secs(180),
            queue_timeout: Duration::from_secs(300),
            attempts: 4,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(15),
            power_deadline: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
        }
    }
}

struct Slot {
    queue: tokio::sync::Mutex<()>,
}

/// Hands out [`BmcHandle`]s; handles to the same BMC address share one queue. (How a BMC has
/// been answering is recorded by the caller, per operation: the api's `BmcService` stores it
/// in the inventory, the one health record.)
pub struct Controller {
    policy: Policy,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Controller {
    /// A controller with this policy.
    pub fn new(policy: Policy) -> Self {
        Controller {
            policy,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A handle for `driver`, queued with every other handle to the same address.
    pub fn handle(&self, driver: Arc<dyn BmcDriver>) -> BmcHandle {
        let key = driver.address().to_string();
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Slot {
                        queue: tokio::sync::Mutex::new(()),
                    })
                })
                .clone()
        };
        BmcHandle {
            driver,
            slot,
            policy: self.policy,
        }
    }

    /// Builds the driver for `url` (Redfish or IPMI) and returns its handle; nothing is sent yet.
    pub fn connect(
        &self,
        url: &BmcUrl,
        credentials: Credentials,
        tls: &TlsPolicy,
    ) -> Result<BmcHandle, BmcError> {
        let driver = crate::driver_for(url, credentials, tls, self.policy.driver)?;
        Ok(self.handle(driver))
    }
}

/// One BMC, used politely. Cheap to clone; clones share the queue.
#[derive(Clone)]
pub struct BmcHandle {
    driver: Arc<dyn BmcDriver>,
    slot: Arc<Slot>,
    policy: Policy,
}

impl BmcHandle {
    /// `host:port` of the BMC.
    pub fn address(&self) -> &str {
        self.driver.address()
    }

    /// Reads the power state (retried).
    pub async fn power_state(&self) -> Result<PowerState, BmcError> {
        self.call(
            "power status",
            true,
            |d| async move { d.power_state().await },
        )
        .await
    }

    /// Performs a power action and polls until its state is reached or the deadline passes.
    /// On/Off/SoftOff on a machine already there send nothing; Cycle/Reset on an off machine
    /// power it on. The action itself is never retried. Returns the state reached.
    pub async fn power(&self, action: PowerAction) -> Result<PowerState, BmcError> {
        let target = action.target();
        let current = self.power_state().await?;
        let effective = match (action, current) {
            (PowerAction::On | PowerAction::Off | PowerAction::SoftOff, s) if s == target => {
                return Ok(s)
            }
            (PowerAction::Cycle | PowerAction::Reset, PowerState::Off) => PowerAction::On,
            (a, _) => a,
        };
        self.call(&format!("power {effective}"), false, |d| async move {
            d.power(effective).await
        })
        .await?;
        self.wait_for(target).await
    }

    /// Sets the boot device (retried: setting it twice is harmless).
    pub async fn set_boot_device(
        &self,
        device: BootDevice,
        persistent: bool,
        mode: BootMode,
    ) -> Result<(), BmcError> {
        self.call(&format!("set boot device {device}"), true, |d| async move {
            d.set_boot_device(device, persistent, mode).await
        })
        .await
    }

    /// Reads hardware facts (retried).
    pub async fn inspect(&self) -> Result<HardwareInfo, BmcError> {
        self.call("inspect", true, |d| async move { d.inspect().await })
            .await
    }

    /// Reads the power draw in watts (retried); `None` when the BMC does not measure it.
    pub async fn power_reading(&self) -> Result<Option<f64>, BmcError> {
        self.call(
            "power reading",
            true,
            |d| async move { d.power_reading().await },
        )
        .await
    }

    /// Reads the power draw and the cumulative energy counter, where there is one (retried).
    pub async fn meter_reading(&self) -> Result<crate::MeterReading, BmcError> {
        self.call(
            "meter reading",
            true,
            |d| async move { d.meter_reading().await },
        )
        .await
    }

    /// Ends the driver's session (waits for the queue).
    pub async fn close(&self) {
        let _turn = self.slot.queue.lock().await;
        self.driver.close().await;
    }

    async fn wait_for(&self, target: PowerState) -> Result<PowerState, BmcError> {
        let start = Instant::now();
        let deadline = start + self.policy.power_deadline;
        let mut interval = self.policy.poll_interval;
        let mut last = String::from("nothing yet");
        loop {
            let now = Instant::now();
            if now >= deadline {
                let err = BmcError::PowerDeadline {
                    bmc: self.address().to_string(),
                    wanted: target,
                    last,
                    secs: start.elapsed().as_secs_f64(),
                };
                return Err(err);
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = (interval * 3 / 2).min(Duration::from_secs(10));
            match self
                .once("power status", |d| async move { d.power_state().await })
                .await
            {
                Ok(s) if s == target => return Ok(s),
                Ok(s) => last = s.to_string(),
                Err(e) if e.is_transient() => last = e.to_string(),
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt: wait for this BMC's turn, then run `f` under the op timeout.
    async fn once<T, F, Fut>(&self, op: &str, f: F) -> Result<T, BmcError>
    where
        F: FnOnce(Arc<dyn BmcDriver>) -> Fut,
        Fut: Future<Output = Result<T, BmcError>>,
    {
        let bmc = self.address().to_string();
        let _turn = tokio::time::timeout(self.policy.queue_timeout, self.slot.queue.lock())
            .await
            .map_err(|_| BmcError::Timeout {
                bmc: bmc.clone(),
                op: format!("waiting for the BMC's previous command before {op}"),
                secs: self.policy.queue_timeout.as_secs_f64(),
            })?;
        tokio::time::timeout(self.policy.op_timeout, f(self.driver.clone()))
            .await
            .map_err(|_| BmcError::Timeout {
                bmc,
                op: op.to_string(),
                secs: self.policy.op_timeout.as_secs_f64(),
            })?
    }

    /// Runs an operation with retries (idempotent only) and records the outcome.
    async fn call<T, F, Fut>(&self, op: &str, idempotent: bool, f: F) -> Result<T, BmcError>
    where
        F: Fn(Arc<dyn BmcDriver>) -> Fut,
        Fut: Future<Output = Result<T, BmcError>>,
    {
        let attempts = if idempotent {
            self.policy.attempts.max(1)
        } else {
            1
        };
        let mut delay = self.policy.backoff_initial;
        let mut attempt = 1;
        loop {
            match self.once(op, &f).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < attempts && e.is_transient() => {
                    tracing::warn!(bmc = %self.address(), op, attempt, error = %e,
                        "BMC operation failed; retrying in {:?}", delay);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.policy.backoff_max);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
