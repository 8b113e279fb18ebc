//! OpenIPMI's `ipmi_sim` as a LAN BMC whose SOL payload is a TCP serial endpoint on loopback:
//! the console tests' real IPMI peer. Killed on drop with its whole process group, since its
//! `startcmd` child would otherwise outlive it holding every descriptor the test inherited
//! (the heavy-test lock among them).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `ipmi_sim` (lanplus on `127.0.0.1:lan_port`, user `admin`).
pub struct IpmiSolSim {
    sim: Child,
    /// Its LAN port on 127.0.0.1.
    pub lan_port: u16,
}

impl Drop for IpmiSolSim {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.sim.id() as i32);
        let _already_gone = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _reaped = self.sim.wait();
    }
}

impl IpmiSolSim {
    /// Writes `lan.conf`, `cmds.emu` and a state dir under `dir` and starts `ipmi_sim`, named
    /// `name`, its SOL connecting to `127.0.0.1:sol_port`, user `admin` with `password`.
    /// (Whether it answers yet is the caller's to poll, with its own ipmitool.)
    pub fn start(dir: &Path, name: &str, lan_port: u16, sol_port: u16, password: &str) -> Self {
        crate::netns::require("ipmi_sim", "openipmi");
        let lan = format!(
            r#"name "{name}"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {lan_port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  sol "tcp:127.0.0.1:{sol_port}" 115200
  startcmd "sleep 86400"
  startnow true
  poweroff_wait 2
  kill_wait 2
  user 2 true  "admin" "{password}" admin 10 none md2 md5 straight
"#
        );
        std::fs::write(dir.join("lan.conf"), lan).expect("lan.conf");
        std::fs::write(
            dir.join("cmds.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
        )
        .expect("cmds.emu");
        std::fs::create_dir_all(dir.join("state")).expect("state dir");
        let sim = Command::new("ipmi_sim")
            .arg("-c")
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("cmds.emu"))
            .arg("-s")
            .arg(dir.join("state"))
            .arg("-n")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ipmi_sim");
        IpmiSolSim { sim, lan_port }
    }
}
