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

    /// market-data gRPC URL; several URLs separated by commas share the calls.
    #[arg(
        long,
        env = "MARKET_DATA_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub market_data_url: String,

    /// order gRPC URL; several URLs separated by commas share the calls.
    #[arg(long, env = "ORDER_URL", default_value = "http://127.0.0.1:50052")]
    pub order_url: String,

    /// inventory gRPC URL; several URLs separated by commas share the calls.
    #[arg(long, env = "INVENTORY_URL", default_value = "http://127.0.0.1:50053")]
    pub inventory_url: String,

    /// user gRPC URL; several URLs separated by commas share the calls.
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

    /// Private API requests per second per user, all their API keys together (Upbit's `default` group; 0 = no limit).
    #[arg(long, env = "RATE_LIMIT_DEFAULT", default_value_t = 30)]
    pub rate_limit_default: u32,

    /// Order placements per second per user (Upbit's `order` group: 12/s since
    /// 2026-08-21; cancels count in `default`).
    #[arg(long, env = "RATE_LIMIT_ORDER", default_value_t = 12)]
    pub rate_limit_order: u32,

    /// Sign-ups per client IP per hour (0 = no limit): every account gets paper money.
    #[arg(long, env = "RATE_LIMIT_SIGNUP", default_value_t = 10)]
    pub rate_limit_signup: u32,

    /// New WebSocket connections per second per client IP, as Upbit (0 = no limit).
    #[arg(long, env = "WS_CONNECT_LIMIT", default_value_t = 5)]
    pub ws_connect_limit: u32,

    /// Largest WebSocket message (and frame) a client may send, in bytes; a
    /// larger one closes the connection (1009). Upbit's requests are small.
    #[arg(long, env = "WS_MAX_MESSAGE", default_value_t = 32 * 1024)]
    pub ws_max_message: usize,

    /// Most WebSocket connections this gateway process holds at once (0 = no limit).
    #[arg(long, env = "WS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub ws_max_connections: usize,

    /// Most WebSocket connections from one client IP at once (0 = no limit).
    #[arg(long, env = "WS_MAX_CONNECTIONS_PER_IP", default_value_t = 200)]
    pub ws_max_connections_per_ip: usize,

    /// Answer `/v1/ticker` and `/v1/ticker/all` from the tickers this gateway
    /// follows on market-data's stream (false: every read asks market-data).
    #[arg(long, env = "TICKERS_FROM_MEMORY", default_value_t = true, action = clap::ArgAction::Set)]
    pub tickers_from_memory: bool,

    /// Messages each WebSocket feed (one market-data stream per type and
    /// market, shared by all its subscribers) keeps for subscribers that are
    /// behind; a client further behind is disconnected as too slow.
    #[arg(long, env = "WS_BUFFER", default_value_t = 1024)]
    pub ws_buffer: usize,

    /// Bytes a WebSocket connection gathers before writing to its socket (about
    /// the most it holds unsent; a client that does not read falls behind its
    /// feeds and is disconnected).
    #[arg(long, env = "WS_WRITE_BUFFER", default_value_t = 16 * 1024)]
    pub ws_write_buffer: usize,

    /// Close a WebSocket connection as too slow when a write to it waits this
    /// long (the client has stopped reading and its socket is full).
    #[arg(long, env = "WS_STALL_TIMEOUT", default_value = "10s", value_parser = service_kit::config::parse_duration)]
    pub ws_stall_timeout: std::time::Duration,

    /// How often a private WebSocket's credentials are checked again: a key
    /// revoked or expired, or a page's session ended or its token expired,
    /// closes the connection (4001) within this long.
    #[arg(long, env = "WS_RECHECK", default_value = "60s", value_parser = service_kit::config::parse_duration)]
    pub ws_recheck: std::time::Duration,

    /// Close WebSocket connections that send nothing (not even a ping) for this long.
    #[arg(long, env = "WS_IDLE_TIMEOUT", default_value = "120s", value_parser = service_kit::config::parse_duration)]
    pub ws_idle_timeout: std::time::Duration,

    /// Proxies in front of the gateway that append the client's address to
    /// X-Forwarded-For (1 behind the Istio ingress gateway; 0 when clients
    /// connect directly). The client IP is the address the outermost of them
    /// saw; what a client writes into the header itself is never trusted.
    #[arg(long, env = "TRUSTED_PROXIES", default_value_t = 0)]
    pub trusted_proxies: usize,

    /// How long the market list (names, Upbit's warning and caution) is cached
    /// between reads from market-data.
    #[arg(long, env = "MARKETS_TTL", default_value = "30s", value_parser = service_kit::config::parse_duration)]
    pub markets_ttl: std::time::Duration,

    /// Continue the trace of a client's `traceparent` (its trace id and its
    /// sampling flag). Off: each request starts a trace of its own, sampled by
    /// OTEL_TRACES_SAMPLER, and links the client's, so clients cannot splice
    /// into other traces or have every request recorded.
    #[arg(long, env = "TRUST_TRACEPARENT", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_traceparent: bool,

    /// Longest time a client may take to send a request's headers (HTTP/1);
    /// the connection is closed beyond it. The clock starts when a connection
    /// starts waiting for its next request, so this is also how long a kept-
    /// alive connection may stay idle: keep it above clients' pool idle times
    /// (a client reusing a connection being closed sees it reset).
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "60s", value_parser = service_kit::config::parse_duration)]
    pub header_read_timeout: std::time::Duration,

    /// Longest time a request may take to be read and answered (408 beyond).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = service_kit::config::parse_duration)]
    pub request_timeout: std::time::Duration,

    /// Requests per second from one client IP on every route, before anything
    /// else is done for them (0 = no limit).
    #[arg(long, env = "RATE_LIMIT_IP", default_value_t = 100)]
    pub rate_limit_ip: u32,

    /// Quotation and public WebSocket requests that carry an Origin header (a
    /// browser's), per client IP per 10 seconds, as Upbit limits them (0 = no
    /// limit).
    #[arg(long, env = "RATE_LIMIT_ORIGIN", default_value_t = 1)]
    pub rate_limit_origin: u32,

    /// Sign-in, sign-up and refresh requests per minute from one client IP (0 = no limit).
    #[arg(long, env = "RATE_LIMIT_AUTH", default_value_t = 30)]
    pub rate_limit_auth: u32,

    /// Failed logins of one account (email) in 15 minutes before its logins are
    /// refused until the 15 minutes end (0 = no limit). Counted for any email,
    /// so the answer tells nothing about which accounts exist.
    #[arg(long, env = "LOGIN_FAILURES", default_value_t = 5)]
    pub login_failures: u32,

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
