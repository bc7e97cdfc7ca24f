//! The chaos run: starts the whole exchange as processes (with a Postgres and a
//! Redis of its own), lets simulated users trade through the gateway while
//! faults are injected at random moments, then lets the exchange settle and
//! checks every money and order invariant. Exits 1 if any is violated.
//!
//! `scripts/chaos` builds the binaries and runs this; `scripts/chaos --short`
//! is the version CI runs.

// A command-line tool: its report is its output.
#![allow(clippy::print_stdout)]

use chaos::{checks, exchange, faults, users};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    about = "Randomized trading against the whole exchange while services, Postgres, Redis and the feed fail; then every money invariant is checked",
    after_help = "Environment: PG_BIN (directory of initdb and pg_ctl; default: the newest /usr/lib/postgresql/*/bin).\n\
                  Needs redis-server on PATH. As root, Postgres runs as the postgres user (runuser)."
)]
struct Args {
    /// Directory of the service binaries (target/debug or target/release).
    #[arg(long, env = "CHAOS_BIN")]
    bin: PathBuf,
    /// Concurrent users.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Operations to run in all (the run stops at whichever of this and
    /// --max-duration comes first).
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// Longest time to trade.
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    max_duration: Duration,
    /// Mean time between faults.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    fault_every: Duration,
    /// Chance that a user request is sent twice at once.
    #[arg(long, default_value_t = 0.1)]
    duplicate: f64,
    /// Simulator messages per second (trades cross resting orders).
    #[arg(long, default_value_t = 60)]
    sim_rate: u32,
    /// How long to wait for the exchange to settle after the faults stop.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    settle_timeout: Duration,
    /// Random seed (users and faults).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the run's Postgres, Redis and logs live (kept); a new temporary
    /// directory when not given (removed after a passing run).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the report as JSON here too.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s or 10m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{text}` is not a duration like 90s or 10m")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("chaos-{}", uuid::Uuid::new_v4().simple())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    println!("chaos: run directory {}", dir.display());
    let started = tokio::time::Instant::now();
    let exchange = exchange::Exchange::start(
        &dir,
        &args.bin,
        &exchange::Settings {
            sim_rate: args.sim_rate,
            env: Vec::new(),
        },
    )
    .await?;
    println!(
        "chaos: the exchange is up in {:.1}s; {} users, {} operations, a fault every ~{:?}",
        started.elapsed().as_secs_f64(),
        args.users,
        args.ops,
        args.fault_every
    );
    let database = exchange.database.clone();
    let shared = Arc::new(users::Shared::new(
        exchange.gateway.clone(),
        exchange.http.clone(),
        args.ops,
        args.duplicate,
    ));
    let exchange = Arc::new(Mutex::new(exchange));
    let outcome = tokio::select! {
        outcome = trade_under_faults(&args, exchange.clone(), shared.clone(), started) => outcome,
        _ = interrupted() => {
            println!("chaos: interrupted; stopping everything");
            shared.stop.store(true, Ordering::Relaxed);
            exchange.lock().await.stop().await;
            std::process::exit(130);
        }
    };

    let mut ex = exchange.lock().await;
    let passed = match outcome {
        Ok(injected) => {
            let report = report(&args, &shared, &injected, &database, &mut ex, started).await;
            match report {
                Ok(passed) => passed,
                Err(e) => {
                    println!("chaos: the checks could not run: {e:#}");
                    false
                }
            }
        }
        Err(e) => {
            println!("chaos: the run failed: {e:#}");
            false
        }
    };
    ex.stop().await;
    drop(ex);
    drop(exchange);
    if passed {
        println!("chaos: PASSED in {:.0}s", started.elapsed().as_secs_f64());
        if temporary {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(())
    } else {
        println!("chaos: FAILED (logs in {})", dir.join("logs").display());
        std::process::exit(1);
    }
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn trade_under_faults(
    args: &Args,
    exchange: Arc<Mutex<exchange::Exchange>>,
    shared: Arc<users::Shared>,
    started: tokio::time::Instant,
) -> anyhow::Result<faults::Injected> {
    let prices = tokio::spawn(users::follow_prices(shared.clone()));
    // Users trade once every market has a price.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while shared.prices.read().map(|p| p.len()).unwrap_or(0) < exchange::MARKETS.len() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no prices from the gateway after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let users: Vec<_> = (0..args.users)
        .map(|i| tokio::spawn(users::run(i, shared.clone(), args.seed)))
        .collect();
    let faults = tokio::spawn(faults::run(
        exchange.clone(),
        shared.clone(),
        args.fault_every,
        args.seed,
        started,
    ));
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                println!(
                    "[{:7.1}s] {} operations",
                    started.elapsed().as_secs_f64(),
                    shared.ops.load(Ordering::Relaxed).min(shared.budget)
                );
            }
        })
    };
    let trading = async {
        for u in users {
            u.await?;
        }
        anyhow::Ok(())
    };
    if tokio::time::timeout(args.max_duration, trading)
        .await
        .is_err()
    {
        println!("chaos: --max-duration reached; stopping the users");
    }
    shared.stop.store(true, Ordering::Relaxed);
    let injected = faults.await?;
    progress.abort();
    prices.abort();
    Ok(injected)
}

async fn report(
    args: &Args,
    shared: &users::Shared,
    injected: &faults::Injected,
    database: &str,
    ex: &mut exchange::Exchange,
    started: tokio::time::Instant,
) -> anyhow::Result<bool> {
    let traded = started.elapsed();
    // The faults have stopped: everything runs again, the feed pauses so that
    // the trades are final, and recovery and the matcher finish their work.
    ex.heal(Duration::from_secs(120)).await?;
    ex.sim("/sim/rate?eps=0").await?;
    let settle_from = tokio::time::Instant::now();
    let mut unsettled = i64::MAX;
    while settle_from.elapsed() < args.settle_timeout {
        unsettled = checks::unsettled(database).await.unwrap_or(i64::MAX);
        // The matcher's later catch-ups (2 and 10 s after a stream opened) too.
        if unsettled == 0 && settle_from.elapsed() > Duration::from_secs(12) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "chaos: settled in {:.1}s ({unsettled} orders left unfinished)",
        settle_from.elapsed().as_secs_f64()
    );
    let acked = shared.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let mut checks = checks::run(database, &acked).await?;
    // Requests sent twice (or retried) were answered with one order.
    let split: Vec<String> = shared
        .answers
        .lock()
        .map(|a| {
            a.iter()
                .filter(|(_, uuids)| uuids.len() > 1)
                .map(|(k, u)| format!("{k}: {u:?}"))
                .collect()
        })
        .unwrap_or_default();
    checks.push(checks::Check {
        name: "every answer to one request named the same order",
        violations: split.len() as i64,
        examples: split.into_iter().take(5).collect(),
    });
    // Inventory logs every fill it refuses: the order service never sent one
    // its order's terms do not allow.
    let log = std::fs::read_to_string(ex.dir.join("logs/inventory.log")).unwrap_or_default();
    let refused: Vec<String> = log
        .lines()
        .filter(|l| l.contains("refused a fill outside its order's terms"))
        .map(str::to_owned)
        .collect();
    checks.push(checks::Check {
        name: "inventory refused no fill (the order service sent only fills its orders allow)",
        violations: refused.len() as i64,
        examples: refused.into_iter().take(3).collect(),
    });
    let unexpected = shared
        .unexpected
        .lock()
        .map(|u| u.clone())
        .unwrap_or_default();
    checks.push(checks::Check {
        name: "no 500 and no refused session refresh",
        violations: unexpected.len() as i64,
        examples: unexpected.into_iter().take(5).collect(),
    });

    let ops = shared.ops.load(Ordering::Relaxed).min(shared.budget);
    let outcomes = shared
        .outcomes
        .lock()
        .map(|o| o.clone())
        .unwrap_or_default();
    let success = |what: &str| {
        what.split_whitespace()
            .any(|w| w.len() == 3 && w.starts_with('2') && w.bytes().all(|b| b.is_ascii_digit()))
    };
    let failed: u64 = outcomes
        .iter()
        .filter(|(k, _)| !success(k))
        .map(|(_, n)| n)
        .sum();
    let orders: Vec<(String, i64)> = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(database).await?;
        sqlx::query_as("SELECT state, count(*) FROM orders.orders GROUP BY 1 ORDER BY 1")
            .fetch_all(&mut conn)
            .await?
    };
    let fills: i64 = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(database).await?;
        sqlx::query_scalar("SELECT count(*) FROM orders.executions WHERE trade_id IS NOT NULL")
            .fetch_one(&mut conn)
            .await?
    };

    println!(
        "\n== chaos run: {:.0} s of trading, {} users ==",
        traded.as_secs_f64(),
        args.users
    );
    println!(
        "operations: {ops} ({} requests retried, {} sent twice at once, {} given up)",
        shared.retried.load(Ordering::Relaxed),
        shared.duplicated.load(Ordering::Relaxed),
        shared.gave_up.load(Ordering::Relaxed),
    );
    println!("answers that were not a success: {failed}");
    for (what, n) in &outcomes {
        println!("  {n:>7}  {what}");
    }
    println!(
        "orders: {}; fills of resting orders by live trades: {fills}",
        orders
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("faults injected: {}", injected.log.len());
    for (kind, n) in &injected.counts {
        println!("  {n:>5}  {kind}");
    }
    println!("invariants:");
    let mut passed = ops > 0;
    for c in &checks {
        let mark = if c.violations == 0 { "ok  " } else { "FAIL" };
        println!("  {mark} {} ({} violations)", c.name, c.violations);
        for e in &c.examples {
            println!("         e.g. {e}");
        }
        passed &= c.violations == 0;
    }
    if let Some(path) = &args.report {
        let json = serde_json::json!({
            "seconds": traded.as_secs_f64(),
            "users": args.users,
            "operations": ops,
            "retried": shared.retried.load(Ordering::Relaxed),
            "duplicated": shared.duplicated.load(Ordering::Relaxed),
            "gave_up": shared.gave_up.load(Ordering::Relaxed),
            "outcomes": outcomes,
            "orders": orders,
            "limit_fills": fills,
            "faults": injected.counts,
            "fault_log": injected.log,
            "invariants": checks.iter().map(|c| serde_json::json!({
                "name": c.name, "violations": c.violations, "examples": c.examples,
            })).collect::<Vec<_>>(),
            "passed": passed,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(passed)
}
