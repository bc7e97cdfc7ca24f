//! Request limits shared by every gateway replica, kept in Redis: one value per
//! (group, client), the generic cell rate algorithm (GCRA) run by a Lua script
//! in one round trip on Redis's clock. A limit of N per window W admits a burst
//! of N, then one more each W/N: over any span t, at most N + t·N/W requests.
//! Unlike fixed windows there is no boundary across which 2N pass at once
//! ("1 per 2 s" means 2 s between two requests), and a refused request is not
//! counted, so a client that paces itself is never locked out by its 429s.
//! When Redis is unreachable (or slower than 250 ms) the same limits are
//! counted in this process instead, so a Redis outage loosens a limit (each
//! replica counts alone) but never lifts it; `gateway_ratelimit_errors_total`
//! shows it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
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
const REDIS_PAUSE: Duration = Duration::from_secs(2);
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
            upbit::DEPRECATED_MIN
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

/// What one request found: the requests counted now (the admitted one
/// included), and whether it was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cell {
    used: u64,
    admitted: bool,
}

/// One request at `now` in the generic cell rate algorithm. The state of a
/// (group, client) is its theoretical arrival time (TAT, microseconds since the
/// epoch), which moves on by `step` per admitted request; the requests counted
/// are how many steps it is ahead of now. Admitted if fewer than `limit` are
/// counted, and then counted when `admit` (a peek only reads). Returns the new
/// TAT. [`SCRIPT`] is the same in Lua; the unit tests put both through the
/// same cases (a burst, refusals, a peek).
fn gcra(tat: u64, now: u64, step: u64, limit: u64, admit: bool) -> (u64, Cell) {
    let tat = tat.max(now);
    let used = (tat - now).div_ceil(step);
    if admit && used < limit {
        let cell = Cell {
            used: used + 1,
            admitted: true,
        };
        (tat + step, cell)
    } else {
        let cell = Cell {
            used,
            admitted: false,
        };
        (tat, cell)
    }
}

/// Microseconds between two requests at the steady rate of `limit` per
/// `window` seconds (at least 1).
fn step_us(limit: u32, window: u64) -> u64 {
    (window.max(1).saturating_mul(1_000_000) / u64::from(limit.max(1))).max(1)
}

/// [`gcra`] in Redis, on its clock. KEYS[1]: the TAT; ARGV: step (µs), limit,
/// 1 to count an admitted request or 0 to peek. Returns {used, admitted}. The
/// TAT expires once it is in the past (nothing is counted then). Lua numbers
/// are doubles: microseconds since the epoch (~2^51) are exact.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local step = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local used = math.ceil((tat - now) / step)
if ARGV[3] == '1' and used < limit then
  tat = tat + step
  redis.call('SET', KEYS[1], string.format('%.0f', tat),
    'PX', string.format('%.0f', math.ceil((tat - now) / 1000) + 1))
  return {used + 1, 1}
end
return {used, 0}
"#;

/// The same cells in this process, for when Redis is away: key → TAT.
#[derive(Default)]
struct Local(Mutex<HashMap<String, u64>>);

impl Local {
    fn take(&self, key: &str, now: u64, step: u64, limit: u64, admit: bool) -> Cell {
        let mut cells = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cells.len() >= LOCAL_KEYS {
            cells.retain(|_, tat| *tat > now);
            if cells.len() >= LOCAL_KEYS {
                cells.clear();
            }
        }
        let tat = cells.get(key).copied().unwrap_or(0);
        let (tat, cell) = gcra(tat, now, step, limit, admit);
        if cell.admitted {
            cells.insert(key.to_owned(), tat);
        }
        cell
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: Client,
    prefix: String,
    script: Arc<Script>,
    local: Arc<Local>,
    /// Until when (µs since the epoch) Redis is not asked.
    paused_until: Arc<std::sync::atomic::AtomicU64>,
    bans: Arc<Bans>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl RateLimiter {
    pub fn new(redis: Client, prefix: String) -> Self {
        Self {
            redis,
            prefix,
            script: Arc::new(Script::from_lua(SCRIPT)),
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

    /// Counts one request of `client` in `group` against `limit` per
    /// `window` seconds, if it is admitted.
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
        let cell = self.take(group, client, limit, window, true).await;
        if cell.admitted {
            Decision::Allowed {
                remaining: limit.saturating_sub(u32::try_from(cell.used).unwrap_or(u32::MAX)),
            }
        } else {
            Decision::Limited
        }
    }

    /// How many requests of `client` in `group` count against `limit` per
    /// `window` seconds now, without counting one.
    pub async fn count(&self, group: &str, client: &str, limit: u32, window: u64) -> u64 {
        self.take(group, client, limit, window, false).await.used
    }

    /// Runs [`gcra`] for the client, in Redis or else here.
    async fn take(&self, group: &str, client: &str, limit: u32, window: u64, admit: bool) -> Cell {
        use std::sync::atomic::Ordering;
        let key = format!("{}rl:{group}:{client}", self.prefix);
        let (step, limit) = (step_us(limit, window), u64::from(limit));
        let now = now_us();
        if now < self.paused_until.load(Ordering::Relaxed) {
            ERRORS.inc();
            return self.local.take(&key, now, step, limit, admit);
        }
        let args: Vec<String> = vec![
            step.to_string(),
            limit.to_string(),
            u8::from(admit).to_string(),
        ];
        let cell = telemetry::db::redis(
            "EVALSHA",
            self.script
                .evalsha_with_reload::<(i64, i64), _, _>(&self.redis, key.clone(), args),
        );
        match tokio::time::timeout(REDIS_WAIT, cell).await {
            Ok(Ok((used, admitted))) => Cell {
                used: used.max(0) as u64,
                admitted: admitted == 1,
            },
            _ => {
                ERRORS.inc();
                self.paused_until
                    .store(now + REDIS_PAUSE.as_micros() as u64, Ordering::Relaxed);
                self.local.take(&key, now, step, limit, admit)
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
    use fred::interfaces::KeysInterface;

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

    const SEC: u64 = 1_000_000;

    #[test]
    fn a_burst_of_the_limit_then_one_per_step_and_refusals_are_not_counted() {
        let step = step_us(3, 1);
        assert_eq!(step, 333_333);
        let mut tat = 0;
        let t0 = 1_700_000_000 * SEC;
        for n in 1..=3 {
            let (next, cell) = gcra(tat, t0, step, 3, true);
            assert_eq!(
                cell,
                Cell {
                    used: n,
                    admitted: true
                }
            );
            tat = next;
        }
        // Refused, however often: the state does not move, so the client
        // that waits one step is admitted again.
        for _ in 0..100 {
            let (next, cell) = gcra(tat, t0 + 1, step, 3, true);
            assert_eq!(
                cell,
                Cell {
                    used: 3,
                    admitted: false
                }
            );
            assert_eq!(next, tat);
        }
        assert!(!gcra(tat, t0 + step - 1, step, 3, true).1.admitted);
        assert_eq!(
            gcra(tat, t0 + step, step, 3, true).1,
            Cell {
                used: 3,
                admitted: true
            }
        );
        // A peek counts nothing; after a quiet window nothing is counted.
        assert_eq!(
            gcra(tat, t0, step, 3, false),
            (
                tat,
                Cell {
                    used: 3,
                    admitted: false
                }
            )
        );
        assert_eq!(gcra(tat, t0 + SEC, step, 3, false).1.used, 0);
    }

    #[test]
    fn one_per_two_seconds_holds_across_any_second_boundary() {
        // Fixed windows let two through milliseconds apart when they straddle
        // a slot boundary; here the second waits the whole 2 s wherever it falls.
        let step = step_us(1, 2);
        for offset in [0, 1, 999_999, SEC, 2 * SEC - 1] {
            let t0 = 1_700_000_000 * SEC + offset;
            let (tat, first) = gcra(0, t0, step, 1, true);
            assert!(first.admitted);
            for later in [1, 1_000, SEC, 2 * SEC - 1] {
                assert!(
                    !gcra(tat, t0 + later, step, 1, true).1.admitted,
                    "{offset} +{later}"
                );
            }
            assert!(gcra(tat, t0 + 2 * SEC, step, 1, true).1.admitted);
        }
    }

    #[test]
    fn the_local_cells_stay_bounded() {
        let local = Local::default();
        let step = step_us(2, 1);
        let now = 1_700_000_000 * SEC;
        assert!(local.take("a", now, step, 2, true).admitted);
        assert_eq!(
            local.take("a", now, step, 2, false).used,
            1,
            "a peek adds nothing"
        );
        assert!(local.take("a", now, step, 2, true).admitted);
        assert!(!local.take("a", now, step, 2, true).admitted);
        assert!(local.take("a", now + step, step, 2, true).admitted);
        for i in 0..LOCAL_KEYS + 10 {
            local.take(&format!("k{i}"), now, step, 2, true);
        }
        assert!(local.0.lock().unwrap().len() <= LOCAL_KEYS);
    }

    async fn redis(url: &str) -> Client {
        let client = crate::market_data_redis(url).unwrap();
        connect(&client);
        client.wait_for_connect().await.unwrap();
        client
    }

    #[tokio::test]
    async fn redis_counts_as_the_algorithm_and_keeps_nothing_past_the_window() {
        let url = test_support::redis_url();
        let prefix = test_support::unique_prefix();
        let limiter = RateLimiter::new(redis(&url).await, prefix.clone());
        // Upbit's order-cancel-all: the second call right after the first is
        // refused, wherever the clock's second boundary falls.
        assert_eq!(
            limiter.check_window("order-cancel-all", "u1", 1, 2).await,
            Decision::Allowed { remaining: 0 }
        );
        assert_eq!(
            limiter.check_window("order-cancel-all", "u1", 1, 2).await,
            Decision::Limited
        );
        assert_eq!(limiter.count("order-cancel-all", "u1", 1, 2).await, 1);
        // Other clients count apart; Remaining-Req goes down one by one.
        for remaining in (0..4).rev() {
            assert_eq!(
                limiter.check_window("default", "u2", 4, 60).await,
                Decision::Allowed { remaining }
            );
        }
        assert_eq!(
            limiter.check_window("default", "u2", 4, 60).await,
            Decision::Limited
        );
        assert_eq!(
            limiter.check_window("default", "u3", 4, 60).await,
            Decision::Allowed { remaining: 3 }
        );
        let redis = redis(&url).await;
        let ttl: i64 = redis.pttl(format!("{prefix}rl:default:u2")).await.unwrap();
        assert!((1..=60_001).contains(&ttl), "{ttl}");
        assert_eq!(limiter.count("default", "nobody", 4, 60).await, 0);
        let kept: Option<String> = redis
            .get(format!("{prefix}rl:default:nobody"))
            .await
            .unwrap();
        assert_eq!(kept, None, "a peek writes nothing");
    }

    /// The commands the chart grants the gateway's Redis user
    /// (`services.gateway.redis.commands` in helm/exchange/values.yaml).
    fn chart_commands() -> Vec<String> {
        let values = include_str!("../../../helm/exchange/values.yaml");
        let after = &values[values
            .find("keys: [\"rl:*\"]")
            .expect("the gateway's Redis keys")..];
        let line = after.lines().nth(1).unwrap().trim();
        let list = line
            .strip_prefix("commands: [")
            .and_then(|l| l.strip_suffix(']'));
        list.expect("commands on the line after keys")
            .split(',')
            .map(|c| c.trim().trim_matches('"').to_owned())
            .collect()
    }

    #[tokio::test]
    async fn the_charts_redis_acl_lets_the_limits_be_kept_in_redis() {
        // The chart's ACL user for the gateway, as templates/redis.yaml writes
        // it: a NOPERM would silently leave each replica counting alone.
        let url = test_support::redis_url();
        let admin = redis(&url).await;
        let (user, prefix) = (
            format!("gw{}", uuid::Uuid::new_v4().simple()),
            test_support::unique_prefix(),
        );
        let mut rules = vec![
            "SETUSER".to_owned(),
            user.clone(),
            "reset".into(),
            "on".into(),
            ">secret".into(),
            format!("~{prefix}rl:*"),
            "-@all".into(),
            "+@connection".into(),
            "-@dangerous".into(),
        ];
        rules.extend(chart_commands().iter().map(|c| format!("+{c}")));
        let acl = fred::types::CustomCommand::new_static("ACL", None, false);
        let _: () = admin.custom(acl.clone(), rules).await.unwrap();

        let mut as_user = url::Url::parse(&url).unwrap();
        as_user.set_username(&user).unwrap();
        as_user.set_password(Some("secret")).unwrap();
        let limiter = RateLimiter::new(redis(as_user.as_str()).await, prefix.clone());
        let first = limiter.check_window("order", "u", 2, 1).await;
        // Redis restarted, as far as scripts go: the user may load it again.
        let script = fred::types::CustomCommand::new_static("SCRIPT", None, false);
        let _: () = admin.custom(script, vec!["FLUSH"]).await.unwrap();
        let second = limiter.check_window("order", "u", 2, 1).await;
        let tat: Option<String> = admin.get(format!("{prefix}rl:order:u")).await.unwrap();
        let _: () = admin
            .custom(acl, vec!["DELUSER".to_owned(), user])
            .await
            .unwrap();
        assert_eq!(
            (first, second),
            (
                Decision::Allowed { remaining: 1 },
                Decision::Allowed { remaining: 0 }
            )
        );
        assert!(
            tat.is_some_and(|t| t.parse::<u64>().is_ok()),
            "counted in Redis, not in the process; the script reloaded after SCRIPT FLUSH"
        );
    }
}
