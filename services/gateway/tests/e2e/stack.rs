//! The whole system in one process: every service on port 0 against one real
//! Postgres database and Redis, talking real gRPC over loopback, fed by a real
//! upbit-sim over a real WebSocket.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use service_kit::config::RuntimeArgs;
use service_kit::postgres::DbArgs;
use test_support::{Running, TestDb};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const LOCAL: &str = "127.0.0.1:0";

fn db_args(db: &TestDb, role: &str) -> DbArgs {
    DbArgs {
        database_url: Some(db.role_url(role)),
        database_admin_url: Some(db.admin_url()),
        database_max_connections: 5,
    }
}

/// What to start.
pub struct Options {
    pub ingestors: usize,
    pub gateways: usize,
    pub quotation_limit: u32,
    /// Private requests per second per user: (default group, order group).
    pub private_limits: (u32, u32),
    /// Markets the simulator trades (paused: only injected trades happen).
    pub sim_markets: &'static str,
    /// Open WebSocket connections per client IP (0 = unlimited).
    pub ws_per_ip: usize,
    /// Requests per second per client IP, and sign-in requests per minute per
    /// IP (0 = unlimited).
    pub ip_limit: u32,
    pub auth_limit: u32,
    /// A second market-data, version v2, beside v1: the gateways spread their
    /// market-data calls over both (as a mesh's traffic split would).
    pub market_data_v2: bool,
    /// Messages a WebSocket feed keeps for subscribers behind, and a 2 s stall
    /// timeout (0: the defaults).
    pub ws_buffer: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ingestors: 1,
            gateways: 1,
            quotation_limit: 0,
            private_limits: (0, 0),
            sim_markets: "KRW-BTC,KRW-ETH,KRW-XRP,BTC-ETH",
            ws_per_ip: 0,
            ip_limit: 0,
            auth_limit: 0,
            market_data_v2: false,
            ws_buffer: 0,
        }
    }
}

pub struct Gateway {
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

pub struct Stack {
    pub sim: SocketAddr,
    /// The simulator's admin port, where its controls are.
    pub sim_admin: SocketAddr,
    pub market_data: SocketAddr,
    /// Every market-data instance (v1, and v2 when asked for).
    pub market_datas: Vec<SocketAddr>,
    pub order: SocketAddr,
    pub inventory: SocketAddr,
    pub user: SocketAddr,
    pub ingestors: Vec<(SocketAddr, SocketAddr)>,
    pub gateways: Vec<Gateway>,
    pub admins: Vec<(SocketAddr, &'static str)>,
    pub http: reqwest::Client,
    running: Vec<Running>,
}

impl Stack {
    pub async fn start(db: &TestDb, options: Options) -> Self {
        test_support::init_logs();
        let prefix = test_support::unique_prefix();
        let mut running = Vec::new();
        let mut admins = Vec::new();
        let runtime = RuntimeArgs::default;

        let mut sim_config = upbit_sim::Config::local(LOCAL);
        sim_config.rate = 0;
        sim_config.connect_limit = 0;
        sim_config.rest_limit = 0;
        sim_config.markets = Some(options.sim_markets.into());
        let stop = CancellationToken::new();
        let sim_app = upbit_sim::App::build(sim_config, stop.clone())
            .await
            .unwrap();
        let sim = sim_app.http_addr();
        let sim_admin = sim_app.metrics_addr();
        running.push(Running::spawn(stop, sim_app.run()));

        let versions: &[&str] = if options.market_data_v2 {
            &["v1", "v2"]
        } else {
            &["v1"]
        };
        let mut market_datas = Vec::new();
        for version in versions {
            let stop = CancellationToken::new();
            let md = market_data::App::build(
                market_data::Config {
                    grpc_addr: LOCAL.into(),
                    metrics_addr: LOCAL.into(),
                    db: db_args(db, market_data::SCHEMA),
                    redis_url: test_support::redis_url(),
                    redis_prefix: prefix.clone(),
                    write_batch: 1000,
                    write_linger: Duration::from_millis(10),
                    write_queue: 100_000,
                    stream_buffer: 1024,
                    stream_slow_after: Duration::from_secs(5),
                    markets_ttl: Duration::from_secs(1),
                    runtime: RuntimeArgs {
                        service_version: (*version).into(),
                        ..runtime()
                    },
                    grpc: Default::default(),
                },
                stop.clone(),
            )
            .await
            .unwrap();
            market_datas.push(md.grpc_addr());
            admins.push((md.metrics_addr(), "market-data"));
            running.push(Running::spawn(stop, md.run()));
        }
        let market_data = market_datas[0];

        let stop = CancellationToken::new();
        let inv = inventory::App::build(
            inventory::Config::local(db_args(db, inventory::SCHEMA)),
            stop.clone(),
        )
        .await
        .unwrap();
        let inventory = inv.grpc_addr();
        admins.push((inv.metrics_addr(), "inventory"));
        running.push(Running::spawn(stop, inv.run()));

        let stop = CancellationToken::new();
        let usr = user::App::build(
            user::Config::local(db_args(db, user::SCHEMA), inventory),
            stop.clone(),
        )
        .await
        .unwrap();
        let user = usr.grpc_addr();
        admins.push((usr.metrics_addr(), "user"));
        running.push(Running::spawn(stop, usr.run()));

        let stop = CancellationToken::new();
        let mut order_config =
            order::Config::local(db_args(db, order::SCHEMA), inventory, market_data);
        // The paused simulator sends its books once; tests about a stale feed
        // are the order service's own.
        order_config.max_book_age = Duration::from_secs(600);
        let ord = order::App::build(order_config, stop.clone()).await.unwrap();
        let order = ord.grpc_addr();
        admins.push((ord.metrics_addr(), "order"));
        running.push(Running::spawn(stop, ord.run()));

        test_support::wait_serving(market_data, "", Duration::from_secs(30))
            .await
            .unwrap();
        let mut ingestors = Vec::new();
        for _ in 0..options.ingestors {
            let stop = CancellationToken::new();
            let mut config = ingestor::Config::local(sim, market_data);
            config.markets = "KRW,BTC".into();
            // Upbit's designations reach the API within a second or two.
            config.markets_refresh = Duration::from_secs(1);
            let ing = ingestor::App::build(config, stop.clone()).await.unwrap();
            ingestors.push((ing.grpc_addr(), ing.metrics_addr()));
            admins.push((ing.metrics_addr(), "ingestor"));
            running.push(Running::spawn(stop, ing.run()));
        }
        for (grpc, _) in &ingestors {
            test_support::wait_serving(*grpc, "", Duration::from_secs(30))
                .await
                .unwrap();
        }

        let mut gateways = Vec::new();
        for _ in 0..options.gateways {
            let stop = CancellationToken::new();
            let mut config = gateway::Config::local(market_data);
            config.order_url = format!("http://{order}");
            config.inventory_url = format!("http://{inventory}");
            config.user_url = format!("http://{user}");
            config.market_data_url = market_datas
                .iter()
                .map(|a| format!("http://{a}"))
                .collect::<Vec<_>>()
                .join(",");
            config.redis_url = test_support::redis_url();
            config.redis_prefix = prefix.clone();
            config.rate_limit_quotation = options.quotation_limit;
            (config.rate_limit_default, config.rate_limit_order) = options.private_limits;
            config.ws_connect_limit = 0;
            config.ws_max_connections_per_ip = options.ws_per_ip;
            // Private sockets' credentials checked every second: a revoked key
            // shows at once, and every private-socket test runs the check.
            config.ws_recheck = Duration::from_secs(1);
            if options.ws_buffer > 0 {
                config.ws_buffer = options.ws_buffer;
                config.ws_stall_timeout = Duration::from_secs(2);
            }
            config.rate_limit_ip = options.ip_limit;
            config.rate_limit_auth = options.auth_limit;
            // The tests stand for the proxy in front: the client's address is
            // the last X-Forwarded-For entry they write (or the peer).
            config.trusted_proxies = 1;
            config.markets_ttl = Duration::from_secs(1);
            let gw = gateway::App::build(config, stop.clone()).await.unwrap();
            gateways.push(Gateway {
                http: gw.http_addr(),
                admin: gw.metrics_addr(),
            });
            admins.push((gw.metrics_addr(), "gateway"));
            running.push(Running::spawn(stop, gw.run()));
        }

        // Ready means every service reports SERVING (migrations done).
        for grpc in [market_data, inventory, user, order] {
            test_support::wait_serving(grpc, "", Duration::from_secs(30))
                .await
                .unwrap();
        }
        // ...and the order service's matcher follows live trades.
        let order_admin = admins.iter().find(|(_, s)| *s == "order").unwrap().0;
        test_support::wait_metric(
            order_admin,
            "order_matcher_leading",
            &[],
            1.0,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        // ...and each gateway follows the tickers (its own market-data stream,
        // opened now rather than in the middle of a test counting streams).
        for gw in &gateways {
            test_support::wait_metric(
                gw.admin,
                "gateway_ticker_board_live",
                &[],
                1.0,
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        }
        Self {
            sim,
            sim_admin,
            market_data,
            market_datas,
            order,
            inventory,
            user,
            ingestors,
            gateways,
            admins,
            http: reqwest::Client::new(),
            running,
        }
    }

    /// Stops everything in reverse start order, each cleanly.
    pub async fn stop(mut self) {
        while let Some(r) = self.running.pop() {
            r.stop().await;
        }
    }

    pub fn gw(&self) -> String {
        format!("http://{}", self.gateways[0].http)
    }

    /// Makes the simulator trade now (or at `at`, epoch ms).
    pub async fn sim_trade(
        &self,
        market: &str,
        price: &str,
        volume: &str,
        side: &str,
        at: Option<i64>,
    ) -> i64 {
        let mut body = serde_json::json!({"market": market, "price": price, "volume": volume, "ask_bid": side});
        if let Some(at) = at {
            body["timestamp"] = at.into();
        }
        let resp = self
            .http
            .post(format!("http://{}/sim/trade", self.sim_admin))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "sim trade: {}",
            resp.text().await.unwrap()
        );
        resp.json::<serde_json::Value>().await.unwrap()["sequential_id"]
            .as_i64()
            .unwrap()
    }

    /// Live streams of `kind` market-data serves now.
    pub async fn md_streams(&self, kind: &str) -> f64 {
        let admin = self
            .admins
            .iter()
            .find(|(_, name)| *name == "market-data")
            .map(|(a, _)| *a)
            .expect("market-data's admin address");
        test_support::read_metric(
            admin,
            "market_data_stream_consumers",
            &[&format!("type=\"{kind}\"")],
        )
        .await
    }

    /// The WebSocket feeds the gateways hold (one per type and market), of
    /// `kind` or of every type.
    pub async fn ws_feeds(&self, kind: Option<&str>) -> f64 {
        let label = kind.map(|k| format!("type=\"{k}\""));
        let labels: Vec<&str> = label.iter().map(String::as_str).collect();
        test_support::read_metric(self.gateways[0].admin, "gateway_ws_feeds", &labels).await
    }

    /// Realtime WebSocket subscriptions the gateways serve (they run in this
    /// process, so one registry holds them all).
    pub async fn ws_subscriptions(&self) -> f64 {
        test_support::read_metric(self.gateways[0].admin, "gateway_ws_subscriptions", &[]).await
    }

    pub async fn sim_post(&self, path: &str) {
        self.sim_send(path, None).await;
    }

    pub async fn sim_post_json(&self, path: &str, body: serde_json::Value) {
        self.sim_send(path, Some(body)).await;
    }

    async fn sim_send(&self, path: &str, body: Option<serde_json::Value>) {
        let mut request = self.http.post(format!("http://{}{path}", self.sim_admin));
        if let Some(body) = &body {
            request = request.json(body);
        }
        let resp = request.send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }

    pub async fn sim_get(&self, path: &str) -> serde_json::Value {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.sim_admin))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        resp.json().await.unwrap()
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.http.get(url).send().await.unwrap()
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs an outside checker (a client library's script, the browser test) to
/// its end, at most 2 minutes; fails with its output unless it exits 0 having
/// printed `passed`. Returns its output.
pub async fn run_checker(mut command: tokio::process::Command, passed: &str) -> String {
    let run = command.kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the checker finishes within 2 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(passed),
        "{}\n{stdout}\n{stderr}",
        out.status
    );
    stdout.into_owned()
}

/// A WebSocket client of the gateway (or the simulator).
pub async fn ws_connect(addr: SocketAddr) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/websocket/v1"))
        .await
        .unwrap()
        .0
}

pub async fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(WsMessage::Text(text.into())).await.unwrap();
}

/// The next frame's bytes within `wait` (None on timeout or close).
/// The code the server closes `ws` with within `wait`, skipping the frames
/// before it (None: not closed, or closed without a code).
pub async fn ws_close_code(ws: &mut Ws, wait: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(WsMessage::Close(frame)))) => return frame.map(|f| f.code.into()),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

pub async fn ws_next(ws: &mut Ws, wait: Duration) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(WsMessage::Binary(b)))) => return Some(b.to_vec()),
            Ok(Some(Ok(WsMessage::Text(t)))) => return Some(t.as_bytes().to_vec()),
            Ok(Some(Ok(WsMessage::Close(_)))) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Subscribes with `request` and waits until the gateways serve `objects` more
/// realtime type objects than before: the gateway answers a subscription with
/// nothing (as Upbit does) and counts it once every stream it follows is open,
/// so only then can nothing published next be missed.
pub async fn ws_subscribe(stack: &Stack, ws: &mut Ws, request: &str, objects: f64) {
    let before = stack.ws_subscriptions().await;
    ws_send(ws, request).await;
    test_support::eventually(
        Duration::from_secs(10),
        &format!("{objects} more live subscriptions"),
        || async { (stack.ws_subscriptions().await >= before + objects).then_some(()) },
    )
    .await
    .unwrap();
}

/// Waits for the first data message satisfying `want`.
pub async fn ws_wait<T>(
    ws: &mut Ws,
    wait: Duration,
    mut want: impl FnMut(upbit::Message) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let bytes = ws_next(ws, left)
            .await
            .expect("the expected WebSocket message in time");
        if let Ok(msg) = upbit::parse_message(&bytes)
            && let Some(v) = want(msg)
        {
            return v;
        }
    }
}
