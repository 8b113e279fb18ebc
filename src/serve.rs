//! `rackshare serve`: flags and config file → validated `api::Config` → a running service
//! until SIGTERM/SIGINT.

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Every key of the config file is also a `serve` flag of the same name (kebab-case): both
/// come from this one struct, so they cannot drift apart. Flags win over the file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeSettings {
    /// Directory for the SQLite database, the secret key and the admin token [default: ./rackshare-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address the API listens on [default: 127.0.0.1:8080]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Database URL: sqlite://PATH or postgres://… [default: SQLite in the data dir]
    #[arg(long, env = "RACKSHARE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Log filter, e.g. info, debug, rackshare=debug [default: info]
    #[arg(long)]
    pub log_level: Option<String>,
    /// Seconds between power readings of every BMC, for the energy ledger; 0 turns it off [default: 60]
    #[arg(long)]
    pub energy_interval_secs: Option<u64>,
}

/// `rackshare serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file; its keys are the flag names below without the dashes in front
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ServeSettings,
}

impl ServeSettings {
    /// `self` with the gaps filled from `file`.
    fn or(self, file: ServeSettings) -> ServeSettings {
        ServeSettings {
            data_dir: self.data_dir.or(file.data_dir),
            listen: self.listen.or(file.listen),
            database_url: self.database_url.or(file.database_url),
            log_level: self.log_level.or(file.log_level),
            energy_interval_secs: self.energy_interval_secs.or(file.energy_interval_secs),
        }
    }
}

fn load(args: ServeArgs) -> anyhow::Result<(api::Config, String)> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str::<ServeSettings>(&text)
                .with_context(|| format!("config file {}", path.display()))?
        }
        None => ServeSettings::default(),
    };
    let s = args.settings.or(file);
    let mut config = api::Config::local_default();
    if let Some(d) = s.data_dir {
        config.data_dir = d;
    }
    if let Some(l) = s.listen {
        config.listen = l;
    }
    if let Some(url) = s.database_url {
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            bail!("--database-url must start with sqlite:// or postgres://, got '{url}'");
        }
        config.database_url = Some(url);
    }
    if let Some(secs) = s.energy_interval_secs {
        config.energy_interval = (secs > 0).then(|| std::time::Duration::from_secs(secs));
    }
    Ok((config, s.log_level.unwrap_or_else(|| "info".into())))
}

/// Runs the service until a signal.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, log_level) = load(args)?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&log_level).context("--log-level")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let server = api::Server::start(config.clone())
        .await
        .context("starting rackshare")?;
    if let Some(token) = &server.admin_token {
        // Printed once, on the first start of a new database; it is stored only hashed.
        println!("First start: created user 'admin'. Its API token (shown once):");
        println!("  {token}");
        if let Some(f) = &server.admin_token_file {
            println!("It is also in {} (mode 0600).", f.display());
        }
    }
    println!("rackshare API listening on http://{}", server.addr);
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await.context("shutting down")?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
