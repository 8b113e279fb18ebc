//! Faults: a stopped emulator, a slow one, one answering 5xx; and never more than one request in
//! flight to one BMC (a counting proxy in front of sushy-tools asserts it).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bmc::{
    BmcError, BootDevice, BootMode, Controller, Credentials, PowerAction, PowerState, TlsPolicy,
};
use common::*;

fn creds() -> Credentials {
    Credentials::new("admin", "pw-not-shown-1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_emulator_gives_bounded_retries_and_a_clear_error() {
    let mut sushy = Sushy::start(&[default_system()], SushyOpts::default());
    let ctl = Controller::new(fast_policy());
    let h = ctl
        .connect(&sushy.url().parse().unwrap(), creds(), &TlsPolicy::Verify)
        .unwrap();
    assert_eq!(h.power_state().await.unwrap(), PowerState::Off);

    sushy.proc_.stop();
    let t = Instant::now();
    let err = h.power_state().await.unwrap_err();
    let elapsed = t.elapsed();
    eprintln!("{err} (after {:.1} s)", elapsed.as_secs_f64());
    assert!(matches!(err, BmcError::Unreachable { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(&format!("127.0.0.1:{}", sushy.port)));
    // 3 attempts with 0.2 s and 0.4 s backoff in between.
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_in_flight_per_bmc_under_concurrent_callers() {
    let sushy = Sushy::start(&[default_system()], SushyOpts::default());
    let fault = Arc::new(Mutex::new(Fault::Delay(Duration::from_millis(50))));
    let (port, stats, task) = proxy(sushy.port, fault).await;
    let ctl = Controller::new(fast_policy());
    let url: bmc::BmcUrl = format!("redfish+http://127.0.0.1:{port}").parse().unwrap();
    // Two separate drivers for the same BMC share the controller's queue.
    let a = ctl.connect(&url, creds(), &TlsPolicy::Verify).unwrap();
    let b = ctl.connect(&url, creds(), &TlsPolicy::Verify).unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let h = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            match i % 4 {
                0 => h.power_state().await.map(drop),
                1 => h.inspect().await.map(drop),
                2 => h.power_reading().await.map(drop),
                _ => {
                    h.set_boot_device(BootDevice::Pxe, false, BootMode::Uefi)
                        .await
                }
            }
        }));
    }
    let on = {
        let a = a.clone();
        tokio::spawn(async move { a.power(PowerAction::On).await })
    };
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(on.await.unwrap().unwrap(), PowerState::On);
    eprintln!(
        "{} requests, at most {} in flight",
        stats.total(),
        stats.max()
    );
    assert!(stats.total() >= 20, "{}", stats.total());
    assert_eq!(stats.max(), 1, "more than one request in flight to one BMC");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_5xx_retried_for_reads_never_for_power_actions() {
    let sushy = Sushy::start(&[default_system()], SushyOpts::default());
    let fault = Arc::new(Mutex::new(Fault::None));
    let (port, stats, task) = proxy(sushy.port, fault.clone()).await;
    let ctl = Controller::new(fast_policy());
    let url: bmc::BmcUrl = format!("redfish+http://127.0.0.1:{port}").parse().unwrap();
    let h = ctl.connect(&url, creds(), &TlsPolicy::Verify).unwrap();
    assert_eq!(h.power_state().await.unwrap(), PowerState::Off);

    // Every request answers 503: a read is tried `attempts` times, then fails clearly.
    *fault.lock().unwrap() = Fault::Status(503, None);
    let before = stats.total();
    let t = Instant::now();
    let err = h.power_state().await.unwrap_err();
    eprintln!("{err} (after {:.1} s)", t.elapsed().as_secs_f64());
    assert!(matches!(err, BmcError::Http { status: 503, .. }), "{err}");
    assert!(
        err.to_string()
            .contains("injected fault: service temporarily overloaded"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(stats.total() - before, 3, "one GET per attempt, 3 attempts");
    assert!(t.elapsed() < Duration::from_secs(5));

    // Only POSTs fail: the power action is sent exactly once and not retried.
    *fault.lock().unwrap() = Fault::Status(500, Some("POST"));
    let posts_before = stats.count("POST", "ComputerSystem.Reset");
    let err = h.power(PowerAction::Cycle).await.unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, BmcError::Http { status: 500, .. }), "{err}");
    assert_eq!(
        stats.count("POST", "ComputerSystem.Reset") - posts_before,
        1
    );
    // Healthy again.
    *fault.lock().unwrap() = Fault::None;
    h.power_state().await.unwrap();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bmc_times_out_within_bounds() {
    let sushy = Sushy::start(&[default_system()], SushyOpts::default());
    let fault = Arc::new(Mutex::new(Fault::Delay(Duration::from_secs(4))));
    let (port, _stats, task) = proxy(sushy.port, fault).await;
    let mut policy = fast_policy();
    policy.driver.request_timeout = Duration::from_secs(1);
    policy.attempts = 2;
    let ctl = Controller::new(policy);
    let url: bmc::BmcUrl = format!("redfish+http://127.0.0.1:{port}").parse().unwrap();
    let h = ctl.connect(&url, creds(), &TlsPolicy::Verify).unwrap();
    let t = Instant::now();
    let err = h.power_state().await.unwrap_err();
    let elapsed = t.elapsed();
    eprintln!("{err} (after {:.1} s)", elapsed.as_secs_f64());
    assert!(matches!(err, BmcError::Timeout { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_json_is_a_clear_error() {
    let handler: std::sync::Arc<dyn Fn(Request) -> futures_like::BoxFut + Send + Sync> =
        std::sync::Arc::new(|_req: Request| {
            Box::pin(async {
                Response {
                    status: 200,
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: b"{\"Systems\": <html>oops".to_vec(),
                }
            }) as futures_like::BoxFut
        });
    let (port, _stats, task) = serve(handler).await;
    let ctl = Controller::new(fast_policy());
    let url: bmc::BmcUrl = format!("redfish+http://127.0.0.1:{port}").parse().unwrap();
    let h = ctl.connect(&url, creds(), &TlsPolicy::Verify).unwrap();
    let err = h.power_state().await.unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, BmcError::BadResponse { .. }), "{err}");
    assert!(err.to_string().contains("invalid JSON"), "{err}");
    task.abort();
}
