//! Stand-alone boot server for manual tests and benchmarks (the product wires it in `api`).
//!
//! ```text
//! pxe_server IFACE TFTP_ROOT [--authoritative START-END] [--leases FILE] [--null-store]
//!            [--server-ip IP] [--discovery] [--lease-secs N] [--threads N]
//! ```
//! Unknown MACs boot only with `--discovery`. Stops on SIGINT/SIGTERM and prints the metrics.
#![allow(missing_docs)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use pxe::{
    AddressLeaseStore, DhcpMode, FileAddressLeaseStore, Metrics, NullAddressLeaseStore, PoolConfig,
    PxeConfig, StaticDirectory,
};
use tokio_util::sync::CancellationToken;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pxe_server IFACE TFTP_ROOT [--authoritative START-END] [--leases FILE] [--null-store] [--server-ip IP] [--discovery] [--lease-secs N] [--threads N]";
    let (Some(iface), Some(root)) = (args.first(), args.get(1)) else {
        return Err(usage.into());
    };
    let mut cfg = PxeConfig::new(iface.clone(), root.clone());
    let mut leases = "leases.jsonl".to_string();
    let mut null_store = false;
    let mut threads = 2usize;
    let mut lease_secs = 3600u64;
    let mut pool_range: Option<(Ipv4Addr, Ipv4Addr)> = None;
    let mut it = args.iter().skip(2);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--authoritative" => {
                let v = val()?;
                let (s, e) = v.split_once('-').ok_or("range is START-END")?;
                pool_range = Some((s.parse()?, e.parse()?));
            }
            "--leases" => leases = val()?,
            "--null-store" => null_store = true,
            "--server-ip" => cfg.server_ip = Some(val()?.parse()?),
            "--discovery" => cfg.discovery = true,
            "--lease-secs" => lease_secs = val()?.parse()?,
            "--threads" => threads = val()?.parse()?,
            _ => return Err(format!("unknown argument {a}\n{usage}").into()),
        }
    }
    if let Some((s, e)) = pool_range {
        // Mask: the smallest common prefix of start and end.
        let diff = u32::from(s) ^ u32::from(e);
        let mask = if diff == 0 {
            u32::MAX
        } else {
            u32::MAX << (32 - diff.leading_zeros())
        };
        let mut pool = PoolConfig::new(s, e, Ipv4Addr::from(mask));
        pool.lease_time = Duration::from_secs(lease_secs);
        cfg.mode = DhcpMode::Authoritative { pools: vec![pool] };
    }
    let store: Arc<dyn AddressLeaseStore> = if null_store {
        Arc::new(NullAddressLeaseStore)
    } else {
        Arc::new(FileAddressLeaseStore::new(leases))
    };
    let metrics = Arc::new(Metrics::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
            }
            s.cancel();
        });
        let r = pxe::run(cfg, Arc::new(StaticDirectory::new()), store, Arc::clone(&metrics), stop).await;
        let mut out = String::new();
        metrics.render_prometheus(&mut out);
        println!("{out}");
        r
    })?;
    Ok(())
}
