//! A small load generator for the `stateless_api` example: logs in once as a demo user,
//! then sends `GET /me` with the bearer token (JWT verify + one revocation check on the
//! shared store) round-robin over one or more instances, and reports requests/s and
//! p50/p99 latency.
//!
//! Run with:
//!
//! ```sh
//! # one Redis, three instances sharing it (same JWT_SECRET, so a token works on all)
//! REDIS_URL=redis://127.0.0.1:6379 JWT_SECRET=change-me-to-32-bytes-or-more-please \
//!     PORT=3001 cargo run --release --example stateless_api --features axum &
//! # ... PORT=3002, PORT=3003 likewise, then:
//! cargo run --release --example load -- --requests 20000 --seconds 20 --concurrency 32 \
//!     http://127.0.0.1:3001 http://127.0.0.1:3002 http://127.0.0.1:3003
//! ```
//!
//! The run stops after `--requests` requests or `--seconds` seconds, whichever comes first.
//! Only loopback targets are accepted: this is a benchmark tool, not a load-testing service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

struct Options {
    requests: u64,
    duration: Duration,
    concurrency: usize,
    urls: Vec<String>,
}

const USAGE: &str =
    "usage: load [--requests N] [--seconds S] [--concurrency C] http://127.0.0.1:PORT...";

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        requests: 20_000,
        duration: Duration::from_secs(20),
        concurrency: 32,
        urls: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--requests" => {
                options.requests = value("--requests")?.parse().map_err(|e| format!("{e}"))?
            }
            "--seconds" => {
                let secs: u64 = value("--seconds")?.parse().map_err(|e| format!("{e}"))?;
                options.duration = Duration::from_secs(secs);
            }
            "--concurrency" => {
                options.concurrency = value("--concurrency")?
                    .parse()
                    .map_err(|e| format!("{e}"))?
            }
            url => options.urls.push(url.trim_end_matches('/').to_owned()),
        }
    }
    if options.urls.is_empty() || options.concurrency == 0 || options.requests == 0 {
        return Err(USAGE.to_owned());
    }
    for url in &options.urls {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        let host = parsed.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if parsed.scheme() != "http" || !loopback {
            return Err(format!("{url}: only http:// loopback targets are accepted"));
        }
    }
    Ok(options)
}

#[derive(Deserialize)]
struct Login {
    access_token: String,
}

/// The latency at quantile `q` of sorted samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;

    let login: Login = client
        .post(format!("{}/login", options.urls[0]))
        .json(&serde_json::json!({"username": "alice", "password": "wonderland"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let bearer = Arc::new(format!("Bearer {}", login.access_token));
    let urls: Arc<Vec<String>> = Arc::new(options.urls.iter().map(|u| format!("{u}/me")).collect());
    // Every instance must accept the token before the clock starts (same JWT_SECRET).
    for url in urls.iter() {
        client
            .get(url)
            .header("authorization", bearer.as_str())
            .send()
            .await?
            .error_for_status()?;
    }

    let issued = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + options.duration;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.concurrency {
        let (client, bearer, urls, issued) =
            (client.clone(), bearer.clone(), urls.clone(), issued.clone());
        let limit = options.requests;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= limit || Instant::now() >= deadline {
                    return (latencies, errors);
                }
                let url = &urls[n as usize % urls.len()];
                let sent = Instant::now();
                let ok = match client
                    .get(url)
                    .header("authorization", bearer.as_str())
                    .send()
                    .await
                {
                    Ok(res) => res.status().is_success() && res.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();

    println!(
        "instances: {}  concurrency: {}  GET /me",
        options.urls.len(),
        options.concurrency
    );
    println!(
        "requests: {} ok, {} failed in {:.2} s",
        latencies.len(),
        errors,
        elapsed.as_secs_f64()
    );
    println!(
        "throughput: {:.0} requests/s",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency: p50 {}  p99 {}  max {}",
        ms(quantile(&latencies, 0.50)),
        ms(quantile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    if errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
