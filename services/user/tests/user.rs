//! User service against real Postgres: one integration-test binary.

use service_kit::config::RuntimeArgs;
use service_kit::postgres::DbArgs;
use test_support::{Running, Started, TestDb};
use tokio_util::sync::CancellationToken;
use user::{App, Config};

async fn start(db: &TestDb) -> Started {
    test_support::init_logs();
    let config = Config {
        grpc_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        db: DbArgs {
            database_url: Some(db.role_url(user::SCHEMA)),
            database_admin_url: Some(db.admin_url()),
            database_max_connections: 5,
        },
        runtime: RuntimeArgs::default(),
    };
    let stop = CancellationToken::new();
    let app = App::build(config, stop.clone()).await.expect("app builds");
    Started {
        grpc: app.grpc_addr(),
        admin: app.metrics_addr(),
        running: Running::spawn(stop, app.run()),
    }
}

#[tokio::test]
async fn serves_health_reflection_metrics_and_stops_gracefully() {
    let db = TestDb::create().await.unwrap();
    let svc = start(&db).await;
    test_support::assert_grpc_basics(svc.grpc, svc.admin, "exchange.user.v1.UserService")
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
        "users",
        "users",
        "users",
        migrations,
    )
    .await
    .unwrap();
}
