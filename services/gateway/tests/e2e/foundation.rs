//! Foundation: every service serves health, reflection and metrics; each role
//! is confined to its own schema.

use std::time::Duration;

use test_support::TestDb;

use crate::stack::{Options, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_health_and_reflection() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
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
    test_support::wait_serving(stack.ingestors[0].0, "", Duration::from_secs(10))
        .await
        .unwrap();
    let listed = test_support::reflection_services(stack.ingestors[0].0)
        .await
        .unwrap();
    assert!(
        listed.contains(&"grpc.health.v1.Health".to_string()),
        "{listed:?}"
    );

    // The gateway: HTTP probes on its API port and metrics on its admin port.
    let (status, _) = test_support::http_get(&format!("http://{}/readyz", stack.gateways[0].http))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) =
        test_support::http_get(&format!("http://{}/metrics", stack.gateways[0].admin))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("service_info{"), "{body}");
    // Unknown routes answer Upbit's error shape, not a bare 404.
    let (status, body) = test_support::http_get(&format!("http://{}/nope", stack.gateways[0].http))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        (err["error"]["name"].is_string() || err["error"]["name"].is_u64())
            && err["error"]["message"].is_string(),
        "{body}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_role_is_confined_to_its_own_schema() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db, Options::default()).await;
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
