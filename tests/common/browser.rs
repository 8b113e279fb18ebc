//! A real browser for page tests: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver, killed on drop), and the few steps every page test takes (fill a field,
//! submit and wait for the next page, read the page, save a screenshot under
//! `target/screenshots/`).
#![allow(dead_code)]

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver as a child process, killed on drop.
pub struct Driver {
    child: Child,
    pub url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver on a free loopback port; fails naming the Debian packages if missing.
pub async fn start_driver() -> Driver {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: install Debian's {package} (apt-get install chromium chromium-driver)"
        );
    }
    let port = testkit::free_tcp_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await {
            if r.status().is_success() {
                return driver;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {}", driver.url);
}

/// A headless Chromium session `width` pixels wide.
pub async fn browser(driver: &Driver, width: u32) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", format!("--window-size={width},900"),
                     "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

pub fn screenshot_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

/// Saves the page as `target/screenshots/NAME.png`; returns the path.
pub async fn shot(c: &Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.expect("screenshot");
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("save screenshot");
    path
}

pub async fn fill(c: &Client, id: &str, text: &str) {
    let e = c
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("field #{id}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

/// Clicks what submits a form and waits (bounded) until the next page has replaced this one.
pub async fn click(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.expect("page");
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .expect("click");
    wait_for_next_page(c, old).await;
}

pub async fn wait_for_next_page(c: &Client, old: fantoccini::elements::Element) {
    for _ in 0..400 {
        // The old page's root goes stale once the browser has navigated.
        if old.tag_name().await.is_err() {
            for _ in 0..200 {
                let ready = c.execute("return document.readyState", vec![]).await;
                if ready
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .as_deref()
                    == Some("complete")
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the next page did not finish loading");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the form did not lead to another page");
}

pub async fn text_of_page(c: &Client) -> String {
    c.find(Locator::Css("body"))
        .await
        .expect("body")
        .text()
        .await
        .expect("text")
}

/// Waits (bounded, 20 s) until element `css` has text containing `want`; returns that text.
pub async fn wait_for_text(c: &Client, css: &str, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..400 {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if last.contains(want) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} never said '{want}'; it says '{last}'");
}

/// The `value`s of the `<option>`s `css` matches, in order.
pub async fn option_values(c: &Client, css: &str) -> Vec<String> {
    let mut v = vec![];
    for o in c.find_all(Locator::Css(css)).await.expect("options") {
        v.push(o.attr("value").await.expect("value").unwrap_or_default());
    }
    v
}
