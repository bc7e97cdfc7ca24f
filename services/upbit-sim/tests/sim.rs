//! upbit-sim over real WebSocket and HTTP connections.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rust_decimal::Decimal;
use std::str::FromStr;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tokio_util::sync::CancellationToken;
use upbit::{Message, StreamType, parse_message};
use upbit_sim::{App, Config};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Sim {
    base: String,
    ws_url: String,
    http: reqwest::Client,
    metrics: String,
    /// The admin port, where the `/sim` controls are.
    admin: String,
    running: test_support::Running,
}

async fn start(mut config: Config) -> Sim {
    test_support::init_logs();
    config.http_addr = "127.0.0.1:0".into();
    let stop = CancellationToken::new();
    let app = App::build(config, stop.clone()).await.unwrap();
    let addr = app.http_addr();
    Sim {
        metrics: format!("http://{}/metrics", app.metrics_addr()),
        admin: format!("http://{}", app.metrics_addr()),
        base: format!("http://{addr}"),
        ws_url: format!("ws://{addr}/websocket/v1"),
        http: reqwest::Client::new(),
        running: test_support::Running::spawn(stop, app.run()),
    }
}

/// A paused simulator: only injected trades move.
fn paused() -> Config {
    let mut c = Config::local("127.0.0.1:0");
    c.rate = 0;
    c.connect_limit = 0;
    c.rest_limit = 0;
    c
}

impl Sim {
    async fn post(&self, path: &str) -> serde_json::Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    async fn trade(&self, market: &str, price: &str, volume: &str, side: &str) -> i64 {
        self.trade_at(market, price, volume, side, None).await
    }

    async fn trade_at(
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
            .post(format!("{}/sim/trade", self.admin))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "inject: {}",
            resp.text().await.unwrap()
        );
        resp.json::<serde_json::Value>().await.unwrap()["sequential_id"]
            .as_i64()
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// Connections the sim counts as subscribed (`/sim/stats`).
    async fn subscribed(&self) -> u64 {
        let stats: serde_json::Value = self
            .http
            .get(format!("{}/sim/stats", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["subscribed"].as_u64().expect("stats.subscribed")
    }

    async fn connect(&self) -> Ws {
        connect_async(self.ws_url.as_str()).await.unwrap().0
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(WsMessage::Text(text.into())).await.unwrap();
}

/// Sends a request, then PING, and returns the frames received before the
/// `{"status":"UP"}` answer: requests are handled in order, so once it arrives the
/// subscription is in place.
async fn request(ws: &mut Ws, text: &str) -> Vec<Message> {
    send(ws, text).await;
    send(ws, "PING").await;
    let mut before = Vec::new();
    loop {
        match next_message(ws).await {
            Message::Status(s) if s == "UP" => return before,
            other => before.push(other),
        }
    }
}

/// The next data/status/error frame (binary), within `wait`.
async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) => return None,
            Ok(Some(Err(e))) => panic!("websocket error: {e}"),
            Ok(Some(Ok(WsMessage::Binary(b)))) => return Some(b.to_vec()),
            Ok(Some(Ok(WsMessage::Text(t)))) => return Some(t.as_bytes().to_vec()),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn next_message(ws: &mut Ws) -> Message {
    let bytes = next_frame(ws, Duration::from_secs(5))
        .await
        .expect("a frame within 5s");
    parse_message(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_realtime_in_both_formats_and_replacement() {
    let sim = start(paused()).await;
    let mut ws = sim.connect().await;
    let snapshots = request(&mut ws, r#"[{"ticket":"t"},{"type":"ticker","codes":["KRW-BTC"]},{"type":"orderbook","codes":["KRW-BTC.5"]},{"format":"DEFAULT"}]"#).await;
    let [Message::Ticker(snap), Message::Orderbook(book)] = &snapshots[..] else {
        panic!("ticker then orderbook snapshots: {snapshots:?}")
    };
    assert_eq!(
        (snap.code.as_str(), snap.stream_type),
        ("KRW-BTC", StreamType::Snapshot)
    );
    assert_eq!(book.orderbook_units.len(), 5, "depth suffix .5 honoured");
    assert_eq!(book.stream_type, StreamType::Snapshot);

    sim.trade("KRW-BTC", "150000000", "0.01", "BID").await;
    let Message::Ticker(live) = next_message(&mut ws).await else {
        panic!("realtime ticker")
    };
    assert_eq!(
        (live.trade_price, live.stream_type),
        (dec("150000000"), StreamType::Realtime)
    );
    let Message::Orderbook(book) = next_message(&mut ws).await else {
        panic!("realtime orderbook")
    };
    assert_eq!(
        book.orderbook_units[0].ask_price,
        dec("150000000"),
        "book agrees with the trade"
    );

    // A new request replaces everything and switches the format.
    let none = request(&mut ws, r#"[{"ticket":"t"},{"type":"trade","codes":["KRW-ETH"],"is_only_realtime":true},{"format":"SIMPLE"}]"#).await;
    assert!(none.is_empty(), "is_only_realtime: no snapshot");
    sim.trade("KRW-BTC", "150001000", "0.01", "BID").await;
    sim.trade("KRW-ETH", "5200000", "0.3", "ASK").await;
    let bytes = next_frame(&mut ws, Duration::from_secs(5)).await.unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.starts_with(r#"{"ty":"trade","cd":"KRW-ETH""#),
        "SIMPLE keys, only KRW-ETH trades: {text}"
    );
    let Message::Trade(t) = parse_message(&bytes).unwrap() else {
        panic!()
    };
    assert_eq!(
        (t.trade_price, t.trade_volume),
        (dec("5200000"), dec("0.3"))
    );
    assert!(
        next_frame(&mut ws, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing else subscribed"
    );
    sim.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_list_and_error_frames() {
    let sim = start(paused()).await;
    let mut ws = sim.connect().await;
    send(&mut ws, "PING").await;
    assert_eq!(next_message(&mut ws).await, Message::Status("UP".into()));
    for (request, name) in [
        ("not json", "WRONG_FORMAT"),
        (r#"[{"type":"ticker","codes":["KRW-BTC"]}]"#, "NO_TICKET"),
        (r#"[{"ticket":"x"}]"#, "NO_TYPE"),
        (
            r#"[{"ticket":"x"},{"type":"ticker","codes":[]}]"#,
            "NO_CODES",
        ),
        (
            r#"[{"ticket":"x"},{"type":"ticker","codes":["KRW-BTC"]},{"format":"XML"}]"#,
            "INVALID_PARAM",
        ),
    ] {
        send(&mut ws, request).await;
        let Message::Error(e) = next_message(&mut ws).await else {
            panic!("error frame for {request}")
        };
        assert_eq!(e.name, name, "{request}");
    }
    request(
        &mut ws,
        r#"[{"ticket":"x"},{"type":"trade","codes":["KRW-XRP"],"is_only_realtime":true}]"#,
    )
    .await;
    send(
        &mut ws,
        r#"[{"ticket":"q"},{"method":"LIST_SUBSCRIPTIONS"}]"#,
    )
    .await;
    let bytes = next_frame(&mut ws, Duration::from_secs(5)).await.unwrap();
    let list: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(list["result"][0]["codes"][0], "KRW-XRP", "{list}");
    assert!(
        list["result"][0].get("level").is_none(),
        "level is the orderbook's only: {list}"
    );
    // The connection survived all of it.
    sim.trade("KRW-XRP", "3200", "10", "ASK").await;
    assert!(matches!(next_message(&mut ws).await, Message::Trade(t) if t.code == "KRW-XRP"));
    sim.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_drop_stall_and_malformed_frames() {
    let sim = start(paused()).await;
    let sub = r#"[{"ticket":"t"},{"type":"trade","codes":["KRW-BTC"],"is_only_realtime":true}]"#;
    let mut ws = sim.connect().await;
    assert_eq!(sim.subscribed().await, 0, "connected, not subscribed");
    request(&mut ws, sub).await;
    test_support::eventually(
        Duration::from_secs(5),
        "the subscription in force",
        || async { (sim.subscribed().await == 1).then_some(()) },
    )
    .await
    .unwrap();

    sim.post("/sim/malformed?count=1").await;
    sim.trade("KRW-BTC", "148000000", "0.1", "BID").await;
    let bad = next_frame(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert!(parse_message(&bad).is_err(), "first frame is malformed");
    sim.trade("KRW-BTC", "148001000", "0.1", "BID").await;
    assert!(
        matches!(next_message(&mut ws).await, Message::Trade(t) if t.trade_price == dec("148001000"))
    );

    sim.post("/sim/stall?secs=2").await;
    sim.trade("KRW-BTC", "148002000", "0.1", "BID").await;
    assert!(
        next_frame(&mut ws, Duration::from_millis(500))
            .await
            .is_none(),
        "stalled: no data"
    );

    sim.post("/sim/drop").await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(WsMessage::Close(_))) => return false,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("connection dropped within 5s");
    assert!(ended, "dropped without a close frame");
    assert_eq!(
        sim.subscribed().await,
        0,
        "uncounted before the peer sees the end"
    );
    sim.running.stop().await;
}

/// The value of an unlabelled metric in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_counts_what_the_feed_does() {
    let sim = start(paused()).await;
    let scrape = || async {
        let resp = sim.http.get(&sim.metrics).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    };
    let before = scrape().await;
    assert_eq!(metric(&before, "upbit_sim_subscribed_connections"), 0.0);
    assert_eq!(metric(&before, "upbit_sim_rate_messages_per_second"), 0.0);
    assert!(before.contains("# TYPE upbit_sim_frames_sent_total counter"));

    let mut ws = sim.connect().await;
    request(
        &mut ws,
        r#"[{"ticket":"m"},{"type":"trade","codes":["KRW-BTC"],"is_only_realtime":true}]"#,
    )
    .await;
    sim.trade("KRW-BTC", "148000000", "0.01", "BID").await;
    assert!(next_frame(&mut ws, Duration::from_secs(5)).await.is_some());
    sim.post("/sim/rate?eps=300").await;
    sim.post("/sim/drop").await;
    let after = scrape().await;
    assert_eq!(metric(&after, "upbit_sim_rate_messages_per_second"), 300.0);
    assert_eq!(metric(&after, "upbit_sim_connection_drops_total"), 1.0);
    assert!(metric(&after, "upbit_sim_frames_sent_total") >= 1.0);
    // The injected trade is a trade, a ticker and an orderbook.
    let generated = metric(&after, "upbit_sim_messages_generated_total")
        - metric(&before, "upbit_sim_messages_generated_total");
    assert!(generated >= 3.0, "{generated}");
    let health = sim
        .http
        .get(sim.metrics.replace("/metrics", "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Market designations: refused for a market the sim does not trade, shown
    // by market/all with details (either spelling) and only then.
    let designate = |market: &str| {
        sim.http
            .post(format!("{}/sim/market-event", sim.admin))
            .json(
                &serde_json::json!({"market": market, "caution": {"DEPOSIT_AMOUNT_SOARING": true}}),
            )
            .send()
    };
    assert_eq!(designate("KRW-NOPE").await.unwrap().status(), 400);
    assert_eq!(designate("KRW-ETH").await.unwrap().status(), 200);
    for query in ["is_details=true", "isDetails=true"] {
        let list: serde_json::Value = sim
            .get(&format!("/v1/market/all?{query}"))
            .await
            .json()
            .await
            .unwrap();
        let eth = list
            .as_array()
            .and_then(|l| l.iter().find(|m| m["market"] == "KRW-ETH"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(eth["market_event"]["warning"], false, "{query}: {eth}");
        assert_eq!(
            eth["market_event"]["caution"]["DEPOSIT_AMOUNT_SOARING"], true,
            "{query}: {eth}"
        );
    }
    let plain: serde_json::Value = sim.get("/v1/market/all").await.json().await.unwrap();
    assert!(plain[0].get("market_event").is_none(), "{plain}");
    // The controls are on the admin port only: the feed's port does not know them.
    for path in [
        "/sim/trade",
        "/sim/rate?eps=5",
        "/sim/drop",
        "/sim/market-event",
    ] {
        let resp = sim
            .http
            .post(format!("{}{path}", sim.base))
            .json(&serde_json::json!({"market": "KRW-BTC", "price": "1", "volume": "1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{path} on the feed port");
    }
    sim.running.stop().await;
    // And with SIM_CONTROLS off, not on the admin port either.
    let mut config = paused();
    config.controls = false;
    let locked = start(config).await;
    let resp = locked
        .http
        .post(format!("{}/sim/trade", locked.admin))
        .json(&serde_json::json!({"market": "KRW-BTC", "price": "1", "volume": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    locked.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_quotation_shapes_errors_and_limits() {
    let mut config = paused();
    config.rest_limit = 10;
    let sim = start(config).await;
    // Three trades in a minute of their own (two minutes ahead of the warm-up trades).
    let now = chrono::Utc::now().timestamp_millis();
    let minute = now - now % 60_000 + 120_000;
    for (i, (price, volume, side)) in [
        ("160000000", "0.5", "BID"),
        ("160100000", "0.25", "BID"),
        ("159900000", "1", "ASK"),
    ]
    .into_iter()
    .enumerate()
    {
        sim.trade_at(
            "KRW-BTC",
            price,
            volume,
            side,
            Some(minute + 1000 * i as i64),
        )
        .await;
    }

    let resp = sim.get("/v1/ticker?markets=KRW-BTC").await;
    assert_eq!(resp.status(), 200);
    let header = resp.headers()["remaining-req"].to_str().unwrap().to_owned();
    assert!(
        header.starts_with("group=ticker; min=") && header.contains("; sec="),
        "{header}"
    );
    let tickers: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(tickers[0]["market"], "KRW-BTC");
    // A list sent as repeated keys (pyupbit) reads as the comma list does.
    let both: serde_json::Value = sim
        .get("/v1/ticker?markets=KRW-BTC&markets=KRW-ETH")
        .await
        .json()
        .await
        .unwrap();
    let codes: Vec<&str> = both
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["market"].as_str())
        .collect();
    assert_eq!(codes, ["KRW-BTC", "KRW-ETH"], "{both}");
    assert_eq!(tickers[0]["trade_price"].to_string(), "159900000");
    assert!(
        tickers[0]["trade_date"].as_str().unwrap().len() == 8,
        "yyyyMMdd"
    );

    let to = chrono::DateTime::from_timestamp_millis(minute + 60_000)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let candles: serde_json::Value = sim
        .get(&format!(
            "/v1/candles/minutes/1?market=KRW-BTC&count=1&to={to}"
        ))
        .await
        .json()
        .await
        .unwrap();
    let c = &candles[0];
    assert_eq!(c["opening_price"].to_string(), "160000000");
    assert_eq!(c["high_price"].to_string(), "160100000");
    assert_eq!(c["low_price"].to_string(), "159900000");
    assert_eq!(c["trade_price"].to_string(), "159900000");
    assert_eq!(c["candle_acc_trade_volume"].to_string(), "1.75");
    assert_eq!(c["unit"], 1);
    let start = chrono::DateTime::from_timestamp_millis(minute)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    assert_eq!(c["candle_date_time_utc"], start.as_str());

    let trades: serde_json::Value = sim
        .get("/v1/trades/ticks?market=KRW-BTC&count=3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(trades.as_array().unwrap().len(), 3);
    assert_eq!(trades[0]["ask_bid"], "ASK", "newest first");
    // `to` (a time of today, UTC, exclusive) and `days_ago`.
    let third = chrono::DateTime::from_timestamp_millis(minute + 2000).unwrap();
    if third.date_naive() == chrono::Utc::now().date_naive() {
        let to = third.format("%H:%M:%S").to_string();
        let before: serde_json::Value = sim
            .get(&format!("/v1/trades/ticks?market=KRW-BTC&count=2&to={to}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            before[0]["trade_price"].to_string(),
            "160100000",
            "{before}"
        );
    }
    let yesterday: serde_json::Value = sim
        .get("/v1/trades/ticks?market=KRW-BTC&days_ago=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(yesterday, serde_json::json!([]), "no trades before today");
    for bad in [
        "/v1/trades/ticks?market=KRW-BTC&days_ago=8",
        "/v1/trades/ticks?market=KRW-BTC&to=25:00:00",
    ] {
        assert_eq!(sim.get(bad).await.status(), 400, "{bad}");
    }

    let resp = sim.get("/v1/ticker?markets=KRW-NOPE").await;
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Code not found");
    let resp = sim
        .get("/v1/candles/minutes/1?market=KRW-BTC&count=999")
        .await;
    assert_eq!(resp.status(), 400);
    assert!(resp.json::<serde_json::Value>().await.unwrap()["error"]["name"].is_string());
    assert_eq!(
        sim.get("/v1/candles/minutes/7?market=KRW-BTC")
            .await
            .status(),
        400
    );

    // The orderbook group allows 10 per second per IP.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(
            sim.get("/v1/orderbook?markets=KRW-BTC")
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 10);
    // Price grouping is not simulated: refused, once the limit lets it through.
    test_support::eventually(Duration::from_secs(5), "a 400 for level", || async {
        (sim.get("/v1/orderbook?markets=KRW-BTC&level=10000")
            .await
            .status()
            == 400)
            .then_some(())
    })
    .await
    .unwrap();
    sim.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_are_limited_per_ip() {
    let mut config = paused();
    config.connect_limit = 5;
    let sim = start(config).await;
    let mut refused = 0;
    let mut open = Vec::new();
    for _ in 0..12 {
        match connect_async(sim.ws_url.as_str()).await {
            Ok((ws, _)) => open.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        refused >= 2,
        "12 connects in under 2 s exceed 5/s: {refused} refused"
    );
    drop(open);
    sim.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_a_jsonl_recording_in_order() {
    let dir = std::env::temp_dir().join(format!("sim-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rec.jsonl");
    let mut lines = Vec::new();
    for i in 0..20i64 {
        lines.push(format!(
            r#"{{"type":"trade","code":"KRW-ETH","trade_price":{},"trade_volume":0.1,"ask_bid":"BID","trade_timestamp":{},"timestamp":{},"sequential_id":{}}}"#,
            5_000_000 + i * 1000,
            1_700_000_000_000 + i * 10,
            1_700_000_000_000 + i * 10,
            1_700_000_000_000_000 + i
        ));
        if i == 7 {
            lines.push("this line is not a message".into());
        }
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    let mut config = paused();
    config.replay = Some(path.clone());
    config.replay_speed = 0.2; // 10 ms apart → 50 ms apart: time to subscribe first
    config.rate = 0;
    let sim = start(config).await;
    let mut ws = sim.connect().await;
    request(
        &mut ws,
        r#"[{"ticket":"t"},{"type":"trade","codes":["KRW-ETH"],"is_only_realtime":true}]"#,
    )
    .await;
    let mut prices = Vec::new();
    while let Some(bytes) = next_frame(&mut ws, Duration::from_secs(3)).await {
        if let Ok(Message::Trade(t)) = parse_message(&bytes) {
            prices.push(t.trade_price);
        }
    }
    assert!(
        prices.len() >= 10,
        "received {} replayed trades",
        prices.len()
    );
    assert!(
        prices
            .windows(2)
            .all(|w| w[1] == w[0] + Decimal::from(1000)),
        "in recorded order: {prices:?}"
    );
    assert_eq!(*prices.last().unwrap(), Decimal::from(5_019_000));
    sim.running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
