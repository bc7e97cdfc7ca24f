//! The whole system in one process: every service on port 0 against one real
//! Postgres database and Redis, talking real gRPC over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::config::RuntimeArgs;
use service_kit::postgres::DbArgs;
use test_support::{Running, TestDb};
use tokio_util::sync::CancellationToken;

fn db_args(db: &TestDb, role: &str) -> DbArgs {
    DbArgs {
        database_url: Some(db.role_url(role)),
        database_admin_url: Some(db.admin_url()),
        database_max_connections: 5,
    }
}

const LOCAL: &str = "127.0.0.1:0";

struct Stack {
    market_data: SocketAddr,
    order: SocketAddr,
    inventory: SocketAddr,
    user: SocketAddr,
    ingestor: SocketAddr,
    gateway_http: SocketAddr,
    gateway_admin: SocketAddr,
    admins: Vec<(SocketAddr, &'static str)>,
    running: Vec<Running>,
}

impl Stack {
    async fn start(db: &TestDb) -> Self {
        test_support::init_logs();
        let prefix = test_support::unique_prefix();
        let mut running = Vec::new();
        let mut admins = Vec::new();
        let runtime = RuntimeArgs::default;

        let sim_stop = CancellationToken::new();
        let sim = upbit_sim::App::build(upbit_sim::Config::local(LOCAL), sim_stop.clone())
            .await
            .unwrap();
        let sim_addr = sim.http_addr();
        running.push(Running::spawn(sim_stop, sim.run()));

        let stop = CancellationToken::new();
        let md = market_data::App::build(
            market_data::Config {
                grpc_addr: LOCAL.into(),
                metrics_addr: LOCAL.into(),
                db: db_args(db, market_data::SCHEMA),
                redis_url: test_support::redis_url(),
                redis_prefix: prefix.clone(),
                runtime: runtime(),
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let market_data = md.grpc_addr();
        admins.push((md.metrics_addr(), "market-data"));
        running.push(Running::spawn(stop, md.run()));

        let stop = CancellationToken::new();
        let inv = inventory::App::build(
            inventory::Config {
                grpc_addr: LOCAL.into(),
                metrics_addr: LOCAL.into(),
                db: db_args(db, inventory::SCHEMA),
                runtime: runtime(),
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let inventory = inv.grpc_addr();
        admins.push((inv.metrics_addr(), "inventory"));
        running.push(Running::spawn(stop, inv.run()));

        let stop = CancellationToken::new();
        let usr = user::App::build(
            user::Config {
                grpc_addr: LOCAL.into(),
                metrics_addr: LOCAL.into(),
                db: db_args(db, user::SCHEMA),
                runtime: runtime(),
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let user = usr.grpc_addr();
        admins.push((usr.metrics_addr(), "user"));
        running.push(Running::spawn(stop, usr.run()));

        let stop = CancellationToken::new();
        let ord = order::App::build(
            order::Config {
                grpc_addr: LOCAL.into(),
                metrics_addr: LOCAL.into(),
                db: db_args(db, order::SCHEMA),
                runtime: runtime(),
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let order = ord.grpc_addr();
        admins.push((ord.metrics_addr(), "order"));
        running.push(Running::spawn(stop, ord.run()));

        let stop = CancellationToken::new();
        let ing = ingestor::App::build(
            ingestor::Config {
                grpc_addr: LOCAL.into(),
                metrics_addr: LOCAL.into(),
                market_data_url: format!("http://{market_data}"),
                upbit_ws_url: format!("ws://{sim_addr}/websocket/v1"),
                upbit_rest_url: format!("http://{sim_addr}"),
                runtime: runtime(),
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let ingestor = ing.grpc_addr();
        admins.push((ing.metrics_addr(), "ingestor"));
        running.push(Running::spawn(stop, ing.run()));

        let stop = CancellationToken::new();
        let gw = gateway::App::build(
            gateway::Config {
                http_addr: LOCAL.into(),
                metrics_addr: LOCAL.into(),
                market_data_url: format!("http://{market_data}"),
                order_url: format!("http://{order}"),
                inventory_url: format!("http://{inventory}"),
                user_url: format!("http://{user}"),
                redis_url: test_support::redis_url(),
                redis_prefix: prefix,
                runtime: runtime(),
            },
            stop.clone(),
        )
        .await
        .unwrap();
        let (gateway_http, gateway_admin) = (gw.http_addr(), gw.metrics_addr());
        admins.push((gateway_admin, "gateway"));
        running.push(Running::spawn(stop, gw.run()));

        Self {
            market_data,
            order,
            inventory,
            user,
            ingestor,
            gateway_http,
            gateway_admin,
            admins,
            running,
        }
    }

    /// Stops in reverse start order, each cleanly.
    async fn stop(mut self) {
        while let Some(r) = self.running.pop() {
            r.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_health_and_reflection() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db).await;
    for (grpc, name) in [
        (
            stack.market_data,
            "exchange.marketdata.v1.MarketDataService",
        ),
        (stack.order, "exchange.order.v1.OrderService"),
        (stack.inventory, "exchange.inventory.v1.InventoryService"),
        (stack.user, "exchange.user.v1.UserService"),
    ] {
        let admin = stack
            .admins
            .iter()
            .find(|(_, n)| name.contains(&n.replace('-', "")))
            .map(|(a, _)| *a)
            .unwrap();
        test_support::assert_grpc_basics(grpc, admin, name)
            .await
            .unwrap();
    }
    test_support::wait_serving(stack.ingestor, "", Duration::from_secs(10))
        .await
        .unwrap();
    let listed = test_support::reflection_services(stack.ingestor)
        .await
        .unwrap();
    assert!(
        listed.contains(&"grpc.health.v1.Health".to_string()),
        "{listed:?}"
    );

    // The gateway: HTTP probes on its API port and metrics on its admin port.
    let (status, _) = test_support::http_get(&format!("http://{}/readyz", stack.gateway_http))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = test_support::http_get(&format!("http://{}/metrics", stack.gateway_admin))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("service_info{"), "{body}");
    // Unknown routes answer Upbit's error shape, not a bare 404.
    let (status, body) = test_support::http_get(&format!("http://{}/nope", stack.gateway_http))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["error"]["name"].is_string() && err["error"]["message"].is_string(),
        "{body}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_role_is_confined_to_its_own_schema() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db).await;
    for grpc in [stack.market_data, stack.order, stack.inventory, stack.user] {
        test_support::wait_serving(grpc, "", Duration::from_secs(30))
            .await
            .unwrap();
    }
    let tables = [
        ("market_data", "market_data.trades"),
        ("orders", "orders.orders"),
        ("inventory", "inventory.balances"),
        ("users", "users.users"),
    ];
    for (role, _) in tables {
        let pool = sqlx::PgPool::connect(&db.role_url(role)).await.unwrap();
        for (other, table) in tables {
            let read = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT 1 FROM {table} LIMIT 1"
            )))
            .execute(&pool)
            .await;
            if other == role {
                read.unwrap_or_else(|e| panic!("{role} cannot read its own {table}: {e}"));
            } else {
                let err = read.expect_err(&format!("{role} must not read {table}"));
                let code = err
                    .as_database_error()
                    .and_then(|e| e.code())
                    .map(|c| c.into_owned());
                assert_eq!(code.as_deref(), Some("42501"), "{role} on {table}: {err}");
            }
        }
        // Nor create objects outside its schema.
        let err = sqlx::query("CREATE TABLE public.intruder (x int)")
            .execute(&pool)
            .await
            .unwrap_err();
        let code = err
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "{role} created a table in public: {err}"
        );
        pool.close().await;
    }
    stack.stop().await;
}
