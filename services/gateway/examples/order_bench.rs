//! Drives market orders through the gateway (`POST /api/v1/orders`) at
//! increasing concurrency and prints orders/s and latency percentiles per step.
//! Run by `scripts/bench-orders`, which also measures the Postgres ceiling.
//!
//! Usage: cargo run --release -p gateway --example order_bench -- \
//!   --base http://127.0.0.1:8080 --users 64 --steps 4,8,16,32 --seconds 20

#![allow(clippy::print_stdout)] // a report on stdout is its purpose

use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    base: String,
    users: usize,
    steps: Vec<usize>,
    seconds: u64,
    market: String,
    amount: String,
}

fn args() -> Args {
    let mut a = Args {
        base: "http://127.0.0.1:8080".into(),
        users: 64,
        steps: vec![4, 8, 16, 32, 64],
        seconds: 20,
        market: "KRW-BTC".into(),
        amount: "10000".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--base" => a.base = value,
            "--users" => a.users = value.parse().unwrap_or(64),
            "--steps" => {
                a.steps = value
                    .split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect()
            }
            "--seconds" => a.seconds = value.parse().unwrap_or(20),
            "--market" => a.market = value,
            "--amount" => a.amount = value,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

async fn token(http: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<String> {
    let creds = json!({"email": format!("bench-{n}-{}@example.com", std::process::id()), "password": "bench password"});
    let r = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&creds)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "register: {}", r.text().await?);
    let r: Value = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&creds)
        .send()
        .await?
        .json()
        .await?;
    let token = r["access_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("login: {r}"))?
        .to_owned();
    // Top up to the faucet's cap so a long run never runs dry.
    let r = http
        .post(format!("{base}/api/v1/deposits"))
        .bearer_auth(&token)
        .json(&json!({"currency": "KRW", "amount": "90000000"}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "deposit: {}", r.text().await?);
    Ok(token)
}

fn percentile(sorted: &[u32], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut tokens = Vec::with_capacity(a.users);
    for n in 0..a.users {
        tokens.push(token(&http, &a.base, n).await?);
    }
    let body = json!({"market": a.market, "side": "bid", "ord_type": "price", "price": a.amount});
    // Warm up connections and caches.
    for t in tokens.iter().take(8) {
        http.post(format!("{}/api/v1/orders", a.base))
            .bearer_auth(t)
            .json(&body)
            .send()
            .await?;
    }
    println!("| concurrency | orders/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &concurrency in &a.steps {
        let deadline = Instant::now() + Duration::from_secs(a.seconds);
        let workers: Vec<_> = (0..concurrency)
            .map(|w| {
                let (http, token, body, base) = (
                    http.clone(),
                    tokens[w % tokens.len()].clone(),
                    body.clone(),
                    a.base.clone(),
                );
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut errors = 0u64;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        let ok = match http
                            .post(format!("{base}/api/v1/orders"))
                            .bearer_auth(&token)
                            .json(&body)
                            .send()
                            .await
                        {
                            Ok(r) if r.status().as_u16() == 201 => true,
                            Ok(r) => {
                                if errors == 0 {
                                    let status = r.status();
                                    let text = r.text().await.unwrap_or_default();
                                    eprintln!("worker {w}: first error: {status} {text}");
                                }
                                false
                            }
                            Err(e) => {
                                if errors == 0 {
                                    eprintln!("worker {w}: first error: {e}");
                                }
                                false
                            }
                        };
                        if ok {
                            latencies.push(started.elapsed().as_micros() as u32);
                        } else {
                            errors += 1;
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let started = Instant::now();
        let mut all = Vec::new();
        let mut errors = 0;
        for w in workers {
            let (l, e) = w.await?;
            all.extend(l);
            errors += e;
        }
        let secs = started.elapsed().as_secs_f64();
        all.sort_unstable();
        println!(
            "| {concurrency} | {:.0} | {:.1} | {:.1} | {:.1} | {errors} |",
            all.len() as f64 / secs,
            percentile(&all, 50),
            percentile(&all, 99),
            all.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        );
    }
    Ok(())
}
