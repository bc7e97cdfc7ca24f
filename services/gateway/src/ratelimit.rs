//! Request limits shared by every gateway replica, counted in Redis: one counter
//! per (group, client, second), `INCR` + `EXPIRE` in one round trip. When Redis
//! is unreachable the gateway fails open (serves without limiting) rather than
//! refusing everyone; `gateway_ratelimit_errors_total` shows it.

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use prometheus::IntCounter;

static ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new(
        "gateway_ratelimit_errors_total",
        "Rate-limit checks that could not reach Redis (requests were let through).",
    )
    .expect("valid");
    prometheus::register(Box::new(c.clone())).expect("registered once");
    c
});

/// Outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `remaining` more this second.
    Allowed { remaining: u32 },
    /// Over the limit.
    Limited,
    /// No limit, or Redis unreachable (fail open).
    Unlimited,
}

impl Decision {
    /// Upbit's `Remaining-Req` header value.
    pub fn header(self, group: &str, limit: u32) -> Option<HeaderValue> {
        let sec = match self {
            Decision::Allowed { remaining } => remaining,
            Decision::Limited => 0,
            Decision::Unlimited if limit == 0 => return None,
            Decision::Unlimited => limit,
        };
        HeaderValue::from_str(&format!(
            "group={group}; min={}; sec={sec}",
            sec.saturating_mul(60)
        ))
        .ok()
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: Client,
    prefix: String,
}

impl RateLimiter {
    pub fn new(redis: Client, prefix: String) -> Self {
        Self { redis, prefix }
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
        let window = window.max(1);
        let slot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / window)
            .unwrap_or(0);
        let key = format!("{}rl:{group}:{client}:{slot}", self.prefix);
        let per_second = limit;
        let count = async {
            let pipeline = self.redis.pipeline();
            let _: () = pipeline.incr(&key).await?;
            let _: () = pipeline.expire(&key, (window + 1) as i64, None).await?;
            let (count, _): (i64, i64) = pipeline.all().await?;
            Ok::<_, fred::error::Error>(count)
        };
        match tokio::time::timeout(Duration::from_millis(250), count).await {
            Ok(Ok(count)) if count > i64::from(per_second) => Decision::Limited,
            Ok(Ok(count)) => Decision::Allowed {
                remaining: per_second.saturating_sub(count as u32),
            },
            _ => {
                ERRORS.inc();
                Decision::Unlimited
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
