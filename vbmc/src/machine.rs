//! One VM's power, boot override, virtual media and power model: the QEMU process is the power.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{broadcast, oneshot, watch, Mutex, Notify};

use crate::qmp::Qmp;
use crate::spec::{qemu_args, BootTarget, Firmware, StatePaths, VirtualMachineSpec};
use crate::VbmcError;

/// How long QEMU gets to open its monitor after starting.
const QMP_DEADLINE: Duration = Duration::from_secs(15);
/// How long QEMU gets to exit after `quit` before it is killed.
const QUIT_DEADLINE: Duration = Duration::from_secs(5);
/// Largest virtual-media image fetched over HTTP.
const MAX_MEDIA_BYTES: u64 = 8 << 30;
/// Power model: watts drawn by a powered-on VM doing nothing.
pub const IDLE_WATTS: f64 = 40.0;
/// Power model: extra watts per fully busy vCPU.
pub const VCPU_WATTS: f64 = 25.0;
/// Linux reports process CPU time in USER_HZ ticks, 100 per second on every architecture we run.
const TICKS_PER_SEC: f64 = 100.0;

/// BootSourceOverrideEnabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverrideEnabled {
    /// No override: the default order.
    Disabled,
    /// The next boot only, then Disabled.
    Once,
    /// Every boot.
    Continuous,
}

/// The boot override as Redfish shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootOverride {
    /// `None` is Redfish's "None".
    pub target: Option<BootTarget>,
    /// When it applies.
    pub enabled: OverrideEnabled,
}

impl BootOverride {
    fn effective(&self) -> BootTarget {
        match (self.enabled, self.target) {
            (OverrideEnabled::Disabled, _) | (_, None) => BootTarget::Hdd,
            (_, Some(t)) => t,
        }
    }

    /// A boot happened: a one-time override is used up, like on hardware.
    fn consume(&mut self) {
        if self.enabled == OverrideEnabled::Once {
            self.enabled = OverrideEnabled::Disabled;
        }
    }
}

/// The medium in the virtual CD drive.
#[derive(Clone, Debug)]
pub struct Medium {
    /// The Image as the client gave it.
    pub image: String,
    /// The local file QEMU reads.
    pub path: PathBuf,
}

struct Running {
    pid: u32,
    qmp: Qmp,
    exited: watch::Receiver<bool>,
    /// Dropping it (or sending) kills the process.
    _kill: oneshot::Sender<()>,
    boot: BootTarget,
    args: Vec<String>,
}

impl Running {
    fn is_alive(&self) -> bool {
        !*self.exited.borrow()
    }

    async fn wait_exit(&mut self, limit: Duration) -> bool {
        let mut rx = self.exited.clone();
        let exited = tokio::time::timeout(limit, rx.wait_for(|e| *e)).await;
        exited.is_ok()
    }
}

struct Inner {
    running: Option<Running>,
    boot: BootOverride,
    medium: Option<Medium>,
}

#[derive(Default)]
struct Energy {
    last_sample: Option<(Instant, Option<u64>)>,
    watts: f64,
    watt_hours: f64,
}

/// The VM and everything the BMC knows about it.
pub(crate) struct Machine {
    pub spec: VirtualMachineSpec,
    paths: StatePaths,
    qemu_log: PathBuf,
    inner: Mutex<Inner>,
    energy: StdMutex<Energy>,
    /// Signalled when the guest resets itself (QMP RESET with guest=true).
    guest_reset: Arc<Notify>,
}

impl Machine {
    pub fn new(spec: VirtualMachineSpec, state_dir: &Path) -> Self {
        Machine {
            paths: StatePaths::new(state_dir, &spec.name),
            qemu_log: state_dir.join(format!("{}-qemu.log", spec.name)),
            spec,
            inner: Mutex::new(Inner {
                running: None,
                boot: BootOverride {
                    target: None,
                    enabled: OverrideEnabled::Disabled,
                },
                medium: None,
            }),
            energy: StdMutex::new(Energy::default()),
            guest_reset: Arc::new(Notify::new()),
        }
    }

    /// Makes the files QEMU needs that are missing: disks, the UEFI variable store, sercon.
    pub fn prepare(&self) -> Result<(), VbmcError> {
        let io = |what: &Path, e: std::io::Error| VbmcError::Io {
            path: what.display().to_string(),
            cause: e.to_string(),
        };
        for d in &self.spec.disks {
            if !d.path.exists() {
                let f = std::fs::File::create(&d.path).map_err(|e| io(&d.path, e))?;
                f.set_len(d.size_bytes).map_err(|e| io(&d.path, e))?;
            }
        }
        if let Firmware::Uefi { vars_template, .. } = &self.spec.firmware {
            if !self.paths.vars.exists() {
                std::fs::copy(vars_template, &self.paths.vars).map_err(|e| io(vars_template, e))?;
            }
        }
        // SeaBIOS reads the serial port to print on from this fw_cfg file (0x3f8, little endian).
        std::fs::write(&self.paths.sercon, [0xf8u8, 0x03])
            .map_err(|e| io(&self.paths.sercon, e))?;
        std::fs::create_dir_all(&self.paths.media_dir).map_err(|e| io(&self.paths.media_dir, e))?;
        Ok(())
    }

    /// True while the QEMU process runs.
    pub async fn is_on(&self) -> bool {
        let mut inner = self.inner.lock().await;
        reap(&mut inner);
        inner.running.is_some()
    }

    /// The QEMU process id and command line while on (for tests and `lab status`).
    pub async fn process(&self) -> Option<(u32, Vec<String>)> {
        let mut inner = self.inner.lock().await;
        reap(&mut inner);
        inner.running.as_ref().map(|r| (r.pid, r.args.clone()))
    }

    pub async fn boot_override(&self) -> BootOverride {
        self.inner.lock().await.boot
    }

    pub async fn set_boot_override(&self, boot: BootOverride) {
        self.inner.lock().await.boot = boot;
    }

    pub async fn medium(&self) -> Option<Medium> {
        self.inner.lock().await.medium.clone()
    }

    /// On: starts QEMU with the boot order the override asks for. Already on: nothing.
    pub async fn power_on(&self) -> Result<(), VbmcError> {
        let mut inner = self.inner.lock().await;
        reap(&mut inner);
        if inner.running.is_none() {
            self.start(&mut inner).await?;
        }
        Ok(())
    }

    /// ForceOff: QMP `quit`, killed if it does not exit.
    pub async fn force_off(&self) -> Result<(), VbmcError> {
        let mut inner = self.inner.lock().await;
        stop(&mut inner).await;
        Ok(())
    }

    /// GracefulShutdown: an ACPI power button press; the guest decides.
    pub async fn graceful_shutdown(&self) -> Result<(), VbmcError> {
        self.qmp("system_powerdown", None).await.map(drop)
    }

    /// Nmi: a non-maskable interrupt.
    pub async fn nmi(&self) -> Result<(), VbmcError> {
        self.qmp("inject-nmi", None).await.map(drop)
    }

    /// ForceRestart: `system_reset`, or a new process when the boot order must change. Off: on.
    pub async fn force_restart(&self) -> Result<(), VbmcError> {
        let mut inner = self.inner.lock().await;
        reap(&mut inner);
        let wanted = inner.boot.effective();
        match &inner.running {
            Some(r) if r.boot == wanted => {
                r.qmp.execute("system_reset", None).await?;
                inner.boot.consume();
                Ok(())
            }
            _ => {
                stop(&mut inner).await;
                self.start(&mut inner).await
            }
        }
    }

    /// PowerCycle: off, then on with the current boot override.
    pub async fn power_cycle(&self) -> Result<(), VbmcError> {
        let mut inner = self.inner.lock().await;
        stop(&mut inner).await;
        self.start(&mut inner).await
    }

    /// Waits for the guest to reset itself (a reboot from inside the VM).
    pub async fn guest_reset(&self) {
        self.guest_reset.notified().await;
    }

    /// After a reboot from inside the VM: the boot it starts is the next boot, so a used-up
    /// one-time override (or a new one) must change the boot order now, which takes a new
    /// QEMU process; otherwise a pending Once is used up by this boot.
    pub async fn after_guest_reset(&self) {
        let mut inner = self.inner.lock().await;
        reap(&mut inner);
        let Some(running) = &inner.running else {
            return;
        };
        if running.boot == inner.boot.effective() {
            inner.boot.consume();
            return;
        }
        tracing::info!(vm = %self.spec.name, "guest reset with a new boot order: restarting QEMU");
        stop(&mut inner).await;
        if let Err(e) = self.start(&mut inner).await {
            tracing::warn!(vm = %self.spec.name, error = %e, "restart after a guest reset failed");
        }
    }

    /// Puts `image` (a local path or an http(s) URL on loopback or a private network) in the CD.
    pub async fn insert_media(&self, image: &str) -> Result<(), VbmcError> {
        if !self.spec.cd_drive {
            return Err(VbmcError::NoCdDrive);
        }
        let path = self.fetch_media(image).await?;
        let mut inner = self.inner.lock().await;
        reap(&mut inner);
        if let Some(r) = &inner.running {
            r.qmp
                .execute(
                    "blockdev-change-medium",
                    Some(json!({
                        "id": "cd0",
                        "filename": path.display().to_string(),
                        "format": "raw",
                        "read-only-mode": "read-only",
                    })),
                )
                .await?;
        }
        inner.medium = Some(Medium {
            image: image.to_string(),
            path,
        });
        Ok(())
    }

    /// Empties the CD drive.
    pub async fn eject_media(&self) -> Result<(), VbmcError> {
        let mut inner = self.inner.lock().await;
        reap(&mut inner);
        if let Some(r) = &inner.running {
            r.qmp
                .execute("eject", Some(json!({ "id": "cd0", "force": true })))
                .await?;
        }
        inner.medium = None;
        Ok(())
    }

    /// Power now (0 when off) and the energy used since the vBMC started.
    pub fn power_reading(&self) -> (f64, f64) {
        let e = self.energy.lock().unwrap_or_else(|p| p.into_inner());
        (e.watts, e.watt_hours)
    }

    /// One step of the power model: idle watts plus per-vCPU watts times QEMU's CPU share,
    /// integrated over the time since the last step.
    pub async fn sample_power(&self) {
        let pid = self.process().await.map(|(pid, _)| pid);
        let ticks = pid.and_then(cpu_ticks);
        let now = Instant::now();
        let mut e = self.energy.lock().unwrap_or_else(|p| p.into_inner());
        let watts = match (e.last_sample, ticks) {
            (_, None) => 0.0,
            (Some((then, Some(before))), Some(after)) => {
                let dt = now.duration_since(then).as_secs_f64().max(1e-3);
                let vcpus = f64::from(self.spec.vcpus.max(1));
                let busy = after.saturating_sub(before) as f64 / TICKS_PER_SEC;
                let share = (busy / dt / vcpus).clamp(0.0, 1.0);
                IDLE_WATTS + VCPU_WATTS * vcpus * share
            }
            // First sample of a new process: no CPU delta yet.
            (_, Some(_)) => IDLE_WATTS,
        };
        if let Some((then, _)) = e.last_sample {
            let hours = now.duration_since(then).as_secs_f64() / 3600.0;
            // Trapezoid between the last reading and this one.
            e.watt_hours += (e.watts + watts) / 2.0 * hours;
        }
        e.watts = watts;
        e.last_sample = Some((now, ticks));
    }

    /// Runs a QMP command on the running QEMU.
    pub async fn qmp(
        &self,
        command: &str,
        args: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VbmcError> {
        let mut inner = self.inner.lock().await;
        reap(&mut inner);
        match &inner.running {
            Some(r) => Ok(r.qmp.execute(command, args).await?),
            None => Err(VbmcError::PoweredOff),
        }
    }

    async fn start(&self, inner: &mut Inner) -> Result<(), VbmcError> {
        let boot = inner.boot.effective();
        let medium = inner.medium.as_ref().map(|m| m.path.as_path());
        let args = qemu_args(&self.spec, &self.paths, boot, medium);
        let _ = std::fs::remove_file(&self.paths.qmp);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.qemu_log)
            .map_err(|e| VbmcError::Io {
                path: self.qemu_log.display().to_string(),
                cause: e.to_string(),
            })?;
        let mut child = tokio::process::Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                VbmcError::Qemu(format!(
                    "starting qemu-system-x86_64 (qemu-system-x86): {e}"
                ))
            })?;
        let pid = child.id().unwrap_or(0);
        let (exited_tx, exited) = watch::channel(false);
        let (kill, kill_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                _ = child.wait() => {}
                // Sent or dropped: either way the process must go.
                _ = kill_rx => {
                    let _ = child.kill().await;
                }
            }
            let _ = exited_tx.send(true);
        });
        let qmp = match Qmp::connect(&self.paths.qmp, QMP_DEADLINE).await {
            Ok(q) => q,
            Err(e) => {
                drop(kill);
                return Err(VbmcError::Qemu(format!(
                    "{e}; QEMU said: {}",
                    log_tail(&self.qemu_log)
                )));
            }
        };
        tracing::info!(vm = %self.spec.name, pid, ?boot, "QEMU started");
        tokio::spawn(forward_guest_resets(qmp.events(), self.guest_reset.clone()));
        inner.running = Some(Running {
            pid,
            qmp,
            exited,
            _kill: kill,
            boot,
            args,
        });
        inner.boot.consume();
        Ok(())
    }

    async fn fetch_media(&self, image: &str) -> Result<PathBuf, VbmcError> {
        let bad = |why: &str| VbmcError::BadMedia {
            image: image.to_string(),
            cause: why.to_string(),
        };
        if image.starts_with("http://") || image.starts_with("https://") {
            let url = reqwest::Url::parse(image).map_err(|e| bad(&e.to_string()))?;
            if !lab_host(&url) {
                return Err(bad("only loopback and private-network hosts are fetched"));
            }
            let name = url
                .path_segments()
                .and_then(|mut s| s.next_back())
                .filter(|n| !n.is_empty() && !n.starts_with('.'))
                .unwrap_or("media.iso")
                .to_string();
            let dest = self.paths.media_dir.join(name);
            download(&url, &dest).await.map_err(|e| bad(&e))?;
            return Ok(dest);
        }
        let local = image.strip_prefix("file://").unwrap_or(image);
        let path = PathBuf::from(local);
        if !path.is_absolute() || !path.is_file() {
            return Err(bad(
                "not an absolute path to an existing file, nor an http(s) URL",
            ));
        }
        Ok(path)
    }
}

/// Ends with the QMP connection (the process).
async fn forward_guest_resets(mut events: broadcast::Receiver<serde_json::Value>, to: Arc<Notify>) {
    loop {
        match events.recv().await {
            Ok(e) if e["event"] == "RESET" && e["data"]["guest"] == true => to.notify_one(),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// Forgets a process that has exited (the guest powered itself off, or QEMU died).
fn reap(inner: &mut Inner) {
    if inner.running.as_ref().is_some_and(|r| !r.is_alive()) {
        inner.running = None;
    }
}

async fn stop(inner: &mut Inner) {
    reap(inner);
    let Some(mut r) = inner.running.take() else {
        return;
    };
    if let Err(e) = r.qmp.execute("quit", None).await {
        tracing::debug!(error = %e, "QMP quit failed; killing QEMU");
    }
    if !r.wait_exit(QUIT_DEADLINE).await {
        tracing::warn!(pid = r.pid, "QEMU ignored quit; killing it");
    }
    // Dropping `r` kills the process if it still runs; wait for the watcher to see it go.
    let mut exited = r.exited.clone();
    drop(r);
    let _ = tokio::time::timeout(QUIT_DEADLINE, exited.wait_for(|e| *e)).await;
}

/// Utime + stime of a process, in ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Loopback, RFC 1918, link-local or IPv6 unique-local hosts: the lab's own networks.
fn lab_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        None => false,
    }
}

async fn download(url: &reqwest::Url, dest: &Path) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client
        .get(url.clone())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?;
    let partial = dest.with_extension("part");
    let mut f = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| e.to_string())?;
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        total += chunk.len() as u64;
        if total > MAX_MEDIA_BYTES {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(format!("larger than {MAX_MEDIA_BYTES} bytes"));
        }
        f.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    f.sync_all().await.map_err(|e| e.to_string())?;
    tokio::fs::rename(&partial, dest)
        .await
        .map_err(|e| e.to_string())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    let joined = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
    if joined.is_empty() {
        "(nothing)".into()
    } else {
        joined
    }
}
