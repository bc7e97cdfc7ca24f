//! Configuration from flags or environment variables (`--help` lists them).

use clap::Parser;
use service_kit::config::RuntimeArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "gateway",
    version,
    about = "Gateway: the HTTP/WebSocket entry (native /api/v1, Upbit-compatible /v1 and /websocket/v1)",
    after_help = telemetry::ENV_HELP
)]
pub struct Config {
    /// HTTP listen address (API, WebSocket, dashboard, /healthz, /readyz).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: String,

    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9100")]
    pub metrics_addr: String,

    /// market-data gRPC URL.
    #[arg(
        long,
        env = "MARKET_DATA_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub market_data_url: String,

    /// order gRPC URL.
    #[arg(long, env = "ORDER_URL", default_value = "http://127.0.0.1:50052")]
    pub order_url: String,

    /// inventory gRPC URL.
    #[arg(long, env = "INVENTORY_URL", default_value = "http://127.0.0.1:50053")]
    pub inventory_url: String,

    /// user gRPC URL.
    #[arg(long, env = "USER_URL", default_value = "http://127.0.0.1:50054")]
    pub user_url: String,

    /// Redis URL (rate-limit counters).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Prefix of every Redis key (keys are `<prefix>rl:*`).
    #[arg(long, env = "REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}
