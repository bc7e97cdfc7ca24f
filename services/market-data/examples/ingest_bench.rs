//! Measures the market-data pipeline that `scripts/bench-ingest` starts
//! (upbit-sim → ingestor → market-data → Redis), step by step at increasing
//! simulator rates, next to a Redis ceiling measured in the same run.
//!
//! For each rate it sets the simulator's rate, waits for the pipeline to settle,
//! then for the measuring window records:
//! - offered: messages/s the simulator generated;
//! - ingested: events/s the ingestor parsed from its WebSocket;
//! - published: trades/s that reached Redis pub/sub (this tool subscribes);
//! - latency p50/p99/max of trade → Redis (receipt on the channel minus the
//!   trade's exchange timestamp, which the simulator stamps at generation).
//!
//! The ceiling: market-data's own batch-apply script run against the same Redis
//! by two concurrent writers with 2000-trade batches, with no network pipeline
//! in front (what Redis can absorb in this shape), plus `redis-benchmark` SET
//! with pipelining when it is installed.
//!
//! Usage: cargo run --release -p market-data --example ingest_bench -- \
//!   --redis redis://127.0.0.1:6379 --prefix bench: --sim http://127.0.0.1:9106 \
//!   --ingestor-metrics http://127.0.0.1:9105 --rates 10000,50000,100000 --seconds 10 \
//!   [--cpu upbit-sim=PID,ingestor=PID] [--cpu-match postgres=DBNAME] [--per-second]
//!
//! After the table it prints, per step, the CPU each named process used (from
//! /proc; `--cpu-match` sums every process whose command line contains the text,
//! e.g. the Postgres backends of the run's database) and the machine's wake-up
//! delay: how late a thread that sleeps 1 ms is woken, the scheduling delay the
//! box adds to every hop of the pipeline.

#![allow(clippy::print_stdout)] // a report on stdout is its purpose

use std::time::{Duration, Instant};

use exchange_proto::marketdata::v1 as pb;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use prost::Message as _;

struct Args {
    redis: String,
    prefix: String,
    sim: String,
    ingestor_metrics: String,
    md_metrics: String,
    rates: Vec<u64>,
    seconds: u64,
    settle: u64,
    /// Print p50/p99/max of every second of each step too.
    per_second: bool,
    /// Processes whose CPU time is reported per step: (name, pid).
    cpu: Vec<(String, u32)>,
    /// Processes matched by a substring of their command line: (name, substring).
    cpu_match: Vec<(String, String)>,
}

fn args() -> Args {
    let mut a = Args {
        redis: "redis://127.0.0.1:6379".into(),
        prefix: "bench:".into(),
        sim: "http://127.0.0.1:9106".into(),
        ingestor_metrics: "http://127.0.0.1:9105".into(),
        md_metrics: "http://127.0.0.1:9101".into(),
        rates: vec![10_000, 25_000, 50_000, 100_000, 150_000, 200_000],
        seconds: 10,
        settle: 3,
        per_second: false,
        cpu: Vec::new(),
        cpu_match: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--per-second" {
            a.per_second = true;
            continue;
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--redis" => a.redis = value,
            "--prefix" => a.prefix = value,
            "--sim" => a.sim = value,
            "--ingestor-metrics" => a.ingestor_metrics = value,
            "--md-metrics" => a.md_metrics = value,
            "--rates" => {
                a.rates = value
                    .split(',')
                    .filter_map(|r| r.trim().parse().ok())
                    .collect()
            }
            "--seconds" => a.seconds = value.parse().unwrap_or(10),
            "--settle" => a.settle = value.parse().unwrap_or(3),
            // --cpu upbit-sim=123,ingestor=456
            "--cpu" => a
                .cpu
                .extend(name_values(&value).filter_map(|(k, v)| Some((k, v.parse().ok()?)))),
            // --cpu-match postgres=bench_md_42 (every process whose command line has it)
            "--cpu-match" => a.cpu_match.extend(name_values(&value)),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Ingestor receipt-lag and market-data stored-lag buckets read at one instant.
type Scrape = (Vec<(f64, f64)>, Vec<(f64, f64)>);

fn percentile(sorted: &[u32], p: usize) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let Ok(resp) = http.get(format!("{url}/metrics")).send().await else {
        return 0.0;
    };
    let body = resp.text().await.unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Cumulative buckets (upper bound in seconds, count) of a histogram.
async fn buckets(http: &reqwest::Client, url: &str, name: &str) -> Vec<(f64, f64)> {
    labelled_buckets(http, url, name, "").await
}

/// The same for the series whose labels start with `labels` (`type="trade",`).
async fn labelled_buckets(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    labels: &str,
) -> Vec<(f64, f64)> {
    let Ok(resp) = http.get(format!("{url}/metrics")).send().await else {
        return Vec::new();
    };
    let body = resp.text().await.unwrap_or_default();
    let prefix = format!("{name}_bucket{{{labels}le=\"");
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which `q` of the observations between two readings fall.
fn quantile_bound(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let total = after.last().map_or(0.0, |b| b.1) - before.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return 0.0;
    }
    for (i, (le, count)) in after.iter().enumerate() {
        let delta = count - before.get(i).map_or(0.0, |b| b.1);
        if delta >= q * total {
            return *le;
        }
    }
    f64::INFINITY
}

/// `a=1,b=2` as (name, value) pairs.
fn name_values(list: &str) -> impl Iterator<Item = (String, String)> + '_ {
    list.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
}

/// CPU time (user + system, in clock ticks of 1/100 s) of one process, from /proc.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}

/// Ticks of every process whose command line contains `needle`, by pid.
fn matching_ticks(needle: &str) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .filter_map(|pid| Some((pid, process_ticks(pid)?)))
        .collect()
}

/// The machine's (busy, total) ticks summed over all cores, from /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle and iowait are the 4th and 5th.
    Some((total - v.get(3)? - v.get(4)?, total))
}

/// CPU use of the measured processes over one step.
struct CpuReading {
    named: Vec<Option<u64>>,
    matched: Vec<Vec<(u32, u64)>>,
    machine: Option<(u64, u64)>,
    at: Instant,
}

impl CpuReading {
    fn take(a: &Args) -> Self {
        Self {
            named: a.cpu.iter().map(|(_, pid)| process_ticks(*pid)).collect(),
            matched: a.cpu_match.iter().map(|(_, m)| matching_ticks(m)).collect(),
            machine: machine_ticks(),
            at: Instant::now(),
        }
    }

    /// "% of one core" per process since `before`, then the machine's busy share.
    fn report_since(&self, before: &Self, a: &Args) -> String {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let pct = |ticks: u64| ticks as f64 / secs; // 100 ticks/s = 100 %
        let mut out = Vec::new();
        for (i, (name, _)) in a.cpu.iter().enumerate() {
            if let (Some(Some(t0)), Some(Some(t1))) = (before.named.get(i), self.named.get(i)) {
                out.push(format!("{name} {:.0}", pct(t1 - t0)));
            }
        }
        for (i, (name, _)) in a.cpu_match.iter().enumerate() {
            let (Some(b), Some(n)) = (before.matched.get(i), self.matched.get(i)) else {
                continue;
            };
            let ticks: u64 = n
                .iter()
                .map(|(pid, t)| t - b.iter().find(|(p, _)| p == pid).map_or(0, |(_, t0)| *t0))
                .sum();
            out.push(format!("{name} {:.0}", pct(ticks)));
        }
        if let (Some((b0, t0)), Some((b1, t1))) = (before.machine, self.machine) {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
            out.push(format!(
                "machine {:.0} of {}",
                busy * 100.0 * cores as f64,
                cores * 100
            ));
        }
        out.join(", ")
    }
}

/// How late a thread that sleeps 1 ms wakes up, sampled continuously: the delay
/// the machine's scheduler adds to any wake-up, whatever the pipeline does.
fn spawn_wakeup_probe() -> std::sync::Arc<std::sync::Mutex<Vec<u32>>> {
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = samples.clone();
    std::thread::spawn(move || {
        loop {
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(1));
            let late = t.elapsed().saturating_sub(Duration::from_millis(1));
            if let Ok(mut s) = out.lock() {
                s.push(late.as_micros().min(u32::MAX as u128) as u32);
            }
        }
    });
    samples
}

async fn sim_generated(http: &reqwest::Client, sim: &str) -> f64 {
    match http.get(format!("{sim}/sim/stats")).send().await {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["generated"].as_f64())
            .unwrap_or(0.0),
        Err(_) => 0.0,
    }
}

/// market-data's batch script against Redis directly: events/s it absorbs.
async fn redis_ceiling(url: &str, prefix: &str) -> anyhow::Result<f64> {
    let client = market_data::redis_builder(url)?.build()?;
    client.init().await?;
    let hot = market_data::hot::Hot::new(client.clone(), format!("{prefix}ceiling:"));
    let batch_of = |base: i64| market_data::hot::Batch {
        tickers: Vec::new(),
        orderbooks: Vec::new(),
        trades: (0..2000)
            .map(|i| pb::Trade {
                market: format!("KRW-C{}", i % 20),
                trade_price: "148000000".into(),
                trade_volume: "0.00016823".into(),
                ask_bid: pb::Side::Bid as i32,
                trade_timestamp: 1_700_000_000_000 + base,
                timestamp: 1_700_000_000_000 + base,
                sequential_id: base * 10_000 + i,
                ..Default::default()
            })
            .collect(),
    };
    let started = Instant::now();
    let window = Duration::from_secs(5);
    let writer = |offset: i64| {
        let hot = hot.clone();
        async move {
            let mut n = 0u64;
            let mut base = offset;
            while started.elapsed() < window {
                let batch = batch_of(base);
                base += 2;
                hot.apply(&batch).await.expect("apply");
                n += batch.trades.len() as u64;
            }
            n
        }
    };
    let (a, b) = tokio::join!(writer(0), writer(1));
    let rate = (a + b) as f64 / started.elapsed().as_secs_f64();
    let _ = client.quit().await;
    Ok(rate)
}

fn redis_benchmark(url: &str, prefix: &str) -> Option<String> {
    let hostport = url.trim_start_matches("redis://");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "6379"));
    // The same command as `-t set`, on a key under the run's prefix (removed with
    // the rest of the run's keys) instead of redis-benchmark's `key:__rand_int__`.
    let key = format!("{prefix}redis-benchmark");
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-h",
            host,
            "-p",
            port.trim_end_matches('/'),
            "-n",
            "1000000",
            "-P",
            "64",
            "-q",
            "SET",
            &key,
            "xxx",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find(|l| l.contains("requests per second"))
        .map(|l| {
            let l = l.rsplit('\r').next().unwrap_or(l).trim();
            // "SET <key> xxx: 1234.00 requests per second, …": the figures only.
            l.split_once(": ")
                .map_or(l, |(_, figures)| figures)
                .to_owned()
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let http = reqwest::Client::new();

    println!("# Redis ceiling (same machine, same run)");
    match redis_benchmark(&a.redis, &a.prefix) {
        Some(line) => println!("redis-benchmark SET -P 64: {line}"),
        None => println!("redis-benchmark: not installed (apt-get install redis-tools)"),
    }
    let ceiling = Box::pin(redis_ceiling(&a.redis, &a.prefix)).await?;
    println!("market-data batch script, 2 writers x 2000 trades/batch: {ceiling:.0} events/s");
    println!();

    // Subscribe to the trade channel and time every trade on arrival.
    let subscriber = market_data::redis_builder(&a.redis)?.build_subscriber_client()?;
    subscriber.init().await?;
    let mut rx = subscriber.message_rx();
    subscriber
        .subscribe(format!("{}md:ch:trade", a.prefix))
        .await?;
    let (tx_lat, mut rx_lat) = tokio::sync::mpsc::unbounded_channel::<u32>();
    tokio::spawn(async move {
        while let Ok(message) = rx.recv().await {
            let now = chrono::Utc::now().timestamp_millis();
            let Some(data) = message.value.as_bytes() else {
                continue;
            };
            let mut rest = data;
            while rest.len() >= 4 {
                let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(payload) = rest.get(4..4 + len) else {
                    break;
                };
                if let Ok(t) = pb::Trade::decode(payload) {
                    let _ = tx_lat.send((now - t.trade_timestamp).max(0) as u32);
                }
                rest = &rest[4 + len..];
            }
        }
    });

    println!(
        "Latency: trade exchange timestamp → received on the Redis channel by this tool (exact),"
    );
    println!("and → stored by market-data's Redis script (its histogram; bucket upper bounds).");
    println!();
    println!(
        "| sim rate (msg/s) | offered (msg/s) | ingested (events/s) | trades to Redis (/s) | p50 ms | p99 ms | max ms | stored p50 ≤ ms | stored p99 ≤ ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let wakeups = spawn_wakeup_probe();
    let mut machine_rows = Vec::new();
    for rate in &a.rates {
        http.post(format!("{}/sim/rate?eps={rate}", a.sim))
            .send()
            .await?;
        tokio::time::sleep(Duration::from_secs(a.settle)).await;
        while rx_lat.try_recv().is_ok() {}
        let g0 = sim_generated(&http, &a.sim).await;
        let i0 = metric(&http, &a.ingestor_metrics, "ingestor_events_total").await;
        let h0 = buckets(&http, &a.md_metrics, "market_data_event_to_redis_seconds").await;
        let cpu0 = CpuReading::take(&a);
        if let Ok(mut w) = wakeups.lock() {
            w.clear();
        }
        let started = Instant::now();
        // --per-second: the ingestor's receipt lag and market-data's stored lag,
        // read every second, so a slow second shows which stage it was in.
        let stages = a.per_second.then(|| {
            let (http, ing, md, n) = (
                http.clone(),
                a.ingestor_metrics.clone(),
                a.md_metrics.clone(),
                a.seconds,
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut out = Vec::new();
                for _ in 0..=n {
                    tick.tick().await;
                    out.push((
                        labelled_buckets(
                            &http,
                            &ing,
                            "ingestor_event_lag_seconds",
                            "type=\"trade\",",
                        )
                        .await,
                        buckets(&http, &md, "market_data_event_to_redis_seconds").await,
                    ));
                }
                out
            })
        });
        let mut lat = Vec::new();
        // Latencies of each second of the window, for --per-second.
        let mut seconds: Vec<Vec<u32>> = vec![Vec::new(); a.seconds as usize + 1];
        let window = Duration::from_secs(a.seconds);
        while started.elapsed() < window {
            match tokio::time::timeout(window.saturating_sub(started.elapsed()), rx_lat.recv())
                .await
            {
                Ok(Some(ms)) => {
                    lat.push(ms);
                    if let Some(s) = seconds.get_mut(started.elapsed().as_secs() as usize) {
                        s.push(ms);
                    }
                }
                _ => break,
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = CpuReading::take(&a).report_since(&cpu0, &a);
        let mut late = wakeups.lock().map(|w| w.clone()).unwrap_or_default();
        late.sort_unstable();
        machine_rows.push(format!(
            "| {rate} | {cpu} | {:.1} | {:.1} |",
            f64::from(percentile(&late, 99)) / 1000.0,
            f64::from(late.last().copied().unwrap_or(0)) / 1000.0,
        ));
        let g1 = sim_generated(&http, &a.sim).await;
        let i1 = metric(&http, &a.ingestor_metrics, "ingestor_events_total").await;
        let h1 = buckets(&http, &a.md_metrics, "market_data_event_to_redis_seconds").await;
        if let Some(stages) = stages {
            let stages = stages.await.unwrap_or_default();
            for (i, s) in seconds
                .iter_mut()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
            {
                s.sort_unstable();
                let stage = |pick: fn(&Scrape) -> &Vec<(f64, f64)>| match (
                    stages.get(i),
                    stages.get(i + 1),
                ) {
                    (Some(a), Some(b)) => quantile_bound(pick(a), pick(b), 0.99) * 1000.0,
                    _ => f64::NAN,
                };
                eprintln!(
                    "  {rate}/s second {i:>3}: trades {:>6} p50 {:>3} ms p99 {:>3} ms max {:>3} ms | p99 received by the ingestor ≤ {:>4} ms, stored ≤ {:>4} ms",
                    s.len(),
                    percentile(s, 50),
                    percentile(s, 99),
                    s.last().copied().unwrap_or(0),
                    stage(|s| &s.0),
                    stage(|s| &s.1),
                );
            }
        }
        lat.sort_unstable();
        println!(
            "| {rate} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
            (g1 - g0) / secs,
            (i1 - i0) / secs,
            lat.len() as f64 / secs,
            percentile(&lat, 50),
            percentile(&lat, 99),
            lat.last().copied().unwrap_or(0),
            quantile_bound(&h0, &h1, 0.5) * 1000.0,
            quantile_bound(&h0, &h1, 0.99) * 1000.0,
        );
    }
    http.post(format!("{}/sim/rate?eps=0", a.sim))
        .send()
        .await?;
    println!();
    println!("The machine during each step: CPU of each process in % of one core (from /proc),");
    println!(
        "and how late a thread sleeping 1 ms woke up (the delay the box adds to any wake-up)."
    );
    println!();
    println!("| sim rate (msg/s) | CPU % | wake-up delay p99 ms | max ms |");
    println!("|---:|---|---:|---:|");
    for row in machine_rows {
        println!("{row}");
    }
    let _ = subscriber.quit().await;
    Ok(())
}
