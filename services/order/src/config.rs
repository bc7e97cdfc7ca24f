//! Configuration from flags or environment variables (`--help` lists them).

use clap::Parser;
use service_kit::config::RuntimeArgs;
use service_kit::postgres::DbArgs;

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

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}
