//! Faults injected at random moments while the users trade.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::exchange::{Exchange, SERVICES};
use crate::users::Shared;

/// What was injected, and when (seconds into the run).
#[derive(Default)]
pub struct Injected {
    pub log: Vec<(f64, String)>,
    pub counts: BTreeMap<String, u64>,
}

impl Injected {
    fn note(&mut self, at: f64, kind: &str, detail: String) {
        println!("[{at:7.1}s] fault: {detail}");
        self.log.push((at, detail));
        *self.counts.entry(kind.to_owned()).or_default() += 1;
    }
}

/// Injects a fault every `every` on average (between half and one and a half
/// of it) until the users stop.
pub async fn run(
    exchange: Arc<Mutex<Exchange>>,
    shared: Arc<Shared>,
    every: Duration,
    seed: u64,
    started: tokio::time::Instant,
) -> Injected {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xFA17);
    let mut injected = Injected::default();
    loop {
        let pause = every.mul_f64(rng.random_range(0.5..1.5));
        let deadline = tokio::time::Instant::now() + pause;
        while tokio::time::Instant::now() < deadline {
            if shared.stop.load(Ordering::Relaxed) {
                return injected;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let at = started.elapsed().as_secs_f64();
        let mut ex = exchange.lock().await;
        if let Err(e) = inject(&mut ex, &mut rng, &mut injected, at).await {
            println!("[{at:7.1}s] fault failed: {e:#}");
        }
        // Whatever the fault stopped comes back (a restart is the operator's
        // or Kubernetes' job; the run measures what the system does meanwhile).
        if let Err(e) = ex.heal(Duration::from_secs(120)).await {
            println!("[{at:7.1}s] a service did not come back: {e:#}");
        }
    }
}

async fn inject(
    ex: &mut Exchange,
    rng: &mut StdRng,
    injected: &mut Injected,
    at: f64,
) -> anyhow::Result<()> {
    let service = SERVICES[rng.random_range(0..SERVICES.len())];
    match rng.random_range(0..100) {
        0..25 => {
            ex.service(service).signal("KILL")?;
            injected.note(at, "SIGKILL", format!("SIGKILL {service}"));
            ex.service(service)
                .wait_exit(Duration::from_secs(5))
                .await?;
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
            ex.service(service).start()?;
        }
        25..40 => {
            ex.service(service).signal("TERM")?;
            injected.note(at, "SIGTERM", format!("SIGTERM {service}"));
            ex.service(service)
                .wait_exit(Duration::from_secs(25))
                .await?;
            ex.service(service).start()?;
        }
        40..50 => {
            let immediate = rng.random_bool(0.5);
            injected.note(
                at,
                "postgres restart",
                format!(
                    "Postgres restart ({})",
                    if immediate {
                        "immediate, as a crash"
                    } else {
                        "fast"
                    }
                ),
            );
            tokio::task::block_in_place(|| ex.postgres.restart(immediate))?;
        }
        50..56 => {
            ex.redis.command("FLUSHALL").await?;
            injected.note(at, "redis flush", "Redis FLUSHALL".into());
        }
        56..62 => {
            injected.note(at, "redis restart", "Redis restarted".into());
            ex.redis.restart().await?;
        }
        62..70 => {
            ex.sim("/sim/drop").await?;
            injected.note(at, "feed dropped", "feed connections dropped".into());
        }
        70..78 => {
            let secs = rng.random_range(2..9);
            ex.sim(&format!("/sim/stall?secs={secs}")).await?;
            injected.note(at, "feed stalled", format!("feed stalled {secs} s"));
        }
        78..86 => {
            let count = rng.random_range(3..40);
            ex.sim(&format!("/sim/malformed?count={count}")).await?;
            injected.note(at, "feed corrupted", format!("{count} corrupt feed frames"));
        }
        _ => {
            // Inventory commits, then answers UNAVAILABLE, for a while.
            let secs = rng.random_range(4..12);
            let inventory = ex.service("inventory");
            inventory.set_env("FAULT_UNAVAILABLE_AFTER_COMMIT", Some("0.5".into()));
            inventory.signal("TERM")?;
            inventory.wait_exit(Duration::from_secs(25)).await?;
            inventory.start()?;
            injected.note(
                at,
                "lost answers",
                format!("inventory loses half its answers after committing, {secs} s"),
            );
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let inventory = ex.service("inventory");
            inventory.set_env("FAULT_UNAVAILABLE_AFTER_COMMIT", None);
            inventory.signal("TERM")?;
            inventory.wait_exit(Duration::from_secs(25)).await?;
            inventory.start()?;
        }
    }
    Ok(())
}
