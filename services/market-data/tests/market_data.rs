//! Market data against real Postgres and Redis, over real gRPC.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use exchange_proto::marketdata::v1 as pb;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use market_data::store::{self, TradeRow};
use market_data::{App, Config};
use pb::market_event::Event;
use service_kit::config::RuntimeArgs;
use service_kit::postgres::DbArgs;
use test_support::{Running, Started, TcpProxy, TestDb};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

struct Opts {
    database_url: Option<String>,
    redis_url: String,
    prefix: String,
    write_linger: Duration,
    markets_ttl: Duration,
}

impl Opts {
    fn new() -> Self {
        Self {
            database_url: None,
            redis_url: test_support::redis_url(),
            prefix: test_support::unique_prefix(),
            write_linger: Duration::from_millis(10),
            markets_ttl: Duration::from_secs(10),
        }
    }
}

fn config(db: &TestDb, opts: &Opts) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        db: DbArgs {
            database_url: Some(
                opts.database_url
                    .clone()
                    .unwrap_or_else(|| db.role_url(market_data::SCHEMA)),
            ),
            database_admin_url: Some(db.admin_url()),
            database_max_connections: 5,
        },
        redis_url: opts.redis_url.clone(),
        redis_prefix: opts.prefix.clone(),
        write_batch: 1000,
        write_linger: opts.write_linger,
        write_queue: 100_000,
        stream_buffer: 4096,
        stream_slow_after: Duration::from_millis(500),
        markets_ttl: opts.markets_ttl,
        runtime: RuntimeArgs::default(),
        grpc: Default::default(),
    }
}

async fn start_with(db: &TestDb, opts: &Opts) -> Started {
    test_support::init_logs();
    let stop = CancellationToken::new();
    let app = App::build(config(db, opts), stop.clone())
        .await
        .expect("app builds");
    Started {
        grpc: app.grpc_addr(),
        admin: app.metrics_addr(),
        running: Running::spawn(stop, app.run()),
    }
}

async fn start(db: &TestDb) -> Started {
    start_with(db, &Opts::new()).await
}

async fn client(addr: SocketAddr) -> MarketDataServiceClient<Channel> {
    test_support::wait_serving(addr, "", Duration::from_secs(30))
        .await
        .unwrap();
    MarketDataServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn market(code: &str) -> pb::Market {
    pb::Market {
        market: code.into(),
        korean_name: "코인".into(),
        english_name: code.into(),
        ..Default::default()
    }
}

fn trade(code: &str, price: &str, volume: &str, ts: i64, sid: i64) -> pb::MarketEvent {
    pb::MarketEvent {
        event: Some(Event::Trade(pb::Trade {
            market: code.into(),
            trade_price: price.into(),
            trade_volume: volume.into(),
            ask_bid: pb::Side::Bid as i32,
            prev_closing_price: "100".into(),
            trade_timestamp: ts,
            timestamp: ts,
            sequential_id: sid,
            ..Default::default()
        })),
        received_at: ts,
    }
}

fn ticker(code: &str, price: &str, ts: i64) -> pb::MarketEvent {
    pb::MarketEvent {
        event: Some(Event::Ticker(pb::Ticker {
            market: code.into(),
            trade_price: price.into(),
            timestamp: ts,
            trade_timestamp: ts,
            ..Default::default()
        })),
        received_at: ts,
    }
}

fn book(code: &str, levels: usize, ts: i64) -> pb::MarketEvent {
    let units = (0..levels)
        .map(|i| pb::OrderbookUnit {
            ask_price: (1000 + i).to_string(),
            bid_price: (999 - i).to_string(),
            ask_size: "1.5".into(),
            bid_size: "2".into(),
        })
        .collect();
    pb::MarketEvent {
        event: Some(Event::Orderbook(pb::Orderbook {
            market: code.into(),
            timestamp: ts,
            units,
            total_ask_size: (1.5 * levels as f64).to_string(),
            total_bid_size: (2 * levels).to_string(),
            level: "0".into(),
        })),
        received_at: ts,
    }
}

/// Sends batches on one ingest stream (markets first) and returns the summary.
async fn ingest(
    client: &mut MarketDataServiceClient<Channel>,
    markets: &[&str],
    batches: Vec<Vec<pb::MarketEvent>>,
) -> Result<pb::IngestResponse, tonic::Status> {
    let mut requests = vec![pb::IngestRequest {
        events: vec![],
        source: "test".into(),
        markets: markets.iter().map(|m| market(m)).collect(),
    }];
    requests.extend(batches.into_iter().map(|events| pb::IngestRequest {
        events,
        source: "test".into(),
        markets: vec![],
    }));
    client
        .ingest(tokio_stream::iter(requests))
        .await
        .map(|r| r.into_inner())
}

async fn trade_rows(db: &TestDb, code: &str) -> i64 {
    let mut admin = db.admin().await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM market_data.trades WHERE market = $1")
        .bind(code)
        .fetch_one(&mut admin)
        .await
        .unwrap()
}

/// Waits until `code` has `n` trade rows in Postgres.
async fn wait_trade_rows(db: &TestDb, code: &str, n: i64) {
    test_support::eventually(
        Duration::from_secs(10),
        &format!("{n} trades of {code} stored"),
        || async { (trade_rows(db, code).await == n).then_some(()) },
    )
    .await
    .unwrap();
}

/// Waits until market-data has counted `n` duplicate trades in Postgres.
async fn wait_duplicates_stored(md: &Started, n: f64) {
    test_support::wait_metric(
        md.admin,
        "market_data_trades_duplicate_total",
        &[],
        n,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

/// A Redis client of the test's own, to look at or change what market-data keeps.
async fn redis_client(opts: &Opts) -> fred::clients::Client {
    use fred::interfaces::ClientLike;
    let redis = market_data::redis_builder(&opts.redis_url)
        .unwrap()
        .build()
        .unwrap();
    redis.init().await.unwrap();
    redis
}

/// A whole minute, a few hours back, so no other test's "now" interferes.
fn minute(n: i64) -> i64 {
    let base = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    base + n * 60_000
}

#[tokio::test]
async fn serves_health_reflection_metrics_and_stops_gracefully() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    test_support::assert_grpc_basics(
        svc.grpc,
        svc.admin,
        "exchange.marketdata.v1.MarketDataService",
    )
    .await
    .unwrap();
    svc.running.stop().await;
}

#[tokio::test]
async fn migrations_are_idempotent_across_restarts() {
    let db = TestDb::create().await.unwrap();
    let migrations = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    test_support::assert_migrations_idempotent(
        &db,
        || start(&db),
        "market_data",
        "market_data",
        "trades",
        migrations,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingested_state_is_served_and_candles_agree_with_trades() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    let mut md = client(svc.grpc).await;
    // Minute 0: 100 → 105 → 95 → 101; minute 1: none (gap); minute 2: 110, 108; minute 5: 120.
    let trades = [
        trade("KRW-AAA", "100", "1", minute(0) + 1_000, 1),
        trade("KRW-AAA", "105", "0.5", minute(0) + 2_000, 2),
        trade("KRW-AAA", "95", "2", minute(0) + 3_000, 3),
        trade("KRW-AAA", "101", "1.25", minute(0) + 59_000, 4),
        trade("KRW-AAA", "110", "3", minute(2) + 10_000, 5),
        trade("KRW-AAA", "108", "1", minute(2) + 20_000, 6),
        trade("KRW-AAA", "120", "0.1", minute(5) + 1, 7),
    ];
    // Out of order across batches on purpose: candles must not care.
    let (late, early) = trades.split_at(4);
    let summary = ingest(
        &mut md,
        &["KRW-AAA", "KRW-BBB"],
        vec![
            late.to_vec(),
            early.to_vec(),
            vec![
                ticker("KRW-AAA", "120", minute(5) + 1),
                book("KRW-AAA", 30, minute(5) + 1),
                ticker("KRW-BBB", "7", minute(5)),
            ],
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        (
            summary.events_received,
            summary.trades_stored,
            summary.trades_duplicate
        ),
        (10, 7, 0)
    );

    let markets = md
        .list_markets(pb::ListMarketsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .markets;
    assert_eq!(
        markets
            .iter()
            .map(|m| m.market.as_str())
            .collect::<Vec<_>>(),
        vec!["KRW-AAA", "KRW-BBB"]
    );

    let tickers = md
        .get_tickers(pb::GetTickersRequest {
            markets: vec!["KRW-AAA".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tickers;
    assert_eq!(tickers[0].trade_price, "120");
    let all = md
        .get_tickers(pb::GetTickersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tickers;
    assert_eq!(all.len(), 2);

    let books = md
        .get_orderbooks(pb::GetOrderbooksRequest {
            markets: vec!["KRW-AAA".into()],
            depth: 5,
        })
        .await
        .unwrap()
        .into_inner()
        .orderbooks;
    assert_eq!(books[0].units.len(), 5);
    assert_eq!(
        books[0].total_ask_size, "7.5",
        "totals follow the cut depth"
    );

    // Trades are written asynchronously: wait for all seven.
    test_support::eventually(Duration::from_secs(10), "trades in Postgres", || async {
        (trade_rows(&db, "KRW-AAA").await == 7).then_some(())
    })
    .await
    .unwrap();
    let recent = md
        .list_trades(pb::ListTradesRequest {
            market: "KRW-AAA".into(),
            count: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .trades;
    assert_eq!(
        recent.iter().map(|t| t.sequential_id).collect::<Vec<_>>(),
        vec![7, 6, 5],
        "newest first"
    );
    let older = md
        .list_trades(pb::ListTradesRequest {
            market: "KRW-AAA".into(),
            count: 10,
            cursor: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .trades;
    assert_eq!(
        older.iter().map(|t| t.sequential_id).collect::<Vec<_>>(),
        vec![4, 3, 2, 1]
    );

    let candles = |interval: pb::CandleInterval, count: u32| {
        let mut md = md.clone();
        async move {
            md.list_candles(pb::ListCandlesRequest {
                market: "KRW-AAA".into(),
                interval: interval as i32,
                to: Some(minute(6)),
                count,
            })
            .await
            .unwrap()
            .into_inner()
            .candles
        }
    };
    let ones = candles(pb::CandleInterval::Minute1, 6).await;
    let ohlcv = |c: &pb::Candle| {
        (
            c.opening_price.clone(),
            c.high_price.clone(),
            c.low_price.clone(),
            c.trade_price.clone(),
            c.candle_acc_trade_volume.clone(),
        )
    };
    assert_eq!(
        ones.iter()
            .map(|c| (c.start_time - minute(0)) / 60_000)
            .collect::<Vec<_>>(),
        vec![5, 2, 0],
        "newest first, gaps absent"
    );
    assert_eq!(
        ohlcv(&ones[2]),
        (
            "100".into(),
            "105".into(),
            "95".into(),
            "101".into(),
            "4.75".into()
        )
    );
    assert_eq!(
        ones[2].candle_acc_trade_price, "468.75",
        "100 + 52.5 + 190 + 126.25"
    );
    assert_eq!(
        ohlcv(&ones[1]),
        (
            "110".into(),
            "110".into(),
            "108".into(),
            "108".into(),
            "4".into()
        )
    );
    let fives = candles(pb::CandleInterval::Minute5, 2).await;
    assert_eq!(
        fives
            .iter()
            .map(|c| (c.start_time - minute(0)) / 60_000)
            .collect::<Vec<_>>(),
        vec![5, 0]
    );
    assert_eq!(
        ohlcv(&fives[1]),
        (
            "100".into(),
            "110".into(),
            "95".into(),
            "108".into(),
            "8.75".into()
        )
    );
    let days = candles(pb::CandleInterval::Day1, 1).await;
    assert_eq!(
        ohlcv(&days[0]),
        (
            "100".into(),
            "120".into(),
            "95".into(),
            "120".into(),
            "8.85".into()
        )
    );
    assert_eq!(
        days[0].change_price, "20",
        "against the day's open when there is no previous day"
    );

    // Bad input is a clear error, not a crash.
    let err = md
        .get_tickers(pb::GetTickersRequest {
            markets: vec!["KRW-ZZZ".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = md
        .get_tickers(pb::GetTickersRequest {
            markets: vec!["krw-btc".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = md
        .list_candles(pb::ListCandlesRequest {
            market: "KRW-AAA".into(),
            interval: 0,
            to: None,
            count: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = md
        .list_trades(pb::ListTradesRequest {
            market: "KRW-AAA".into(),
            count: 501,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingestors_sending_the_same_trades_store_and_publish_them_once() {
    let db = TestDb::create().await.unwrap();
    let opts = Opts::new();
    // Two replicas sharing Redis and Postgres, one ingestor each.
    let (a, b) = (start_with(&db, &opts).await, start_with(&db, &opts).await);
    let (mut ma, mut mb) = (client(a.grpc).await, client(b.grpc).await);
    ingest(&mut ma, &["KRW-DUP"], vec![]).await.unwrap();
    let mut live = mb
        .stream_trades(pb::StreamTradesRequest {
            markets: vec!["KRW-DUP".into()],
            snapshot: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut tickers = ma
        .stream_tickers(pb::StreamTickersRequest {
            markets: vec!["KRW-DUP".into()],
            snapshot: false,
        })
        .await
        .unwrap()
        .into_inner();

    let events: Vec<_> = (0..200)
        .map(|i| trade("KRW-DUP", "5000", "0.1", minute(10) + i, 1_000 + i))
        .collect();
    let newer = ticker("KRW-DUP", "5005", minute(10) + 500);
    let older = ticker("KRW-DUP", "4990", minute(10) + 100);
    let (ra, rb) = tokio::join!(
        ingest(
            &mut ma,
            &["KRW-DUP"],
            vec![
                events[..120].to_vec(),
                vec![newer.clone()],
                events[120..].to_vec()
            ]
        ),
        ingest(
            &mut mb,
            &["KRW-DUP"],
            vec![
                events[80..].to_vec(),
                vec![newer, older],
                events[..80].to_vec()
            ]
        ),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.trades_stored + rb.trades_stored,
        200,
        "each trade accepted once over both replicas"
    );
    assert_eq!(ra.trades_duplicate + rb.trades_duplicate, 200);

    let mut seen = HashSet::new();
    while seen.len() < 200 {
        let msg = tokio::time::timeout(Duration::from_secs(5), live.message())
            .await
            .expect("live trades")
            .unwrap()
            .unwrap();
        assert!(
            seen.insert(msg.trade.unwrap().sequential_id),
            "a trade published twice"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), live.message())
            .await
            .is_err(),
        "no duplicates after"
    );
    let first = tokio::time::timeout(Duration::from_secs(5), tickers.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.ticker.unwrap().trade_price, "5005");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), tickers.message())
            .await
            .is_err(),
        "the copy and the older ticker are not published"
    );
    let current = ma
        .get_tickers(pb::GetTickersRequest {
            markets: vec!["KRW-DUP".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tickers;
    assert_eq!(
        current[0].trade_price, "5005",
        "an older ticker never replaces a newer one"
    );

    // Two trades in one millisecond make two tickers with the same timestamp:
    // the one with more accumulated volume is newer, and its copy still a no-op.
    let same_ms = |price: &str, acc: &str| {
        let mut e = ticker("KRW-DUP", price, minute(10) + 600);
        if let Some(Event::Ticker(t)) = e.event.as_mut() {
            t.acc_trade_volume = acc.into();
        }
        e
    };
    ingest(&mut ma, &[], vec![vec![same_ms("5010", "20.1")]])
        .await
        .unwrap();
    ingest(&mut mb, &[], vec![vec![same_ms("5020", "20.2")]])
        .await
        .unwrap();
    ingest(
        &mut ma,
        &[],
        vec![vec![same_ms("5020", "20.2"), same_ms("5010", "20.1")]],
    )
    .await
    .unwrap();
    let mut published = Vec::new();
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(Duration::from_millis(500), tickers.message()).await
    {
        published.push(m.ticker.unwrap().trade_price);
    }
    assert_eq!(published, ["5010", "5020"], "each once, in order");
    let current = mb
        .get_tickers(pb::GetTickersRequest {
            markets: vec!["KRW-DUP".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tickers;
    assert_eq!(current[0].trade_price, "5020");

    test_support::eventually(Duration::from_secs(10), "200 rows", || async {
        (trade_rows(&db, "KRW-DUP").await == 200).then_some(())
    })
    .await
    .unwrap();
    a.running.stop().await;
    b.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_designation_reaches_the_replicas_no_ingestor_streams_to() {
    let db = TestDb::create().await.unwrap();
    let opts = Opts {
        markets_ttl: Duration::from_millis(300),
        ..Opts::new()
    };
    // The ingestor streams to `a`; `b` is another replica (or the other version
    // during a canary) that only ever reads the list.
    let (a, b) = (start_with(&db, &opts).await, start_with(&db, &opts).await);
    let (mut ma, mut mb) = (client(a.grpc).await, client(b.grpc).await);
    let list = |markets: pb::ListMarketsResponse| -> Vec<(String, bool, bool)> {
        markets
            .markets
            .into_iter()
            .map(|m| {
                let caution = m.caution.unwrap_or_default().price_fluctuations;
                (m.market, m.warning, caution)
            })
            .collect()
    };
    ingest(&mut ma, &["KRW-EVT"], vec![]).await.unwrap();
    let plain = vec![("KRW-EVT".to_string(), false, false)];
    for md in [&mut ma, &mut mb] {
        let seen = md.list_markets(pb::ListMarketsRequest::default()).await;
        assert_eq!(list(seen.unwrap().into_inner()), plain);
    }

    let designated = pb::Market {
        warning: true,
        caution: Some(pb::MarketCaution {
            price_fluctuations: true,
            ..Default::default()
        }),
        ..market("KRW-EVT")
    };
    let request = pb::IngestRequest {
        events: vec![],
        source: "test".into(),
        markets: vec![designated],
    };
    ma.ingest(tokio_stream::iter([request])).await.unwrap();
    let now = vec![("KRW-EVT".to_string(), true, true)];
    let seen = ma.list_markets(pb::ListMarketsRequest::default()).await;
    assert_eq!(
        list(seen.unwrap().into_inner()),
        now,
        "at once where ingested"
    );
    let reached = test_support::eventually(Duration::from_secs(10), "the replica", || {
        let mut mb = mb.clone();
        let now = now.clone();
        async move {
            let seen = mb.list_markets(pb::ListMarketsRequest::default()).await;
            (list(seen.ok()?.into_inner()) == now).then_some(())
        }
    })
    .await;
    assert!(reached.is_ok(), "the replica's cached list expires");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trade_seen_by_an_instance_that_never_stored_it_is_stored_when_replayed() {
    use fred::interfaces::{ClientLike, KeysInterface, SetsInterface};
    let db = TestDb::create().await.unwrap();
    let opts = Opts::new();
    let md = start_with(&db, &opts).await;
    let mut c = client(md.grpc).await;
    // A market-data that published this trade (so Redis has seen it) and then
    // stopped before its Postgres queue was written.
    let ts = minute(30) + 7;
    let redis = redis_client(&opts).await;
    let seen = format!("{}md:seen:KRW-RPL:{}", opts.prefix, ts.div_euclid(60_000));
    let _: i64 = redis.sadd(&seen, "4242").await.unwrap();

    // The ingestor's replay brings it again: not published twice, but stored.
    let replayed = ingest(
        &mut c,
        &["KRW-RPL"],
        vec![vec![trade("KRW-RPL", "5000", "0.5", ts, 4242)]],
    )
    .await
    .unwrap();
    assert_eq!((replayed.trades_stored, replayed.trades_duplicate), (0, 1));
    wait_trade_rows(&db, "KRW-RPL", 1).await;
    // And once stored, another copy changes nothing.
    ingest(
        &mut c,
        &[],
        vec![vec![trade("KRW-RPL", "5000", "0.5", ts, 4242)]],
    )
    .await
    .unwrap();
    wait_duplicates_stored(&md, 1.0).await;
    assert_eq!(trade_rows(&db, "KRW-RPL").await, 1);
    let _: i64 = redis.del(&seen).await.unwrap();
    let _ = redis.quit().await;
    md.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_trade_redis_forgot_is_not_stored_or_counted_twice() {
    use fred::interfaces::{ClientLike, KeysInterface};
    let db = TestDb::create().await.unwrap();
    let opts = Opts::new();
    let md = start_with(&db, &opts).await;
    let mut c = client(md.grpc).await;
    let ts = minute(50) + 3;
    ingest(
        &mut c,
        &["KRW-FGT"],
        vec![vec![trade("KRW-FGT", "100", "1", ts, 1)]],
    )
    .await
    .unwrap();
    test_support::eventually(
        Duration::from_secs(10),
        "the first trade stored",
        || async { (trade_rows(&db, "KRW-FGT").await == 1).then_some(()) },
    )
    .await
    .unwrap();
    // Redis restarts and forgets which trades it saw: the same trade comes again
    // with a new one, both "fresh" to Redis, so both go to Postgres as new.
    let redis = redis_client(&opts).await;
    let seen = format!("{}md:seen:KRW-FGT:{}", opts.prefix, ts.div_euclid(60_000));
    let removed: i64 = redis.del(&seen).await.unwrap();
    assert_eq!(removed, 1, "the trade was in Redis's dedupe set");
    let again = ingest(
        &mut c,
        &[],
        vec![vec![
            trade("KRW-FGT", "100", "1", ts, 1),
            trade("KRW-FGT", "300", "2", ts + 1, 2),
        ]],
    )
    .await
    .unwrap();
    assert_eq!(again.trades_stored, 2, "Redis took both for new");
    wait_duplicates_stored(&md, 1.0).await;
    assert_eq!(trade_rows(&db, "KRW-FGT").await, 2);
    // The candle folded each trade once: two trades, volume 3, close 300.
    let mut admin = db.admin().await.unwrap();
    let (count, volume, close): (i32, rust_decimal::Decimal, rust_decimal::Decimal) =
        sqlx::query_as(
            "SELECT trade_count, volume, close FROM market_data.candles_1m WHERE market = 'KRW-FGT'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!((count, volume, close), (2, 3.into(), 300.into()));
    assert_eq!(
        test_support::read_metric(md.admin, "market_data_write_errors_total", &[]).await,
        0.0,
        "the duplicate is handled, not retried as a failure"
    );
    let _: i64 = redis.del(&seen).await.unwrap();
    let _ = redis.quit().await;
    md.running.stop().await;
}

/// A stored trade as `insert_trades` takes it.
fn trade_row(code: &str, price: &str, volume: &str, ts: i64, sid: i64) -> TradeRow {
    TradeRow {
        market: code.to_owned(),
        ts: chrono::DateTime::from_timestamp_millis(ts).unwrap(),
        sequential_id: sid,
        price: price.parse().unwrap(),
        volume: volume.parse().unwrap(),
        ask_bid: if sid % 2 == 0 { "BID" } else { "ASK" },
        prev_closing_price: "100".parse().unwrap(),
        change_price: "0".parse().unwrap(),
    }
}

/// `candles_1m` of a market as text (so a decimal's scale counts too).
async fn candle_text(db: &TestDb, code: &str) -> Vec<String> {
    let mut admin = db.admin().await.unwrap();
    sqlx::query_scalar(
        "SELECT concat_ws(' ', bucket, open, high, low, close, volume, value, open_ts, open_sid,
                          close_ts, close_sid, trade_count)
         FROM market_data.candles_1m WHERE market = $1 ORDER BY bucket",
    )
    .bind(code)
    .fetch_all(&mut admin)
    .await
    .unwrap()
}

/// `trades` of a market as text, oldest first (the market left out).
async fn trade_text(db: &TestDb, code: &str) -> Vec<String> {
    let mut admin = db.admin().await.unwrap();
    sqlx::query_scalar(
        "SELECT concat_ws(' ', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' UTC',
                          sequential_id, price, volume, ask_bid, prev_closing_price, change_price)
         FROM market_data.trades WHERE market = $1 ORDER BY ts, sequential_id",
    )
    .bind(code)
    .fetch_all(&mut admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_folded_by_the_service_equal_those_folded_by_postgres() {
    let db = TestDb::create().await.unwrap();
    let md = start(&db).await;
    client(md.grpc).await; // serving: its schema is migrated
    let options: sqlx::postgres::PgConnectOptions = db.admin_url().parse().unwrap();
    let pool = sqlx::PgPool::connect_with(options.options([("search_path", market_data::SCHEMA)]))
        .await
        .unwrap();
    // Two minutes of trades out of order in time and in sequential id, with
    // prices and volumes of different scales and a value whose ninth place is a
    // 5 (rounded away from zero, as Postgres's round, not to even).
    let batch = |code: &str, later: bool| {
        let t = |price, volume, ts, sid| trade_row(code, price, volume, ts, sid);
        if later {
            vec![
                t("99.5", "2", minute(1) + 10, 1),
                t("101", "0.5", minute(2) + 59_999, 40),
                t("98", "1.25", minute(1) + 30, 41),
            ]
        } else {
            vec![
                t("100", "1", minute(1) + 20, 7),
                t("100.00", "0.10", minute(1) + 20, 3),
                t("102", "0.00000005", minute(1) + 5, 9),
                t("0.00000005", "0.1", minute(1) + 50_000, 2),
                t("97", "3", minute(2), 30),
                t("96.5", "0.001", minute(2) + 1, 31),
            ]
        }
    };
    for later in [false, true] {
        // Parameters folded here (likely new) for one market, by Postgres (its
        // duplicate-skipping path) for the other: the same trades in both.
        for (code, likely_new) in [("KRW-RUST", true), ("KRW-SQL", false)] {
            let rows = batch(code, later);
            let stored = store::insert_trades(&pool, &rows, likely_new)
                .await
                .unwrap();
            assert_eq!(stored, rows.len() as u64);
        }
    }
    let ours = candle_text(&db, "KRW-RUST").await;
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(ours, candle_text(&db, "KRW-SQL").await);
    // The trades themselves: the likely-new ones went in by binary COPY, the
    // others by INSERT; the same values, scales and times either way.
    let copied = trade_text(&db, "KRW-RUST").await;
    assert_eq!(copied.len(), 9, "{copied:?}");
    assert_eq!(copied, trade_text(&db, "KRW-SQL").await);
    assert!(
        copied.contains(&format!(
            "{} 3 100.00 0.10 ASK 100 0",
            chrono::DateTime::from_timestamp_millis(minute(1) + 20)
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S%.6f UTC")
        )),
        "{copied:?}"
    );
    // The first minute: open at (minute+5, sid 9), close the last by time.
    assert!(
        ours[0].contains(" 102 102 0.00000005 0.00000005 "),
        "{}",
        ours[0]
    );

    // Sums a decimal cannot hold exactly are folded by Postgres instead.
    let tiny = [
        trade_row(
            "KRW-TINY",
            "0.00000000000000000001",
            "0.000000001",
            minute(3),
            1,
        ),
        trade_row("KRW-TINY", "1", "1", minute(3) + 1, 2),
    ];
    assert!(store::fold_candles(&tiny).is_none());
    assert_eq!(store::insert_trades(&pool, &tiny, true).await.unwrap(), 2);
    let folded = candle_text(&db, "KRW-TINY").await;
    assert_eq!(folded.len(), 1);
    assert!(
        folded[0].contains(" 1.000000001 1.00000000 "),
        "{}",
        folded[0]
    );
    pool.close().await;
    md.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trade_pages_follow_cursors_newest_first() {
    let db = TestDb::create().await.unwrap();
    let md = start(&db).await;
    let mut c = client(md.grpc).await;
    // Upbit-shaped ids (timestamp × 1000 + a counter), two in one millisecond,
    // and one id that is not of that shape at all.
    let t0 = minute(70);
    let shaped = |dt: i64, k: i64| (t0 + dt) * 1000 + k;
    let trades = [
        ("1", t0, shaped(0, 0)),
        ("2", t0 + 5, shaped(5, 0)),
        ("3", t0 + 5, shaped(5, 1)),
        ("4", t0 + 2_000, 42),
        ("5", t0 + 9_000, shaped(9_000, 0)),
    ];
    ingest(
        &mut c,
        &["KRW-PAGE"],
        vec![
            trades
                .iter()
                .map(|(p, ts, sid)| trade("KRW-PAGE", p, "1", *ts, *sid))
                .collect(),
        ],
    )
    .await
    .unwrap();
    wait_trade_rows(&db, "KRW-PAGE", 5).await;
    let page = |cursor: Option<i64>, to: Option<i64>| {
        let mut c = c.clone();
        async move {
            c.list_trades(pb::ListTradesRequest {
                market: "KRW-PAGE".into(),
                count: 2,
                cursor,
                to,
                after: None,
            })
            .await
            .unwrap()
            .into_inner()
            .trades
            .iter()
            .map(|t| t.trade_price.clone())
            .collect::<Vec<_>>()
        }
    };
    let mut prices = Vec::new();
    let mut cursor = None;
    loop {
        let got = page(cursor, None).await;
        let Some(last) = got.last() else { break };
        let (_, _, sid) = trades.iter().find(|(p, _, _)| p == last).unwrap();
        cursor = Some(*sid);
        prices.extend(got);
    }
    assert_eq!(
        prices,
        ["5", "4", "3", "2", "1"],
        "every trade once, newest first"
    );
    // The id of another shape is a cursor like any other.
    assert_eq!(page(Some(42), None).await, ["3", "2"]);
    // With `to` as well, both bound the page.
    assert_eq!(page(Some(shaped(9_000, 0)), Some(t0 + 5)).await, ["1"]);
    // An id no trade has gives an empty page, not an error.
    assert!(page(Some(shaped(1, 0)), None).await.is_empty());
    // Catching up: the trades after a position, oldest first, page by page.
    let after = |timestamp: i64, sequential_id: i64| {
        let mut c = c.clone();
        async move {
            c.list_trades(pb::ListTradesRequest {
                market: "KRW-PAGE".into(),
                count: 2,
                after: Some(pb::TradePosition {
                    timestamp,
                    sequential_id,
                }),
                ..Default::default()
            })
            .await
            .map(|r| {
                r.into_inner()
                    .trades
                    .iter()
                    .map(|t| (t.trade_price.clone(), t.trade_timestamp, t.sequential_id))
                    .collect::<Vec<_>>()
            })
        }
    };
    let mut prices = Vec::new();
    let mut position = (0, 0);
    loop {
        let got = after(position.0, position.1).await.unwrap();
        let Some(last) = got.last() else { break };
        position = (last.1, last.2);
        prices.extend(got.into_iter().map(|t| t.0));
    }
    assert_eq!(
        prices,
        ["1", "2", "3", "4", "5"],
        "every trade once, oldest first"
    );
    let same_ms: Vec<String> = after(t0 + 5, shaped(5, 0))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert_eq!(
        same_ms,
        ["3", "4"],
        "within a millisecond, by sequential id"
    );
    let err = c
        .list_trades(pb::ListTradesRequest {
            market: "KRW-PAGE".into(),
            count: 2,
            cursor: Some(42),
            after: Some(pb::TradePosition::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    md.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_arriving_one_by_one_are_written_in_few_transactions() {
    let db = TestDb::create().await.unwrap();
    let opts = Opts {
        write_linger: Duration::from_secs(2),
        ..Opts::new()
    };
    let md = start_with(&db, &opts).await;
    let mut c = client(md.grpc).await;
    // Ten trades, one per message, 20 ms apart: without the linger each would be
    // its own transaction; with it the first goes at once and the rest together.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(pb::IngestRequest {
        events: vec![],
        source: "test".into(),
        markets: vec![market("KRW-LGR")],
    })
    .await
    .unwrap();
    let sending = tokio::spawn(async move {
        for i in 0..10 {
            let ev = trade("KRW-LGR", "7000", "0.1", minute(40) + i, 9000 + i);
            let req = pb::IngestRequest {
                events: vec![ev],
                source: "test".into(),
                markets: vec![],
            };
            tx.send(req).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let answer = c
        .ingest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    sending.await.unwrap();
    assert_eq!(answer.trades_stored, 10);
    wait_trade_rows(&db, "KRW-LGR", 10).await;
    let writes =
        test_support::read_metric(md.admin, "market_data_write_batch_trades_count", &[]).await;
    assert!(
        (1.0..=3.0).contains(&writes),
        "ten trades in {writes} writes: the linger did not gather them"
    );
    md.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_script_call_dedupes_trades_in_groups_and_keeps_their_order() {
    use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
    use prost::Message as _;
    let prefix = test_support::unique_prefix();
    let client = market_data::redis_builder(&test_support::redis_url())
        .unwrap()
        .build()
        .unwrap();
    client.init().await.unwrap();
    let subscriber = market_data::redis_builder(&test_support::redis_url())
        .unwrap()
        .build_subscriber_client()
        .unwrap();
    subscriber.init().await.unwrap();
    let mut published = subscriber.message_rx();
    subscriber
        .subscribe(format!("{prefix}md:ch:trade"))
        .await
        .unwrap();
    let hot = market_data::hot::Hot::new(client.clone(), prefix.clone());
    let t = |market: &str, ts: i64, sid: i64| match trade(market, "100", "1", ts, sid).event {
        Some(Event::Trade(t)) => t,
        _ => unreachable!(),
    };
    let m = minute(40);
    // A copy within the batch, two minutes of one market, and one market with
    // more trades than one group holds.
    let mut trades = vec![t("KRW-GA", m, 1), t("KRW-GB", m, 1), t("KRW-GA", m + 5, 1)];
    trades.push(t("KRW-GA", m + 60_000, 2));
    trades.extend((0..2_500).map(|i| t("KRW-GC", m + i, 10 + i)));
    let batch = market_data::hot::Batch {
        trades,
        ..Default::default()
    };
    let applied = hot.apply(&batch).await.unwrap();
    let mut expected = vec![true, true, false, true];
    expected.extend([true; 2_500]);
    assert_eq!(applied.fresh_trades, expected);
    let again = hot.apply(&batch).await.unwrap();
    assert!(again.fresh_trades.iter().all(|f| !f), "all seen now");

    let mut got = Vec::new();
    while got.len() < 2_503 {
        let message = tokio::time::timeout(Duration::from_secs(5), published.recv())
            .await
            .expect("published trades")
            .unwrap();
        let mut rest = message.value.as_bytes().unwrap();
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            got.push(pb::Trade::decode(&rest[4..4 + len]).unwrap());
            rest = &rest[4 + len..];
        }
    }
    assert_eq!(got.len(), 2_503, "each new trade published once");
    let sids = |market: &str| -> Vec<i64> {
        got.iter()
            .filter(|t| t.market == market)
            .map(|t| t.sequential_id)
            .collect()
    };
    assert_eq!(sids("KRW-GA"), [1, 2]);
    assert_eq!(sids("KRW-GC"), (10..2_510).collect::<Vec<_>>(), "in order");
    let minute_of = |ts: i64| ts.div_euclid(60_000);
    let keys: Vec<String> = [
        ("KRW-GA", m),
        ("KRW-GB", m),
        ("KRW-GA", m + 60_000),
        ("KRW-GC", m),
    ]
    .iter()
    .map(|(market, ts)| format!("{prefix}md:seen:{market}:{}", minute_of(*ts)))
    .collect();
    let removed: i64 = client.del(keys).await.unwrap();
    assert_eq!(removed, 4, "one dedupe set per market and minute");
    let _ = subscriber.quit().await;
    let _ = client.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_does_not_hold_back_others() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    let mut md = client(svc.grpc).await;
    ingest(&mut md, &["KRW-SLO"], vec![]).await.unwrap();
    let request = || pb::StreamTradesRequest {
        markets: vec!["KRW-SLO".into()],
        snapshot: false,
    };
    // Not read until dropped: its messages pile up on its own connection (a
    // small window) and buffers only.
    let other = tonic::transport::Endpoint::from_shared(format!("http://{}", svc.grpc))
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let mut idle = MarketDataServiceClient::new(other)
        .stream_trades(request())
        .await
        .unwrap()
        .into_inner();
    let mut fast = md.stream_trades(request()).await.unwrap().into_inner();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 5_000 {
            match tokio::time::timeout(Duration::from_secs(10), fast.message()).await {
                Ok(Ok(Some(_))) => n += 1,
                other => panic!("reading consumer cut off after {n}: {other:?}"),
            }
        }
        n
    });
    let batches: Vec<Vec<_>> = (0..10)
        .map(|b| {
            (0..500)
                .map(|i| {
                    trade(
                        "KRW-SLO",
                        "5000",
                        "1",
                        minute(20) + b * 500 + i,
                        b * 500 + i,
                    )
                })
                .collect()
        })
        .collect();
    ingest(&mut md, &["KRW-SLO"], batches).await.unwrap();
    assert_eq!(
        reader.await.unwrap(),
        5_000,
        "the reading consumer got everything"
    );
    // The idle one was dropped, and learns why once it reads what was sent
    // before: the status ends its stream even though its buffer was full.
    let dropped = [r#"type="trade""#];
    test_support::eventually(
        Duration::from_secs(20),
        "the idle stream dropped",
        || async {
            (test_support::read_metric(svc.admin, "market_data_stream_dropped_total", &dropped)
                .await
                >= 1.0)
                .then_some(())
        },
    )
    .await
    .unwrap();
    let mut buffered = 0;
    let end = loop {
        match idle.message().await {
            Ok(Some(_)) => buffered += 1,
            other => break other,
        }
    };
    let status = end.expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(buffered > 100 && buffered < 5_000, "{buffered}");
    // Counted as that error, not as a stream that went well.
    let call = |code: &str| {
        [
            r#"grpc_method="StreamTrades""#.to_owned(),
            format!(r#"grpc_code="{code}""#),
        ]
    };
    let handled = |code: &'static str| async move {
        let labels = call(code);
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        test_support::read_metric(svc.admin, "grpc_server_handled_total", &labels).await
    };
    assert_eq!(handled("ResourceExhausted").await, 1.0);
    assert_eq!(
        handled("OK").await,
        0.0,
        "no stream ended well: the other reader hung up"
    );
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_postgres_outages_mean_retries_not_crashes() {
    let db = TestDb::create().await.unwrap();
    let redis = TcpProxy::start(test_support::redis_addr()).await.unwrap();
    let pg = TcpProxy::start(db.server_addr()).await.unwrap();
    let mut opts = Opts::new();
    opts.redis_url = format!("redis://{}", redis.addr);
    opts.database_url = Some(db.role_url_via(market_data::SCHEMA, pg.addr));
    let svc = start_with(&db, &opts).await;
    let mut md = client(svc.grpc).await;
    ingest(
        &mut md,
        &["KRW-OUT"],
        vec![vec![trade("KRW-OUT", "100", "1", minute(30), 1)]],
    )
    .await
    .unwrap();

    // Postgres away: hot state keeps flowing, trades wait in memory.
    pg.cut();
    ingest(
        &mut md,
        &[],
        vec![vec![
            trade("KRW-OUT", "101", "1", minute(30) + 1, 2),
            ticker("KRW-OUT", "101", minute(30) + 1),
        ]],
    )
    .await
    .unwrap();
    let t = md
        .get_tickers(pb::GetTickersRequest {
            markets: vec!["KRW-OUT".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        t.tickers[0].trade_price, "101",
        "Redis path unaffected by Postgres"
    );
    // The waiting trade and the failed attempts show in the metrics.
    test_support::eventually(Duration::from_secs(10), "a write retried", || async {
        (test_support::read_metric(svc.admin, "market_data_write_errors_total", &[]).await >= 1.0)
            .then_some(())
    })
    .await
    .unwrap();
    assert!(
        test_support::read_metric(svc.admin, "market_data_write_queue", &[]).await >= 1.0,
        "the trade waits for Postgres"
    );
    let err = md
        .list_trades(pb::ListTradesRequest {
            market: "KRW-OUT".into(),
            count: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "history answers UNAVAILABLE, not a crash: {err:?}"
    );
    pg.restore();
    test_support::eventually(
        Duration::from_secs(20),
        "the queued trade written after Postgres returns",
        || async { (trade_rows(&db, "KRW-OUT").await == 2).then_some(()) },
    )
    .await
    .unwrap();
    test_support::wait_metric(
        svc.admin,
        "market_data_write_queue",
        &[],
        0.0,
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    // Redis away: ingest is refused with UNAVAILABLE (the ingestor retries), queries too.
    redis.cut();
    let err = ingest(
        &mut md,
        &[],
        vec![vec![ticker("KRW-OUT", "102", minute(30) + 2)]],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        test_support::read_metric(svc.admin, "market_data_redis_errors_total", &[]).await >= 1.0,
        "Redis retries are counted"
    );
    redis.restore();
    test_support::eventually(
        Duration::from_secs(30),
        "ingest works again after Redis returns",
        || {
            let mut md = md.clone();
            async move {
                ingest(
                    &mut md,
                    &[],
                    vec![vec![ticker("KRW-OUT", "103", minute(30) + 3)]],
                )
                .await
                .ok()?;
                let t = md
                    .get_tickers(pb::GetTickersRequest {
                        markets: vec!["KRW-OUT".into()],
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                (t.into_inner().tickers[0].trade_price == "103").then_some(())
            }
        },
    )
    .await
    .unwrap();
    svc.running.stop().await;
}

/// A running service (so the schema is migrated) and a pool of the service's
/// role, as a job (`market-data retention`, `backfill`) connects.
async fn migrated(db: &TestDb) -> (Started, sqlx::PgPool) {
    let svc = start(db).await;
    test_support::wait_serving(svc.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    let pool = DbArgs {
        database_url: Some(db.role_url(market_data::SCHEMA)),
        database_admin_url: None,
        database_max_connections: 2,
    }
    .pg_config(market_data::SCHEMA)
    .lazy_pool()
    .unwrap();
    (svc, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_trades_in_batches_and_keeps_candles() {
    let db = TestDb::create().await.unwrap();
    let (svc, pool) = migrated(&db).await;
    let now = chrono::Utc::now();
    let at = |days: i64, sid: i64, market: &str| TradeRow {
        market: market.into(),
        ts: now - chrono::Duration::days(days),
        sequential_id: sid,
        price: "100".parse().unwrap(),
        volume: "1".parse().unwrap(),
        ask_bid: "BID",
        prev_closing_price: "100".parse().unwrap(),
        change_price: "0".parse().unwrap(),
    };
    // Five old and two recent trades in one market, one old in another.
    let mut trades: Vec<TradeRow> = (1..=5).map(|i| at(40, i, "KRW-AAA")).collect();
    trades.extend([
        at(1, 6, "KRW-AAA"),
        at(0, 7, "KRW-AAA"),
        at(31, 8, "KRW-BBB"),
    ]);
    assert_eq!(store::insert_trades(&pool, &trades, true).await.unwrap(), 8);
    let candles_before: i64 = sqlx::query_scalar("SELECT count(*) FROM candles_1m")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(candles_before >= 3, "the trades made candles");

    // Batches of two: the loop must go on past a full batch.
    let deleted = store::forget_old_trades(&pool, now - chrono::Duration::days(30), 2)
        .await
        .unwrap();
    assert_eq!(deleted, 6);
    let left: Vec<i64> =
        sqlx::query_scalar("SELECT sequential_id FROM trades ORDER BY sequential_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, vec![6, 7]);
    let candles_after: i64 = sqlx::query_scalar("SELECT count(*) FROM candles_1m")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        candles_after, candles_before,
        "candles are the history: kept"
    );
    // Nothing more to do the second time.
    assert_eq!(
        store::forget_old_trades(&pool, now - chrono::Duration::days(30), 2)
            .await
            .unwrap(),
        0
    );
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_stores_only_missing_trades_and_counts_each_once_in_its_candle() {
    use market_data::backfill::Backfill;
    let db = TestDb::create().await.unwrap();
    let (svc, pool) = migrated(&db).await;

    // A simulated Upbit trading one market; wait for a few pages of trades.
    let mut sim_config = upbit_sim::Config::local("127.0.0.1:0");
    sim_config.markets = Some("KRW-BTC".into());
    let stop = CancellationToken::new();
    let sim = upbit_sim::App::build(sim_config, stop.clone())
        .await
        .unwrap();
    let upbit = format!("http://{}", sim.http_addr());
    let _sim = Running::spawn(stop, sim.run());
    let http = reqwest::Client::new();
    let ticks = |count: u32| {
        let (http, url) = (
            http.clone(),
            format!("{upbit}/v1/trades/ticks?market=KRW-BTC&count={count}"),
        );
        async move { http.get(url).send().await.unwrap().bytes().await.unwrap() }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while upbit::parse::parse_rest_trades(&ticks(500).await)
        .unwrap()
        .len()
        < 120
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the simulator made no trades"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Live ingest had seen the newest 30 (and folded them) before going down.
    let seen: Vec<TradeRow> = upbit::parse::parse_rest_trades(&ticks(30).await)
        .unwrap()
        .iter()
        .map(|t| TradeRow {
            market: t.market.clone(),
            ts: chrono::DateTime::from_timestamp_millis(t.timestamp).unwrap(),
            sequential_id: t.sequential_id,
            price: t.trade_price,
            volume: t.trade_volume,
            ask_bid: t.ask_bid.as_str(),
            prev_closing_price: t.prev_closing_price.unwrap_or_default(),
            change_price: t.change_price.unwrap_or_default(),
        })
        .collect();
    assert_eq!(store::insert_trades(&pool, &seen, true).await.unwrap(), 30);

    let job = Backfill {
        upbit_url: upbit.clone(),
        since: Duration::from_secs(3600),
        markets: vec!["KRW-BTC".into()],
        rate: 10,
        keep: Duration::from_secs(30 * 86_400),
        page: 50,
    };
    // Candles and trades agree: every stored trade is in its candle exactly once.
    let agree = || async {
        let (volume, count): (rust_decimal::Decimal, i64) = sqlx::query_as(
            "SELECT coalesce(sum(volume), 0), count(*) FROM trades WHERE market = 'KRW-BTC'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let (c_volume, c_count): (rust_decimal::Decimal, i64) = sqlx::query_as(
            "SELECT coalesce(sum(volume), 0), coalesce(sum(trade_count), 0)::bigint
             FROM candles_1m WHERE market = 'KRW-BTC'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((c_volume, c_count), (volume, count), "candles vs trades");
        count
    };
    let first = market_data::backfill(&config(&db, &Opts::new()), &job)
        .await
        .unwrap();
    assert!(first.failed.is_empty(), "{first:?}");
    assert!(first.pages >= 3, "paged back with the cursor: {first:?}");
    assert!(first.fetched >= 120, "{first:?}");
    assert_eq!(
        first.stored,
        first.fetched - 30,
        "the 30 seen are skipped: {first:?}"
    );
    assert_eq!(agree().await, first.fetched as i64);

    // Again: only what the simulator traded since is new; nothing counts twice.
    let second = market_data::backfill(&config(&db, &Opts::new()), &job)
        .await
        .unwrap();
    assert!(second.stored < second.fetched, "{second:?}");
    assert_eq!(agree().await, first.fetched as i64 + second.stored as i64);

    // A market Upbit does not list fails alone; bad windows are refused.
    let unknown = Backfill {
        markets: vec!["KRW-NOPE".into()],
        ..job.clone()
    };
    let done = market_data::backfill(&config(&db, &Opts::new()), &unknown)
        .await
        .unwrap();
    assert_eq!(done.failed, vec!["KRW-NOPE".to_string()]);
    for (since, keep, why) in [
        (8 * 86_400, 30 * 86_400, "at most 7d"),
        (2 * 86_400, 86_400, "shorter than the trade retention"),
    ] {
        let bad = Backfill {
            since: Duration::from_secs(since),
            keep: Duration::from_secs(keep),
            ..job.clone()
        };
        let err = market_data::backfill(&config(&db, &Opts::new()), &bad)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
    pool.close().await;
    svc.running.stop().await;
}
