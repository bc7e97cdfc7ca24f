//! Configuration from flags or environment variables (`--help` lists them).

use std::time::Duration;

use clap::Parser;
use service_kit::config::{GrpcArgs, RuntimeArgs, parse_duration};

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

    /// market-data gRPC URL; several URLs separated by commas share the calls.
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

    /// Markets to follow: market codes (KRW-BTC) and/or quote currencies (KRW = every KRW market).
    #[arg(long, env = "UPBIT_MARKETS", default_value = "KRW")]
    pub markets: String,

    /// How often the market list is fetched again, to follow Upbit's warning and
    /// caution designations and name changes of the followed markets (0s: never;
    /// markets listed later are followed after a restart).
    #[arg(long, env = "MARKETS_REFRESH", default_value = "10m", value_parser = parse_duration)]
    pub markets_refresh: Duration,

    /// Feed format to request: SIMPLE (Upbit's short keys: about a third fewer
    /// bytes on the wire, and less to write and read: about a tenth less CPU for
    /// the feed's two ends), or DEFAULT; the parser reads either.
    #[arg(long, env = "FEED_FORMAT", default_value = "SIMPLE", value_parser = parse_format)]
    pub feed_format: upbit::write::Format,

    /// WebSocket ping interval (Upbit closes connections idle for ~120 s).
    #[arg(long, env = "PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Reconnect when no message arrived for this long (a stalled feed).
    #[arg(long, env = "STALE_AFTER", default_value = "20s", value_parser = parse_duration)]
    pub stale_after: Duration,

    /// Largest batch of events sent to market-data.
    #[arg(long, env = "BATCH_MAX", default_value_t = 2000)]
    pub batch_max: usize,

    /// How long a batch may wait for more events once the first one arrived.
    #[arg(long, env = "BATCH_LINGER", default_value = "2ms", value_parser = parse_duration)]
    pub batch_linger: Duration,

    /// Trades held while market-data is slow or away; beyond it the oldest are dropped.
    /// (Tickers and orderbooks always keep just the newest per market.)
    #[arg(long, env = "BUFFER_TRADES", default_value_t = 200_000)]
    pub buffer_trades: usize,

    /// Most new WebSocket connections per second (Upbit allows 5 per IP).
    #[arg(long, env = "MAX_CONNECTS_PER_SEC", default_value_t = 4)]
    pub max_connects_per_sec: u32,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(flatten)]
    pub grpc: GrpcArgs,
}

fn parse_format(text: &str) -> Result<upbit::write::Format, String> {
    match upbit::write::Format::parse(&text.to_ascii_uppercase()) {
        Some(f @ (upbit::write::Format::Default | upbit::write::Format::Simple)) => Ok(f),
        _ => Err(format!("`{text}` is not DEFAULT or SIMPLE")),
    }
}

impl Config {
    /// Defaults, pointed at the given upbit-sim and market-data (tests).
    pub fn local(sim: std::net::SocketAddr, market_data: std::net::SocketAddr) -> Self {
        let mut c = Self::parse_from(["ingestor"]);
        c.grpc_addr = "127.0.0.1:0".into();
        c.metrics_addr = "127.0.0.1:0".into();
        c.market_data_url = format!("http://{market_data}");
        c.upbit_ws_url = format!("ws://{sim}/websocket/v1");
        c.upbit_rest_url = format!("http://{sim}");
        c
    }
}
