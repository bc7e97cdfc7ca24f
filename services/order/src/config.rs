//! Configuration from flags or environment variables (`--help` lists them).

use std::time::Duration;

use clap::Parser;
use rust_decimal::Decimal;
use service_kit::config::{GrpcArgs, RuntimeArgs, parse_duration};
use service_kit::postgres::DbArgs;

use crate::service::Fault;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "order",
    version,
    about = "Order service: placement, cancellation and matching against the live market (gRPC)",
    after_help = telemetry::ENV_HELP
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub grpc_addr: String,

    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9102")]
    pub metrics_addr: String,

    #[command(flatten)]
    pub db: DbArgs,

    /// inventory gRPC URL (funds); several URLs separated by commas share the calls.
    #[arg(long, env = "INVENTORY_URL", default_value = "http://127.0.0.1:50053")]
    pub inventory_url: String,

    /// market-data gRPC URL (orderbooks, trades); several URLs separated by commas share the calls.
    #[arg(
        long,
        env = "MARKET_DATA_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub market_data_url: String,

    /// Trading fee rate (0.0005 = 0.05%). Each execution pays what the order's fee on
    /// all its executed funds, rounded down to 8 places once, grows by.
    #[arg(long, env = "FEE_RATE", default_value = "0.0005")]
    pub fee_rate: Decimal,

    /// Orders are refused (503 market_data_stale) while the live orderbook of
    /// their market is older than this: nothing fills at a frozen price.
    #[arg(long, env = "MAX_BOOK_AGE", default_value = "10s", value_parser = parse_duration)]
    pub max_book_age: Duration,

    /// How long inventory has to reserve a new order's funds. A placement whose
    /// answer takes longer is answered PENDING; after this time inventory refuses
    /// that reservation, and recovery completes or re-plans the order.
    #[arg(long, env = "PLAN_TTL", default_value = "5s", value_parser = parse_duration)]
    pub plan_ttl: Duration,

    /// Most open (pending or wait) orders a user may have.
    #[arg(long, env = "MAX_OPEN_ORDERS", default_value_t = 500)]
    pub max_open_orders: i64,

    /// A PENDING order recovery could not complete this long after it was placed
    /// (no live orderbook to re-plan it against) is rejected.
    #[arg(long, env = "PENDING_GIVE_UP", default_value = "2m", value_parser = parse_duration)]
    pub pending_give_up: Duration,

    /// Compete to run the limit-order matcher and recovery (one replica runs them).
    #[arg(long, env = "MATCHER", default_value_t = true, action = clap::ArgAction::Set)]
    pub matcher: bool,

    /// How often the matcher looks for orders a crash left unfinished.
    #[arg(long, env = "RECOVERY_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub recovery_interval: Duration,

    /// Orders younger than this are left to the request that is handling them.
    #[arg(long, env = "RECOVERY_MIN_AGE", default_value = "10s", value_parser = parse_duration)]
    pub recovery_min_age: Duration,

    /// Chaos testing: abort the process at this step of every order
    /// (persist: after writing it PENDING; reserve: after inventory took the funds).
    #[arg(long, env = "FAULT_AFTER", value_enum)]
    pub fault_after: Option<Fault>,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(flatten)]
    pub grpc: GrpcArgs,
}

impl Config {
    /// Defaults listening on port 0 (tests).
    pub fn local(
        db: DbArgs,
        inventory: std::net::SocketAddr,
        market_data: std::net::SocketAddr,
    ) -> Self {
        let mut c = Self::parse_from(["order"]);
        c.grpc_addr = "127.0.0.1:0".into();
        c.metrics_addr = "127.0.0.1:0".into();
        c.db = db;
        c.inventory_url = format!("http://{inventory}");
        c.market_data_url = format!("http://{market_data}");
        c
    }
}
