//! Inventory against a real Postgres, over real gRPC: the money invariants.

use std::str::FromStr;
use std::time::Duration;

use exchange_proto::inventory::v1 as pb;
use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use inventory::{App, Config};
use rust_decimal::Decimal;
use service_kit::postgres::DbArgs;
use test_support::{Running, Started, TcpProxy, TestDb};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

async fn start(db: &TestDb) -> Started {
    test_support::init_logs();
    let config = Config::local(DbArgs {
        database_url: Some(db.role_url(inventory::SCHEMA)),
        database_admin_url: Some(db.admin_url()),
        database_max_connections: 10,
    });
    let stop = CancellationToken::new();
    let app = App::build(config, stop.clone()).await.expect("app builds");
    Started {
        grpc: app.grpc_addr(),
        admin: app.metrics_addr(),
        running: Running::spawn(stop, app.run()),
    }
}

async fn client(svc: &Started) -> InventoryServiceClient<Channel> {
    test_support::wait_serving(svc.grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    InventoryServiceClient::connect(format!("http://{}", svc.grpc))
        .await
        .unwrap()
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

async fn balances(
    inv: &mut InventoryServiceClient<Channel>,
    user: Uuid,
) -> Vec<(String, Decimal, Decimal)> {
    inv.get_balances(pb::GetBalancesRequest {
        user_id: user.to_string(),
    })
    .await
    .unwrap()
    .into_inner()
    .balances
    .into_iter()
    .map(|b| (b.currency, dec(&b.balance), dec(&b.locked)))
    .collect()
}

async fn balance(
    inv: &mut InventoryServiceClient<Channel>,
    user: Uuid,
    currency: &str,
) -> (Decimal, Decimal) {
    balances(inv, user)
        .await
        .into_iter()
        .find(|b| b.0 == currency)
        .map(|b| (b.1, b.2))
        .unwrap_or_default()
}

/// Every balance equals the sum of its ledger rows, and nothing is negative.
async fn assert_ledger_matches(db: &TestDb) {
    let mut admin = db.admin().await.unwrap();
    let mismatches: Vec<(Uuid, String, Decimal, Decimal, Decimal, Decimal)> = sqlx::query_as(
        "SELECT b.user_id, b.currency, b.available, b.locked,
                coalesce(sum(l.available_delta), 0), coalesce(sum(l.locked_delta), 0)
         FROM inventory.balances b
         LEFT JOIN inventory.ledger l ON l.user_id = b.user_id AND l.currency = b.currency
         GROUP BY 1, 2, 3, 4
         HAVING b.available <> coalesce(sum(l.available_delta), 0)
             OR b.locked <> coalesce(sum(l.locked_delta), 0)
             OR b.available < 0 OR b.locked < 0",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(
        mismatches.is_empty(),
        "ledger and balances disagree: {mismatches:?}"
    );
}

async fn open(inv: &mut InventoryServiceClient<Channel>) -> Uuid {
    let user = Uuid::new_v4();
    inv.open_account(pb::OpenAccountRequest {
        user_id: user.to_string(),
    })
    .await
    .unwrap();
    user
}

fn fill(seq: u32, price: &str, volume: &str, funds: &str, fee: &str) -> pb::Fill {
    pb::Fill {
        seq,
        price: price.into(),
        volume: volume.into(),
        funds: funds.into(),
        fee: fee.into(),
    }
}

fn settle_req(
    order: Uuid,
    user: Uuid,
    side: pb::OrderSide,
    fills: Vec<pb::Fill>,
    finalize: bool,
    reserve: &str,
) -> pb::SettleRequest {
    pb::SettleRequest {
        order_id: order.to_string(),
        user_id: user.to_string(),
        side: side as i32,
        base_currency: "BTC".into(),
        quote_currency: "KRW".into(),
        fills,
        finalize,
        reserve_amount: reserve.into(),
        return_balances: false,
    }
}

#[tokio::test]
async fn serves_health_reflection_metrics_and_stops_gracefully() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    test_support::assert_grpc_basics(
        svc.grpc,
        svc.admin,
        "exchange.inventory.v1.InventoryService",
    )
    .await
    .unwrap();
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_database_it_is_alive_but_not_ready_then_recovers() {
    test_support::init_logs();
    let db = TestDb::create().await.unwrap();
    let pg = TcpProxy::start(db.server_addr()).await.unwrap();
    pg.cut();
    let config = Config::local(DbArgs {
        database_url: Some(db.role_url_via(inventory::SCHEMA, pg.addr)),
        database_admin_url: Some(db.admin_url_via(pg.addr)),
        database_max_connections: 4,
    });
    let stop = CancellationToken::new();
    let app = App::build(config, stop.clone()).await.unwrap();
    let (grpc, admin) = (app.grpc_addr(), app.metrics_addr());
    let running = Running::spawn(stop, app.run());
    // Up for long enough to have tried (and retried) the database.
    test_support::wait_serving(grpc, "liveness", Duration::from_secs(10))
        .await
        .unwrap();
    test_support::eventually(
        Duration::from_secs(10),
        "two database connection attempts",
        || std::future::ready((pg.refused() >= 2).then_some(())),
    )
    .await
    .unwrap();
    test_support::assert_alive_not_ready(grpc, admin)
        .await
        .unwrap();
    pg.restore();
    test_support::wait_serving(grpc, "", Duration::from_secs(30))
        .await
        .unwrap();
    running.stop().await;
}

#[tokio::test]
async fn migrations_are_idempotent_across_restarts() {
    let db = TestDb::create().await.unwrap();
    let migrations = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    test_support::assert_migrations_idempotent(
        &db,
        || start(&db),
        "inventory",
        "inventory",
        "balances",
        migrations,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_open_once_and_orders_move_money_exactly_once() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    let mut inv = client(&svc).await;
    let user = Uuid::new_v4();
    let first = inv
        .open_account(pb::OpenAccountRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let again = inv
        .open_account(pb::OpenAccountRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(first.created && !again.created, "opened exactly once");
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (dec("10000000"), dec("0"))
    );

    // Market buy: reserve 1,000,500 (1,000,000 + 0.05% fee) and fill in two levels at once.
    let order = Uuid::new_v4();
    let fills = vec![
        fill(1, "148000000", "0.005", "740000", "370"),
        fill(2, "148001000", "0.00175675", "259999.75675", "129.99987837"),
    ];
    let settled = inv
        .settle(settle_req(
            order,
            user,
            pb::OrderSide::Bid,
            fills.clone(),
            true,
            "1000500",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (settled.fills_applied, settled.released.as_str()),
        (2, "0.24337163")
    );
    let krw =
        dec("10000000") - dec("740000") - dec("370") - dec("259999.75675") - dec("129.99987837");
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (krw, dec("0")),
        "paid funds plus fees, rest released"
    );
    assert_eq!(
        balance(&mut inv, user, "BTC").await,
        (dec("0.00675675"), dec("0"))
    );
    // The same request again (a retry) changes nothing.
    let retry = inv
        .settle(settle_req(
            order,
            user,
            pb::OrderSide::Bid,
            fills,
            true,
            "1000500",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retry.fills_applied, retry.released.as_str()), (0, "0"));
    assert_eq!(balance(&mut inv, user, "KRW").await, (krw, dec("0")));

    // Sell it back: lock the BTC, fill, fee out of the proceeds.
    let sell = Uuid::new_v4();
    let r = inv
        .reserve(pb::ReserveRequest {
            order_id: sell.to_string(),
            user_id: user.to_string(),
            currency: "BTC".into(),
            amount: "0.00675675".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    assert_eq!(
        balance(&mut inv, user, "BTC").await,
        (dec("0"), dec("0.00675675"))
    );
    let again = inv
        .reserve(pb::ReserveRequest {
            order_id: sell.to_string(),
            user_id: user.to_string(),
            currency: "BTC".into(),
            amount: "0.00675675".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.applied, "a retried reserve is not applied twice");
    inv.settle(settle_req(
        sell,
        user,
        pb::OrderSide::Ask,
        vec![fill(
            1,
            "147999000",
            "0.00675675",
            "999992.24325",
            "499.99612162",
        )],
        true,
        "",
    ))
    .await
    .unwrap();
    let krw2 = krw + dec("999992.24325") - dec("499.99612162");
    assert_eq!(balance(&mut inv, user, "KRW").await, (krw2, dec("0")));

    // A resting limit order: reserve, partial fill, then cancel releases the rest.
    let limit = Uuid::new_v4();
    inv.reserve(pb::ReserveRequest {
        order_id: limit.to_string(),
        user_id: user.to_string(),
        currency: "KRW".into(),
        amount: "100050".into(),
    })
    .await
    .unwrap();
    inv.settle(settle_req(
        limit,
        user,
        pb::OrderSide::Bid,
        vec![fill(1, "100000000", "0.0004", "40000", "20")],
        false,
        "",
    ))
    .await
    .unwrap();
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (krw2 - dec("100050"), dec("60030"))
    );
    let released = inv
        .release(pb::ReleaseRequest {
            order_id: limit.to_string(),
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.released, "60030");
    let twice = inv
        .release(pb::ReleaseRequest {
            order_id: limit.to_string(),
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(twice.released, "0", "released once");
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (krw2 - dec("40020"), dec("0"))
    );
    let reservation = inv
        .get_reservation(pb::GetReservationRequest {
            order_id: limit.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reservation.exists && reservation.released && reservation.last_fill_seq == 1);
    assert_ledger_matches(&db).await;
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    let mut inv = client(&svc).await;
    let user = open(&mut inv).await;
    let order = Uuid::new_v4();
    let err = inv
        .reserve(pb::ReserveRequest {
            order_id: order.to_string(),
            user_id: user.to_string(),
            currency: "KRW".into(),
            amount: "10000001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        service_kit::grpc::error_name(&err),
        Some("insufficient_funds")
    );
    // The failed reserve did not burn the order's idempotency key.
    inv.reserve(pb::ReserveRequest {
        order_id: order.to_string(),
        user_id: user.to_string(),
        currency: "KRW".into(),
        amount: "5000".into(),
    })
    .await
    .unwrap();
    // Fills beyond the reservation, out of sequence, or for someone else are refused.
    let err = inv
        .settle(settle_req(
            order,
            user,
            pb::OrderSide::Bid,
            vec![fill(1, "1000", "10", "10000", "5")],
            false,
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = inv
        .settle(settle_req(
            order,
            user,
            pb::OrderSide::Bid,
            vec![fill(2, "1000", "1", "1000", "1")],
            false,
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let someone_else = open(&mut inv).await;
    let err = inv
        .settle(settle_req(
            order,
            someone_else,
            pb::OrderSide::Bid,
            vec![],
            true,
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = inv
        .settle(settle_req(
            order,
            Uuid::new_v4(),
            pb::OrderSide::Bid,
            vec![],
            true,
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "the user has no account")
    );
    for (amount, currency) in [("-1", "KRW"), ("abc", "KRW"), ("1", "krw"), ("0", "KRW")] {
        let err = inv
            .reserve(pb::ReserveRequest {
                order_id: Uuid::new_v4().to_string(),
                user_id: user.to_string(),
                currency: currency.into(),
                amount: amount.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{amount} {currency}");
    }
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (dec("9995000"), dec("5000"))
    );
    // The faucet: idempotent by key, capped.
    let dep = |key: &str, amount: &str| pb::DepositRequest {
        user_id: user.to_string(),
        currency: "KRW".into(),
        amount: amount.into(),
        idempotency_key: key.into(),
    };
    inv.deposit(dep("k1", "1000000")).await.unwrap();
    inv.deposit(dep("k1", "1000000")).await.unwrap();
    assert_eq!(
        balance(&mut inv, user, "KRW").await.0,
        dec("10995000"),
        "one deposit per key"
    );
    let err = inv.deposit(dep("k2", "90000000")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "over the cap: {err:?}");
    assert_ledger_matches(&db).await;
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reserves_never_overdraw() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    let mut inv = client(&svc).await;
    let user = open(&mut inv).await;
    // 25 orders of 1,000,000 race for 10,000,000: exactly 10 can be afforded.
    let tasks: Vec<_> = (0..25)
        .map(|_| {
            let mut inv = inv.clone();
            tokio::spawn(async move {
                let order = Uuid::new_v4();
                inv.settle(settle_req(
                    order,
                    user,
                    pb::OrderSide::Bid,
                    vec![],
                    false,
                    "1000000",
                ))
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(
                service_kit::grpc::error_name(&e),
                Some("insufficient_funds"),
                "{e:?}"
            ),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (dec("0"), dec("10000000"))
    );
    assert_ledger_matches(&db).await;
    svc.running.stop().await;
}
