//! The command line: one clap tree, one module per resource. Everything but `serve`,
//! `doctor` and `agent build` is a client of the API.

mod audit;
mod certificates;
mod console;
mod groups;
mod images;
mod leases;
mod machines;
mod people;
mod reports;
mod sites;
mod time;

use crate::client::{enc, Client};
use crate::output::{self, Format};
use anyhow::anyhow;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;

/// rackshare: bare-metal provisioning for hardware cooperatives.
#[derive(Debug, Parser)]
#[command(name = "rackshare", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The rackshare API
    #[arg(
        long,
        global = true,
        env = "RACKSHARE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// API token [default: the contents of ./rackshare-data/admin-token, if readable]
    #[arg(long, global = true, env = "RACKSHARE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// CA certificate (PEM) to trust for an https:// --url, besides the public CAs
    #[arg(long, global = true, env = "RACKSHARE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint (SHA256:HEX, as `serve` prints it)
    #[arg(long, global = true, env = "RACKSHARE_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Send the token over plain http:// even to a host that is not loopback (it travels in clear)
    #[arg(long, global = true, env = "RACKSHARE_INSECURE_HTTP", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_http: bool,
}

impl Global {
    /// The TLS and plain-HTTP choices of these flags.
    pub fn trust(&self) -> crate::client_tls::Trust {
        crate::client_tls::Trust {
            ca_cert: self.ca_cert.clone(),
            fingerprint: self.fingerprint.clone(),
            insecure_http: self.insecure_http,
        }
    }
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the rackshare service (API; boot services when configured)
    Serve(Box<crate::serve::ServeArgs>),
    /// Machines: enrol, list, show, edit, delete, change state
    #[command(subcommand)]
    Machine(Box<machines::MachineCmd>),
    /// Sites
    #[command(subcommand)]
    Site(sites::SiteCmd),
    /// Racks
    #[command(subcommand)]
    Rack(sites::RackCmd),
    /// The rackshare instances on the database: site, version, heartbeat, the jobs each holds
    Status,
    /// Member groups
    #[command(subcommand)]
    Group(groups::GroupCmd),
    /// Users
    #[command(subcommand)]
    User(people::UserCmd),
    /// API tokens
    #[command(subcommand)]
    Token(people::TokenCmd),
    /// OS images: add (upload a file or import a URL), list, show, delete
    #[command(subcommand)]
    Image(images::ImageCmd),
    /// Write an image to a machine's disk (a reimage job) and boot it
    Reimage(crate::jobs_cli::ReimageArgs),
    /// Jobs: list, show, cancel, logs, start inspect/wipe, wait
    #[command(subcommand)]
    Job(crate::jobs_cli::JobCmd),
    /// Power status and actions through the machine's BMC
    Power {
        name: String,
        /// status, on, off (hard), soft, cycle, reset
        action: String,
    },
    /// A machine's serial console (raw terminal; `~.` after a newline disconnects; piped input is
    /// sent and the command exits once it ended and the output was quiet for 2 s)
    Console {
        /// The machine
        name: String,
    },
    /// Set the next boot device through the machine's BMC
    Bootdev {
        name: String,
        /// pxe, disk or cd
        device: String,
        /// Keep it for every boot, not just the next
        #[arg(long)]
        persistent: bool,
        /// Boot mode: uefi or legacy [default: leave as is]
        #[arg(long)]
        mode: Option<String>,
    },
    /// The audit log
    Events(audit::EventsArgs),
    /// The authoritative DHCP server's leases (staff and technicians)
    #[command(subcommand)]
    Dhcp(audit::DhcpCmd),
    /// Leases: ask for machines (now, at a future start, or when capacity frees up), list, show, extend, release, revoke
    #[command(subcommand)]
    Lease(Box<leases::LeaseCmd>),
    /// Reports: usage and energy per group and month
    #[command(subcommand)]
    Report(reports::ReportCmd),
    /// Signed wipe certificates: download one, verify one offline
    #[command(subcommand)]
    Certificate(certificates::CertificateCmd),
    /// Write the whole inventory as JSON to standard output
    Export {
        /// Include BMC passwords (in clear) and token hashes
        #[arg(long)]
        with_secrets: bool,
    },
    /// Import an export file (all or nothing)
    Import {
        /// The file written by `rackshare export`
        file: PathBuf,
    },
    /// Show who the token belongs to
    Whoami,
    /// The deploy agent: build its kernel and ramdisk
    #[command(subcommand)]
    Agent(AgentCmd),
    /// A virtual rack on this box: VMs with virtual BMCs and a lab service (`lab up|status|down`)
    #[command(subcommand)]
    Lab(crate::lab::LabCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell); for packagers
    #[command(hide = true)]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from this command line; for packagers
    #[command(hide = true)]
    Man,
    /// Look for DHCP servers on the network: broadcasts a DHCPDISCOVER and lists who answers
    Doctor {
        /// Interface to probe [default: every interface with an IPv4 address, except loopback]
        #[arg(long)]
        interface: Option<String>,
        /// Seconds to wait for answers
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}

/// `rackshare agent …`.
#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Build DATA_DIR/boot/agent-vmlinuz and agent-initrd.img from Debian packages
    Build(crate::agent_build::BuildArgs),
}

/// Runs a client command.
pub async fn run(g: Global, cmd: Command) -> anyhow::Result<()> {
    let c = Client::new(&g.url, token_or_default(g.token.clone()), &g.trust())?;
    let fmt = g.output;
    match cmd {
        Command::Serve(_)
        | Command::Doctor { .. }
        | Command::Agent(_)
        | Command::Lab(_)
        | Command::Completions { .. }
        | Command::Man => {
            unreachable!("serve, doctor, agent, lab, completions and man are dispatched in main")
        }
        Command::Machine(m) => machines::run(&c, fmt, *m).await,
        Command::Lease(l) => leases::run(&c, fmt, *l).await,
        Command::Group(g) => groups::run(&c, fmt, g).await,
        Command::Site(s) => sites::site(&c, fmt, s).await,
        Command::Rack(r) => sites::rack(&c, fmt, r).await,
        Command::Status => sites::status(&c, fmt).await,
        Command::User(u) => people::user(&c, fmt, u).await,
        Command::Token(t) => people::token(&c, fmt, t).await,
        Command::Whoami => people::whoami(&c, fmt).await,
        Command::Image(cmd) => images::run(&c, fmt, cmd).await,
        Command::Reimage(a) => crate::jobs_cli::reimage(&c, fmt, a).await,
        Command::Job(cmd) => crate::jobs_cli::job(&c, fmt, cmd).await,
        Command::Console { name } => {
            console::run(&g.url, token_or_default(g.token.clone()), &g.trust(), &name).await
        }
        Command::Power { name, action } => machines::power(&c, fmt, name, action).await,
        Command::Bootdev {
            name,
            device,
            persistent,
            mode,
        } => machines::bootdev(&c, fmt, name, device, persistent, mode).await,
        Command::Dhcp(d) => audit::dhcp(&c, fmt, d).await,
        Command::Events(a) => audit::events(&c, fmt, a).await,
        Command::Certificate(cmd) => certificates::run(&c, cmd).await,
        Command::Report(cmd) => reports::run(&c, fmt, cmd).await,
        Command::Export { with_secrets } => audit::export(&c, with_secrets).await,
        Command::Import { file } => audit::import(&c, fmt, file).await,
    }
}

/// Writes the completion script for `shell` to standard output.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "rackshare", &mut std::io::stdout());
    Ok(())
}

/// Writes the man page, rackshare(1), to standard output.
pub fn man() -> anyhow::Result<()> {
    use clap::CommandFactory;
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(())
}

/// A limit given as a number or `none`/`unlimited` (null).
pub(super) fn limit(s: &str) -> anyhow::Result<Value> {
    match s.trim() {
        "none" | "unlimited" | "" => Ok(Value::Null),
        n => Ok(json!(n
            .parse::<i64>()
            .map_err(|_| anyhow!("'{n}' is not a number or 'none'"))?)),
    }
}

pub(super) fn token_or_default(t: Option<String>) -> Option<String> {
    t.or_else(|| {
        std::fs::read_to_string("rackshare-data/admin-token")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
}

pub(super) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub(super) fn done(fmt: Format, message: &str) {
    match fmt {
        Format::Json => output::json(&json!({"ok": true, "message": message})),
        Format::Table | Format::Csv => println!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
