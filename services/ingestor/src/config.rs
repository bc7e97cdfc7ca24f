//! Configuration from flags or environment variables (`--help` lists them).

use clap::Parser;
use service_kit::config::RuntimeArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "ingestor",
    version,
    about = "Ingestor: live Upbit (or upbit-sim) WebSocket feed → market-data (gRPC client stream)",
    after_help = telemetry::ENV_HELP
)]
pub struct Config {
    /// gRPC listen address (health and reflection only).
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50055")]
    pub grpc_addr: String,

    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9105")]
    pub metrics_addr: String,

    /// market-data gRPC URL.
    #[arg(
        long,
        env = "MARKET_DATA_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub market_data_url: String,

    /// Upbit WebSocket URL (upbit-sim locally: ws://127.0.0.1:9090/websocket/v1).
    #[arg(
        long,
        env = "UPBIT_WS_URL",
        default_value = "wss://api.upbit.com/websocket/v1"
    )]
    pub upbit_ws_url: String,

    /// Upbit REST base URL, for the market list (upbit-sim locally: http://127.0.0.1:9090).
    #[arg(long, env = "UPBIT_REST_URL", default_value = "https://api.upbit.com")]
    pub upbit_rest_url: String,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}
