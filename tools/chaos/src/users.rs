//! Simulated users: each registers, then places, cancels and reads orders,
//! deposits and refreshes its session at random through the gateway's native
//! API, as a careful client would: a request that failed for want of an answer
//! (a 5xx or no answer at all) is sent again with the same Idempotency-Key, and
//! some requests are sent twice at once on purpose. What the users were told is
//! kept for the checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

use crate::exchange::MARKETS;

/// Attempts of one request before the user gives up on it.
const ATTEMPTS: u32 = 8;

/// An order a user was told about (a 2xx answer naming it).
#[derive(Clone, Debug)]
pub struct Acked {
    pub user: String,
    pub uuid: String,
    pub key: String,
}

/// What every user shares: the gateway, the budget, and the records.
pub struct Shared {
    pub gateway: String,
    pub http: reqwest::Client,
    pub run: String,
    pub stop: AtomicBool,
    pub ops: AtomicU64,
    pub budget: u64,
    /// Chance that a request is sent twice at once.
    pub duplicate: f64,
    pub outcomes: Mutex<BTreeMap<String, u64>>,
    pub acked: Mutex<Vec<Acked>>,
    /// Every order uuid each request key was answered with.
    pub answers: Mutex<HashMap<String, HashSet<String>>>,
    /// What should never happen (a 500, a refresh retry refused, …).
    pub unexpected: Mutex<Vec<String>>,
    pub retried: AtomicU64,
    pub duplicated: AtomicU64,
    pub gave_up: AtomicU64,
    pub prices: RwLock<HashMap<String, Decimal>>,
}

impl Shared {
    pub fn new(gateway: String, http: reqwest::Client, budget: u64, duplicate: f64) -> Self {
        Self {
            gateway,
            http,
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            stop: AtomicBool::new(false),
            ops: AtomicU64::new(0),
            budget,
            duplicate,
            outcomes: Mutex::new(BTreeMap::new()),
            acked: Mutex::new(Vec::new()),
            answers: Mutex::new(HashMap::new()),
            unexpected: Mutex::new(Vec::new()),
            retried: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            prices: RwLock::new(HashMap::new()),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn count(&self, what: String) {
        if let Ok(mut o) = self.outcomes.lock() {
            *o.entry(what).or_default() += 1;
        }
    }

    fn unexpected(&self, what: String) {
        if let Ok(mut u) = self.unexpected.lock() {
            u.push(what);
        }
    }

    fn price(&self, market: &str) -> Option<Decimal> {
        self.prices.read().ok()?.get(market).copied()
    }
}

/// Keeps the users' view of prices current (the last trade of each market).
pub async fn follow_prices(shared: Arc<Shared>) {
    let url = format!(
        "{}/api/v1/tickers?markets={}",
        shared.gateway,
        MARKETS.join(",")
    );
    while !shared.stopped() {
        if let Ok(resp) = shared.http.get(&url).send().await
            && let Ok(body) = resp.json::<Value>().await
            && let Some(tickers) = body["tickers"].as_array()
            && let Ok(mut prices) = shared.prices.write()
        {
            for t in tickers {
                if let (Some(m), Some(p)) = (t["market"].as_str(), t["price"].as_str())
                    && let Ok(p) = p.parse::<Decimal>()
                {
                    prices.insert(m.to_owned(), p);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An answer: status and body, or why there was none.
type Answer = Result<(u16, Value), String>;

fn name(body: &Value) -> &str {
    body["error"]["name"].as_str().unwrap_or("")
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_f64().and_then(Decimal::from_f64))
        .unwrap_or_default()
}

struct User {
    shared: Arc<Shared>,
    rng: StdRng,
    email: String,
    id: String,
    access: String,
    refresh: String,
    balances: HashMap<String, Decimal>,
    open: Vec<String>,
}

const PASSWORD: &str = "chaos password 1";

impl User {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
        auth: bool,
    ) -> Answer {
        let mut req = self
            .shared
            .http
            .request(method, format!("{}{path}", self.shared.gateway));
        if auth {
            req = req.bearer_auth(&self.access);
        }
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                Ok((status, resp.json().await.unwrap_or(Value::Null)))
            }
            Err(e) if e.is_timeout() => Err("timeout".into()),
            Err(e) if e.is_connect() => Err("connection refused".into()),
            Err(_) => Err("connection broken".into()),
        }
    }

    /// Sends a request, or the same request twice at once.
    async fn send_copies(
        &self,
        twice: bool,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
        auth: bool,
    ) -> Vec<Answer> {
        let once = || self.send(method.clone(), path, body, key, auth);
        if twice {
            let (a, b) = tokio::join!(once(), once());
            vec![a, b]
        } else {
            vec![once().await]
        }
    }

    /// Sends a request until it has an answer that is not a failure of the
    /// exchange (a 5xx or none), with the same key every time; sometimes sends
    /// it twice at once. Returns the last answer.
    async fn submit(
        &mut self,
        op: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        keyed: bool,
    ) -> Option<(u16, Value)> {
        let key = keyed.then(|| format!("{}-{}", self.shared.run, uuid::Uuid::new_v4()));
        let mut delay = Duration::from_millis(100);
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                self.shared.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            let twice = attempt == 0 && keyed && self.rng.random_bool(self.shared.duplicate);
            if twice {
                self.shared.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            let answers = self
                .send_copies(
                    twice,
                    method.clone(),
                    path,
                    body.as_ref(),
                    key.as_deref(),
                    true,
                )
                .await;
            let mut last = None;
            for answer in answers {
                match &answer {
                    Ok((status, body)) => {
                        self.shared.count(format!("{op} {status} {}", name(body)));
                        if *status == 500 {
                            self.shared.unexpected(format!("{op} answered 500: {body}"));
                        }
                        if let (Some(key), true, Some(uuid)) =
                            (&key, (200..300).contains(status), body["uuid"].as_str())
                        {
                            self.acked(key, uuid);
                        }
                    }
                    Err(why) => self.shared.count(format!("{op} no answer ({why})")),
                }
                last = Some(answer);
            }
            match last {
                Some(Ok((401, body))) if name(&body) == "expired_access_token" => {
                    self.renew().await;
                }
                Some(Ok((status, body))) if status < 500 => return Some((status, body)),
                _ => {}
            }
            if self.shared.stopped() {
                break;
            }
        }
        self.shared.gave_up.fetch_add(1, Ordering::Relaxed);
        None
    }

    fn acked(&mut self, key: &str, uuid: &str) {
        if let Ok(mut acked) = self.shared.acked.lock() {
            acked.push(Acked {
                user: self.id.clone(),
                uuid: uuid.to_owned(),
                key: key.to_owned(),
            });
        }
        if let Ok(mut answers) = self.shared.answers.lock() {
            answers
                .entry(format!("{}:{key}", self.id))
                .or_default()
                .insert(uuid.to_owned());
        }
        if !self.open.iter().any(|u| u == uuid) {
            self.open.push(uuid.to_owned());
        }
    }

    /// Registers (or logs in) until it works.
    async fn sign_in(&mut self) -> bool {
        let creds = json!({"email": self.email, "password": PASSWORD});
        while !self.shared.stopped() {
            let registered = self
                .send(
                    reqwest::Method::POST,
                    "/api/v1/auth/register",
                    Some(&creds),
                    None,
                    false,
                )
                .await;
            if matches!(registered, Ok((s, _)) if s < 300) {
                let login = self
                    .send(
                        reqwest::Method::POST,
                        "/api/v1/auth/login",
                        Some(&creds),
                        None,
                        false,
                    )
                    .await;
                if let Ok((200, body)) = login {
                    self.access = body["access_token"].as_str().unwrap_or("").to_owned();
                    self.refresh = body["refresh_token"].as_str().unwrap_or("").to_owned();
                    self.id = body["user"]["id"].as_str().unwrap_or("").to_owned();
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    }

    /// A new session when the access token expired or the refresh failed.
    async fn renew(&mut self) {
        if !self.refresh_once().await {
            self.sign_in().await;
        }
    }

    /// Refreshes the session, sometimes sending the refresh twice at once (a
    /// retry that must get the same new token, not revoke the session).
    async fn refresh_once(&mut self) -> bool {
        let body = json!({"refresh_token": self.refresh});
        let twice = self.rng.random_bool(self.shared.duplicate);
        let path = "/api/v1/auth/refresh";
        let mut tokens = Vec::new();
        for _ in 0..ATTEMPTS {
            let answers = self
                .send_copies(twice, reqwest::Method::POST, path, Some(&body), None, false)
                .await;
            let mut failed = false;
            for answer in answers {
                match answer {
                    Ok((200, b)) => {
                        self.shared.count("refresh 200 ".into());
                        tokens.push((
                            b["access_token"].as_str().unwrap_or("").to_owned(),
                            b["refresh_token"].as_str().unwrap_or("").to_owned(),
                        ));
                    }
                    Ok((status, b)) => {
                        self.shared.count(format!("refresh {status} {}", name(&b)));
                        if status == 401 {
                            self.shared.unexpected(format!(
                                "a refresh (sent twice: {twice}) was refused: {b}"
                            ));
                            return false;
                        }
                        failed = true;
                    }
                    Err(why) => {
                        self.shared.count(format!("refresh no answer ({why})"));
                        failed = true;
                    }
                }
            }
            if !failed || !tokens.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let Some((access, refresh)) = tokens.first().cloned() else {
            return false;
        };
        if tokens.iter().any(|(_, r)| *r != refresh) {
            self.shared
                .unexpected("a refresh sent twice got two different tokens".into());
        }
        self.access = access;
        self.refresh = refresh;
        true
    }

    async fn update_balances(&mut self) {
        let answer = self
            .send(reqwest::Method::GET, "/api/v1/accounts", None, None, true)
            .await;
        if let Ok((status, body)) = answer {
            self.shared
                .count(format!("accounts {status} {}", name(&body)));
            if let Some(accounts) = body["accounts"].as_array() {
                self.balances = accounts
                    .iter()
                    .filter_map(|a| Some((a["currency"].as_str()?.to_owned(), dec(&a["balance"]))))
                    .collect();
            }
        }
    }

    fn market(&mut self) -> &'static str {
        MARKETS[self.rng.random_range(0..MARKETS.len())]
    }

    fn price_near(&mut self, market: &str, below: f64, above: f64) -> Option<Decimal> {
        let p = self.shared.price(market)?;
        let factor = Decimal::from_f64(1.0 + self.rng.random_range(-below..above))?;
        let price = upbit::market::floor_to_tick("KRW", p * factor);
        (price > Decimal::ZERO).then_some(price)
    }

    fn volume_for(&mut self, price: Decimal, krw: (f64, f64)) -> Option<Decimal> {
        let total = Decimal::from_f64(self.rng.random_range(krw.0..krw.1))?;
        let v = (total / price).round_dp_with_strategy(8, RoundingStrategy::ToZero);
        (v > Decimal::ZERO).then_some(v)
    }

    /// Part of what the user holds of `market`'s base, worth at least 6,000 KRW.
    fn sellable(&mut self, market: &str, price: Decimal) -> Option<Decimal> {
        let base = market.split('-').nth(1)?;
        let held = *self.balances.get(base)?;
        let share = Decimal::from_f64(self.rng.random_range(0.2..0.9))?;
        let v = (held * share).round_dp_with_strategy(8, RoundingStrategy::ToZero);
        (v * price >= Decimal::from(6000)).then_some(v)
    }

    async fn place(&mut self, op: &str, order: Value) {
        let answer = self
            .submit(
                op,
                reqwest::Method::POST,
                "/api/v1/orders",
                Some(order),
                true,
            )
            .await;
        if let Some((_, body)) = answer
            && body["state"]
                .as_str()
                .is_some_and(|s| s != "wait" && s != "pending")
            && let Some(uuid) = body["uuid"].as_str()
        {
            self.open.retain(|u| u != uuid);
        }
    }

    async fn step(&mut self) {
        let roll = self.rng.random_range(0..100);
        let market = self.market();
        match roll {
            0..22 => {
                // A limit bid, sometimes at or above the market (it fills).
                let Some(price) = self.price_near(market, 0.01, 0.003) else {
                    return;
                };
                let Some(volume) = self.volume_for(price, (6_000.0, 60_000.0)) else {
                    return;
                };
                let order = json!({"market": market, "side": "bid", "ord_type": "limit",
                                   "price": price.to_string(), "volume": volume.to_string()});
                self.place("limit bid", order).await;
            }
            22..32 => {
                let Some(price) = self.price_near(market, 0.003, 0.01) else {
                    return;
                };
                let Some(volume) = self.sellable(market, price) else {
                    return;
                };
                let order = json!({"market": market, "side": "ask", "ord_type": "limit",
                                   "price": price.to_string(), "volume": volume.to_string()});
                self.place("limit ask", order).await;
            }
            32..44 => {
                let total = self.rng.random_range(5_000..50_000);
                let order = json!({"market": market, "side": "bid", "ord_type": "price",
                                   "price": total.to_string()});
                self.place("market buy", order).await;
            }
            44..52 => {
                let Some(price) = self.shared.price(market) else {
                    return;
                };
                let Some(volume) = self.sellable(market, price) else {
                    return;
                };
                let order = json!({"market": market, "side": "ask", "ord_type": "market",
                                   "volume": volume.to_string()});
                self.place("market sell", order).await;
            }
            52..64 => {
                if self.open.is_empty() {
                    return;
                }
                let uuid = self.open[self.rng.random_range(0..self.open.len())].clone();
                let path = format!("/api/v1/orders/{uuid}");
                let answer = self
                    .submit("cancel", reqwest::Method::DELETE, &path, None, false)
                    .await;
                if matches!(answer, Some((s, _)) if s < 500) {
                    self.open.retain(|u| *u != uuid);
                }
            }
            64..67 => {
                let amount = self.rng.random_range(10_000..500_000);
                let body = json!({"currency": "KRW", "amount": amount.to_string()});
                self.submit(
                    "deposit",
                    reqwest::Method::POST,
                    "/api/v1/deposits",
                    Some(body),
                    true,
                )
                .await;
            }
            67..80 => self.update_balances().await,
            80..90 => {
                let answer = self
                    .send(
                        reqwest::Method::GET,
                        "/api/v1/orders?state=wait",
                        None,
                        None,
                        true,
                    )
                    .await;
                if let Ok((status, body)) = answer {
                    self.shared
                        .count(format!("open orders {status} {}", name(&body)));
                    if let Some(orders) = body["orders"].as_array() {
                        self.open = orders
                            .iter()
                            .filter_map(|o| Some(o["uuid"].as_str()?.to_owned()))
                            .collect();
                    }
                }
            }
            90..97 => {
                if self.open.is_empty() {
                    return;
                }
                let uuid = self.open[self.rng.random_range(0..self.open.len())].clone();
                let answer = self
                    .send(
                        reqwest::Method::GET,
                        &format!("/api/v1/orders/{uuid}"),
                        None,
                        None,
                        true,
                    )
                    .await;
                if let Ok((status, body)) = answer {
                    self.shared
                        .count(format!("get order {status} {}", name(&body)));
                }
            }
            _ => {
                self.refresh_once().await;
            }
        }
    }
}

/// One user's life: sign up, then random operations until the budget is spent
/// or the run stops.
pub async fn run(index: usize, shared: Arc<Shared>, seed: u64) {
    let mut user = User {
        email: format!("chaos-{}-{index}@example.com", shared.run),
        shared: shared.clone(),
        rng: StdRng::seed_from_u64(seed.wrapping_add(index as u64)),
        id: String::new(),
        access: String::new(),
        refresh: String::new(),
        balances: HashMap::new(),
        open: Vec::new(),
    };
    if !user.sign_in().await {
        return;
    }
    user.update_balances().await;
    while !shared.stopped() {
        if shared.ops.fetch_add(1, Ordering::Relaxed) >= shared.budget {
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
        user.step().await;
    }
}
