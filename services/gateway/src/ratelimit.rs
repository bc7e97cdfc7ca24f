//! Request limits shared by every gateway replica, counted in Redis: one counter
//! per (group, client, window), `INCR` + `EXPIRE` in one round trip. When Redis
//! is unreachable (or slower than 250 ms) the same limits are counted in this
//! process instead, so a Redis outage loosens a limit (each replica counts
//! alone) but never lifts it; `gateway_ratelimit_errors_total` shows it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

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
            Decision::Limited => 0,
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
        }
    }

    /// Counts one request of `client` in `group` against `per_second`.
    pub async fn check(&self, group: &str, client: &str, per_second: u32) -> Decision {
        self.check_window(group, client, per_second, 1).await
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
        let count = async {
            let pipeline = self.redis.pipeline();
            let _: () = pipeline.incr_by(&key, by as i64).await?;
            let _: () = pipeline.expire(&key, (window + 1) as i64, None).await?;
            let (count, _): (i64, i64) = pipeline.all().await?;
            Ok::<_, fred::error::Error>(count)
        };
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
pub fn too_many(group: &str, limit: u32) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(upbit::error::ErrorResponse::new(
            "too_many_requests",
            "Too many API requests.",
        )),
    )
        .into_response();
    if let Some(v) = Decision::Limited.header(group, limit) {
        resp.headers_mut().insert("remaining-req", v);
    }
    resp
}

/// Starts the client's connection task (it reconnects on its own).
pub fn connect(redis: &Client) {
    // The handle only reports when the connection task ends; nothing to await.
    drop(redis.connect());
}

#[cfg(test)]
mod tests {
    use super::*;

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
