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

    /// Quotation requests per second per client IP and group, as Upbit (0 = no limit).
    #[arg(long, env = "RATE_LIMIT_QUOTATION", default_value_t = 10)]
    pub rate_limit_quotation: u32,

    /// Private API requests per second per user or API key (Upbit's `default` group; 0 = no limit).
    #[arg(long, env = "RATE_LIMIT_DEFAULT", default_value_t = 30)]
    pub rate_limit_default: u32,

    /// Order placements and cancellations per second per user or API key (Upbit's `order` group).
    #[arg(long, env = "RATE_LIMIT_ORDER", default_value_t = 8)]
    pub rate_limit_order: u32,

    /// Sign-ups per client IP per hour (0 = no limit): every account gets paper money.
    #[arg(long, env = "RATE_LIMIT_SIGNUP", default_value_t = 10)]
    pub rate_limit_signup: u32,

    /// New WebSocket connections per second per client IP, as Upbit (0 = no limit).
    #[arg(long, env = "WS_CONNECT_LIMIT", default_value_t = 5)]
    pub ws_connect_limit: u32,

    /// Frames queued per WebSocket client before it is disconnected as too slow.
    #[arg(long, env = "WS_BUFFER", default_value_t = 4096)]
    pub ws_buffer: usize,

    /// Close WebSocket connections that send nothing (not even a ping) for this long.
    #[arg(long, env = "WS_IDLE_TIMEOUT", default_value = "120s", value_parser = service_kit::config::parse_duration)]
    pub ws_idle_timeout: std::time::Duration,

    /// Take the client IP from the first X-Forwarded-For hop (behind the mesh ingress).
    #[arg(long, env = "TRUST_X_FORWARDED_FOR", default_value_t = true, action = clap::ArgAction::Set)]
    pub trust_x_forwarded_for: bool,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl Config {
    /// Defaults pointed at the given services, listening on port 0 (tests).
    pub fn local(market_data: std::net::SocketAddr) -> Self {
        let mut c = Self::parse_from(["gateway"]);
        c.http_addr = "127.0.0.1:0".into();
        c.metrics_addr = "127.0.0.1:0".into();
        c.market_data_url = format!("http://{market_data}");
        c
    }
}
