//! Configuration from flags or environment variables (`--help` lists them).

use clap::Parser;
use rust_decimal::Decimal;
use service_kit::config::{GrpcArgs, RuntimeArgs};
use service_kit::postgres::DbArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "inventory",
    version,
    about = "Inventory: paper balances, reservations and the ledger (gRPC)",
    after_help = telemetry::ENV_HELP
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50053")]
    pub grpc_addr: String,

    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9103")]
    pub metrics_addr: String,

    #[command(flatten)]
    pub db: DbArgs,

    /// KRW credited once to every new account.
    #[arg(long, env = "INITIAL_KRW_BALANCE", default_value = "10000000")]
    pub initial_krw_balance: Decimal,

    /// The paper faucet: the most a user may deposit of a currency in any 24 hours
    /// (summed from the ledger, whatever was traded since).
    #[arg(long, env = "DEPOSIT_CAP", default_value = "100000000")]
    pub deposit_cap: Decimal,

    /// Currencies the paper faucet gives (comma-separated).
    #[arg(
        long,
        env = "DEPOSIT_CURRENCIES",
        default_value = "KRW",
        value_delimiter = ','
    )]
    pub deposit_currencies: Vec<String>,

    /// Chaos testing: the fraction (0 to 1) of money-moving calls (OpenAccount,
    /// Deposit, Settle) that answer UNAVAILABLE after their change was committed,
    /// as a lost answer would look to the caller. 0 (off) in production.
    #[arg(long, env = "FAULT_UNAVAILABLE_AFTER_COMMIT", default_value_t = 0.0)]
    pub fault_unavailable_after_commit: f64,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(flatten)]
    pub grpc: GrpcArgs,
}

impl Config {
    /// Defaults listening on port 0 (tests).
    pub fn local(db: DbArgs) -> Self {
        let mut c = Self::parse_from(["inventory"]);
        c.grpc_addr = "127.0.0.1:0".into();
        c.metrics_addr = "127.0.0.1:0".into();
        c.db = db;
        c
    }
}
