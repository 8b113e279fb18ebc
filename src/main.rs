//! `rackshare`: the server (`rackshare serve`) and its command-line client, in one binary.

mod agent_build;
mod cli;
mod client;
mod client_tls;
mod doctor;
mod jobs_cli;
mod lab;
mod output;
mod serve;

use clap::Parser;

/// mimalloc hands freed memory back to the OS; glibc's per-thread arenas kept ~90 MB after
/// one 10,000-machine listing (docs/decisions.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args = cli::Cli::parse();
    let result = match args.command {
        cli::Command::Serve(s) => serve::run(*s).await,
        cli::Command::Doctor {
            interface,
            timeout_secs,
        } => doctor::run(interface, timeout_secs, args.global.output).await,
        cli::Command::Agent(cli::AgentCmd::Build(b)) => agent_build::run(b),
        cli::Command::Lab(l) => lab::run(l, args.global.output).await,
        other => cli::run(args.global, other).await,
    };
    if let Err(e) = result {
        // One clear line, the causes joined, and a non-zero exit.
        eprintln!("error: {}", format_chain(&e));
        std::process::exit(1);
    }
}

fn format_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
