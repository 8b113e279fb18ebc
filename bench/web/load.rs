//! The driver of bench/web (an example, so it shares the dev-dependencies; never shipped).
//!
//!   bench-web-load weight BASE TOKEN OUT_DIR PATH...
//!     Signs in with TOKEN, then for each page PATH prints the bytes of its HTML and of the
//!     CSS and JS it references, raw and as sent to a browser that accepts `br, gzip`
//!     (whatever the server negotiates), and whether the compressed sum is within 100 KB.
//!     Saves the session cookie in OUT_DIR/cookie and each page's HTML in OUT_DIR/<n>.html.
//!
//!   bench-web-load time LABEL URL COOKIE_FILE RUNS
//!     GETs URL RUNS times one after another (identity encoding: the render, not gzip) and
//!     prints the median, p95 and p99 in milliseconds (after 5 unmeasured warm-up requests).

use std::time::{Duration, Instant};

/// A page's budget: HTML + CSS + JS, compressed.
const BUDGET: u64 = 100_000;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// The value of cookie `name` among a response's Set-Cookie headers.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let first = v.split(';').next()?;
            let (k, val) = first.split_once('=')?;
            (k.trim() == name).then(|| val.trim().to_string())
        })
}

async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> String {
    let r = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("GET /login");
    let login = set_cookie(&r, "rs_login").expect("the sign-in form's cookie");
    let body = serde_urlencoded::to_string([("csrf", login.as_str()), ("token", token)])
        .expect("form body");
    let r = http
        .post(format!("{base}/login"))
        .header("Cookie", format!("rs_login={login}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("POST /login");
    set_cookie(&r, "rs_session").expect("a session cookie after signing in")
}

/// (raw bytes, bytes as sent when `br, gzip` is accepted, body as text).
async fn sizes(http: &reqwest::Client, url: &str, cookie: &str) -> (u64, u64, String) {
    let get = |enc: &'static str| {
        http.get(url)
            .header("Cookie", format!("rs_session={cookie}"))
            .header("Accept-Encoding", enc)
            .send()
    };
    let raw = get("identity").await.expect("GET");
    assert!(raw.status().is_success(), "{url}: {}", raw.status());
    let text = raw.text().await.expect("body");
    let sent = get("br, gzip")
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body")
        .len() as u64;
    (text.len() as u64, sent, text)
}

/// The stylesheets and scripts a page references (`href="/static/…"`, `src="/static/…"`).
fn assets(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"/static/", "src=\"/static/"] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            let tail = &rest[i + attr.len() - "/static/".len()..];
            let end = tail.find('"').unwrap_or(tail.len());
            let url = tail[..end].replace("&amp;", "&");
            let path = url.split('?').next().unwrap_or_default();
            if path.ends_with(".css") || path.ends_with(".js") {
                out.push(url);
            }
            rest = &tail[end..];
        }
    }
    out
}

async fn weight(base: &str, token: &str, out_dir: &str, paths: &[String]) {
    let http = client();
    let cookie = sign_in(&http, base, token).await;
    std::fs::write(format!("{out_dir}/cookie"), &cookie).expect("save cookie");
    println!(
        "{:<34} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}  within",
        "page", "html", "html sent", "css+js", "css+js sent", "total", "sent"
    );
    for (n, path) in paths.iter().enumerate() {
        let (html, html_sent, text) = sizes(&http, &format!("{base}{path}"), &cookie).await;
        std::fs::write(format!("{out_dir}/{n}.html"), &text).expect("save page");
        let (mut a, mut a_sent) = (0, 0);
        for url in assets(&text) {
            let (raw, sent, _) = sizes(&http, &format!("{base}{url}"), &cookie).await;
            a += raw;
            a_sent += sent;
        }
        let sent = html_sent + a_sent;
        println!(
            "{path:<34} {html:>9} {html_sent:>9} {a:>10} {a_sent:>10} {:>9} {sent:>9}  {}",
            html + a,
            if sent <= BUDGET { "yes" } else { "NO" }
        );
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn time(label: &str, url: &str, cookie_file: &str, runs: usize) {
    let http = client();
    let cookie = std::fs::read_to_string(cookie_file).unwrap_or_default();
    let get = || {
        http.get(url)
            .header("Cookie", format!("rs_session={}", cookie.trim()))
            .header("Accept-Encoding", "identity")
            .send()
    };
    for _ in 0..5 {
        let _ = get().await.expect("warm-up").bytes().await;
    }
    let mut ms = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let r = get().await.expect("GET");
        assert!(r.status().is_success(), "{url}: {}", r.status());
        bytes = r.bytes().await.expect("body").len();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "{label:<10} runs {runs} bytes {bytes} median {:.2} ms p95 {:.2} ms p99 {:.2} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.95),
        percentile(&ms, 0.99)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("weight") if args.len() >= 5 => weight(&args[1], &args[2], &args[3], &args[4..]).await,
        Some("time") if args.len() == 5 => {
            let runs = args[4].parse().expect("RUNS is a number");
            time(&args[1], &args[2], &args[3], runs).await
        }
        _ => {
            eprintln!("usage: bench-web-load weight BASE TOKEN OUT_DIR PATH... | time LABEL URL COOKIE_FILE RUNS");
            std::process::exit(2);
        }
    }
}
