//! Request limits shared by every gateway replica, counted in Redis: one counter
//! per (group, client, window), `INCR` + `EXPIRE` in one round trip. When Redis
//! is unreachable (or slower than 250 ms) the same limits are counted in this
//! process instead, so a Redis outage loosens a limit (each replica counts
//! alone) but never lifts it; `gateway_ratelimit_errors_total` shows it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use prometheus::IntCounter;

static ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new(
        "gateway_ratelimit_errors_total",
        "Rate-limit checks that could not reach Redis (counted in this process instead).",
    )
    .expect("valid");
    prometheus::register(Box::new(c.clone())).expect("registered once");
    c
});

/// How long a Redis round trip of a check may take before the local count is used.
const REDIS_WAIT: Duration = Duration::from_millis(250);
/// After Redis failed a check, how long the local count is used without asking
/// it (so an outage does not add its timeout to every request).
const REDIS_PAUSE_MS: u64 = 2_000;
/// Counters the local fallback keeps before it forgets the old ones.
const LOCAL_KEYS: usize = 100_000;

/// Outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `remaining` more this window.
    Allowed { remaining: u32 },
    /// Over the limit.
    Limited,
    /// Refused without counting: the client kept sending after 429s, and is
    /// blocked for `secs` more seconds (Upbit's 418).
    Blocked { secs: u64 },
    /// No limit.
    Unlimited,
}

/// What `Remaining-Req` shows for a group without a limit: Upbit always sends
/// the header, and clients (pyupbit) fail on a response without it.
pub const UNLIMITED_SHOWN: u32 = 1000;

impl Decision {
    /// Upbit's `Remaining-Req` header value.
    pub fn header(self, group: &str, limit: u32) -> Option<HeaderValue> {
        let sec = match self {
            Decision::Allowed { remaining } => remaining,
            Decision::Limited | Decision::Blocked { .. } => 0,
            Decision::Unlimited if limit == 0 => UNLIMITED_SHOWN,
            Decision::Unlimited => limit,
        };
        HeaderValue::from_str(&format!(
            "group={group}; min={}; sec={sec}",
            sec.saturating_mul(60)
        ))
        .ok()
    }
}

/// 429s within [`STRIKE_WINDOW`] after which a client is blocked.
pub const STRIKES: u32 = 10;
/// The window strikes are counted in.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// The first block; each further one within [`BAN_MEMORY`] doubles, up to
/// [`MAX_BAN`].
pub const FIRST_BAN: Duration = Duration::from_secs(10);
pub const MAX_BAN: Duration = Duration::from_secs(600);
/// How long a client's earlier blocks count towards the next one's length.
const BAN_MEMORY: Duration = Duration::from_secs(3600);

/// Clients that kept sending after 429s, per group: counted and blocked in
/// this process (each gateway replica judges what it sees), as Upbit blocks
/// an IP or account with 418 for a time that grows with each repeat.
#[derive(Default)]
pub struct Bans(Mutex<HashMap<String, Record>>);

#[derive(Clone, Copy)]
struct Record {
    /// Start of the strike window and the 429s in it.
    window: Instant,
    strikes: u32,
    /// Blocked until then.
    until: Option<Instant>,
    /// Blocks so far (the next one lasts longer), and the last one's start.
    blocks: u32,
    last_block: Option<Instant>,
}

impl Bans {
    /// How long `key` stays blocked, if it is.
    pub fn blocked(&self, key: &str, now: Instant) -> Option<Duration> {
        let records = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let until = records.get(key)?.until?;
        (until > now).then(|| until - now)
    }

    /// Counts a 429 of `key`; the block it earns, if this one was too many.
    pub fn strike(&self, key: &str, now: Instant) -> Option<Duration> {
        let mut records = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= LOCAL_KEYS {
            records.retain(|_, r| {
                r.until.is_some_and(|u| u > now)
                    || r.last_block.is_some_and(|b| now - b < BAN_MEMORY)
            });
            if records.len() >= LOCAL_KEYS {
                records.clear();
            }
        }
        let r = records.entry(key.to_owned()).or_insert(Record {
            window: now,
            strikes: 0,
            until: None,
            blocks: 0,
            last_block: None,
        });
        if now - r.window >= STRIKE_WINDOW {
            (r.window, r.strikes) = (now, 0);
        }
        r.strikes += 1;
        if r.strikes < STRIKES {
            return None;
        }
        if r.last_block.is_none_or(|b| now - b >= BAN_MEMORY) {
            r.blocks = 0;
        }
        let ban = FIRST_BAN.saturating_mul(1 << r.blocks.min(10)).min(MAX_BAN);
        r.blocks += 1;
        (r.until, r.last_block, r.strikes) = (Some(now + ban), Some(now), 0);
        Some(ban)
    }
}

/// Upbit's answer to a refused request: 429, or 418 with how long the block
/// lasts (also in `Retry-After`). Both carry `Remaining-Req`.
pub fn refusal(decision: Decision, group: &str, limit: u32) -> crate::error::ApiError {
    let error = match decision {
        Decision::Blocked { secs } => crate::error::ApiError::new(
            StatusCode::IM_A_TEAPOT,
            "too_many_requests",
            format!(
                "Requests kept coming after 429 Too Many Requests: blocked for {secs} seconds (longer each time it happens)."
            ),
        )
        .with_retry_after(secs),
        _ => crate::error::ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Too many API requests.",
        ),
    };
    error.with_remaining_req(decision.header(group, limit))
}

/// Counters of this process, for when Redis is away: key → (window slot, count).
#[derive(Default)]
struct Local(Mutex<HashMap<String, (u64, u64)>>);

impl Local {
    fn add(&self, key: &str, slot: u64, by: u64) -> u64 {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= LOCAL_KEYS {
            counts.retain(|_, (s, _)| *s >= slot);
            if counts.len() >= LOCAL_KEYS {
                counts.clear();
            }
        }
        let entry = counts.entry(key.to_owned()).or_insert((slot, 0));
        if entry.0 != slot {
            *entry = (slot, 0);
        }
        entry.1 += by;
        entry.1
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: Client,
    prefix: String,
    local: Arc<Local>,
    /// Until when (ms since the epoch) Redis is not asked.
    paused_until: Arc<std::sync::atomic::AtomicU64>,
    bans: Arc<Bans>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RateLimiter {
    pub fn new(redis: Client, prefix: String) -> Self {
        Self {
            redis,
            prefix,
            local: Arc::default(),
            paused_until: Arc::default(),
            bans: Arc::default(),
        }
    }

    /// Counts one request of `client` in `group` against `per_second`. A
    /// client that keeps sending after 429s is blocked ([`Bans`]): its
    /// requests are then refused without being counted.
    pub async fn check(&self, group: &str, client: &str, per_second: u32) -> Decision {
        let key = format!("{group}:{client}");
        let now = Instant::now();
        if let Some(left) = self.bans.blocked(&key, now) {
            return Decision::Blocked {
                secs: left.as_secs().max(1),
            };
        }
        let decision = self.check_window(group, client, per_second, 1).await;
        if decision == Decision::Limited
            && let Some(ban) = self.bans.strike(&key, now)
        {
            return Decision::Blocked {
                secs: ban.as_secs(),
            };
        }
        decision
    }

    /// Counts one request of `client` in `group` against `limit` per window of
    /// `window` seconds.
    pub async fn check_window(
        &self,
        group: &str,
        client: &str,
        limit: u32,
        window: u64,
    ) -> Decision {
        if limit == 0 {
            return Decision::Unlimited;
        }
        let count = self.add(group, client, window, 1).await;
        if count > u64::from(limit) {
            Decision::Limited
        } else {
            Decision::Allowed {
                remaining: limit.saturating_sub(count as u32),
            }
        }
    }

    /// How many requests of `client` in `group` this window counted so far.
    pub async fn count(&self, group: &str, client: &str, window: u64) -> u64 {
        self.add(group, client, window, 0).await
    }

    /// Adds `by` to the window's counter and returns it, in Redis or else here.
    async fn add(&self, group: &str, client: &str, window: u64, by: u64) -> u64 {
        use std::sync::atomic::Ordering;
        let window = window.max(1);
        let slot = now_secs() / window;
        let key = format!("{}rl:{group}:{client}:{slot}", self.prefix);
        if now_ms() < self.paused_until.load(Ordering::Relaxed) {
            ERRORS.inc();
            return self.local.add(&key, slot, by);
        }
        let count = telemetry::db::redis("INCRBY EXPIRE", async {
            let pipeline = self.redis.pipeline();
            let _: () = pipeline.incr_by(&key, by as i64).await?;
            let _: () = pipeline.expire(&key, (window + 1) as i64, None).await?;
            let (count, _): (i64, i64) = pipeline.all().await?;
            Ok::<_, fred::error::Error>(count)
        });
        match tokio::time::timeout(REDIS_WAIT, count).await {
            Ok(Ok(count)) => count.max(0) as u64,
            _ => {
                ERRORS.inc();
                self.paused_until
                    .store(now_ms() + REDIS_PAUSE_MS, Ordering::Relaxed);
                self.local.add(&key, slot, by)
            }
        }
    }
}

/// Upbit's 429 answer.
pub fn too_many(decision: Decision, group: &str, limit: u32) -> Response {
    refusal(decision, group, limit).into_response()
}

/// Starts the client's connection task (it reconnects on its own).
pub fn connect(redis: &Client) {
    // The handle only reports when the connection task ends; nothing to await.
    drop(redis.connect());
}

/// Registers this module's series at start (0 until the first event).
pub(crate) fn init_metrics() {
    LazyLock::force(&ERRORS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_goes_on_after_429s_is_blocked_longer_each_time() {
        let bans = Bans::default();
        let t0 = Instant::now();
        for i in 1..STRIKES {
            assert_eq!(bans.strike("order:u", t0), None, "strike {i}");
        }
        assert_eq!(bans.strike("order:u", t0), Some(FIRST_BAN));
        assert_eq!(bans.blocked("order:u", t0), Some(FIRST_BAN));
        assert_eq!(bans.blocked("order:v", t0), None, "one client only");
        let later = t0 + FIRST_BAN;
        assert_eq!(bans.blocked("order:u", later), None, "the block ends");
        // Strikes spread wider than the window do not add up.
        for i in 0..STRIKES {
            let at = later + STRIKE_WINDOW * i;
            assert_eq!(bans.strike("order:u", at), None);
        }
        let t1 = later + STRIKE_WINDOW * STRIKES;
        for _ in 1..STRIKES {
            bans.strike("order:u", t1);
        }
        assert_eq!(
            bans.strike("order:u", t1),
            Some(FIRST_BAN * 2),
            "a second block within the hour lasts twice as long"
        );
    }

    #[test]
    fn the_local_count_starts_again_each_window_and_stays_bounded() {
        let local = Local::default();
        assert_eq!(local.add("a", 1, 1), 1);
        assert_eq!(local.add("a", 1, 1), 2);
        assert_eq!(local.add("a", 1, 0), 2, "a peek adds nothing");
        assert_eq!(local.add("a", 2, 1), 1, "a new window");
        for i in 0..LOCAL_KEYS + 10 {
            local.add(&format!("k{i}"), 2, 1);
        }
        assert!(local.0.lock().unwrap().len() <= LOCAL_KEYS);
    }
}
