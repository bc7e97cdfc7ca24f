//! The ingestor between a real upbit-sim and a real market-data (Postgres, Redis).

use std::net::SocketAddr;
use std::time::Duration;

use exchange_proto::marketdata::v1 as pb;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use service_kit::config::RuntimeArgs;
use service_kit::postgres::DbArgs;
use test_support::{Running, TcpProxy, TestDb, eventually, read_metric};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

struct Pipeline {
    sim: String,
    md: MarketDataServiceClient<Channel>,
    ingestor_admin: SocketAddr,
    running: Vec<Running>,
    _md_proxy: Option<TcpProxy>,
}

/// The simulator's feed address and admin (controls) address.
async fn start_sim() -> (SocketAddr, SocketAddr, Running) {
    let mut config = upbit_sim::Config::local("127.0.0.1:0");
    config.rate = 0;
    config.markets = Some("KRW-BTC,KRW-ETH,KRW-XRP".into());
    let stop = CancellationToken::new();
    let sim = upbit_sim::App::build(config, stop.clone()).await.unwrap();
    (
        sim.http_addr(),
        sim.metrics_addr(),
        Running::spawn(stop, sim.run()),
    )
}

async fn start_md(db: &TestDb) -> (SocketAddr, Running) {
    let mut config = market_data::Config {
        grpc_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        db: DbArgs {
            database_url: Some(db.role_url(market_data::SCHEMA)),
            database_admin_url: Some(db.admin_url()),
            database_max_connections: 4,
        },
        redis_url: test_support::redis_url(),
        redis_prefix: test_support::unique_prefix(),
        write_batch: 1000,
        write_linger: Duration::from_millis(10),
        write_queue: 10_000,
        stream_buffer: 1024,
        stream_slow_after: Duration::from_secs(5),
        markets_ttl: Duration::from_secs(10),
        runtime: RuntimeArgs::default(),
        grpc: Default::default(),
    };
    config.runtime.drain_delay = Duration::ZERO;
    let stop = CancellationToken::new();
    let md = market_data::App::build(config, stop.clone()).await.unwrap();
    let addr = md.grpc_addr();
    (addr, Running::spawn(stop, md.run()))
}

async fn start(db: &TestDb, tweak: impl FnOnce(&mut ingestor::Config), proxy_md: bool) -> Pipeline {
    test_support::init_logs();
    let (sim_addr, sim_admin, sim) = start_sim().await;
    let (md_addr, md) = start_md(db).await;
    test_support::wait_serving(md_addr, "", Duration::from_secs(30))
        .await
        .unwrap();
    let proxy = if proxy_md {
        Some(TcpProxy::start(md_addr).await.unwrap())
    } else {
        None
    };
    let upstream = proxy.as_ref().map_or(md_addr, |p| p.addr);
    let mut config = ingestor::Config::local(sim_addr, upstream);
    config.markets = "KRW".into();
    tweak(&mut config);
    let stop = CancellationToken::new();
    let app = ingestor::App::build(config, stop.clone()).await.unwrap();
    let (grpc, admin) = (app.grpc_addr(), app.metrics_addr());
    let ingestor = Running::spawn(stop, app.run());
    test_support::wait_serving(grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    Pipeline {
        sim: format!("http://{sim_admin}"),
        md: MarketDataServiceClient::connect(format!("http://{md_addr}"))
            .await
            .unwrap(),
        ingestor_admin: admin,
        running: vec![sim, md, ingestor],
        _md_proxy: proxy,
    }
}

impl Pipeline {
    async fn sim_post(&self, path: &str, body: Option<serde_json::Value>) {
        let mut req = reqwest::Client::new().post(format!("{}{path}", self.sim));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }

    async fn trade(&self, market: &str, price: &str) {
        self.sim_post(
            "/sim/trade",
            Some(serde_json::json!({"market": market, "price": price, "volume": "0.01"})),
        )
        .await;
    }

    /// Waits until market-data serves `price` as the ticker of `market`.
    async fn wait_price(&self, market: &str, price: &str) {
        let what = format!("{market} at {price} in market-data");
        eventually(Duration::from_secs(20), &what, || {
            let mut md = self.md.clone();
            async move {
                let t = md
                    .get_tickers(pb::GetTickersRequest {
                        markets: vec![market.into()],
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                (t.into_inner().tickers.first()?.trade_price == price).then_some(())
            }
        })
        .await
        .unwrap();
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        read_metric(self.ingestor_admin, name, labels).await
    }

    async fn stop(mut self) {
        while let Some(r) = self.running.pop() {
            r.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_market_list_over_its_size_limit_is_refused() {
    let (sim, _, running) = start_sim().await;
    let url = format!("http://{sim}");
    let whole = ingestor::markets::Lister::new(&url).unwrap().fetch().await;
    assert_eq!(whole.map(|l| l.len()).ok(), Some(3));
    let capped = ingestor::markets::Lister::new(&url)
        .unwrap()
        .with_limit(100)
        .fetch()
        .await;
    let err = capped.expect_err("three markets with details are over 100 bytes");
    assert!(err.to_string().contains("larger than 100 bytes"), "{err}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_the_feed_and_registers_the_selected_markets() {
    let db = TestDb::create().await.unwrap();
    assert_eq!(
        ingestor::Config::local(([127, 0, 0, 1], 1).into(), ([127, 0, 0, 1], 2).into()).feed_format,
        upbit::write::Format::Simple,
        "the default feed is SIMPLE; this test reads the DEFAULT one"
    );
    let p = start(
        &db,
        |c| c.feed_format = upbit::write::Format::Default,
        false,
    )
    .await;
    p.trade("KRW-ETH", "5212000").await;
    p.wait_price("KRW-ETH", "5212000").await;
    let markets =
        p.md.clone()
            .list_markets(pb::ListMarketsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .markets;
    let names: Vec<_> = markets.iter().map(|m| m.market.as_str()).collect();
    assert_eq!(
        names,
        vec!["KRW-BTC", "KRW-ETH", "KRW-XRP"],
        "UPBIT_MARKETS=KRW picks the KRW markets"
    );
    assert_eq!(markets[0].korean_name, "비트코인");
    assert!(
        p.metric(
            "ingestor_events_total",
            &["type=\"trade\"", "market=\"KRW-ETH\""]
        )
        .await
            >= 1.0
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_feed_drops_and_skips_malformed_frames() {
    let db = TestDb::create().await.unwrap();
    let p = start(&db, |_| {}, false).await;
    p.trade("KRW-BTC", "150000000").await;
    p.wait_price("KRW-BTC", "150000000").await;

    p.sim_post("/sim/drop", None).await;
    eventually(Duration::from_secs(10), "a reconnect", || async {
        (p.metric("ingestor_reconnects_total", &[]).await >= 1.0
            && p.metric("ingestor_feed_connected", &[]).await == 1.0)
            .then_some(())
    })
    .await
    .unwrap();
    p.trade("KRW-BTC", "150001000").await;
    p.wait_price("KRW-BTC", "150001000").await;

    // Three garbage frames (the trade, ticker and orderbook of one injection).
    p.sim_post("/sim/malformed?count=3", None).await;
    p.trade("KRW-BTC", "150002000").await;
    p.trade("KRW-BTC", "150003000").await;
    p.wait_price("KRW-BTC", "150003000").await;
    assert_eq!(p.metric("ingestor_parse_errors_total", &[]).await, 3.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_feed_is_detected_and_replaced() {
    let db = TestDb::create().await.unwrap();
    // Pinged more often than the stale limit: the pongs of a stalled feed must
    // not keep it alive.
    let p = start(
        &db,
        |c| {
            c.stale_after = Duration::from_millis(800);
            c.ping_interval = Duration::from_millis(200);
        },
        false,
    )
    .await;
    p.sim_post("/sim/stall?secs=3", None).await;
    eventually(Duration::from_secs(10), "a stale reconnect", || async {
        (p.metric("ingestor_reconnects_total", &["reason=\"stale\""])
            .await
            >= 1.0)
            .then_some(())
    })
    .await
    .unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_newest_state_while_market_data_is_away() {
    let db = TestDb::create().await.unwrap();
    let p = start(&db, |_| {}, true).await;
    p.trade("KRW-XRP", "3200").await;
    p.wait_price("KRW-XRP", "3200").await;

    let proxy = p._md_proxy.as_ref().unwrap();
    proxy.cut();
    for price in ["3201", "3202", "3203", "3204"] {
        p.trade("KRW-XRP", price).await;
    }
    eventually(Duration::from_secs(10), "events buffered", || async {
        (p.metric("ingestor_buffered_events", &[]).await >= 1.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(p.metric("ingestor_market_data_connected", &[]).await, 0.0);
    proxy.restore();
    p.wait_price("KRW-XRP", "3204").await;
    assert!(
        p.metric("ingestor_conflated_total", &["type=\"ticker\""])
            .await
            >= 1.0,
        "older tickers were replaced, not queued"
    );
    // Trades reach Postgres a moment after Redis: wait for the buffered one.
    eventually(
        Duration::from_secs(10),
        "buffered trades are delivered, in full",
        || async {
            let trades =
                p.md.clone()
                    .list_trades(pb::ListTradesRequest {
                        market: "KRW-XRP".into(),
                        count: 10,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .trades;
            trades.iter().any(|t| t.trade_price == "3202").then_some(())
        },
    )
    .await
    .unwrap();
    p.stop().await;
}
