//! The order service with real inventory, market-data, Postgres and Redis.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use exchange_proto::inventory::v1 as inv;
use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use exchange_proto::marketdata::v1 as md;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use exchange_proto::order::v1 as pb;
use exchange_proto::order::v1::order_service_client::OrderServiceClient;
use rust_decimal::Decimal;
use service_kit::postgres::DbArgs;
use sqlx::Connection;
use test_support::{Running, Started, TestDb, eventually};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

fn db_args(db: &TestDb, role: &str) -> DbArgs {
    DbArgs {
        database_url: Some(db.role_url(role)),
        database_admin_url: Some(db.admin_url()),
        database_max_connections: 8,
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

struct Env {
    db: TestDb,
    inventory_addr: SocketAddr,
    market_data_addr: SocketAddr,
    inventory: InventoryServiceClient<Channel>,
    md: MarketDataServiceClient<Channel>,
    orders: Option<OrderServiceClient<Channel>>,
    running: Vec<Running>,
}

async fn start_order(env: &Env, tweak: impl FnOnce(&mut order::Config)) -> Started {
    let mut config = order::Config::local(
        db_args(&env.db, order::SCHEMA),
        env.inventory_addr,
        env.market_data_addr,
    );
    config.recovery_interval = Duration::from_millis(300);
    config.recovery_min_age = Duration::ZERO;
    config.plan_ttl = Duration::from_secs(2);
    // The test books are written once; tests about staleness set their own.
    config.max_book_age = Duration::from_secs(600);
    tweak(&mut config);
    let stop = CancellationToken::new();
    let app = order::App::build(config, stop.clone()).await.unwrap();
    let (grpc, admin) = (app.grpc_addr(), app.metrics_addr());
    Started {
        grpc,
        admin,
        running: Running::spawn(stop, app.run()),
    }
}

/// inventory and market-data, with KRW-BTC and KRW-ETH listed and an orderbook.
async fn env() -> Env {
    test_support::init_logs();
    let db = TestDb::create().await.unwrap();
    let stop = CancellationToken::new();
    let app = inventory::App::build(
        inventory::Config::local(db_args(&db, inventory::SCHEMA)),
        stop.clone(),
    )
    .await
    .unwrap();
    let inventory_addr = app.grpc_addr();
    let inv_running = Running::spawn(stop, app.run());

    let mut config = market_data::Config {
        grpc_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        db: db_args(&db, market_data::SCHEMA),
        redis_url: test_support::redis_url(),
        redis_prefix: test_support::unique_prefix(),
        write_batch: 1000,
        write_linger: Duration::from_millis(10),
        write_queue: 10_000,
        stream_buffer: 1024,
        stream_slow_after: Duration::from_secs(5),
        markets_ttl: Duration::from_secs(10),
        runtime: Default::default(),
        grpc: Default::default(),
    };
    config.runtime.drain_delay = Duration::ZERO;
    let stop = CancellationToken::new();
    let app = market_data::App::build(config, stop.clone()).await.unwrap();
    let market_data_addr = app.grpc_addr();
    let md_running = Running::spawn(stop, app.run());
    for addr in [inventory_addr, market_data_addr] {
        test_support::wait_serving(addr, "", Duration::from_secs(30))
            .await
            .unwrap();
    }
    let mut env = Env {
        db,
        inventory_addr,
        market_data_addr,
        inventory: InventoryServiceClient::connect(format!("http://{inventory_addr}"))
            .await
            .unwrap(),
        md: MarketDataServiceClient::connect(format!("http://{market_data_addr}"))
            .await
            .unwrap(),
        orders: None,
        running: vec![inv_running, md_running],
    };
    env.feed(vec![
        book("KRW-BTC", "148000000", "0.005", 1000),
        book("KRW-ETH", "5200000", "1", 1000),
    ])
    .await;
    env
}

/// An orderbook around `best_ask` (tick 1000 for BTC, 1000 for ETH here): 30
/// levels of `size` each side, asks from best_ask up, bids from one tick under.
fn book(market: &str, best_ask: &str, size: &str, tick: i64) -> md::MarketEvent {
    let ask = dec(best_ask);
    let tick = Decimal::from(tick);
    let units = (0..30)
        .map(|i| md::OrderbookUnit {
            ask_price: (ask + tick * Decimal::from(i)).to_string(),
            bid_price: (ask - tick * Decimal::from(i + 1)).to_string(),
            ask_size: size.into(),
            bid_size: size.into(),
        })
        .collect();
    md::MarketEvent {
        event: Some(md::market_event::Event::Orderbook(md::Orderbook {
            market: market.into(),
            timestamp: chrono::Utc::now().timestamp_millis(),
            units,
            ..Default::default()
        })),
        received_at: 0,
    }
}

fn trade(market: &str, price: &str, volume: &str, sid: i64) -> md::MarketEvent {
    let now = chrono::Utc::now().timestamp_millis() + 1000;
    md::MarketEvent {
        event: Some(md::market_event::Event::Trade(md::Trade {
            market: market.into(),
            trade_price: price.into(),
            trade_volume: volume.into(),
            ask_bid: md::Side::Ask as i32,
            trade_timestamp: now,
            timestamp: now,
            sequential_id: sid,
            ..Default::default()
        })),
        received_at: 0,
    }
}

impl Env {
    async fn feed(&mut self, events: Vec<md::MarketEvent>) {
        let markets = ["KRW-BTC", "KRW-ETH"]
            .iter()
            .map(|m| md::Market {
                market: (*m).into(),
                ..Default::default()
            })
            .collect();
        let requests = vec![md::IngestRequest {
            events,
            source: "test".into(),
            markets,
        }];
        self.md.ingest(tokio_stream::iter(requests)).await.unwrap();
    }

    async fn with_order_service(&mut self) {
        self.with_order_service_using(|_| {}).await;
    }

    /// Starts the order service (with `tweak` applied to its config) and waits
    /// until its matcher leads.
    async fn with_order_service_using(&mut self, tweak: impl FnOnce(&mut order::Config)) {
        let svc = start_order(self, tweak).await;
        test_support::wait_serving(svc.grpc, "", Duration::from_secs(30))
            .await
            .unwrap();
        // Serving comes before leading: wait until the matcher follows trades.
        test_support::wait_metric(
            svc.admin,
            "order_matcher_leading",
            &[],
            1.0,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        self.orders = Some(
            OrderServiceClient::connect(format!("http://{}", svc.grpc))
                .await
                .unwrap(),
        );
        self.running.push(svc.running);
    }

    fn orders(&self) -> OrderServiceClient<Channel> {
        self.orders.clone().expect("order service started")
    }

    async fn new_user(&mut self) -> Uuid {
        let user = Uuid::new_v4();
        self.inventory
            .open_account(inv::OpenAccountRequest {
                user_id: user.to_string(),
            })
            .await
            .unwrap();
        user
    }

    async fn balance(&mut self, user: Uuid, currency: &str) -> (Decimal, Decimal) {
        self.inventory
            .get_balances(inv::GetBalancesRequest {
                user_id: user.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .balances
            .into_iter()
            .find(|b| b.currency == currency)
            .map(|b| (dec(&b.balance), dec(&b.locked)))
            .unwrap_or_default()
    }

    /// Balances equal their ledgers; nothing is negative.
    async fn assert_books_balance(&self) {
        let mut admin = self.db.admin().await.unwrap();
        let bad: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (
                SELECT b.user_id FROM inventory.balances b
                LEFT JOIN inventory.ledger l ON l.user_id = b.user_id AND l.currency = b.currency
                GROUP BY b.user_id, b.currency, b.available, b.locked
                HAVING b.available <> coalesce(sum(l.available_delta), 0)
                    OR b.locked <> coalesce(sum(l.locked_delta), 0) OR b.available < 0 OR b.locked < 0) x",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(bad, 0, "ledger and balances disagree");
    }

    async fn stop(mut self) {
        while let Some(r) = self.running.pop() {
            r.stop().await;
        }
    }
}

fn place(
    user: Uuid,
    market: &str,
    side: pb::Side,
    ord_type: pb::OrderType,
    price: &str,
    volume: &str,
) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        user_id: user.to_string(),
        market: market.into(),
        side: side as i32,
        ord_type: ord_type as i32,
        price: price.into(),
        volume: volume.into(),
        identifier: String::new(),
        request_key: String::new(),
        ..Default::default()
    }
}

/// Order `uuid` of `user` once it has executed `volume` (within 20 s).
async fn executed(
    orders: &OrderServiceClient<Channel>,
    user: Uuid,
    uuid: &str,
    volume: &str,
    what: &str,
) -> pb::Order {
    eventually(Duration::from_secs(20), what, || {
        let request = pb::GetOrderRequest {
            user_id: user.to_string(),
            uuid: uuid.to_owned(),
            identifier: String::new(),
        };
        let mut orders = orders.clone();
        async move {
            let o = orders.get_order(request).await.ok()?.into_inner().order?;
            (o.executed_volume == volume).then_some(o)
        }
    })
    .await
    .unwrap()
}

/// A request to cancel `user`'s order `uuid`.
fn cancel(user: Uuid, uuid: &str) -> pb::CancelOrderRequest {
    pb::CancelOrderRequest {
        user_id: user.to_string(),
        uuid: uuid.to_owned(),
        identifier: String::new(),
    }
}

/// `user`'s balances as (balance, locked) by currency; none while inventory
/// cannot be reached.
async fn balances(
    mut inventory: InventoryServiceClient<Channel>,
    user: Uuid,
) -> Option<std::collections::HashMap<String, (Decimal, Decimal)>> {
    let listed = inventory
        .get_balances(inv::GetBalancesRequest {
            user_id: user.to_string(),
        })
        .await
        .ok()?
        .into_inner()
        .balances;
    Some(
        listed
            .into_iter()
            .map(|b| (b.currency, (dec(&b.balance), dec(&b.locked))))
            .collect(),
    )
}

fn error_name(s: &tonic::Status) -> Option<&str> {
    service_kit::grpc::error_name(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_reflection_metrics_and_migrates_idempotently() {
    let env = env().await;
    let svc = start_order(&env, |_| {}).await;
    test_support::assert_grpc_basics(svc.grpc, svc.admin, "exchange.order.v1.OrderService")
        .await
        .unwrap();
    svc.running.stop().await;
    let migrations = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    test_support::assert_migrations_idempotent(
        &env.db,
        || start_order(&env, |_| {}),
        "orders",
        "orders",
        "orders",
        migrations,
    )
    .await
    .unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_orders_walk_the_book_and_money_adds_up() {
    let mut env = env().await;
    env.with_order_service().await;
    let mut orders = env.orders();
    let user = env.new_user().await;
    // Buy for 1,000,000 KRW: 0.005 at 148,000,000 then the rest at 148,001,000.
    let bought = orders
        .place_order(place(
            user,
            "KRW-BTC",
            pb::Side::Bid,
            pb::OrderType::Price,
            "1000000",
            "",
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(bought.state, pb::OrderState::Done as i32);
    assert_eq!(bought.trades.len(), 2, "walked two levels");
    assert_eq!(
        (
            bought.trades[0].price.as_str(),
            bought.trades[0].volume.as_str()
        ),
        ("148000000", "0.005")
    );
    assert_eq!(
        (
            bought.trades[1].price.as_str(),
            bought.trades[1].volume.as_str()
        ),
        ("148001000", "0.00175674")
    );
    assert_eq!(bought.executed_volume, "0.00675674");
    assert_eq!(bought.paid_fee, "499.99963837");
    let krw = dec("10000000") - dec(&bought.executed_funds) - dec(&bought.paid_fee);
    assert_eq!(
        env.balance(user, "KRW").await,
        (krw, dec("0")),
        "funds plus fee paid, the rest released"
    );
    assert_eq!(
        env.balance(user, "BTC").await,
        (dec("0.00675674"), dec("0"))
    );

    // Sell it all back into the bids (147,999,000 and below).
    let sold = orders
        .place_order(place(
            user,
            "KRW-BTC",
            pb::Side::Ask,
            pb::OrderType::Market,
            "",
            "0.00675674",
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(sold.state, pb::OrderState::Done as i32);
    let proceeds = dec(&sold.executed_funds) - dec(&sold.paid_fee);
    assert_eq!(env.balance(user, "KRW").await, (krw + proceeds, dec("0")));
    assert_eq!(env.balance(user, "BTC").await, (dec("0"), dec("0")));
    let got = orders
        .get_order(pb::GetOrderRequest {
            user_id: user.to_string(),
            uuid: sold.uuid.clone(),
            identifier: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(got.trades.len(), sold.trades.len());
    let closed = orders
        .list_orders(pb::ListOrdersRequest {
            user_id: user.to_string(),
            states: vec![pb::OrderState::Done as i32, pb::OrderState::Cancel as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert_eq!(
        closed.iter().map(|o| o.uuid.clone()).collect::<Vec<_>>(),
        vec![sold.uuid.clone(), bought.uuid.clone()],
        "newest first"
    );
    env.assert_books_balance().await;
    env.stop().await;
}

/// A placement with Upbit's order conditions.
fn with_conditions(
    mut request: pb::PlaceOrderRequest,
    time_in_force: pb::TimeInForce,
    smp_type: &str,
) -> pb::PlaceOrderRequest {
    request.time_in_force = time_in_force as i32;
    request.smp_type = smp_type.into();
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_in_force_and_best_orders_behave_as_upbit_says() {
    use pb::OrderState::{Cancel, Done, Wait};
    use pb::TimeInForce::{Fok, Ioc, PostOnly, Unspecified};
    let mut env = env().await;
    env.with_order_service().await;
    let orders = env.orders();
    let user = env.new_user().await;
    let start = env.balance(user, "KRW").await;
    // The book: asks 0.005 at 148,000,000, 148,001,000, …; bids from 147,999,000 down.
    let bid = |price: &str, volume: &str, tif, smp: &str| {
        with_conditions(
            place(
                user,
                "KRW-BTC",
                pb::Side::Bid,
                pb::OrderType::Limit,
                price,
                volume,
            ),
            tif,
            smp,
        )
    };
    let best = |side, price: &str, volume: &str, tif| {
        with_conditions(
            place(user, "KRW-BTC", side, pb::OrderType::Best, price, volume),
            tif,
            "",
        )
    };
    let placed = |request: pb::PlaceOrderRequest| {
        let mut orders = orders.clone();
        async move {
            orders
                .place_order(request)
                .await
                .map(|r| r.into_inner().order.unwrap())
        }
    };

    #[rustfmt::skip]
    let cases = [
        // IOC: what crosses now fills (two levels), the rest is cancelled.
        ("ioc", bid("148001000", "0.02", Ioc, ""), Cancel, 2, "cancel_maker"),
        // FOK: all or nothing.
        ("fok, too big", bid("148001000", "0.02", Fok, ""), Cancel, 0, "cancel_maker"),
        ("fok", bid("148001000", "0.01", Fok, "reduce"), Done, 2, "reduce"),
        // post_only: cancelled unfilled if it would take; rests if not.
        ("post_only taker", bid("148000000", "0.001", PostOnly, ""), Cancel, 0, "none"),
        ("post_only maker", bid("147000000", "0.001", PostOnly, "none"), Wait, 0, "none"),
        // best: the best price only, for a total (bid) or a volume (ask).
        ("best bid", best(pb::Side::Bid, "1000000", "", Ioc), Cancel, 1, "cancel_maker"),
        ("best ask, too big", best(pb::Side::Ask, "", "0.006", Fok), Cancel, 0, "cancel_maker"),
        ("best ask", best(pb::Side::Ask, "", "0.004", Fok), Done, 1, "cancel_maker"),
    ];
    let mut done = Vec::new();
    for (what, request, state, trades, smp) in cases {
        let o = placed(request).await.unwrap();
        assert_eq!(
            (o.state, o.trades.len(), o.smp_type.as_str()),
            (state as i32, trades, smp),
            "{what}: {o:?}"
        );
        done.push(o);
    }
    let [ioc, _, filled, _, _, best_bid, _, best_ask] = &done[..] else {
        unreachable!()
    };
    assert_eq!(
        (ioc.executed_volume.as_str(), ioc.time_in_force),
        ("0.01", Ioc as i32)
    );
    assert_eq!(
        (
            best_bid.trades[0].price.as_str(),
            best_bid.trades[0].volume.as_str()
        ),
        ("148000000", "0.005")
    );
    assert_eq!(best_ask.trades[0].price, "147999000");
    // Nothing is left locked but the resting maker's 147,073.5 KRW.
    assert_eq!(env.balance(user, "KRW").await.1, dec("147073.5"));

    // What Upbit refuses.
    for (request, why) in [
        (
            place(
                user,
                "KRW-BTC",
                pb::Side::Bid,
                pb::OrderType::Best,
                "1000000",
                "",
            ),
            "best without ioc/fok",
        ),
        (
            best(pb::Side::Bid, "1000000", "", PostOnly),
            "best post_only",
        ),
        (
            with_conditions(
                place(
                    user,
                    "KRW-BTC",
                    pb::Side::Bid,
                    pb::OrderType::Price,
                    "1000000",
                    "",
                ),
                Ioc,
                "",
            ),
            "a market order with a time in force",
        ),
        (
            bid("147000000", "0.001", PostOnly, "reduce"),
            "post_only with smp",
        ),
        (
            bid("147000000", "0.001", Unspecified, "sometimes"),
            "an unknown smp_type",
        ),
    ] {
        let err = placed(request).await.expect_err(why);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{why}: {err:?}");
    }
    let spent: Decimal = [ioc, filled, best_bid]
        .iter()
        .map(|o| dec(&o.executed_funds) + dec(&o.paid_fee))
        .sum();
    let earned = dec(&best_ask.executed_funds) - dec(&best_ask.paid_fee);
    assert_eq!(
        env.balance(user, "KRW").await,
        (start.0 - spent + earned - dec("147073.5"), dec("147073.5"))
    );
    env.assert_books_balance().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_orders_rest_fill_on_crossing_trades_and_cancel_releases_funds() {
    let mut env = env().await;
    env.with_order_service().await;
    let mut orders = env.orders();
    let user = env.new_user().await;
    // A bid under the book rests: funds locked (total + fee).
    let resting = orders
        .place_order(place(
            user,
            "KRW-ETH",
            pb::Side::Bid,
            pb::OrderType::Limit,
            "5100000",
            "0.5",
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(resting.state, pb::OrderState::Wait as i32);
    assert_eq!(
        env.balance(user, "KRW").await,
        (dec("7448725"), dec("2551275"))
    );
    // A second one to cancel after a partial fill.
    let other = orders
        .place_order(place(
            user,
            "KRW-ETH",
            pb::Side::Bid,
            pb::OrderType::Limit,
            "5050000",
            "0.2",
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    // A live trade at 5,100,000 for 0.3 fills the first order partly, at its price.
    env.feed(vec![trade("KRW-ETH", "5100000", "0.3", 1)]).await;
    let get = |uuid: String| {
        let mut orders = orders.clone();
        async move {
            orders
                .get_order(pb::GetOrderRequest {
                    user_id: user.to_string(),
                    uuid,
                    identifier: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap()
        }
    };
    let partly = eventually(Duration::from_secs(20), "a partial fill", || {
        let uuid = resting.uuid.clone();
        async move {
            let o = get(uuid).await;
            (o.executed_volume == "0.3").then_some(o)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (partly.state, partly.trades.len()),
        (pb::OrderState::Wait as i32, 1)
    );
    // Then a trade at 5,040,000 crosses both: the rest of the first (0.2), the second (0.2).
    env.feed(vec![trade("KRW-ETH", "5040000", "0.3", 2)]).await;
    let done = eventually(Duration::from_secs(20), "the first order filled", || {
        let uuid = resting.uuid.clone();
        async move {
            let o = get(uuid).await;
            (o.state == pb::OrderState::Done as i32).then_some(o)
        }
    })
    .await
    .unwrap();
    assert_eq!(done.executed_volume, "0.5");
    assert!(
        done.trades.iter().all(|t| t.price == "5100000"),
        "fills at the limit price"
    );
    let second = eventually(
        Duration::from_secs(20),
        "the second order partly filled",
        || {
            let uuid = other.uuid.clone();
            async move {
                let o = get(uuid).await;
                (o.executed_volume == "0.1").then_some(o)
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        second.state,
        pb::OrderState::Wait as i32,
        "0.1 of 0.2: the trade had 0.3, 0.2 went to the better bid"
    );
    let cancelled = orders
        .cancel_order(cancel(user, &other.uuid))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(cancelled.state, pb::OrderState::Cancel as i32);
    let again = orders
        .cancel_order(cancel(user, &other.uuid))
        .await
        .unwrap_err();
    assert_eq!(error_name(&again), Some("order_not_cancellable"));
    // Everything settled: 0.6 ETH bought, nothing locked.
    let spent = dec("5100000") * dec("0.5") + dec("5050000") * dec("0.1");
    let fees = dec("1275") + dec("252.5");
    assert_eq!(env.balance(user, "ETH").await, (dec("0.6"), dec("0")));
    assert_eq!(
        env.balance(user, "KRW").await,
        (dec("10000000") - spent - fees, dec("0"))
    );
    env.assert_books_balance().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resting_order_filled_in_slices_pays_the_fee_of_the_whole() {
    // At this rate each slice's fee has more than 8 decimals: rounding each one
    // down alone would pay 629.62333269, rounding the order's once 629.62333270.
    let rate = dec("0.00033333");
    let mut env = env().await;
    env.with_order_service_using(|c| c.fee_rate = rate).await;
    let mut orders = env.orders();
    let user = env.new_user().await;
    let bid = place(
        user,
        "KRW-ETH",
        pb::Side::Bid,
        pb::OrderType::Limit,
        "5100000",
        "0.5",
    );
    let resting = orders.place_order(bid).await.unwrap().into_inner().order;
    let resting = resting.unwrap();
    assert_eq!(resting.state, pb::OrderState::Wait as i32);
    // Three live trades fill it a slice at a time, each after the last is recorded.
    let slice = "0.12345679";
    let mut volume = Decimal::ZERO;
    for id in 1..=3 {
        env.feed(vec![trade("KRW-ETH", "5100000", slice, id)]).await;
        volume += dec(slice);
        let what = format!("slice {id}");
        executed(&orders, user, &resting.uuid, &volume.to_string(), &what).await;
    }
    let filled = executed(&orders, user, &resting.uuid, "0.37037037", "three slices").await;
    let funds = dec(&filled.executed_funds);
    assert_eq!(funds, dec("1888888.887"));
    let paid: Decimal = filled.trades.iter().map(|t| dec(&t.fee)).sum();
    assert_eq!(filled.trades.len(), 3);
    assert_eq!(
        paid,
        dec("629.62333270"),
        "the whole order's fee, rounded once"
    );
    assert_eq!(dec(&filled.paid_fee), paid);
    let cancelled = orders
        .cancel_order(cancel(user, &resting.uuid))
        .await
        .unwrap();
    assert_eq!(
        cancelled.into_inner().order.unwrap().state,
        pb::OrderState::Cancel as i32
    );
    // Inventory accepted every fee, and charged exactly them.
    assert_eq!(
        env.balance(user, "KRW").await,
        (dec("10000000") - funds - paid, dec("0"))
    );
    env.assert_books_balance().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_never_overdraw_and_retries_make_one_order() {
    let mut env = env().await;
    env.with_order_service().await;
    let orders = env.orders();
    let user = env.new_user().await;
    // 12 market buys of 2,000,000 (+ fee) race for 10,000,000: exactly 4 fit.
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let mut orders = orders.clone();
            tokio::spawn(async move {
                orders
                    .place_order(place(
                        user,
                        "KRW-ETH",
                        pb::Side::Bid,
                        pb::OrderType::Price,
                        "2000000",
                        "",
                    ))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(error_name(&e), Some("insufficient_funds_bid"), "{e:?}"),
        }
    }
    assert_eq!(ok, 4);
    let (krw, locked) = env.balance(user, "KRW").await;
    assert!(krw >= Decimal::ZERO && locked.is_zero(), "{krw} {locked}");
    env.assert_books_balance().await;

    // The same request (same request key) five times at once: one order, and
    // every answer names it.
    let second = env.new_user().await;
    let mut request = place(
        second,
        "KRW-ETH",
        pb::Side::Bid,
        pb::OrderType::Limit,
        "5000000",
        "0.1",
    );
    request.request_key = "request-1".into();
    request.identifier = "my-order-1".into();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (mut orders, request) = (orders.clone(), request.clone());
            tokio::spawn(async move { orders.place_order(request).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut uuids = Vec::new();
    let mut created = 0;
    for t in tasks {
        let answer = t.await.unwrap().unwrap();
        created += usize::from(answer.created);
        uuids.push(answer.order.unwrap().uuid);
    }
    uuids.dedup();
    assert_eq!((uuids.len(), created), (1, 1), "one order, made once");
    assert_eq!(
        env.balance(second, "KRW").await.1,
        dec("500250"),
        "one reservation (total + fee)"
    );
    let mut admin = env.db.admin().await.unwrap();
    let reservations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inventory.reservations WHERE user_id = $1")
            .bind(second)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(reservations, 1);
    // Upbit's identifier is unique per user: a new request with it is an error.
    let mut again = request.clone();
    again.request_key = "request-2".into();
    let err = orders.clone().place_order(again).await.unwrap_err();
    assert_eq!(
        (err.code(), error_name(&err)),
        (Code::InvalidArgument, Some("create_bid_error"))
    );
    // A request key reused for another order is refused too.
    let mut other = request.clone();
    other.volume = "0.2".into();
    let err = orders.clone().place_order(other).await.unwrap_err();
    assert_eq!(error_name(&err), Some("validation_error"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_orders_and_bad_orders_are_named() {
    let mut env = env().await;
    env.with_order_service().await;
    let mut orders = env.orders();
    let (alice, bob) = (env.new_user().await, env.new_user().await);
    let order = orders
        .place_order(place(
            alice,
            "KRW-ETH",
            pb::Side::Bid,
            pb::OrderType::Limit,
            "5000000",
            "0.1",
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let err = orders
        .get_order(pb::GetOrderRequest {
            user_id: bob.to_string(),
            uuid: order.uuid.clone(),
            identifier: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), error_name(&err)),
        (Code::NotFound, Some("order_not_found"))
    );
    let err = orders
        .cancel_order(cancel(bob, &order.uuid))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        orders
            .list_orders(pb::ListOrdersRequest {
                user_id: bob.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .orders
            .is_empty()
    );

    for (request, name) in [
        (
            place(
                alice,
                "KRW-BTC",
                pb::Side::Bid,
                pb::OrderType::Limit,
                "148000500",
                "0.01",
            ),
            "invalid_price_bid",
        ),
        (
            place(
                alice,
                "KRW-BTC",
                pb::Side::Bid,
                pb::OrderType::Price,
                "4000",
                "",
            ),
            "under_min_total_bid",
        ),
        (
            place(
                alice,
                "KRW-ETH",
                pb::Side::Ask,
                pb::OrderType::Limit,
                "5000000",
                "0.0001",
            ),
            "under_min_total_ask",
        ),
        (
            place(
                alice,
                "KRW-DOGE",
                pb::Side::Bid,
                pb::OrderType::Price,
                "10000",
                "",
            ),
            "validation_error",
        ),
        (
            place(
                alice,
                "KRW-BTC",
                pb::Side::Bid,
                pb::OrderType::Market,
                "",
                "1",
            ),
            "validation_error",
        ),
        (
            place(
                alice,
                "KRW-BTC",
                pb::Side::Bid,
                pb::OrderType::Limit,
                "abc",
                "1",
            ),
            "validation_error",
        ),
        (
            place(
                alice,
                "KRW-BTC",
                pb::Side::Ask,
                pb::OrderType::Market,
                "",
                "1",
            ),
            "insufficient_funds_ask",
        ),
        (
            // On the 1,000 KRW tick: only its size can refuse it.
            place(
                alice,
                "KRW-BTC",
                pb::Side::Bid,
                pb::OrderType::Limit,
                "79228162514264337593543950000",
                "2",
            ),
            "validation_error",
        ),
        (
            place(
                alice,
                "KRW-BTC",
                pb::Side::Bid,
                pb::OrderType::Limit,
                "99999999999999999000",
                "99999999999999999999",
            ),
            "validation_error",
        ),
        (
            place(
                alice,
                "KRW-BTC",
                pb::Side::Ask,
                pb::OrderType::Market,
                "",
                "79228162514264337593543950335",
            ),
            "validation_error",
        ),
        (
            place(
                alice,
                "KRW-BTC",
                pb::Side::Ask,
                pb::OrderType::Market,
                "",
                "99999999999999999999",
            ),
            "validation_error",
        ),
    ] {
        let err = orders.place_order(request).await.unwrap_err();
        assert_eq!(error_name(&err), Some(name), "{err:?}");
        assert_ne!(err.code(), Code::Unavailable, "{err:?}");
    }
    env.assert_books_balance().await;
    env.stop().await;
}

/// Runs the order binary as a process that aborts itself at `fault`.
async fn crashing_order_service(env: &Env, fault: &str) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_order"))
        .env("GRPC_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", env.db.role_url(order::SCHEMA))
        .env("DATABASE_ADMIN_URL", env.db.admin_url())
        .env("INVENTORY_URL", format!("http://{}", env.inventory_addr))
        .env(
            "MARKET_DATA_URL",
            format!("http://{}", env.market_data_addr),
        )
        .env("MATCHER", "false")
        .env("PLAN_TTL", "2s")
        .env("MAX_BOOK_AGE", "10m")
        .env("FAULT_AFTER", fault)
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = v.get("grpc").and_then(|g| g.as_str())
            {
                return addr.parse::<SocketAddr>().unwrap();
            }
        }
        panic!("the order process exited before listening");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    test_support::wait_serving(addr, "", Duration::from_secs(30))
        .await
        .unwrap();
    (child, addr)
}

/// A market bid of 1,000,000 KRW of ETH with request key `key`.
fn eth_buy(user: Uuid, key: &str) -> pb::PlaceOrderRequest {
    let mut request = place(
        user,
        "KRW-ETH",
        pb::Side::Bid,
        pb::OrderType::Price,
        "1000000",
        "",
    );
    request.request_key = key.into();
    request
}

/// Places `request` on an order service that aborts at `fault` and waits for
/// the process to die.
async fn place_and_crash(env: &Env, fault: &str, request: pb::PlaceOrderRequest) {
    let (mut child, addr) = crashing_order_service(env, fault).await;
    let mut orders = OrderServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let err = orders.place_order(request).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{fault}: {err:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "{fault}: the process died");
}

/// Orders inventory holds a record of that are not confirmed yet.
async fn unconfirmed(env: &Env) -> Vec<String> {
    env.inventory
        .clone()
        .list_unconfirmed(inv::ListUnconfirmedRequest {
            min_age_ms: 0,
            limit: 500,
        })
        .await
        .unwrap()
        .into_inner()
        .orders
        .into_iter()
        .map(|o| o.order_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_two_commits_loses_duplicates_and_strands_nothing() {
    let mut env = env().await;
    let user = env.new_user().await;
    let buy = |key: &str| eth_buy(user, key);
    // 1. Inventory commits (funds taken, ETH bought), the order's commit never
    // comes: the process dies in between.
    place_and_crash(&env, "reserve", buy("crash-after-inventory")).await;
    let krw = env.balance(user, "KRW").await;
    let eth = env.balance(user, "ETH").await.0;
    assert!(
        eth > Decimal::ZERO,
        "inventory executed it before the crash"
    );
    // 2. The process dies before calling inventory: nothing happened.
    place_and_crash(&env, "persist", buy("crash-before-inventory")).await;
    assert_eq!(env.balance(user, "KRW").await, krw);
    assert_eq!(env.balance(user, "ETH").await.0, eth);

    // The market moves, then the client retries both on a replica without
    // recovery (so the retries, not recovery, meet the crashed attempts).
    env.feed(vec![book("KRW-ETH", "5300000", "1", 1000)]).await;
    let (placing, mut orders) = placing_only(&env, env.inventory_addr).await;
    let executed = orders
        .place_order(buy("crash-after-inventory"))
        .await
        .unwrap()
        .into_inner();
    let first = executed.order.unwrap();
    assert!(!executed.created, "the crashed attempt made it");
    assert_eq!(first.state, pb::OrderState::Done as i32);
    assert!(
        first.trades.iter().all(|t| dec(&t.price) == dec("5200000")),
        "written as inventory executed it, not planned again: {:?}",
        first.trades
    );
    assert_eq!(dec(&first.executed_volume), eth);
    assert_eq!(
        test_support::read_metric(
            placing.admin,
            "order_written_from_record_total",
            &[r#"by="retry""#]
        )
        .await,
        1.0
    );
    let placed = orders
        .place_order(buy("crash-before-inventory"))
        .await
        .unwrap()
        .into_inner();
    let second = placed.order.unwrap();
    assert!(placed.created, "nothing was made before the crash");
    assert!(
        second
            .trades
            .iter()
            .all(|t| dec(&t.price) == dec("5300000")),
        "{:?}",
        second.trades
    );
    for (key, uuid) in [
        ("crash-after-inventory", &first.uuid),
        ("crash-before-inventory", &second.uuid),
    ] {
        let again = orders.place_order(buy(key)).await.unwrap().into_inner();
        assert_eq!((again.created, &again.order.unwrap().uuid), (false, uuid));
    }
    placing.running.stop().await;

    // 3. A crash after inventory's commit that nobody retries: recovery
    // writes the order from inventory's record.
    place_and_crash(&env, "reserve", buy("crash-never-retried")).await;
    env.with_order_service().await;
    let orders = env.orders();
    let done = eventually(
        Duration::from_secs(30),
        "the crashed order written by recovery",
        || {
            let mut orders = orders.clone();
            async move {
                let all = orders
                    .list_orders(pb::ListOrdersRequest {
                        user_id: user.to_string(),
                        states: vec![
                            pb::OrderState::Pending as i32,
                            pb::OrderState::Wait as i32,
                            pb::OrderState::Done as i32,
                            pb::OrderState::Cancel as i32,
                            pb::OrderState::Rejected as i32,
                        ],
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .orders;
                (all.len() == 3 && all.iter().all(|o| o.state == pb::OrderState::Done as i32))
                    .then_some(all)
            }
        },
    )
    .await
    .unwrap();
    let spent: Decimal = done
        .iter()
        .map(|o| dec(&o.executed_funds) + dec(&o.paid_fee))
        .sum();
    let bought: Decimal = done.iter().map(|o| dec(&o.executed_volume)).sum();
    assert_eq!(
        env.balance(user, "KRW").await,
        (dec("10000000") - spent, dec("0")),
        "nothing stuck in locked, nothing spent twice"
    );
    assert_eq!(env.balance(user, "ETH").await.0, bought);
    // Every record is confirmed (dropped) once its order is stored.
    let ids: Vec<String> = done.iter().map(|o| o.uuid.clone()).collect();
    eventually(Duration::from_secs(30), "records confirmed", || {
        let env = &env;
        let ids = &ids;
        async move {
            let left = unconfirmed(env).await;
            ids.iter().all(|id| !left.contains(id)).then_some(())
        }
    })
    .await
    .unwrap();
    env.assert_books_balance().await;
    env.stop().await;
}

/// Starts another inventory on the environment's database, answering
/// UNAVAILABLE after committing every money-moving call.
async fn lossy_inventory(env: &Env) -> Started {
    let mut config = inventory::Config::local(db_args(&env.db, inventory::SCHEMA));
    config.fault_unavailable_after_commit = 1.0;
    let stop = CancellationToken::new();
    let app = inventory::App::build(config, stop.clone()).await.unwrap();
    let (grpc, admin) = (app.grpc_addr(), app.metrics_addr());
    let running = Running::spawn(stop, app.run());
    test_support::wait_serving(grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    Started {
        grpc,
        admin,
        running,
    }
}

/// An order service that places orders through `inventory`, without the matcher
/// (so nothing recovers its orders).
async fn placing_only(env: &Env, inventory: SocketAddr) -> (Started, OrderServiceClient<Channel>) {
    let svc = start_order(env, |c| {
        c.matcher = false;
        c.inventory_url = format!("http://{inventory}");
    })
    .await;
    test_support::wait_serving(svc.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    let client = OrderServiceClient::connect(format!("http://{}", svc.grpc))
        .await
        .unwrap();
    (svc, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_whose_answer_was_lost_executes_exactly_once() {
    let mut env = env().await;
    let user = env.new_user().await;
    // 1. Inventory commits the reservation and its fills, but the answer is lost.
    let lossy = lossy_inventory(&env).await;
    let (placing, mut orders) = placing_only(&env, lossy.grpc).await;
    let request = eth_buy(user, "lost-answer");
    let first = orders
        .place_order(request.clone())
        .await
        .unwrap()
        .into_inner();
    let pending = first.order.unwrap();
    assert!(first.created);
    assert_eq!(
        pending.state,
        pb::OrderState::Pending as i32,
        "the client learns the order and that its outcome is pending, not 'retry'"
    );
    // The client (or the mesh) retries: the same order, nothing executed twice.
    for _ in 0..3 {
        let again = orders
            .place_order(request.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(!again.created);
        assert_eq!(again.order.unwrap().uuid, pending.uuid);
    }
    let (krw, locked) = env.balance(user, "KRW").await;
    let eth = env.balance(user, "ETH").await.0;
    assert!(
        eth > Decimal::ZERO && locked.is_zero(),
        "inventory executed it once"
    );
    placing.running.stop().await;
    lossy.running.stop().await;

    // 2. Inventory is not reached at all: nothing was reserved.
    let cut = test_support::TcpProxy::start(env.inventory_addr)
        .await
        .unwrap();
    cut.cut();
    let (placing, mut orders) = placing_only(&env, cut.addr).await;
    let unreached = orders
        .place_order(place(
            user,
            "KRW-BTC",
            pb::Side::Bid,
            pb::OrderType::Price,
            "1000000",
            "",
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(unreached.state, pb::OrderState::Pending as i32);
    placing.running.stop().await;
    assert_eq!(env.balance(user, "KRW").await, (krw, dec("0")));
    // The market moves before recovery decides: the BTC book is 1,000,000 higher.
    env.feed(vec![book("KRW-BTC", "149000000", "1", 1000)])
        .await;

    // 3. Recovery: the first order's plan was executed, so it is recorded as it
    // was; the second's never was, so it is planned again on today's book.
    env.with_order_service().await;
    let mut orders = env.orders();
    let get = |uuid: String| pb::GetOrderRequest {
        user_id: user.to_string(),
        uuid,
        identifier: String::new(),
    };
    let (recorded, replanned) = eventually(
        Duration::from_secs(30),
        "both pending orders decided",
        || {
            let mut orders = orders.clone();
            let (a, b) = (get(pending.uuid.clone()), get(unreached.uuid.clone()));
            async move {
                let a = orders.get_order(a).await.ok()?.into_inner().order?;
                let b = orders.get_order(b).await.ok()?.into_inner().order?;
                let done = pb::OrderState::Done as i32;
                (a.state == done && b.state == done).then_some((a, b))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        dec(&recorded.executed_volume),
        eth,
        "the executed plan recorded"
    );
    assert!(
        replanned
            .trades
            .iter()
            .all(|t| dec(&t.price) >= dec("149000000")),
        "planned again against the current book: {:?}",
        replanned.trades
    );
    let spent: Decimal = [&recorded, &replanned]
        .iter()
        .map(|o| dec(&o.executed_funds) + dec(&o.paid_fee))
        .sum();
    assert_eq!(
        env.balance(user, "KRW").await,
        (dec("10000000") - spent, dec("0"))
    );
    assert_eq!(
        env.balance(user, "BTC").await.0,
        dec(&replanned.executed_volume)
    );
    let again = orders.place_order(request).await.unwrap().into_inner();
    assert_eq!(
        (again.created, again.order.unwrap().state),
        (false, pb::OrderState::Done as i32),
        "a late retry sees the order as it is now"
    );
    env.assert_books_balance().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_book_fills_nothing_and_open_orders_are_capped() {
    let mut env = env().await;
    let svc = start_order(&env, |c| {
        c.max_book_age = Duration::from_secs(1);
        c.max_open_orders = 3;
    })
    .await;
    test_support::wait_serving(svc.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    let mut orders = OrderServiceClient::connect(format!("http://{}", svc.grpc))
        .await
        .unwrap();
    env.running.push(svc.running);
    let user = env.new_user().await;
    let buy = place(
        user,
        "KRW-ETH",
        pb::Side::Bid,
        pb::OrderType::Price,
        "100000",
        "",
    );
    // The feed stopped: the book written at the start grows old. (Probed with
    // an order refused anyway while the book is fresh, so nothing is placed.)
    let off_tick = place(
        user,
        "KRW-ETH",
        pb::Side::Bid,
        pb::OrderType::Limit,
        "5000500",
        "0.01",
    );
    eventually(Duration::from_secs(10), "the book to go stale", || {
        let (mut orders, probe) = (orders.clone(), off_tick.clone());
        async move {
            let err = orders.place_order(probe).await.unwrap_err();
            (error_name(&err) == Some("market_data_stale")).then_some(())
        }
    })
    .await
    .unwrap();
    let err = orders.place_order(buy.clone()).await.unwrap_err();
    assert_eq!(
        (err.code(), error_name(&err)),
        (Code::Unavailable, Some("market_data_stale"))
    );
    assert!(err.message().contains("KRW-ETH"), "{err:?}");
    assert_eq!(env.balance(user, "KRW").await, (dec("10000000"), dec("0")));
    // The feed is back.
    env.feed(vec![book("KRW-ETH", "5200000", "1", 1000)]).await;
    orders.place_order(buy).await.unwrap();

    // At most 3 open orders.
    let bid = |price: &str| {
        place(
            user,
            "KRW-ETH",
            pb::Side::Bid,
            pb::OrderType::Limit,
            price,
            "0.01",
        )
    };
    env.feed(vec![book("KRW-ETH", "5200000", "1", 1000)]).await;
    let mut open = Vec::new();
    for price in ["5000000", "5001000", "5002000"] {
        open.push(
            orders
                .place_order(bid(price))
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap(),
        );
    }
    let held = env.balance(user, "KRW").await;
    let err = orders.place_order(bid("5003000")).await.unwrap_err();
    assert_eq!(error_name(&err), Some("create_bid_error"), "{err:?}");
    assert!(err.message().contains("at most 3 orders"), "{err:?}");
    assert_eq!(
        env.balance(user, "KRW").await,
        held,
        "nothing reserved for it"
    );
    orders
        .cancel_order(cancel(user, &open[0].uuid))
        .await
        .unwrap();
    orders.place_order(bid("5003000")).await.unwrap();
    env.assert_books_balance().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_made_while_no_matcher_ran_still_fill_once() {
    let mut env = env().await;
    let user = env.new_user().await;
    env.with_order_service().await;
    let mut orders = env.orders();
    let resting = orders
        .place_order(place(
            user,
            "KRW-ETH",
            pb::Side::Bid,
            pb::OrderType::Limit,
            "5100000",
            "0.5",
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    // The order service (and its matcher) stops; a crossing trade happens
    // meanwhile and is only stored.
    env.running.pop().unwrap().stop().await;
    env.feed(vec![trade("KRW-ETH", "5090000", "0.3", 77)]).await;
    let url = env.db.admin_url();
    eventually(Duration::from_secs(10), "the trade stored", || {
        let url = url.clone();
        async move {
            let mut admin = sqlx::PgConnection::connect(&url).await.ok()?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM market_data.trades WHERE sequential_id = 77",
            )
            .fetch_one(&mut admin)
            .await
            .ok()?;
            (n == 1).then_some(())
        }
    })
    .await
    .unwrap();
    // A new matcher catches up: the order fills from the stored trade.
    for round in 0..2 {
        env.with_order_service().await;
        let orders = env.orders();
        let filled = executed(&orders, user, &resting.uuid, "0.3", "the missed fill").await;
        assert_eq!(filled.trades.len(), 1, "round {round}: filled once");
        // Round 2 starts another matcher that reads the same trade again.
        env.running.pop().unwrap().stop().await;
    }
    let mut admin = env.db.admin().await.unwrap();
    let trade_ids: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT trade_id FROM orders.executions WHERE order_id = $1")
            .bind(Uuid::parse_str(&resting.uuid).unwrap())
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(trade_ids, [Some(77)], "the fill names its trade");
    assert_eq!(
        env.balance(user, "ETH").await,
        (dec("0.3"), dec("0")),
        "settled once"
    );
    env.assert_books_balance().await;
    env.stop().await;
}

/// More partly filled open orders than a recovery pass takes at once (200), all
/// settled, and one fill that inventory never applied (it was away when the
/// matcher recorded it): recovery finds that one, however many are before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_settles_a_fill_behind_hundreds_of_settled_ones() {
    let mut env = env().await;
    // 0.0001 ETH at each level: a bid of 0.002 at the best ask fills 0.0001 at
    // once and rests (about 10,400 KRW an order).
    env.feed(vec![book("KRW-ETH", "5200000", "0.0001", 1000)])
        .await;
    let inventory = test_support::TcpProxy::start(env.inventory_addr)
        .await
        .unwrap();
    let via = format!("http://{}", inventory.addr);
    env.with_order_service_using(|c| c.inventory_url = via)
        .await;
    let mut orders = env.orders();
    let user = env.new_user().await;
    for _ in 0..210 {
        let partly = orders
            .place_order(place(
                user,
                "KRW-ETH",
                pb::Side::Bid,
                pb::OrderType::Limit,
                "5200000",
                "0.002",
            ))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert_eq!(
            (partly.state, partly.executed_volume.as_str()),
            (pb::OrderState::Wait as i32, "0.0001")
        );
    }
    let resting = orders
        .place_order(place(
            user,
            "KRW-BTC",
            pb::Side::Bid,
            pb::OrderType::Limit,
            "147000000",
            "0.001",
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    // Inventory goes away; a trade crosses the BTC bid: the fill is recorded,
    // its settlement left to recovery.
    inventory.cut();
    env.feed(vec![trade("KRW-BTC", "147000000", "0.0004", 1)])
        .await;
    executed(&orders, user, &resting.uuid, "0.0004", "the fill recorded").await;
    assert_eq!(env.balance(user, "BTC").await, (dec("0"), dec("0")));
    inventory.restore();
    let mut direct = env.inventory.clone();
    eventually(Duration::from_secs(30), "the fill settled", || {
        let direct = direct.clone();
        async move {
            let b = balances(direct, user).await?;
            (b.get("BTC")?.0 == dec("0.0004")).then_some(())
        }
    })
    .await
    .unwrap();
    let reservation = direct
        .get_reservation(inv::GetReservationRequest {
            order_id: resting.uuid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reservation.last_fill_seq, 1);
    let mut admin = env.db.admin().await.unwrap();
    let behind: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders.orders WHERE state = 'wait' AND trades_count > settled_fills",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(behind, 0, "every fill known to be settled");
    env.assert_books_balance().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_more_fills_than_one_settle_call_carries_settles_and_releases() {
    // Inventory takes at most 1,000 fills a call; this order gets 1,050 while
    // inventory is away, so settling them on cancel takes two calls.
    const FILLS: i64 = 1050;
    let mut env = env().await;
    let inventory = test_support::TcpProxy::start(env.inventory_addr)
        .await
        .unwrap();
    let via = format!("http://{}", inventory.addr);
    env.with_order_service_using(|c| c.inventory_url = via)
        .await;
    let mut orders = env.orders();
    let user = env.new_user().await;
    let bid = place(
        user,
        "KRW-ETH",
        pb::Side::Bid,
        pb::OrderType::Limit,
        "5100000",
        "0.5",
    );
    let resting = orders.place_order(bid).await.unwrap().into_inner().order;
    let resting = resting.unwrap();
    assert_eq!(resting.state, pb::OrderState::Wait as i32);
    inventory.cut();
    let trades = (1..=FILLS)
        .map(|sid| trade("KRW-ETH", "5100000", "0.0001", sid))
        .collect();
    env.feed(trades).await;
    let filled = eventually(Duration::from_secs(90), "every fill recorded", || {
        let request = pb::GetOrderRequest {
            user_id: user.to_string(),
            uuid: resting.uuid.clone(),
            identifier: String::new(),
        };
        let mut orders = orders.clone();
        async move {
            let o = orders.get_order(request).await.ok()?.into_inner().order?;
            (o.executed_volume == "0.105").then_some(o)
        }
    })
    .await
    .unwrap();
    assert_eq!(filled.trades_count, FILLS as u32);
    assert_eq!(
        filled.trades.len(),
        FILLS as usize,
        "GetOrder shows them all"
    );
    assert_eq!(env.balance(user, "ETH").await, (dec("0"), dec("0")));
    inventory.restore();
    let mut updates = orders
        .stream_order_updates(pb::StreamOrderUpdatesRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let cancelled = orders
        .cancel_order(cancel(user, &resting.uuid))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(cancelled.state, pb::OrderState::Cancel as i32);
    let funds = dec(&cancelled.executed_funds);
    let fee = dec(&cancelled.paid_fee);
    assert_eq!(funds, dec("535500"));
    // An update carries the order's last 100 executions, not all of them.
    let update = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let o = updates.message().await.unwrap().unwrap().order.unwrap();
            if o.state == pb::OrderState::Cancel as i32 {
                return o;
            }
        }
    })
    .await
    .unwrap();
    let seqs: Vec<u32> = update.trades.iter().map(|t| t.seq).collect();
    assert_eq!(update.trades_count, FILLS as u32);
    assert_eq!(
        seqs,
        ((FILLS as u32 - 99)..=FILLS as u32).collect::<Vec<_>>()
    );
    // Every fill credited, the rest of the bid's KRW released: nothing locked.
    let direct = env.inventory.clone();
    let settled = eventually(Duration::from_secs(30), "the order settled", || {
        let direct = direct.clone();
        async move {
            let b = balances(direct, user).await?;
            let krw = *b.get("KRW")?;
            (b.get("ETH")?.0 == dec("0.105") && krw.1 == Decimal::ZERO).then_some(krw)
        }
    })
    .await
    .unwrap();
    assert_eq!(settled, (dec("10000000") - funds - fee, dec("0")));
    let reservation = env
        .inventory
        .clone()
        .get_reservation(inv::GetReservationRequest {
            order_id: resting.uuid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reservation.last_fill_seq, reservation.released),
        (FILLS as u32, true)
    );
    env.assert_books_balance().await;
    // A follower still streaming does not hold the service's shutdown open:
    // draining ends the stream.
    env.stop().await;
    assert!(updates.message().await.is_ok_and(|m| m.is_none()), "ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_for_unlisted_markets_cost_market_data_a_look_a_second_at_most() {
    let mut env = env().await;
    let svc = start_order(&env, |_| {}).await;
    test_support::wait_serving(svc.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    let mut orders = OrderServiceClient::connect(format!("http://{}", svc.grpc))
        .await
        .unwrap();
    let admin = svc.admin;
    env.running.push(svc.running);
    let user = env.new_user().await;
    let looks = || {
        test_support::read_metric(
            admin,
            "grpc_client_handled_total",
            &["grpc_method=\"ListMarkets\""],
        )
    };
    let before = looks().await;
    let started = std::time::Instant::now();
    for _ in 0..30 {
        let refused = orders
            .place_order(place(
                user,
                "KRW-ZZZZ",
                pb::Side::Bid,
                pb::OrderType::Limit,
                "1000",
                "10",
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let seconds = started.elapsed().as_secs_f64();
    let looked = looks().await - before;
    assert!(
        looked <= seconds.ceil() + 1.0,
        "{looked} market list reads for 30 orders in {seconds:.2} s"
    );
    env.stop().await;
}
