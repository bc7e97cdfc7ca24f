//! The feed: the shared simulator state, the paced generator, replay of a JSONL
//! recording, injected trades, and the fault switches.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use upbit::Message;
use upbit::market::MarketEvent;

use crate::engine::{BookTexts, Engine, Event, Payload};
use crate::markets::MarketSpec;

/// Messages buffered for each WebSocket connection before it starts skipping.
const BROADCAST_CAPACITY: usize = 1 << 16;

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Shared state of the simulator.
pub struct Sim {
    engine: Mutex<Engine>,
    markets: Vec<MarketSpec>,
    tx: broadcast::Sender<Arc<Event>>,
    /// Target messages per second of the generator (0 = paused).
    rate: AtomicU64,
    rate_changed: Notify,
    /// Incremented to make every open connection drop (no close frame).
    drops: watch::Sender<u64>,
    /// Connections send no data until this epoch-ms instant.
    stall_until: AtomicI64,
    /// The next N data frames (over all connections) are sent malformed.
    malformed_next: AtomicU64,
    /// Every Nth data frame is sent malformed (0 = never).
    pub malformed_every: u64,
    frames_sent: AtomicU64,
    generated: AtomicU64,
    /// Connections with a subscription in force.
    subscribed: AtomicU64,
    /// Per market, the text of its orderbook's levels as last written.
    book_texts: Mutex<HashMap<String, Arc<Mutex<BookTexts>>>>,
    /// Warning and caution designations set through `POST /sim/market-event`.
    events: Mutex<HashMap<String, MarketEvent>>,
}

/// Counts one connection in [`Sim::subscribed`] while it holds a subscription;
/// uncounted when dropped.
pub struct SubscribedGuard {
    sim: Arc<Sim>,
    counted: bool,
}

impl SubscribedGuard {
    pub fn new(sim: Arc<Sim>) -> Self {
        Self {
            sim,
            counted: false,
        }
    }

    /// Whether the connection now holds a subscription.
    pub fn set(&mut self, subscribed: bool) {
        if subscribed != self.counted {
            self.counted = subscribed;
            if subscribed {
                self.sim.subscribed.fetch_add(1, Ordering::SeqCst);
            } else {
                self.sim.subscribed.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl Drop for SubscribedGuard {
    fn drop(&mut self) {
        self.set(false);
    }
}

impl Sim {
    pub fn new(engine: Engine, rate: u64, malformed_every: u64) -> Arc<Self> {
        let markets = engine.markets().cloned().collect();
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Arc::new(Self {
            engine: Mutex::new(engine),
            markets,
            tx,
            rate: AtomicU64::new(rate),
            rate_changed: Notify::new(),
            drops: watch::channel(0).0,
            stall_until: AtomicI64::new(0),
            malformed_next: AtomicU64::new(0),
            malformed_every,
            frames_sent: AtomicU64::new(0),
            generated: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            book_texts: Mutex::default(),
            events: Mutex::default(),
        })
    }

    /// The market's designations (none unless set).
    pub fn market_event(&self, code: &str) -> MarketEvent {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.get(code).copied().unwrap_or_default()
    }

    /// Designates a market as Upbit would: `market/all?is_details=true` shows it,
    /// and its tickers' `market_warning` follows the investment warning.
    pub fn set_market_event(&self, code: &str, event: MarketEvent) -> Result<(), String> {
        if !self.markets.iter().any(|m| m.code.as_str() == code) {
            return Err(format!("{code} is not a simulated market"));
        }
        // The engine first, so no ticker says less than market/all once it returns.
        self.engine().set_warning(code, event.warning);
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.insert(code.to_owned(), event);
        Ok(())
    }

    pub fn markets(&self) -> &[MarketSpec] {
        &self.markets
    }

    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock would be a bug in the engine; keep serving.
        self.engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Broadcasts payloads to every connection.
    pub fn publish(&self, payloads: impl IntoIterator<Item = Payload>) {
        let mut book_texts = self
            .book_texts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for p in payloads {
            self.generated.fetch_add(1, Ordering::Relaxed);
            let levels = match &p {
                // Found by &str, so the key is allocated once per market.
                Payload::Orderbook(o) => Some(match book_texts.get(&o.code) {
                    Some(texts) => texts.clone(),
                    None => book_texts.entry(o.code.clone()).or_default().clone(),
                }),
                _ => None,
            };
            // No receivers is fine: nobody is connected.
            let _ = self.tx.send(Event::with_levels(p, levels));
        }
    }

    /// Connections with a subscription in force.
    pub fn subscribed(&self) -> u64 {
        self.subscribed.load(Ordering::SeqCst)
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
        self.rate_changed.notify_waiters();
    }

    /// Drops every open WebSocket connection now.
    pub fn drop_connections(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Times every connection was dropped on purpose.
    pub fn drop_count(&self) -> u64 {
        *self.drops.borrow()
    }

    pub fn drops(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }

    /// Sends no data frames for `duration`.
    pub fn stall_for(&self, duration: Duration) {
        let until = now_ms() + duration.as_millis() as i64;
        self.stall_until.store(until, Ordering::Relaxed);
    }

    pub fn stalled(&self) -> bool {
        now_ms() < self.stall_until.load(Ordering::Relaxed)
    }

    /// The next `n` data frames are sent malformed.
    pub fn malform_next(&self, n: u64) {
        self.malformed_next.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the data frame about to be sent should be malformed.
    pub fn take_malformed(&self) -> bool {
        let n = self.frames_sent.fetch_add(1, Ordering::Relaxed) + 1;
        if self.malformed_every > 0 && n.is_multiple_of(self.malformed_every) {
            return true;
        }
        self.malformed_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }

    pub fn frames_sent(&self) -> u64 {
        self.frames_sent.load(Ordering::Relaxed)
    }

    pub fn generated(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }
}

/// Generates `rate` messages per second (three per step: trade, ticker,
/// orderbook) until `stop`. A rate of 0 pauses until the rate changes.
pub async fn run_generator(sim: Arc<Sim>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let rate = sim.rate();
        if rate == 0 {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = sim.rate_changed.notified() => continue,
            }
        }
        // Pace against a fixed epoch so the long-run rate is exact.
        let epoch = Instant::now();
        let mut emitted: u128 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = sim.rate_changed.notified() => break,
                _ = tick.tick() => {}
            }
            // A change notified while we were generating is seen here.
            if sim.rate() != rate {
                break;
            }
            let due = u128::from(rate) * epoch.elapsed().as_micros() / 1_000_000;
            // After a stall of the runtime, do not burst more than 100 ms worth.
            let behind = due.saturating_sub(emitted).min(u128::from(rate / 10 + 3));
            let steps = behind.div_ceil(3) as usize;
            if steps == 0 {
                continue;
            }
            let mut payloads = Vec::with_capacity(steps * 3);
            {
                let now = now_ms();
                let mut engine = sim.engine();
                for _ in 0..steps {
                    payloads.extend(engine.step(now));
                }
            }
            emitted = due.max(emitted + payloads.len() as u128);
            sim.publish(payloads);
        }
    }
}

/// Replays a JSONL recording (one Upbit message per line, DEFAULT or SIMPLE),
/// paced by the recorded timestamps divided by `speed` (0 = as fast as the
/// configured rate allows), looping when `repeat` is set. Lines that do not parse
/// are skipped and counted.
pub async fn run_replay(
    sim: Arc<Sim>,
    path: PathBuf,
    speed: f64,
    repeat: bool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open SIM_REPLAY {}: {e}", path.display()))?;
        let mut lines = tokio::io::BufReader::new(file).lines();
        let started = Instant::now();
        let mut first_ts: Option<i64> = None;
        let (mut replayed, mut skipped) = (0u64, 0u64);
        while let Some(line) = lines.next_line().await? {
            if stop.is_cancelled() {
                return Ok(());
            }
            let payload = match upbit::parse_message(line.as_bytes()) {
                Ok(Message::Ticker(t)) => Payload::Ticker(t),
                Ok(Message::Trade(t)) => Payload::Trade(t),
                Ok(Message::Orderbook(o)) => Payload::Orderbook(o),
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            let ts = match &payload {
                Payload::Ticker(t) => t.timestamp,
                Payload::Trade(t) => t.trade_timestamp,
                Payload::Orderbook(o) => o.timestamp,
            };
            if speed > 0.0 {
                let first = *first_ts.get_or_insert(ts);
                #[allow(clippy::float_arithmetic)]
                let due = Duration::from_secs_f64(((ts - first).max(0) as f64 / 1000.0) / speed);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            } else {
                let rate = sim.rate().max(1);
                let due = Duration::from_micros(replayed * 1_000_000 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            sim.engine().apply_recorded(&payload);
            sim.publish([payload]);
            replayed += 1;
        }
        tracing::info!(replayed, skipped, "replay finished");
        if !repeat {
            stop.cancelled().await;
            return Ok(());
        }
    }
}
