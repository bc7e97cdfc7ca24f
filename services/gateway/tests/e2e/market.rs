//! Market data end to end: upbit-sim → ingestor → market-data → gateway REST and
//! WebSocket, as an Upbit client sees it.

use std::collections::HashSet;
use std::time::Duration;

use exchange_proto::marketdata::v1 as pb;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use rust_decimal::Decimal;
use std::str::FromStr;
use test_support::{TestDb, eventually};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use upbit::{Message, StreamType};

use crate::stack::{Options, Stack, ws_connect, ws_next, ws_send, ws_subscribe, ws_wait};

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

async fn json(stack: &Stack, url: &str) -> (u16, serde_json::Value) {
    json_as(stack, url, "127.0.0.1").await
}

/// GET as the client `ip` (X-Forwarded-For), so rate limits are per test client.
async fn json_as(stack: &Stack, url: &str, ip: &str) -> (u16, serde_json::Value) {
    let resp = stack
        .http
        .get(url)
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Waits until the gateway's REST ticker shows `price`.
pub(crate) async fn wait_rest_price(stack: &Stack, market: &str, price: &str) {
    let url = format!("{}/v1/ticker?markets={market}", stack.gw());
    eventually(
        Duration::from_secs(20),
        &format!("{market} at {price} over REST"),
        || async {
            let (status, body) = json(stack, &url).await;
            let got = body[0]["trade_price"].as_number().map(ToString::to_string);
            (status == 200 && got.as_deref() == Some(price)).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_the_sim_emits_is_served_by_rest_and_pushed_on_the_websocket() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    // The warm-up trades reach market-data first; then subscribe.
    wait_rest_price(&stack, "KRW-ETH", "5200000").await;
    let mut ws = ws_connect(stack.gateways[0].http).await;
    ws_send(
        &mut ws,
        r#"[{"ticket":"e2e"},{"type":"ticker","codes":["KRW-BTC"]},{"type":"trade","codes":["KRW-BTC"],"is_only_realtime":true},{"format":"DEFAULT"}]"#,
    )
    .await;
    // First the ticker's snapshot (its stream and the trade stream are open
    // before any frame goes out), and no trade snapshot.
    let first = ws_next(&mut ws, Duration::from_secs(10))
        .await
        .expect("the ticker snapshot");
    assert!(
        matches!(upbit::parse_message(&first), Ok(Message::Ticker(t)) if t.stream_type == StreamType::Snapshot && t.code == "KRW-BTC"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    assert!(
        ws_next(&mut ws, Duration::from_millis(300)).await.is_none(),
        "is_only_realtime: no trade snapshot"
    );

    stack
        .sim_trade("KRW-BTC", "151234000", "0.0123", "BID", None)
        .await;
    let (ticker_price, trade_volume) = {
        let mut ticker = None;
        let mut trade = None;
        while ticker.is_none() || trade.is_none() {
            ws_wait(&mut ws, Duration::from_secs(20), |m| {
                match m {
                    Message::Ticker(t) if t.trade_price == dec("151234000") => {
                        assert_eq!(t.stream_type, StreamType::Realtime);
                        ticker = Some(t.trade_price);
                    }
                    Message::Trade(t) if t.trade_price == dec("151234000") => {
                        trade = Some(t.trade_volume)
                    }
                    _ => return None,
                }
                Some(())
            })
            .await;
        }
        (ticker.unwrap(), trade.unwrap())
    };
    assert_eq!(
        (ticker_price, trade_volume),
        (dec("151234000"), dec("0.0123"))
    );

    wait_rest_price(&stack, "KRW-BTC", "151234000").await;
    // A list sent as repeated keys (pyupbit) reads as the comma list does.
    let (status, both) = json(
        &stack,
        &format!("{}/v1/ticker?markets=KRW-BTC&markets=KRW-ETH", stack.gw()),
    )
    .await;
    let codes: Vec<&str> = both
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["market"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!((status, codes), (200, vec!["KRW-BTC", "KRW-ETH"]), "{both}");
    // However many keys: the last market of 70 is answered, never dropped.
    let many = format!("{}markets=KRW-ETH", "markets=KRW-BTC&".repeat(69));
    let (status, long) = json(&stack, &format!("{}/v1/ticker?{many}", stack.gw())).await;
    let answered = long
        .as_array()
        .map(|a| a.iter().any(|t| t["market"] == "KRW-ETH"));
    assert_eq!((status, answered), (200, Some(true)), "{long}");
    // More parameters than any request needs is refused, not cut short.
    let (status, refused) = json(
        &stack,
        &format!(
            "{}/v1/ticker?{}",
            stack.gw(),
            "markets=KRW-BTC&".repeat(1100)
        ),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["name"].as_str()),
        (400, Some("validation_error")),
        "{refused}"
    );
    let (_, details) = json(
        &stack,
        &format!("{}/v1/market/all?isDetails=true", stack.gw()),
    )
    .await;
    assert!(
        details[0].get("market_event").is_some(),
        "isDetails as pyupbit spells it: {details}"
    );
    let (_, native) = json(
        &stack,
        &format!("{}/api/v1/tickers?markets=KRW-BTC", stack.gw()),
    )
    .await;
    assert_eq!(native["tickers"][0]["price"], "151234000");
    let resp = stack
        .get(&format!("{}/v1/ticker?markets=KRW-BTC", stack.gw()))
        .await;
    assert!(resp.headers().contains_key("x-served-by"));
    let served_by = resp.headers()["x-served-by"].to_str().unwrap().to_owned();
    assert!(
        served_by.starts_with("gateway/v1/") && served_by.contains("market-data/v1/"),
        "{served_by}"
    );

    // The sim drops the feed: the ingestor reconnects and the next price still arrives.
    stack.sim_post("/sim/drop").await;
    let admin = stack.ingestors[0].1;
    eventually(Duration::from_secs(10), "ingestor reconnected", || async {
        (test_support::read_metric(admin, "ingestor_reconnects_total", &[]).await >= 1.0
            && test_support::read_metric(admin, "ingestor_feed_connected", &[]).await == 1.0)
            .then_some(())
    })
    .await
    .unwrap();
    // Reconnected is not yet subscribed: wait until the sim has the new
    // subscription (a trade before that reaches nobody, as on Upbit).
    eventually(
        Duration::from_secs(10),
        "the sim serving the new subscription",
        || async {
            let stats: serde_json::Value = stack.sim_get("/sim/stats").await;
            (stats["subscribed"] == 1).then_some(())
        },
    )
    .await
    .unwrap();
    // A malformed frame in between is skipped.
    stack.sim_post("/sim/malformed?count=1").await;
    stack
        .sim_trade("KRW-BTC", "151000000", "0.5", "ASK", None)
        .await;
    stack
        .sim_trade("KRW-BTC", "152000000", "0.5", "BID", None)
        .await;
    ws_wait(&mut ws, Duration::from_secs(20), |m| match m {
        Message::Ticker(t) if t.trade_price == dec("152000000") => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(
        test_support::read_metric(admin, "ingestor_parse_errors_total", &[]).await,
        1.0
    );
    stack.stop().await;
}

/// Waits until `/v1/market/all?is_details=true` shows `market`'s
/// `market_event` as `expected`, and returns the whole list.
/// Waits until every market-data instance lists `market` with `expected` as its
/// `market_event`, then until the gateway does. Only the instance the ingestor
/// streams to learns of a change at once; the others when their cache expires, so
/// waiting on the gateway alone could see one instance while the next read asks
/// another.
pub(crate) async fn wait_market_event(
    stack: &Stack,
    market: &str,
    expected: &serde_json::Value,
) -> serde_json::Value {
    for addr in &stack.market_datas {
        let client = MarketDataServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        eventually(
            Duration::from_secs(20),
            "market-data's market event",
            || {
                let mut client = client.clone();
                async move {
                    let listed = client.list_markets(pb::ListMarketsRequest::default());
                    let listed = listed.await.ok()?.into_inner().markets;
                    let found = listed.into_iter().find(|m| m.market == market)?;
                    let event = upbit::market::MarketEvent {
                        warning: found.warning,
                        caution: found.caution(),
                    };
                    (&serde_json::to_value(event).ok()? == expected).then_some(())
                }
            },
        )
        .await
        .unwrap();
    }
    let url = format!("{}/v1/market/all?is_details=true", stack.gw());
    eventually(Duration::from_secs(20), "the market event", || async {
        let (_, list) = json(stack, &url).await;
        let found = list
            .as_array()?
            .iter()
            .find(|m| m["market"] == market)?
            .get("market_event")?
            == expected;
        found.then_some(list)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upbit_warning_and_caution_designations_follow_the_source_while_running() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let designated = serde_json::json!({
        "warning": true,
        "caution": {
            "PRICE_FLUCTUATIONS": true,
            "TRADING_VOLUME_SOARING": false,
            "DEPOSIT_AMOUNT_SOARING": false,
            "GLOBAL_PRICE_DIFFERENCES": true,
            "CONCENTRATION_OF_SMALL_ACCOUNTS": false,
        },
    });
    // Upbit designates KRW-XRP while everything runs: the ingestor's next look
    // at the market list carries it through market-data to the gateway.
    let mut body = designated.clone();
    body["market"] = "KRW-XRP".into();
    stack.sim_post_json("/sim/market-event", body).await;
    let list = wait_market_event(&stack, "KRW-XRP", &designated).await;
    let btc = list
        .as_array()
        .and_then(|l| l.iter().find(|m| m["market"] == "KRW-BTC"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(btc["market_event"]["warning"], false, "{btc}");
    assert_eq!(
        btc["market_event"]["caution"]["PRICE_FLUCTUATIONS"], false,
        "{btc}"
    );
    let (_, native) = json(&stack, &format!("{}/api/v1/markets", stack.gw())).await;
    let xrp = native["markets"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["market"] == "KRW-XRP"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&xrp["warning"], &xrp["caution"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(["PRICE_FLUCTUATIONS", "GLOBAL_PRICE_DIFFERENCES"])
        ),
        "{native}"
    );
    // The feed's tickers carry the warning too (Upbit's deprecated
    // `market_warning`), from the source's next ticker on.
    let mut ws = ws_connect(stack.gateways[0].http).await;
    let request = r#"[{"ticket":"mw"},{"type":"ticker","codes":["KRW-XRP"],"is_only_realtime":true},{"format":"SIMPLE"}]"#;
    ws_subscribe(&stack, &mut ws, request, 1.0).await;
    let ticker_at = |price: &'static str| {
        move |m| match m {
            Message::Ticker(t) if t.trade_price == dec(price) => Some(t.market_warning),
            _ => None,
        }
    };
    stack.sim_trade("KRW-XRP", "3301", "1", "BID", None).await;
    let warned = ws_wait(&mut ws, Duration::from_secs(20), ticker_at("3301")).await;
    assert_eq!(warned, upbit::MarketWarning::Caution);

    // And lifted again.
    stack
        .sim_post_json(
            "/sim/market-event",
            serde_json::json!({"market": "KRW-XRP", "warning": false}),
        )
        .await;
    let lifted = serde_json::to_value(upbit::market::MarketEvent::default()).unwrap();
    wait_market_event(&stack, "KRW-XRP", &lifted).await;
    stack.sim_trade("KRW-XRP", "3302", "1", "BID", None).await;
    let plain = ws_wait(&mut ws, Duration::from_secs(20), ticker_at("3302")).await;
    assert_eq!(plain, upbit::MarketWarning::None);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_agree_with_the_trades_that_built_them_and_with_upbit_sim() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    // Trades in minutes of their own, an hour ahead of the warm-up trades.
    let now = chrono::Utc::now().timestamp_millis();
    let base = now - now % 3_600_000 + 3_600_000;
    let at = |minute: i64, ms: i64| Some(base + minute * 60_000 + ms);
    let trades = [
        ("5300000", "1", "BID", at(0, 1_000)),
        ("5310000", "0.5", "BID", at(0, 2_000)),
        ("5290000", "2", "ASK", at(0, 30_000)),
        ("5305000", "0.25", "BID", at(1, 5_000)),
        ("5320000", "1.5", "BID", at(4, 59_000)),
        ("5280000", "0.1", "ASK", at(7, 0)),
    ];
    for (price, volume, side, ts) in trades {
        stack.sim_trade("KRW-ETH", price, volume, side, ts).await;
    }
    let to = chrono::DateTime::from_timestamp_millis(base + 10 * 60_000)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    // Windows that end at `to` and stay inside the hour of these trades.
    for (path, count, expect) in [
        ("minutes/1", 10, 4usize),
        ("minutes/5", 2, 2),
        ("minutes/10", 1, 1),
    ] {
        let ours_url = format!(
            "{}/v1/candles/{path}?market=KRW-ETH&count={count}&to={to}",
            stack.gw()
        );
        let theirs_url = format!(
            "http://{}/v1/candles/{path}?market=KRW-ETH&count={count}&to={to}",
            stack.sim
        );
        let ours = eventually(
            Duration::from_secs(20),
            &format!("{path} candles"),
            || async {
                let (status, body) = json(&stack, &ours_url).await;
                (status == 200 && body.as_array().map(Vec::len) == Some(expect)).then_some(body)
            },
        )
        .await
        .unwrap();
        let (_, theirs) = json(&stack, &theirs_url).await;
        assert_eq!(
            ours, theirs,
            "{path}: gateway and upbit-sim agree on the same trades"
        );
    }
    let (_, ones) = json(
        &stack,
        &format!(
            "{}/v1/candles/minutes/1?market=KRW-ETH&count=10&to={to}",
            stack.gw()
        ),
    )
    .await;
    let first = &ones[3];
    assert_eq!(first["opening_price"].to_string(), "5300000");
    assert_eq!(first["high_price"].to_string(), "5310000");
    assert_eq!(first["low_price"].to_string(), "5290000");
    assert_eq!(first["trade_price"].to_string(), "5290000");
    assert_eq!(first["candle_acc_trade_volume"].to_string(), "3.5");
    assert_eq!(
        first["candle_acc_trade_price"].to_string(),
        "18535000",
        "5300000 + 2655000 + 10580000"
    );
    let (_, five) = json(
        &stack,
        &format!(
            "{}/v1/candles/minutes/5?market=KRW-ETH&count=1&to={to}",
            stack.gw()
        ),
    )
    .await;
    assert_eq!(
        five[0]["opening_price"].to_string(),
        "5280000",
        "the newest 5-minute period, minutes 5..9"
    );

    // Seconds, folded from the trades: the newest two seconds before +3 s.
    let to3 = chrono::DateTime::from_timestamp_millis(base + 3_000)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let (status, seconds) = json(
        &stack,
        &format!(
            "{}/v1/candles/seconds?market=KRW-ETH&count=2&to={to3}",
            stack.gw()
        ),
    )
    .await;
    assert_eq!(status, 200, "{seconds}");
    let utc = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string()
    };
    assert_eq!(
        seconds
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (
                c["candle_date_time_utc"].as_str().unwrap().to_owned(),
                c["opening_price"].to_string(),
                c["candle_acc_trade_volume"].to_string()
            ))
            .collect::<Vec<_>>(),
        [
            (utc(base + 2_000), "5310000".to_owned(), "0.5".to_owned()),
            (utc(base + 1_000), "5300000".to_owned(), "1".to_owned()),
        ],
        "{seconds}"
    );

    // Years: the months of each year, together.
    let (status, years) = json(
        &stack,
        &format!("{}/v1/candles/years?market=KRW-ETH&count=1", stack.gw()),
    )
    .await;
    assert_eq!(status, 200, "{years}");
    let year = years[0]["first_day_of_period"].as_str().unwrap()[..4].to_owned();
    let (_, months) = json(
        &stack,
        &format!("{}/v1/candles/months?market=KRW-ETH&count=24", stack.gw()),
    )
    .await;
    let of_year: Vec<&serde_json::Value> = months
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["first_day_of_period"]
                .as_str()
                .unwrap()
                .starts_with(&year)
        })
        .collect();
    let volume: Decimal = of_year
        .iter()
        .map(|m| dec(&m["candle_acc_trade_volume"].to_string()))
        .sum();
    assert!(!of_year.is_empty() && years.as_array().unwrap().len() == 1);
    assert_eq!(
        dec(&years[0]["candle_acc_trade_volume"].to_string()),
        volume,
        "{years} vs {months}"
    );
    assert_eq!(years[0]["first_day_of_period"], format!("{year}-01-01"));

    // converting_price_unit=KRW: a BTC market's close in KRW, at KRW-BTC's close
    // that day (the simulator is paused: only these trades move the closes).
    stack
        .sim_trade("KRW-BTC", "150000000", "0.01", "BID", None)
        .await;
    stack.sim_trade("BTC-ETH", "0.035", "1", "BID", None).await;
    let converted = eventually(Duration::from_secs(20), "converted day candles", || async {
        let (_, krw_btc) = json(
            &stack,
            &format!("{}/v1/candles/days?market=KRW-BTC&count=1", stack.gw()),
        )
        .await;
        let (_, btc_eth) = json(
            &stack,
            &format!(
                "{}/v1/candles/days?market=BTC-ETH&count=1&converting_price_unit=KRW",
                stack.gw()
            ),
        )
        .await;
        (krw_btc[0]["trade_price"] == serde_json::json!(150000000)
            && btc_eth[0]["trade_price"] == serde_json::json!(0.035))
        .then_some(btc_eth)
    })
    .await
    .unwrap();
    assert_eq!(
        converted[0]["converted_trade_price"].to_string(),
        "5250000",
        "0.035 BTC at 150,000,000 KRW: {converted}"
    );
    let (status, body) = json(
        &stack,
        &format!(
            "{}/v1/candles/days?market=BTC-ETH&converting_price_unit=USD",
            stack.gw()
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_trades_from_two_ingestors_are_stored_and_pushed_once() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(
        &db,
        Options {
            ingestors: 2,
            gateways: 2,
            ..Options::default()
        },
    )
    .await;
    wait_rest_price(&stack, "KRW-XRP", "3200").await;
    // One WebSocket client on each gateway replica.
    let mut clients = Vec::new();
    for gw in &stack.gateways {
        let mut ws = ws_connect(gw.http).await;
        ws_subscribe(
            &stack,
            &mut ws,
            r#"[{"ticket":"dup"},{"type":"trade","codes":["KRW-XRP"],"is_only_realtime":true}]"#,
            1.0,
        )
        .await;
        clients.push(ws);
    }
    // KRW-XRP trades the ingestors received (the sim is paused: only the trades
    // injected below happen). Both run in this process and so count into one
    // registry: the sum over the two is what any of their /metrics shows.
    let ingestor_trades = || {
        test_support::read_metric(
            stack.ingestors[0].1,
            "ingestor_events_total",
            &["type=\"trade\"", "market=\"KRW-XRP\""],
        )
    };
    let before = ingestor_trades().await;
    let mut sids = Vec::new();
    for i in 0..20 {
        sids.push(
            stack
                .sim_trade("KRW-XRP", &format!("{}", 3300 + i), "10", "BID", None)
                .await,
        );
    }
    for ws in &mut clients {
        let mut seen = HashSet::new();
        while seen.len() < sids.len() {
            let sid = ws_wait(ws, Duration::from_secs(20), |m| match m {
                Message::Trade(t) if t.code == "KRW-XRP" && t.trade_price >= dec("3300") => {
                    Some(t.sequential_id)
                }
                _ => None,
            })
            .await;
            assert!(seen.insert(sid), "trade {sid} pushed twice");
        }
        assert!(
            ws_next(ws, Duration::from_millis(500)).await.is_none(),
            "nothing after the 20 trades"
        );
    }
    let admin = sqlx::PgPool::connect(&db.admin_url()).await.unwrap();
    let stored: i64 = eventually(Duration::from_secs(20), "20 stored trades", || {
        let (sids, admin) = (sids.clone(), admin.clone());
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM market_data.trades WHERE market = 'KRW-XRP' AND sequential_id = ANY($1)")
                .bind(&sids)
                .fetch_one(&admin)
                .await
                .ok()?;
            (n == 20).then_some(n)
        }
    })
    .await
    .unwrap();
    assert_eq!(stored, 20);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM market_data.trades WHERE market = 'KRW-XRP' AND sequential_id = ANY($1)")
        .bind(&sids)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(rows, 20, "stored once each");
    admin.close().await;
    // Each ingestor receives a trade at most once, so 40 means both received
    // all 20, and market-data really was sent each trade twice.
    eventually(
        Duration::from_secs(10),
        "each ingestor saw every trade",
        || async { (ingestor_trades().await - before == 40.0).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(ingestor_trades().await - before, 40.0, "and none twice");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_upbit_errors_never_a_5xx() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(
        &db,
        Options {
            quotation_limit: 5,
            ..Options::default()
        },
    )
    .await;
    wait_rest_price(&stack, "KRW-BTC", "148000000").await;
    let gw = stack.gw();
    for (i, path, status) in [
        ("/v1/ticker?markets=KRW-NOPE", 404),
        ("/v1/ticker?markets=krw-btc", 400),
        ("/v1/ticker", 400),
        ("/v1/orderbook?markets=KRW-BTC&count=31", 400),
        ("/v1/candles/minutes/7?market=KRW-BTC", 400),
        ("/v1/candles/minutes/1?market=KRW-BTC&count=201", 400),
        ("/v1/candles/days?market=KRW-BTC&to=yesterday", 400),
        ("/v1/trades/ticks?market=KRW-BTC&count=0", 400),
        ("/v1/trades/ticks?market=KRW-NOPE", 404),
        ("/api/v1/candles/KRW-BTC?interval=2m", 400),
        ("/api/v1/orderbooks/KRW-NOPE", 404),
        ("/v2/anything", 404),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (p, s))| (i, p, s))
    {
        let (got, body) = json_as(&stack, &format!("{gw}{path}"), &format!("10.0.0.{i}")).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            (body["error"]["name"].is_string() || body["error"]["name"].is_u64())
                && body["error"]["message"].is_string(),
            "{path}: {body}"
        );
    }
    // Times chrono reads but Postgres cannot hold: no candles, not a 5xx.
    for (i, path) in [
        "/v1/candles/minutes/1?market=KRW-BTC&to=-250000-01-01T00:00:00",
        "/v1/candles/days?market=KRW-BTC&to=%2B200000-01-01T00:00:00",
        "/api/v1/candles/KRW-BTC?interval=1m&to=-8000000000000000",
        "/api/v1/candles/KRW-BTC?interval=1M&to=8000000000000000",
    ]
    .into_iter()
    .enumerate()
    {
        let (got, body) = json_as(&stack, &format!("{gw}{path}"), &format!("10.0.2.{i}")).await;
        assert_eq!(got, 200, "{path}: {body}");
        assert!(
            body.is_array() || body["candles"].is_array(),
            "{path}: {body}"
        );
    }
    let (_, nope) = json_as(
        &stack,
        &format!("{gw}/v1/ticker?markets=KRW-NOPE"),
        "10.0.1.1",
    )
    .await;
    assert_eq!(nope["error"]["message"], "Code not found");
    assert_eq!(nope["error"]["name"], 404, "a number, as Upbit writes it");

    // Remaining-Req and the per-IP group limit (5/s here).
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let resp = stack
            .http
            .get(format!("{gw}/v1/orderbook?markets=KRW-BTC"))
            .header("x-forwarded-for", "10.9.9.9")
            .send()
            .await
            .unwrap();
        let header = resp
            .headers()
            .get("remaining-req")
            .map(|h| h.to_str().unwrap().to_owned());
        assert!(
            header
                .as_deref()
                .is_some_and(|h| h.starts_with("group=orderbook; min=")),
            "{header:?}"
        );
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // Going on after 429s earns Upbit's 418: a block, refused without being
    // counted, whose length is in the message and Retry-After. Other groups
    // are not blocked.
    let mut blocked = None;
    for _ in 0..20 {
        let resp = stack
            .http
            .get(format!("{gw}/v1/orderbook?markets=KRW-BTC"))
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 418 {
            let retry: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            blocked = Some((retry, resp.json::<serde_json::Value>().await.unwrap()));
            break;
        }
    }
    let (retry, body) = blocked.expect("a 418 after 10 refusals within 10 s");
    assert!((1..=10).contains(&retry), "{retry}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("blocked for"),
        "{body}"
    );
    let again = stack
        .http
        .get(format!("{gw}/v1/orderbook?markets=KRW-BTC"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 418, "still blocked");
    let other = stack
        .http
        .get(format!("{gw}/v1/trades/ticks?market=KRW-BTC"))
        .send()
        .await
        .unwrap();
    assert_ne!(
        other.status().as_u16(),
        418,
        "the trade group is not blocked"
    );

    // WebSocket: malformed requests and unknown markets get error frames; the
    // connection survives them.
    let mut ws = ws_connect(stack.gateways[0].http).await;
    for (request, name) in [
        ("{not json", "WRONG_FORMAT"),
        (r#"[{"type":"ticker","codes":["KRW-BTC"]}]"#, "NO_TICKET"),
        (r#"[{"ticket":"t"}]"#, "NO_TYPE"),
        (
            r#"[{"ticket":"t"},{"type":"trade","codes":[]}]"#,
            "NO_CODES",
        ),
        (
            r#"[{"ticket":"t"},{"type":"trade","codes":["KRW-NOPE"]}]"#,
            "INVALID_PARAM",
        ),
        (
            r#"[{"ticket":"t"},{"type":"trade","codes":["krw-btc"]}]"#,
            "INVALID_PARAM",
        ),
    ] {
        ws_send(&mut ws, request).await;
        let bytes = ws_next(&mut ws, Duration::from_secs(5))
            .await
            .expect("an error frame");
        let Ok(Message::Error(e)) = upbit::parse_message(&bytes) else {
            panic!("{request}: {}", String::from_utf8_lossy(&bytes))
        };
        assert_eq!(e.name, name, "{request}");
    }
    ws_send(&mut ws, r#"[{"ticket":"t"},{"type":"orderbook","codes":["KRW-BTC.5"],"is_only_snapshot":true},{"format":"SIMPLE"}]"#).await;
    let raw = ws_next(&mut ws, Duration::from_secs(10))
        .await
        .expect("the orderbook snapshot");
    assert!(
        raw.starts_with(br#"{"ty":"orderbook","cd":"KRW-BTC""#),
        "SIMPLE keys: {}",
        String::from_utf8_lossy(&raw)
    );
    let Ok(Message::Orderbook(book)) = upbit::parse_message(&raw) else {
        panic!("{}", String::from_utf8_lossy(&raw))
    };
    assert_eq!(
        (book.orderbook_units.len(), book.stream_type),
        (5, StreamType::Snapshot)
    );
    // is_only_snapshot: a new book (from a trade) is not pushed.
    stack
        .sim_trade("KRW-BTC", "149000000", "0.01", "BID", None)
        .await;
    wait_rest_price(&stack, "KRW-BTC", "149000000").await;
    assert!(
        ws_next(&mut ws, Duration::from_millis(500)).await.is_none(),
        "nothing after the snapshot"
    );
    stack.stop().await;
}

/// Seconds `/healthz` takes to answer now.
async fn healthz_seconds(stack: &Stack) -> f64 {
    let started = std::time::Instant::now();
    let resp = stack
        .http
        .get(format!("{}/healthz", stack.gw()))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_websocket_client_cannot_stall_or_flood_the_gateway() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(
        &db,
        Options {
            ws_per_ip: 4,
            ..Options::default()
        },
    )
    .await;
    wait_rest_price(&stack, "KRW-BTC", "148000000").await;
    let addr = stack.gateways[0].http;
    let mut good = ws_connect(addr).await;
    ws_subscribe(
        &stack,
        &mut good,
        r#"[{"ticket":"good"},{"type":"trade","codes":["KRW-BTC"]}]"#,
        1.0,
    )
    .await;

    // 2 MB of codes in one request: refused (the connection is closed as the
    // message is too big) while the gateway keeps answering at once.
    let mut bad = ws_connect(addr).await;
    let codes: Vec<String> = (0..180_000).map(|i| format!("\"KRW-A{i}\"")).collect();
    let huge = format!(
        r#"[{{"ticket":"x"}},{{"type":"ticker","codes":[{}]}}]"#,
        codes.join(",")
    );
    assert!(huge.len() > 2_000_000);
    let attack = tokio::spawn(async move {
        let _ = bad.send(WsMessage::Text(huge.into())).await;
        ws_next(&mut bad, Duration::from_secs(10)).await
    });
    let mut slowest: f64 = 0.0;
    for _ in 0..10 {
        slowest = slowest.max(healthz_seconds(&stack).await);
    }
    assert!(
        attack.await.unwrap().is_none(),
        "the attacker's connection is closed, nothing sent to it"
    );
    assert!(
        slowest < 0.5,
        "/healthz took {slowest:.3} s during the attack"
    );

    // Type objects: more than Upbit has types is an error frame; repeating one
    // type follows its market once, on the type's one upstream stream.
    let mut repeat = ws_connect(addr).await;
    let objects = |n: usize| {
        let mut items = vec![r#"{"ticket":"r"}"#.to_owned()];
        items.extend((0..n).map(|_| r#"{"type":"trade","codes":["KRW-ETH"]}"#.to_owned()));
        format!("[{}]", items.join(","))
    };
    ws_send(&mut repeat, &objects(16)).await;
    let bytes = ws_next(&mut repeat, Duration::from_secs(5))
        .await
        .expect("an error frame");
    let Ok(Message::Error(e)) = upbit::parse_message(&bytes) else {
        panic!("{}", String::from_utf8_lossy(&bytes))
    };
    assert_eq!(e.name, "INVALID_PARAM");
    let trade_feeds = || stack.ws_feeds(Some("trade"));
    let (before, feeds_before) = (stack.md_streams("trade").await, trade_feeds().await);
    ws_send(&mut repeat, &objects(15)).await;
    eventually(
        Duration::from_secs(10),
        "KRW-ETH's trades followed",
        || async { (trade_feeds().await == feeds_before + 1.0).then_some(()) },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (trade_feeds().await, stack.md_streams("trade").await),
        (feeds_before + 1.0, before),
        "fifteen identical type objects: one feed, on the trade stream already open for `good`"
    );

    // At most 4 connections from one address (this stack's setting).
    let mut open = Vec::new();
    loop {
        let resp = tokio_tungstenite::connect_async(format!("ws://{addr}/websocket/v1")).await;
        match resp {
            Ok((ws, _)) => open.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 429);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(open.len() <= 4, "more than 4 connections accepted");
    }
    assert_eq!(open.len(), 2, "good and repeat hold the other two");
    drop(open);
    drop(repeat);

    // The good client was served throughout.
    stack
        .sim_trade("KRW-BTC", "149000000", "0.01", "BID", None)
        .await;
    ws_wait(&mut good, Duration::from_secs(10), |m| match m {
        Message::Trade(t) if t.trade_price == Decimal::from_str("149000000").unwrap() => Some(()),
        _ => None,
    })
    .await;
    stack.stop().await;
}

/// A trade frame's bytes, from a connection's next frames.
async fn next_trade_frame(ws: &mut crate::stack::Ws, price: &str) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let bytes = ws_next(ws, left).await.expect("the trade in time");
        if let Ok(Message::Trade(t)) = upbit::parse_message(&bytes)
            && t.trade_price == dec(price)
        {
            return bytes;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_share_one_stream_per_market_and_a_slow_one_is_dropped_alone() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(
        &db,
        Options {
            ws_buffer: 128,
            ..Options::default()
        },
    )
    .await;
    wait_rest_price(&stack, "KRW-BTC", "148000000").await;
    let addr = stack.gateways[0].http;
    let feeds = || stack.ws_feeds(None);
    let (md_before, feeds_before) = (stack.md_streams("trade").await, feeds().await);
    let books_before = stack.md_streams("orderbook").await;
    assert_eq!(feeds_before, 0.0);

    // Two clients of one market's trades: one market-data stream, one feed,
    // the same bytes to both.
    let trades = r#"[{"ticket":"a"},{"type":"trade","codes":["KRW-BTC"],"is_only_realtime":true}]"#;
    let mut a = ws_connect(addr).await;
    ws_subscribe(&stack, &mut a, trades, 1.0).await;
    let mut b = ws_connect(addr).await;
    ws_subscribe(&stack, &mut b, trades, 1.0).await;
    assert_eq!(stack.md_streams("trade").await, md_before + 1.0);
    assert_eq!(feeds().await, 1.0);
    stack
        .sim_trade("KRW-BTC", "148500000", "0.01", "BID", None)
        .await;
    let (seen_a, seen_b) = (
        next_trade_frame(&mut a, "148500000").await,
        next_trade_frame(&mut b, "148500000").await,
    );
    assert_eq!(seen_a, seen_b);
    // (`b` would not read from here on: it leaves.)
    drop(b);

    // A client that never reads, under a busy feed of every orderbook: once
    // its socket is full its writes stall (2 s here) or it falls the feed's
    // ring (128) behind, and it is closed as too slow, while `a`, reading, is
    // served throughout.
    let mut slow = ws_connect(addr).await;
    ws_subscribe(
        &stack,
        &mut slow,
        r#"[{"ticket":"s"},{"type":"orderbook","codes":["KRW-BTC","KRW-ETH","KRW-XRP","BTC-ETH"],"is_only_realtime":true},{"type":"trade","codes":["KRW-BTC"],"is_only_realtime":true}]"#,
        2.0,
    )
    .await;
    // Four markets' orderbooks: four feeds, one market-data stream for them all.
    assert_eq!(feeds().await, 5.0);
    assert_eq!(stack.md_streams("orderbook").await, books_before + 1.0);
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(bytes) = ws_next(&mut a, Duration::from_secs(60)).await {
            if let Ok(Message::Trade(t)) = upbit::parse_message(&bytes)
                && frames_tx.send(t.trade_price).is_err()
            {
                break;
            }
        }
    });
    let closed_slow = || {
        test_support::read_metric(
            stack.gateways[0].admin,
            "gateway_ws_closed_total",
            &["reason=\"slow\""],
        )
    };
    stack.sim_post("/sim/rate?eps=4000").await;
    eventually(
        Duration::from_secs(60),
        "the slow client closed",
        || async { (closed_slow().await >= 1.0).then_some(()) },
    )
    .await
    .unwrap();
    stack.sim_post("/sim/rate?eps=0").await;
    // What it was sent before, then the end (a close frame, if it got through).
    loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next()).await {
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1008));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(None | Some(Err(_))) => break,
            Err(_) => panic!("the slow connection was not closed"),
        }
    }
    assert_eq!(
        closed_slow().await,
        1.0,
        "only the client that did not read"
    );
    stack
        .sim_trade("KRW-BTC", "149900000", "0.01", "BID", None)
        .await;
    eventually(Duration::from_secs(20), "a still served", || {
        let got = std::iter::from_fn(|| frames_rx.try_recv().ok()).any(|p| p == dec("149900000"));
        async move { got.then_some(()) }
    })
    .await
    .unwrap();
    reader.abort();
    let _ = reader.await;

    // Nobody left: the feeds and their market-data streams are closed.
    eventually(Duration::from_secs(10), "feeds closed", || async {
        let trades = stack.md_streams("trade").await;
        let books = stack.md_streams("orderbook").await;
        (feeds().await == 0.0 && trades == md_before && books == books_before).then_some(())
    })
    .await
    .unwrap();

    // Routed sessions get feeds of their own, for at most 16 distinct values:
    // a 17th value is refused (an invented value per connection cannot
    // multiply the feeds), while a value in use still streams.
    let routed = |value: &str| {
        let mut request = format!("ws://{addr}/websocket/v1")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("x-canary", value.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let mut pinned = Vec::new();
    for i in 0..16 {
        let (mut ws, _) = routed(&format!("v{i}")).await.unwrap();
        ws_subscribe(&stack, &mut ws, trades, 1.0).await;
        pinned.push(ws);
    }
    assert_eq!(feeds().await, 16.0, "one feed per routing value");
    let (mut seventeenth, _) = routed("v16").await.unwrap();
    ws_send(&mut seventeenth, trades).await;
    let refused = ws_next(&mut seventeenth, Duration::from_secs(5))
        .await
        .expect("an error frame");
    match upbit::parse_message(&refused) {
        Ok(Message::Error(e)) => assert_eq!(e.name, "INVALID_PARAM"),
        other => panic!("{other:?}"),
    }
    let (mut again, _) = routed("v3").await.unwrap();
    ws_subscribe(&stack, &mut again, trades, 1.0).await;
    assert_eq!(feeds().await, 16.0, "a value in use shares its feed");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_and_trades_share_a_socket_and_an_unknown_code_spoils_nothing() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    wait_rest_price(&stack, "KRW-ETH", "5200000").await;
    let mut ws = ws_connect(stack.gateways[0].http).await;
    // A trade stream for the trade type and one for each candle type; the
    // unknown code of the trade type is dropped, not an error for all.
    ws_subscribe(
        &stack,
        &mut ws,
        r#"[{"ticket":"c"},{"type":"trade","codes":["KRW-BTC","KRW-NOPE"],"is_only_realtime":true},{"type":"candle.1s","codes":["KRW-BTC"]},{"type":"candle.1m","codes":["KRW-BTC"],"is_only_realtime":true}]"#,
        3.0,
    )
    .await;
    stack
        .sim_trade("KRW-BTC", "151234000", "0.01", "BID", None)
        .await;
    stack
        .sim_trade("KRW-BTC", "151236000", "0.02", "ASK", None)
        .await;
    let (mut trades, mut seconds, mut minutes) = (0, None, None);
    while trades < 2 || seconds.is_none() || minutes.is_none() {
        ws_wait(&mut ws, Duration::from_secs(20), |m| {
            match m {
                Message::Trade(t) if t.code == "KRW-BTC" => trades += 1,
                Message::Candle(c) if c.trade_price == dec("151236000") => {
                    if c.candle_type == "candle.1s" {
                        seconds = Some(c);
                    } else if c.candle_type == "candle.1m" {
                        minutes = Some(c);
                    }
                }
                _ => return None,
            }
            Some(())
        })
        .await;
    }
    let minute = minutes.unwrap();
    assert_eq!(minute.code, "KRW-BTC");
    assert_eq!(minute.stream_type, StreamType::Realtime);
    assert!(minute.high_price >= dec("151236000") && minute.low_price <= dec("151234000"));
    // Both trades in the minute's totals, unless a minute began between them.
    assert!(
        minute.candle_acc_trade_volume >= dec("0.03")
            || (minute.opening_price == dec("151236000")
                && minute.candle_acc_trade_volume == dec("0.02")),
        "{minute:?}"
    );
    assert!(minute.candle_date_time_utc.ends_with(":00"), "{minute:?}");
    let second = seconds.unwrap();
    assert_eq!(second.trade_price, dec("151236000"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderbooks_group_by_level_on_rest_and_the_websocket() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let url = |q: &str| format!("{}/v1/orderbook?{q}", stack.gw());
    let book = eventually(Duration::from_secs(20), "a KRW-BTC orderbook", || async {
        let (s, b) = json(&stack, &url("markets=KRW-BTC")).await;
        (s == 200 && b[0]["orderbook_units"].as_array()?.len() > 5).then_some(b)
    })
    .await
    .unwrap();
    let (_, instruments) = json(
        &stack,
        &format!("{}/v1/orderbook/instruments?markets=KRW-BTC", stack.gw()),
    )
    .await;
    let levels = instruments[0]["supported_levels"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(levels[0], "0", "{instruments}");
    let level = dec(levels[2].as_str().unwrap());
    let (status, grouped) = json(&stack, &url(&format!("markets=KRW-BTC&level={level}"))).await;
    assert_eq!(status, 200, "{grouped}");
    assert_eq!(dec(&grouped[0]["level"].to_string()), level);
    let units = grouped[0]["orderbook_units"].as_array().unwrap();
    let sum = |side: &str| -> Decimal { units.iter().map(|u| dec(&u[side].to_string())).sum() };
    assert!(units.len() < book[0]["orderbook_units"].as_array().unwrap().len());
    assert_eq!(
        (sum("ask_size"), sum("bid_size")),
        (
            dec(&grouped[0]["total_ask_size"].to_string()),
            dec(&grouped[0]["total_bid_size"].to_string())
        ),
        "every order of the book is in some group: {grouped}"
    );
    for u in units {
        for side in ["ask_price", "bid_price"] {
            let p = dec(&u[side].to_string());
            assert!((p % level).is_zero(), "{side} {p} on the {level} grid");
        }
    }
    // A level the market does not support: nothing for it, as Upbit answers.
    let (status, body) = json(&stack, &url("markets=KRW-BTC&level=123")).await;
    assert_eq!((status, body), (200, serde_json::json!([])));
    let (status, body) = json(
        &stack,
        &url(&format!("markets=KRW-BTC,BTC-ETH&level={level}")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let codes: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["market"].as_str())
        .collect();
    assert_eq!(codes, ["KRW-BTC"], "only KRW books group: {body}");

    // The same on the WebSocket; LIST_SUBSCRIPTIONS names the level, a number.
    let mut ws = ws_connect(stack.gateways[0].http).await;
    ws_send(
        &mut ws,
        &format!(r#"[{{"ticket":"l"}},{{"type":"orderbook","codes":["KRW-BTC"],"level":{level},"is_only_snapshot":true}}]"#),
    )
    .await;
    let live = ws_wait(&mut ws, Duration::from_secs(10), |m| match m {
        Message::Orderbook(b) => Some(b),
        _ => None,
    })
    .await;
    assert_eq!(live.level, level);
    assert!(
        live.orderbook_units
            .iter()
            .all(|u| (u.ask_price % level).is_zero())
    );
    ws_send(
        &mut ws,
        r#"[{"ticket":"l"},{"method":"LIST_SUBSCRIPTIONS"}]"#,
    )
    .await;
    let listed = ws_next(&mut ws, Duration::from_secs(5)).await.unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    assert!(listed["result"][0]["level"].is_number(), "{listed}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_origin_gets_upbits_one_request_per_ten_seconds() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    let get = |origin: Option<&'static str>| {
        let stack = &stack;
        async move {
            let mut req = stack.http.get(format!("{}/v1/market/all", stack.gw()));
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get(Some("https://example.com")).await, 200);
    assert_eq!(
        get(Some("https://example.com")).await,
        429,
        "the second within 10 s"
    );
    assert_eq!(
        get(None).await,
        200,
        "requests without Origin are not limited so"
    );
    // The public WebSocket counts too.
    let mut request = format!("ws://{}/websocket/v1", stack.gateways[0].http)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://example.com".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 429),
        "{refused:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickers_come_from_memory_and_agree_with_market_data() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
    wait_rest_price(&stack, "KRW-ETH", "5200000").await;
    let admin = stack.gateways[0].admin;
    let reads = |source: &'static str| async move {
        test_support::read_metric(
            admin,
            "gateway_ticker_reads_total",
            &[&format!("source=\"{source}\"")],
        )
        .await
    };
    let body = |path: String, routed: bool| {
        let request = stack.http.get(format!("{}{path}", stack.gw()));
        let request = if routed {
            request.header("x-canary", "true")
        } else {
            request
        };
        async move {
            let resp = request.send().await.unwrap();
            let served_by = resp.headers()["x-served-by"].to_str().unwrap().to_owned();
            (
                resp.status().as_u16(),
                served_by,
                resp.text().await.unwrap(),
            )
        }
    };

    // A trade moves the price: the memory follows it.
    stack
        .sim_trade("KRW-BTC", "151234000", "0.0123", "BID", None)
        .await;
    wait_rest_price(&stack, "KRW-BTC", "151234000").await;
    let (memory, fallback) = (reads("memory").await, reads("market-data").await);
    assert!(memory > 0.0, "reads were answered from memory");

    // The same requests routed to a version (x-canary) ask market-data: the
    // answers are the same bytes, and both name market-data as their source.
    for path in [
        "/v1/ticker?markets=KRW-BTC,KRW-ETH".to_owned(),
        "/v1/ticker/all?quote_currencies=KRW".to_owned(),
        "/v1/ticker/all".to_owned(),
    ] {
        let (status, served, from_memory) = body(path.clone(), false).await;
        assert_eq!(status, 200, "{path}: {from_memory}");
        assert!(served.contains("market-data/"), "{path}: {served}");
        let (_, _, from_grpc) = body(path.clone(), true).await;
        assert_eq!(from_memory, from_grpc, "{path}");
        assert!(from_memory.contains("151234000"), "{path}: {from_memory}");
    }
    assert_eq!(reads("memory").await, memory + 3.0);
    assert_eq!(reads("market-data").await, fallback + 3.0);

    // A market the memory does not hold asks market-data: Upbit's 404.
    let (status, _, text) = body("/v1/ticker?markets=KRW-NOPE".into(), false).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("Code not found"), "{text}");
    assert_eq!(reads("market-data").await, fallback + 4.0);
    stack.stop().await;
}
