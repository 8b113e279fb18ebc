//! A virtual BMC: a Redfish service for one QEMU VM, driving QEMU over QMP.
//!
//! [`VirtualBmc::start`] serves `/redfish/v1` for a [`VirtualMachineSpec`] on one address; the
//! VM is "On" while its QEMU process runs. The serial console is a [`SerialConsole`] (replay
//! buffer + broadcast + input) for the console broker. No libvirt, no Python.

mod console;
mod console_ssh;
mod machine;
mod qmp;
mod redfish;
mod spec;

pub use console::{ConsoleError, SerialConsole, REPLAY_BYTES};
pub use machine::{BootOverride, OverrideEnabled, IDLE_WATTS, VCPU_WATTS};
pub use qmp::QmpError;
pub use spec::{
    Accel, BootTarget, DiskBus, DiskSpec, Firmware, NicBackend, NicSpec, VirtualMachineSpec,
};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the power model samples QEMU's CPU time.
const POWER_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What can go wrong in the virtual BMC.
#[derive(Debug, thiserror::Error)]
pub enum VbmcError {
    /// A file or socket of the VM.
    #[error("{path}: {cause}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        cause: String,
    },
    /// QEMU would not start or misbehaved.
    #[error("QEMU: {0}")]
    Qemu(String),
    /// A QMP exchange failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// The action needs a running VM.
    #[error("the VM is powered off")]
    PoweredOff,
    /// The VM has no CD drive.
    #[error("the VM has no CD drive")]
    NoCdDrive,
    /// A virtual-media image that cannot be used.
    #[error("image {image}: {cause}")]
    BadMedia {
        /// The Image as given.
        image: String,
        /// Why.
        cause: String,
    },
}

/// A running virtual BMC; dropping it (or [`VirtualBmc::shutdown`]) stops the server and QEMU.
pub struct VirtualBmc {
    addr: SocketAddr,
    machine: Arc<machine::Machine>,
    console: SerialConsole,
    console_ssh_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl VirtualBmc {
    /// Prepares the VM's files in `state_dir`, binds `listen` and serves Redfish there. The VM
    /// starts powered off.
    pub async fn start(
        spec: VirtualMachineSpec,
        listen: SocketAddr,
        user: &str,
        password: &str,
        state_dir: &Path,
    ) -> Result<Self, VbmcError> {
        let io = |p: &Path, e: std::io::Error| VbmcError::Io {
            path: p.display().to_string(),
            cause: e.to_string(),
        };
        std::fs::create_dir_all(state_dir).map_err(|e| io(state_dir, e))?;
        let console = SerialConsole::new(spec.serial_log.clone());
        let _ = std::fs::remove_file(&spec.serial_socket);
        let serial = tokio::net::UnixListener::bind(&spec.serial_socket)
            .map_err(|e| io(&spec.serial_socket, e))?;
        let machine = Arc::new(machine::Machine::new(spec, state_dir));
        machine.prepare()?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| io(Path::new(&listen.to_string()), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| io(Path::new(&listen.to_string()), e))?;
        // The serial console over SSH, on the Redfish address and a port of its own.
        let ssh_listener = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .map_err(|e| io(Path::new(&addr.ip().to_string()), e))?;
        let console_ssh_addr = ssh_listener
            .local_addr()
            .map_err(|e| io(Path::new(&addr.ip().to_string()), e))?;
        let console_ssh = tokio::spawn(console_ssh::serve(
            ssh_listener,
            console.clone(),
            user.to_string(),
            password.to_string(),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let app = redfish::router(machine.clone(), user, password, console_ssh_addr.port());
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "virtual BMC server ended");
            }
        });
        let sampler = {
            let machine = machine.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(POWER_SAMPLE_INTERVAL);
                loop {
                    tick.tick().await;
                    machine.sample_power().await;
                }
            })
        };
        let boot_keeper = {
            let machine = machine.clone();
            tokio::spawn(async move {
                loop {
                    machine.guest_reset().await;
                    machine.after_guest_reset().await;
                }
            })
        };
        let serial_task = tokio::spawn(console.clone().serve(serial));
        Ok(VirtualBmc {
            addr,
            machine,
            console,
            stop: Some(stop),
            console_ssh_addr,
            tasks: vec![server, sampler, boot_keeper, serial_task, console_ssh],
        })
    }

    /// Where Redfish is served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the Redfish service's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The BMC URL rackshare enrols the machine with: `redfish+http://ADDR/redfish/v1/Systems/NAME`.
    pub fn bmc_url(&self) -> String {
        format!(
            "redfish+http://{}/redfish/v1/Systems/{}",
            self.addr, self.machine.spec.name
        )
    }

    /// Where the serial console is served over SSH (the BMC's user and password).
    pub fn console_ssh_addr(&self) -> SocketAddr {
        self.console_ssh_addr
    }

    /// The VM's serial console.
    pub fn console(&self) -> SerialConsole {
        self.console.clone()
    }

    /// The VM's spec.
    pub fn spec(&self) -> &VirtualMachineSpec {
        &self.machine.spec
    }

    /// True while QEMU runs.
    pub async fn is_on(&self) -> bool {
        self.machine.is_on().await
    }

    /// The running QEMU's pid and arguments.
    pub async fn qemu_process(&self) -> Option<(u32, Vec<String>)> {
        self.machine.process().await
    }

    /// Runs a QMP command on the VM's QEMU (the vBMC holds the only monitor connection).
    pub async fn qmp(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VbmcError> {
        self.machine.qmp(command, arguments).await
    }

    /// The file the current virtual-media image is read from.
    pub async fn media_path(&self) -> Option<PathBuf> {
        self.machine.medium().await.map(|m| m.path)
    }

    /// Stops serving and powers the VM off (QMP quit, then kill).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = self.machine.force_off().await {
            tracing::warn!(error = %e, "power off at shutdown failed");
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for VirtualBmc {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The aborted tasks drop their Machine references; the last drop kills QEMU.
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}
