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
    terms: Option<pb::OrderTerms>,
) -> pb::SettleRequest {
    pb::SettleRequest {
        order_id: order.to_string(),
        user_id: user.to_string(),
        side: side as i32,
        base_currency: "BTC".into(),
        quote_currency: "KRW".into(),
        fills,
        finalize,
        return_balances: false,
        terms,
        not_after: 0,
        order_record: String::new(),
    }
}

const FEE: &str = "0.0005";

fn limit(price: &str, volume: &str) -> Option<pb::OrderTerms> {
    Some(pb::OrderTerms {
        kind: pb::OrderKind::Limit as i32,
        price: price.into(),
        volume: volume.into(),
        budget: String::new(),
        fee_rate: FEE.into(),
    })
}

fn market_buy(budget: &str, fee_rate: &str) -> Option<pb::OrderTerms> {
    Some(pb::OrderTerms {
        kind: pb::OrderKind::Price as i32,
        price: String::new(),
        volume: String::new(),
        budget: budget.into(),
        fee_rate: fee_rate.into(),
    })
}

fn market_sell(volume: &str) -> Option<pb::OrderTerms> {
    Some(pb::OrderTerms {
        kind: pb::OrderKind::Market as i32,
        price: String::new(),
        volume: volume.into(),
        budget: String::new(),
        fee_rate: FEE.into(),
    })
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

    // Market buy of 1,000,000 KRW: inventory locks 1,000,500 (the total plus its
    // 0.05% fee) and fills two levels at once.
    let order = Uuid::new_v4();
    let fills = vec![
        fill(1, "148000000", "0.005", "740000", "370"),
        fill(2, "148001000", "0.00175674", "259999.27674", "129.99963837"),
    ];
    let settled = inv
        .settle(settle_req(
            order,
            user,
            pb::OrderSide::Bid,
            fills.clone(),
            true,
            market_buy("1000000", FEE),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (settled.fills_applied, settled.released.as_str()),
        (2, "0.72362163")
    );
    let krw = dec("8999500.72362163");
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (krw, dec("0")),
        "paid funds plus fees, rest released"
    );
    assert_eq!(
        balance(&mut inv, user, "BTC").await,
        (dec("0.00675674"), dec("0"))
    );
    let reservation = inv
        .get_reservation(pb::GetReservationRequest {
            order_id: order.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reservation.reserved.as_str(), reservation.released),
        ("1000500", true),
        "inventory computed the lock from the terms"
    );
    // The same request again (a retry) changes nothing.
    let retry = inv
        .settle(settle_req(
            order,
            user,
            pb::OrderSide::Bid,
            fills,
            true,
            market_buy("1000000", FEE),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retry.fills_applied, retry.released.as_str()), (0, "0"));
    assert_eq!(balance(&mut inv, user, "KRW").await, (krw, dec("0")));

    // Sell it back at the market: the BTC is locked, filled, the fee comes out
    // of the proceeds.
    let sell = Uuid::new_v4();
    inv.settle(settle_req(
        sell,
        user,
        pb::OrderSide::Ask,
        vec![fill(
            1,
            "147999000",
            "0.00675674",
            "999990.76326",
            "499.99538163",
        )],
        true,
        market_sell("0.00675674"),
    ))
    .await
    .unwrap();
    let krw2 = krw + dec("999990.76326") - dec("499.99538163");
    assert_eq!(balance(&mut inv, user, "KRW").await, (krw2, dec("0")));
    assert_eq!(balance(&mut inv, user, "BTC").await, (dec("0"), dec("0")));

    // A resting limit order: reserve with no fill, a partial fill later, then a
    // cancel (finalize without fills, once) releases the rest.
    let resting = Uuid::new_v4();
    let placed = settle_req(
        resting,
        user,
        pb::OrderSide::Bid,
        vec![],
        false,
        limit("100000000", "0.001"),
    );
    inv.settle(placed.clone()).await.unwrap();
    inv.settle(placed).await.unwrap();
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (krw2 - dec("100050"), dec("100050")),
        "locked once"
    );
    inv.settle(settle_req(
        resting,
        user,
        pb::OrderSide::Bid,
        vec![fill(1, "100000000", "0.0004", "40000", "20")],
        false,
        None,
    ))
    .await
    .unwrap();
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (krw2 - dec("100050"), dec("60030"))
    );
    let cancel = settle_req(resting, user, pb::OrderSide::Bid, vec![], true, None);
    let released = inv.settle(cancel.clone()).await.unwrap().into_inner();
    assert_eq!(released.released, "60030");
    let twice = inv.settle(cancel).await.unwrap().into_inner();
    assert_eq!(twice.released, "0", "released once");
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (krw2 - dec("40020"), dec("0"))
    );
    let reservation = inv
        .get_reservation(pb::GetReservationRequest {
            order_id: resting.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reservation.exists && reservation.released && reservation.last_fill_seq == 1);
    assert_ledger_matches(&db).await;
    svc.running.stop().await;
}

/// Balances of a user by currency (available, locked), and the ledger's length.
async fn snapshot(
    inv: &mut InventoryServiceClient<Channel>,
    db: &TestDb,
    user: Uuid,
) -> (Vec<(String, Decimal, Decimal)>, i64) {
    let mut admin = db.admin().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory.ledger WHERE user_id = $1")
        .bind(user)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    (balances(inv, user).await, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_outside_their_orders_terms_are_refused_whole() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    let mut inv = client(&svc).await;
    let user = open(&mut inv).await;
    // A resting limit bid of 0.01 BTC at 100,000,000 KRW, and a limit ask of
    // the 0.004 BTC a first fill buys.
    let bid = Uuid::new_v4();
    inv.settle(settle_req(
        bid,
        user,
        pb::OrderSide::Bid,
        vec![fill(1, "100000000", "0.004", "400000", "200")],
        false,
        limit("100000000", "0.01"),
    ))
    .await
    .unwrap();
    let ask = Uuid::new_v4();
    inv.settle(settle_req(
        ask,
        user,
        pb::OrderSide::Ask,
        vec![],
        false,
        limit("120000000", "0.004"),
    ))
    .await
    .unwrap();
    let buy = Uuid::new_v4();
    inv.settle(settle_req(
        buy,
        user,
        pb::OrderSide::Bid,
        vec![],
        false,
        market_buy("100000", FEE),
    ))
    .await
    .unwrap();
    let before = snapshot(&mut inv, &db, user).await;
    for (order, side, bad, why) in [
        (
            bid,
            pb::OrderSide::Bid,
            fill(2, "1", "1000000", "0.00000001", "0"),
            "a million BTC for nothing: funds are not price × volume",
        ),
        (
            bid,
            pb::OrderSide::Bid,
            fill(2, "100000000", "0.001", "100000", "0"),
            "no fee",
        ),
        (
            bid,
            pb::OrderSide::Bid,
            fill(2, "100000000", "0.001", "100000", "51"),
            "more fee than the rate",
        ),
        (
            bid,
            pb::OrderSide::Bid,
            fill(2, "101000000", "0.001", "101000", "50.5"),
            "above the bid's limit",
        ),
        (
            bid,
            pb::OrderSide::Bid,
            fill(2, "90000000", "0.0061", "549000", "274.5"),
            "more volume than the order has left",
        ),
        (
            ask,
            pb::OrderSide::Ask,
            fill(1, "119000000", "0.004", "476000", "238"),
            "below the ask's limit",
        ),
        (
            buy,
            pb::OrderSide::Bid,
            fill(1, "100000000", "0.00100001", "100001", "50.0005"),
            "more than the market buy's total",
        ),
    ] {
        let err = inv
            .settle(settle_req(order, user, side, vec![bad], false, None))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), service_kit::grpc::error_name(&err)),
            (Code::FailedPrecondition, Some("fill_refused")),
            "{why}: {err:?}"
        );
        assert_eq!(
            snapshot(&mut inv, &db, user).await,
            before,
            "{why}: nothing changed"
        );
    }
    // One bad fill in a call refuses the good ones with it.
    let err = inv
        .settle(settle_req(
            bid,
            user,
            pb::OrderSide::Bid,
            vec![
                fill(2, "100000000", "0.001", "100000", "50"),
                fill(3, "100000000", "0.001", "100000", "0"),
            ],
            false,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(service_kit::grpc::error_name(&err), Some("fill_refused"));
    assert_eq!(snapshot(&mut inv, &db, user).await, before);
    // Fills within the terms still go through, up to the order's volume.
    inv.settle(settle_req(
        bid,
        user,
        pb::OrderSide::Bid,
        vec![fill(2, "99000000", "0.006", "594000", "297")],
        true,
        None,
    ))
    .await
    .unwrap();
    assert_eq!(
        balance(&mut inv, user, "BTC").await,
        (dec("0.006"), dec("0.004")),
        "0.01 BTC bought in all, 0.004 of it locked for the ask"
    );
    assert_eq!(
        test_support::read_metric(svc.admin, "inventory_fills_refused_total", &[]).await,
        8.0
    );
    assert_ledger_matches(&db).await;
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_filled_in_slices_pays_the_fee_of_the_whole() {
    // Fees rounded per fill let small slices go free (security review L11): a
    // limit bid of 0.5 at 0.0002 KRW spends 0.0001 KRW, whose fee at 0.05 % is
    // 0.00000005, while each tenth of it alone would round to no fee at all.
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    let mut inv = client(&svc).await;
    let user = open(&mut inv).await;
    let (krw, _) = balance(&mut inv, user, "KRW").await;
    let bid = Uuid::new_v4();
    let req = |fills, finalize| {
        let terms = limit("0.0002", "0.5");
        settle_req(bid, user, pb::OrderSide::Bid, fills, finalize, terms)
    };
    let slice = |seq, fee| fill(seq, "0.0002", "0.05", "0.00001", fee);
    // What the order's whole fee grows by with each slice: 0, 1, 0, 1, … × 10⁻⁸.
    let fee_of = |seq: u32| {
        if seq.is_multiple_of(2) {
            "0.00000001"
        } else {
            "0"
        }
    };
    inv.settle(req(vec![slice(1, fee_of(1))], false))
        .await
        .unwrap();
    let before = snapshot(&mut inv, &db, user).await;
    for (fee, why) in [
        ("0.00000002", "more than the whole fee grows by"),
        ("0.000000005", "not rounded to 8 places"),
    ] {
        let err = inv.settle(req(vec![slice(2, fee)], false)).await;
        let err = err.unwrap_err();
        assert_eq!(
            service_kit::grpc::error_name(&err),
            Some("fill_refused"),
            "{why}: {err:?}"
        );
        assert_eq!(snapshot(&mut inv, &db, user).await, before, "{why}");
    }
    let rest = (2..=10).map(|seq| slice(seq, fee_of(seq))).collect();
    inv.settle(req(rest, true)).await.unwrap();
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (krw - dec("0.0001") - dec("0.00000005"), Decimal::ZERO),
        "the funds and the fee of the whole order, nothing left locked"
    );
    assert_eq!(balance(&mut inv, user, "BTC").await.0, dec("0.5"));
    let mut admin = db.admin().await.unwrap();
    let fees: Decimal = sqlx::query_scalar(
        "SELECT -sum(locked_delta) FROM inventory.ledger WHERE order_id = $1 AND kind = 'fee'",
    )
    .bind(bid)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(fees, dec("0.00000005"), "five fee rows of 10⁻⁸");

    // The release before rounded each fill's fee alone; its order pods may
    // still be running during a release, so their fills are not refused.
    let older = Uuid::new_v4();
    let terms = limit("0.0002", "0.5");
    let fills = (1..=3).map(|seq| slice(seq, "0")).collect();
    inv.settle(settle_req(
        older,
        user,
        pb::OrderSide::Bid,
        fills,
        false,
        terms,
    ))
    .await
    .unwrap();
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
        .settle(settle_req(
            order,
            user,
            pb::OrderSide::Bid,
            vec![],
            false,
            market_buy("10000000", FEE),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        service_kit::grpc::error_name(&err),
        Some("insufficient_funds")
    );
    // A reservation due in the past is not made.
    let mut late = settle_req(
        order,
        user,
        pb::OrderSide::Bid,
        vec![],
        false,
        market_buy("5000", "0"),
    );
    late.not_after = chrono::Utc::now().timestamp_millis() - 1;
    let err = inv.settle(late.clone()).await.unwrap_err();
    assert_eq!(
        (err.code(), service_kit::grpc::error_name(&err)),
        (Code::FailedPrecondition, Some("plan_expired"))
    );
    assert!(
        !inv.get_reservation(pb::GetReservationRequest {
            order_id: order.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .exists
    );
    // The failed calls did not burn the order: in time, it reserves.
    late.not_after = chrono::Utc::now().timestamp_millis() + 60_000;
    inv.settle(late).await.unwrap();
    // Fills out of sequence, for someone else, or without terms are refused.
    let err = inv
        .settle(settle_req(
            order,
            user,
            pb::OrderSide::Bid,
            vec![fill(2, "1000", "1", "1000", "0")],
            false,
            None,
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
            None,
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
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "the user has no account")
    );
    let err = inv
        .settle(settle_req(
            Uuid::new_v4(),
            user,
            pb::OrderSide::Bid,
            vec![],
            true,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "no reservation and no terms");
    // Terms that make no sense, or amounts that do not parse.
    for (side, terms) in [
        (pb::OrderSide::Ask, market_buy("10000", FEE)),
        (pb::OrderSide::Bid, market_sell("1")),
        (pb::OrderSide::Bid, market_buy("-1", FEE)),
        (pb::OrderSide::Bid, market_buy("abc", FEE)),
        (pb::OrderSide::Bid, market_buy("0", FEE)),
        (pb::OrderSide::Bid, market_buy("1e5", FEE)),
        (pb::OrderSide::Bid, market_buy("10000", "0.5")),
        (
            pb::OrderSide::Bid,
            limit("79228162514264337593543950000", "2"),
        ),
        (
            pb::OrderSide::Bid,
            limit("99999999999999999999", "99999999999999999999"),
        ),
    ] {
        let err = inv
            .settle(settle_req(
                Uuid::new_v4(),
                user,
                side,
                vec![],
                false,
                terms.clone(),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{side:?} {terms:?}");
    }
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (dec("9995000"), dec("5000"))
    );
    assert_ledger_matches(&db).await;
    svc.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faucet_gives_krw_only_and_caps_what_a_day_deposits() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    let mut inv = client(&svc).await;
    let user = open(&mut inv).await;
    let dep = |key: &str, currency: &str, amount: &str| pb::DepositRequest {
        user_id: user.to_string(),
        currency: currency.into(),
        amount: amount.into(),
        idempotency_key: key.into(),
    };
    let err = inv
        .deposit(dep("btc", "BTC", "100000000"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(balance(&mut inv, user, "BTC").await, (dec("0"), dec("0")));
    // Idempotent by key.
    inv.deposit(dep("k1", "KRW", "60000000")).await.unwrap();
    inv.deposit(dep("k1", "KRW", "60000000")).await.unwrap();
    assert_eq!(balance(&mut inv, user, "KRW").await.0, dec("70000000"));
    // The cap (100,000,000 a day) counts what was deposited, not what is held:
    // spending the money does not make room for more.
    inv.settle(settle_req(
        Uuid::new_v4(),
        user,
        pb::OrderSide::Bid,
        vec![],
        false,
        market_buy("69000000", "0"),
    ))
    .await
    .unwrap();
    let err = inv.deposit(dep("k2", "KRW", "40000001")).await.unwrap_err();
    assert_eq!(
        (err.code(), service_kit::grpc::error_name(&err)),
        (Code::InvalidArgument, Some("deposit_limit_exceeded")),
        "{err:?}"
    );
    // Racing deposits pass the cap together no more than one at a time would:
    // 40,000,000 is left, so exactly four of ten 10,000,000 deposits go through.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let mut inv = inv.clone();
            let request = dep(&format!("race{i}"), "KRW", "10000000");
            tokio::spawn(async move { inv.deposit(request).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(
                service_kit::grpc::error_name(&e),
                Some("deposit_limit_exceeded")
            ),
        }
    }
    assert_eq!(ok, 4);
    let mut admin = db.admin().await.unwrap();
    let deposited: Decimal = sqlx::query_scalar(
        "SELECT sum(available_delta) FROM inventory.ledger WHERE user_id = $1 AND kind = 'deposit'",
    )
    .bind(user)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(deposited, dec("100000000"));
    // A day later the cap is free again.
    sqlx::query("UPDATE inventory.ledger SET created_at = created_at - interval '25 hours' WHERE user_id = $1")
        .bind(user)
        .execute(&mut admin)
        .await
        .unwrap();
    inv.deposit(dep("k3", "KRW", "100000000")).await.unwrap();
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
                    market_buy("1000000", "0"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_after_commit_is_retried_without_moving_money_twice() {
    let db = TestDb::create().await.unwrap();
    test_support::init_logs();
    let mut config = Config::local(DbArgs {
        database_url: Some(db.role_url(inventory::SCHEMA)),
        database_admin_url: Some(db.admin_url()),
        database_max_connections: 4,
    });
    config.fault_unavailable_after_commit = 1.0;
    let stop = CancellationToken::new();
    let app = App::build(config, stop.clone()).await.unwrap();
    let svc = Started {
        grpc: app.grpc_addr(),
        admin: app.metrics_addr(),
        running: Running::spawn(stop, app.run()),
    };
    let mut inv = client(&svc).await;
    let user = Uuid::new_v4();
    let open = pb::OpenAccountRequest {
        user_id: user.to_string(),
    };
    for _ in 0..3 {
        let err = inv.open_account(open.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
    let order = Uuid::new_v4();
    let buy = settle_req(
        order,
        user,
        pb::OrderSide::Bid,
        vec![fill(1, "1000000", "0.01", "10000", "5")],
        true,
        market_buy("10000", FEE),
    );
    for _ in 0..3 {
        let err = inv.settle(buy.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
    assert_eq!(
        balance(&mut inv, user, "KRW").await,
        (dec("9989995"), dec("0")),
        "opened once, bought once, whatever the answers said"
    );
    assert_eq!(
        balance(&mut inv, user, "BTC").await,
        (dec("0.01"), dec("0"))
    );
    assert_eq!(
        test_support::read_metric(svc.admin, "inventory_faults_injected_total", &[]).await,
        6.0
    );
    assert_ledger_matches(&db).await;
    svc.running.stop().await;
}

/// A user's KRW and BTC, each (available, locked).
async fn holdings(
    inv: &mut InventoryServiceClient<Channel>,
    user: Uuid,
) -> ((Decimal, Decimal), (Decimal, Decimal)) {
    (
        balance(inv, user, "KRW").await,
        balance(inv, user, "BTC").await,
    )
}

fn listed(orders: &[pb::UnconfirmedOrder], order: Uuid) -> Option<&pb::UnconfirmedOrder> {
    orders.iter().find(|o| o.order_id == order.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_records_are_kept_until_confirmed_and_another_plan_changes_nothing() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    let mut inv = client(&svc).await;
    let user = open(&mut inv).await;
    let order = Uuid::new_v4();
    let record = serde_json::json!({"state": "done", "plan": [{"price": "1000000"}]});
    let mut buy = settle_req(
        order,
        user,
        pb::OrderSide::Bid,
        vec![fill(1, "1000000", "0.01", "10000", "5")],
        true,
        market_buy("20000", FEE),
    );
    buy.order_record = record.to_string();
    inv.settle(buy.clone()).await.unwrap();
    let after = holdings(&mut inv, user).await;
    assert_eq!(after.0, (dec("9989995"), dec("0")));

    // Kept with the reservation, in the same commit.
    let held = inv
        .get_reservation(pb::GetReservationRequest {
            order_id: order.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(held.exists && held.created_at > 0);
    let kept: serde_json::Value = serde_json::from_str(&held.order_record).unwrap();
    assert_eq!(kept, record);

    // The same attempt again is a repeat; another plan for the order is refused whole.
    let again = inv.settle(buy.clone()).await.unwrap().into_inner();
    assert_eq!(again.fills_applied, 0);
    let mut other = settle_req(
        order,
        user,
        pb::OrderSide::Bid,
        vec![
            fill(1, "1000000", "0.01", "10000", "5"),
            fill(2, "1000000", "0.005", "5000", "2.5"),
        ],
        true,
        market_buy("20000", FEE),
    );
    other.order_record = serde_json::json!({"state": "done", "plan": []}).to_string();
    let err = inv.settle(other.clone()).await.unwrap_err();
    assert_eq!(
        (err.code(), service_kit::grpc::error_name(&err)),
        (Code::AlreadyExists, Some("order_conflict")),
        "{err:?}"
    );
    assert_eq!(
        holdings(&mut inv, user).await,
        after,
        "the conflicting call changed nothing"
    );

    // Listed once old enough, until confirmed.
    let list = |min_age_ms: i64| pb::ListUnconfirmedRequest {
        min_age_ms,
        limit: 0,
    };
    let young = inv.list_unconfirmed(list(3_600_000)).await.unwrap();
    assert!(listed(&young.into_inner().orders, order).is_none());
    let all = inv.list_unconfirmed(list(0)).await.unwrap().into_inner();
    let found = listed(&all.orders, order).expect("listed");
    assert_eq!(found.user_id, user.to_string());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&found.order_record).unwrap(),
        record
    );
    let confirm = pb::ConfirmOrdersRequest {
        order_ids: vec![order.to_string(), Uuid::new_v4().to_string()],
    };
    let confirmed = inv.confirm_orders(confirm.clone()).await.unwrap();
    assert_eq!(confirmed.into_inner().confirmed, 1);
    let confirmed = inv.confirm_orders(confirm).await.unwrap();
    assert_eq!(confirmed.into_inner().confirmed, 0, "idempotent");
    let all = inv.list_unconfirmed(list(0)).await.unwrap().into_inner();
    assert!(listed(&all.orders, order).is_none());
    let held = inv
        .get_reservation(pb::GetReservationRequest {
            order_id: order.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(held.exists && held.order_record.is_empty());

    // Records are bounded and come with terms; batches are bounded.
    let mut bad = Vec::new();
    for record in [
        "[1]",
        "not json",
        &format!("{{\"x\":\"{}\"}}", "a".repeat(17_000)),
    ] {
        let mut req = buy.clone();
        req.order_id = Uuid::new_v4().to_string();
        req.order_record = record.to_owned();
        bad.push(req);
    }
    let mut no_terms = buy.clone();
    no_terms.terms = None;
    bad.push(no_terms);
    for req in bad {
        let err = inv.settle(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let err = inv
        .list_unconfirmed(pb::ListUnconfirmedRequest {
            min_age_ms: 0,
            limit: 501,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for ids in [
        vec!["nope".to_owned()],
        vec![Uuid::new_v4().to_string(); 501],
    ] {
        let err = inv
            .confirm_orders(pb::ConfirmOrdersRequest { order_ids: ids })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    assert_eq!(
        holdings(&mut inv, user).await,
        after,
        "bad calls changed nothing"
    );
    assert_ledger_matches(&db).await;
    svc.running.stop().await;
}
