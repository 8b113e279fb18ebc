//! `rackshare-agent`: PID 1 of the deploy ramdisk. It never exits (PID 1 exiting panics the
//! kernel): after its work it idles, or reboots/powers off when the API says so.

use anyhow::Context;
use proto::{AgentAction, AgentMode};
use rackshare_agent::job::{self, Env, Outcome};
use rackshare_agent::log;
use std::time::Duration;

fn idle(why: &str) -> ! {
    loop {
        log!("idle: {why}; waiting to be rebooted");
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn act(action: AgentAction) -> anyhow::Result<()> {
    use nix::sys::reboot::{reboot, RebootMode};
    let how = match action {
        AgentAction::Reboot => RebootMode::RB_AUTOBOOT,
        AgentAction::Poweroff => RebootMode::RB_POWER_OFF,
        AgentAction::None => return Ok(()),
    };
    nix::unistd::sync();
    reboot(how).with_context(|| format!("{action} failed"))?;
    Ok(())
}

fn main() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(params) = rackshare_agent::cmdline::parse(&cmdline) else {
        idle("no rackshare.api= on the kernel command line");
    };
    log!(
        "starting: api {}, mode {}",
        params.api,
        params.mode.map_or("(from the task)", AgentMode::as_str)
    );
    match job::run(&params, &Env::default()) {
        Outcome::Reported { job_id, action, ok } => {
            log!("job {job_id}: result sent (ok: {ok}); action {action}");
            if let Err(e) = act(action) {
                log!("{e:#}");
            }
            idle(&format!("job {job_id} done (ok: {ok})"));
        }
        Outcome::Stopped(why) => idle(&why),
    }
}
