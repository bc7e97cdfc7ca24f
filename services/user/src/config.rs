//! Configuration from flags or environment variables (`--help` lists them).

use clap::Parser;
use service_kit::config::RuntimeArgs;
use service_kit::postgres::DbArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "user",
    version,
    about = "User service: accounts, logins, tokens and API keys (gRPC)",
    after_help = telemetry::ENV_HELP
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50054")]
    pub grpc_addr: String,

    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9104")]
    pub metrics_addr: String,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}
