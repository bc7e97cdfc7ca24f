//! The WebSocket fan-out benchmark's clients (`scripts/bench-ws`): N Upbit
//! clients of one trade stream, driven from Rust so the clients are not the
//! slowest part (one process, two tokio workers, a frame read costs a
//! substring search).
//!
//! Opens `--clients` connections to the gateway, each subscribing to the
//! trades of `--market` (realtime only), waits until the gateway counts them
//! all (`gateway_ws_subscriptions`), then injects `--rate` trades per second
//! for `--seconds` through the simulator's admin API. Each client notes, per
//! frame, the delay from the trade's `trade_timestamp` (set by the simulator
//! when it made the trade, same clock) to the frame's arrival.
//!
//! Prints one Markdown table row: clients, trades, frames received of
//! expected, delay p50/p99/max, the server's memory per idle connection (the
//! first process of `--pids`), and the resident memory and CPU of the
//! processes named in `--pids`.
//!
//! Usage: ws_clients --url ws://HOST:PORT/websocket/v1 --gateway-admin HOST:PORT
//!   --sim-admin HOST:PORT --clients N [--market KRW-BTC] [--rate 20]
//!   [--seconds 15] [--pids gateway=PID,market-data=PID] [--rss-baseline KIB]

#![allow(clippy::print_stdout)] // a report on stdout is its purpose

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

struct Args {
    url: String,
    gateway_admin: String,
    sim_admin: String,
    clients: usize,
    market: String,
    rate: u32,
    seconds: u64,
    pids: Vec<(String, u32)>,
    /// The server's resident memory before any client (KiB); by default
    /// read when this run starts.
    rss_baseline: Option<u64>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: String::new(),
        gateway_admin: String::new(),
        sim_admin: String::new(),
        clients: 1000,
        market: "KRW-BTC".into(),
        rate: 20,
        seconds: 15,
        pids: Vec::new(),
        rss_baseline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--url" => a.url = value()?,
            "--gateway-admin" => a.gateway_admin = value()?,
            "--sim-admin" => a.sim_admin = value()?,
            "--clients" => a.clients = value()?.parse()?,
            "--market" => a.market = value()?,
            "--rate" => a.rate = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--rss-baseline" => a.rss_baseline = Some(value()?.parse()?),
            "--pids" => {
                for pair in value()?.split(',').filter(|p| !p.is_empty()) {
                    let (name, pid) = pair
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--pids takes name=pid,…"))?;
                    a.pids.push((name.to_owned(), pid.parse()?));
                }
            }
            other => anyhow::bail!("unknown argument {other} (see the file's header)"),
        }
    }
    anyhow::ensure!(
        !a.url.is_empty() && !a.gateway_admin.is_empty() && !a.sim_admin.is_empty(),
        "--url, --gateway-admin and --sim-admin are required"
    );
    Ok(a)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `"trade_timestamp":N` of a DEFAULT-format trade frame.
fn trade_timestamp(frame: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"trade_timestamp\":";
    let at = frame.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// One client: the delays (ms) of the trade frames it received.
async fn client(url: String, request: String, stop: CancellationToken) -> anyhow::Result<Vec<u32>> {
    // Small reads (frames are a few hundred bytes): 10,000 clients at the
    // default 128 KiB each would spend more on memory than on reading.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), false).await?;
    ws.send(Message::Text(request.into())).await?;
    let mut delays = Vec::new();
    loop {
        let next = tokio::select! { _ = stop.cancelled() => break, m = ws.next() => m };
        match next {
            Some(Ok(Message::Binary(b))) => {
                if let Some(ts) = trade_timestamp(&b) {
                    delays.push((now_ms() - ts).max(0) as u32);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => anyhow::bail!("connection failed: {e}"),
            None => anyhow::bail!("connection closed by the gateway"),
        }
    }
    let _ = ws.close(None).await;
    Ok(delays)
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time of `pid` (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let admin: std::net::SocketAddr = a.gateway_admin.parse()?;
    let http = reqwest::Client::new();
    let me = std::process::id();
    let mut pids = a.pids.clone();
    pids.push(("clients".into(), me));
    // The server: the first process named (its memory per idle connection).
    let gateway_pid = a.pids.first().map(|(_, p)| *p);
    let rss_before = a
        .rss_baseline
        .unwrap_or_else(|| gateway_pid.map_or(0, rss_kib));

    // Connect and subscribe, a few hundred at a time.
    let request = format!(
        r#"[{{"ticket":"bench"}},{{"type":"trade","codes":["{}"],"is_only_realtime":true}}]"#,
        a.market
    );
    let base = test_support::read_metric(admin, "gateway_ws_subscriptions", &[]).await;
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..a.clients {
        tasks.spawn(client(a.url.clone(), request.clone(), stop.clone()));
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let want = base + a.clients as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while test_support::read_metric(admin, "gateway_ws_subscriptions", &[]).await < want {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not count {} subscriptions within 120 s",
            a.clients
        );
        anyhow::ensure!(
            !tasks.is_empty() && tasks.try_join_next().is_none(),
            "a client ended while connecting (limits? file descriptors?)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = gateway_pid.map_or(0, rss_kib);

    // Trades at the rate asked, each one frame per client.
    let cpu_before: Vec<u64> = pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let phase = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1))));
    let mut trades = 0u64;
    // Each trade is posted on its own: a busy server answering late does not
    // lower the rate it is offered.
    let mut posts = tokio::task::JoinSet::new();
    while phase.elapsed() < Duration::from_secs(a.seconds) {
        tick.tick().await;
        let price = 150_000_000 + (trades % 100) * 1_000;
        let body = serde_json::json!({"market": a.market, "price": price.to_string(), "volume": "0.001", "ask_bid": "BID"});
        let post = http
            .post(format!("http://{}/sim/trade", a.sim_admin))
            .json(&body)
            .send();
        posts.spawn(async move { post.await.map(|r| r.status().is_success()) });
        trades += 1;
    }
    while let Some(posted) = posts.join_next().await {
        anyhow::ensure!(
            matches!(posted, Ok(Ok(true))),
            "a trade was not accepted by the simulator"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let elapsed = phase.elapsed().as_secs_f64();
    let cpu_after: Vec<u64> = pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let rss_busy: Vec<u64> = pids.iter().map(|(_, p)| rss_kib(*p)).collect();
    stop.cancel();

    let mut delays = Vec::with_capacity(a.clients * trades as usize);
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(d)) => delays.extend(d),
            _ => failed += 1,
        }
    }
    delays.sort_unstable();
    let expected = trades * a.clients as u64;
    // Clock ticks per second in /proc/PID/stat: USER_HZ, 100 on Linux.
    let hz = 100.0;
    let cpu: Vec<String> = pids
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|((name, _), (b, e))| format!("{name} {:.0}%", 100.0 * (e - b) as f64 / hz / elapsed))
        .collect();
    let rss: Vec<String> = pids
        .iter()
        .zip(&rss_busy)
        .map(|((name, _), kib)| format!("{name} {} MB", kib / 1024))
        .collect();
    let per_conn = if a.clients > 0 && rss_idle > rss_before {
        format!("{:.1}", (rss_idle - rss_before) as f64 / a.clients as f64)
    } else {
        "-".into()
    };
    println!(
        "| {} | {} ({}/s) | {} of {} | {} | {} | {} | {} | {} | {} | {:.1} s |",
        a.clients,
        trades,
        a.rate,
        delays.len(),
        expected,
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(0),
        per_conn,
        rss.join(", "),
        cpu.join(", "),
        connect_secs,
    );
    if failed > 0 {
        eprintln!("{failed} clients failed or were closed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_trade_timestamp() {
        let frame = br#"{"type":"trade","code":"KRW-BTC","trade_timestamp":1733200000123,"x":1}"#;
        assert_eq!(super::trade_timestamp(frame), Some(1_733_200_000_123));
        assert_eq!(super::trade_timestamp(b"{}"), None);
    }
}
