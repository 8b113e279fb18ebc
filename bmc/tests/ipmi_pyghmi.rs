//! The IPMI driver through the real `ipmitool` against a pyghmi BMC simulator.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bmc::{
    BmcError, BootDevice, BootMode, Controller, Credentials, PowerAction, PowerState, TlsPolicy,
};
use common::*;

/// A pyghmi `Bmc` subclass that keeps its state in a JSON file the test reads.
const FAKE_BMC_PY: &str = r#"
import json, os, sys
from pyghmi.ipmi import bmc

class FakeBmc(bmc.Bmc):
    def __init__(self, authdata, port, state_path):
        super().__init__(authdata, port=port, address='127.0.0.1')
        self.state_path = state_path
        self.state = {'power': 'off', 'bootdev': 'default', 'commands': []}
        self.save()

    def save(self):
        with open(self.state_path + '.tmp', 'w') as f:
            json.dump(self.state, f)
        os.replace(self.state_path + '.tmp', self.state_path)

    def note(self, what):
        self.state['commands'].append(what)
        self.save()

    def get_power_state(self):
        return self.state['power']

    def power_on(self):
        self.state['power'] = 'on'; self.note('on')

    def power_off(self):
        self.state['power'] = 'off'; self.note('off')

    def power_shutdown(self):
        self.state['power'] = 'off'; self.note('soft')

    def power_cycle(self):
        self.state['power'] = 'on'; self.note('cycle')

    def power_reset(self):
        self.state['power'] = 'on'; self.note('reset')

    def get_boot_device(self):
        return self.state['bootdev']

    def set_boot_device(self, dev):
        self.state['bootdev'] = dev; self.note('bootdev ' + str(dev))

port, user, state_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
password = sys.stdin.readline().strip()
FakeBmc({user: password}, port, state_path).listen()
"#;

struct FakeBmc {
    _dir: tempfile::TempDir,
    port: u16,
    state: PathBuf,
    _proc: Proc,
}

impl FakeBmc {
    fn start(user: &str, password: &str) -> FakeBmc {
        let python = venv_tool("python3");
        let probe = Command::new(&python)
            .args(["-c", "import pyghmi.ipmi.bmc"])
            .output()
            .unwrap();
        assert!(
            probe.status.success(),
            "{} cannot import pyghmi: install it into the venv ($RACKSHARE_VENV/bin/pip install pyghmi; \
             scripts/test does this): {}",
            python.display(),
            String::from_utf8_lossy(&probe.stderr)
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fakebmc.py");
        std::fs::write(&script, FAKE_BMC_PY).unwrap();
        let state = dir.path().join("state.json");
        // The simulator's password goes through a file on stdin, not its argv.
        let pw_file = dir.path().join("pw");
        std::fs::write(&pw_file, format!("{password}\n")).unwrap();
        // A port picked free can be taken by a parallel test before Python binds it: retry.
        for attempt in 1..=3 {
            let port = free_udp_port();
            let mut cmd = Command::new(&python);
            cmd.arg(&script).arg(port.to_string()).arg(user).arg(&state);
            let stdin = std::fs::File::open(&pw_file).unwrap();
            let mut proc_ = Proc::spawn_with_stdin(
                "pyghmi fake BMC",
                cmd,
                dir.path().join("bmc.log"),
                stdin.into(),
            );
            let start = Instant::now();
            let mut lost_port = false;
            while !state.exists() {
                if let Some(Ok(Some(_))) = proc_.child.as_mut().map(|c| c.try_wait()) {
                    lost_port = proc_.log_text().contains("Address already in use");
                    if lost_port && attempt < 3 {
                        break;
                    }
                    proc_.assert_running();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "pyghmi BMC did not start:\n{}",
                    proc_.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            if lost_port {
                continue;
            }
            return FakeBmc {
                _dir: dir,
                port,
                state,
                _proc: proc_,
            };
        }
        unreachable!("the last attempt either starts or panics")
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_and_bootdev_through_ipmitool() {
    let sim = FakeBmc::start("admin", "ipmi-pass-42");
    let ctl = Controller::new(fast_policy());
    let url: bmc::BmcUrl = format!("ipmi://127.0.0.1:{}", sim.port).parse().unwrap();
    let h = ctl
        .connect(
            &url,
            Credentials::new("admin", "ipmi-pass-42"),
            &TlsPolicy::Verify,
        )
        .unwrap();

    assert_eq!(h.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(h.power(PowerAction::On).await.unwrap(), PowerState::On);
    assert_eq!(sim.state()["power"], "on");

    h.set_boot_device(BootDevice::Pxe, false, BootMode::Uefi)
        .await
        .unwrap();
    assert_eq!(sim.state()["bootdev"], "network");

    assert_eq!(h.power(PowerAction::Cycle).await.unwrap(), PowerState::On);
    assert_eq!(h.power(PowerAction::Off).await.unwrap(), PowerState::Off);
    assert_eq!(sim.state()["power"], "off");
    let commands = sim.state()["commands"].clone();
    assert_eq!(
        commands,
        serde_json::json!(["on", "bootdev network", "cycle", "off"])
    );

    // pyghmi has no DCMI: no reading, no error.
    assert_eq!(h.power_reading().await.unwrap(), None);
    let info = h.inspect().await.unwrap();
    assert!(!info.warnings.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ipmi_password_fails_clearly_and_bounded() {
    let sim = FakeBmc::start("admin", "ipmi-pass-42");
    let mut policy = fast_policy();
    policy.attempts = 2;
    let ctl = Controller::new(policy);
    let url: bmc::BmcUrl = format!("ipmi://127.0.0.1:{}", sim.port).parse().unwrap();
    let h = ctl
        .connect(
            &url,
            Credentials::new("admin", "not-the-pass-99"),
            &TlsPolicy::Verify,
        )
        .unwrap();
    let t = Instant::now();
    let err = h.power_state().await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg} (after {:.1} s)", t.elapsed().as_secs_f64());
    assert!(msg.contains(&format!("127.0.0.1:{}", sim.port)), "{msg}");
    assert!(!msg.contains("not-the-pass-99"), "{msg}");
    // pyghmi answers a bad password with silence, so ipmitool cannot tell it from a dead BMC.
    assert!(
        matches!(
            err,
            BmcError::Unreachable { .. } | BmcError::AuthFailed { .. }
        ),
        "{msg}"
    );
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_eq!(sim.state()["commands"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_never_on_the_command_line_of_a_running_ipmitool() {
    // While ipmitool waits for a BMC that never answers, its argv is visible in /proc.
    // Bind port 0 and keep the socket: picking a "free" port first and binding it later races
    // the other tests' simulators.
    let _silent = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    let port = _silent.local_addr().unwrap().port();
    let url: bmc::BmcUrl = format!("ipmi://127.0.0.1:{port}").parse().unwrap();
    let mut policy = fast_policy();
    policy.attempts = 1;
    let ctl = Controller::new(policy);
    let h = ctl
        .connect(
            &url,
            Credentials::new("admin", "argv-secret-77"),
            &TlsPolicy::Verify,
        )
        .unwrap();
    let task = tokio::spawn(async move { h.power_state().await });
    let start = Instant::now();
    let mut seen = false;
    while start.elapsed() < Duration::from_secs(10) && !task.is_finished() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("ipmitool") && cmdline.contains(&format!("{port}")) {
                seen = true;
                assert!(!cmdline.contains("argv-secret-77"), "{cmdline}");
                assert!(cmdline.contains(" -E "), "{cmdline}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = task.await.unwrap().unwrap_err();
    assert!(seen, "never saw the ipmitool process");
    assert!(!err.to_string().contains("argv-secret-77"));
}
