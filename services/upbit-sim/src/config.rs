//! Configuration from flags or environment variables (`--help` lists them).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use service_kit::config::parse_duration;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "upbit-sim",
    version,
    about = "upbit-sim: a simulated Upbit (WebSocket /websocket/v1 and REST /v1/*) for offline runs, tests and benchmarks",
    after_help = telemetry::ENV_HELP
)]
pub struct Config {
    /// HTTP listen address (WebSocket, REST, /healthz).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: String,

    /// Admin listen address: /metrics (Prometheus), /healthz, and the /sim
    /// controls when SIM_CONTROLS is on.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9106")]
    pub metrics_addr: String,

    /// Serve the /sim controls (inject trades, designations and faults; set the rate) on the
    /// admin port. Off where anyone but the operator reaches that port.
    #[arg(long, env = "SIM_CONTROLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub controls: bool,

    /// Version reported in logs, metrics and traces (Kubernetes: the `version` label).
    #[arg(long, env = "SERVICE_VERSION", default_value = "v1")]
    pub service_version: String,

    /// Instance name reported in logs and traces (Kubernetes: the pod name); defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Markets: comma list of default codes or CODE:PRICE [default: 20 real KRW/BTC/USDT markets].
    #[arg(long, env = "SIM_MARKETS")]
    pub markets: Option<String>,

    /// Seed of the random walk (same seed, same price path).
    #[arg(long, env = "SIM_SEED", default_value_t = 1)]
    pub seed: u64,

    /// Messages per second over all markets (trade + ticker + orderbook per step); 0 pauses.
    #[arg(long, env = "SIM_RATE", default_value_t = 30)]
    pub rate: u64,

    /// Replay this JSONL recording (one Upbit WebSocket message per line) instead of generating.
    #[arg(long, env = "SIM_REPLAY")]
    pub replay: Option<PathBuf>,

    /// Replay speed against the recorded timestamps (2 = twice as fast; 0 = at SIM_RATE).
    #[arg(long, env = "SIM_REPLAY_SPEED", default_value_t = 1.0)]
    pub replay_speed: f64,

    /// Start the replay again when it ends.
    #[arg(long, env = "SIM_REPLAY_LOOP", default_value_t = false)]
    pub replay_loop: bool,

    /// Fault: drop every connection this often (0s = never).
    #[arg(long, env = "SIM_DROP_EVERY", default_value = "0s", value_parser = parse_duration)]
    pub drop_every: Duration,

    /// Fault: send every Nth data frame malformed (0 = never).
    #[arg(long, env = "SIM_MALFORMED_EVERY", default_value_t = 0)]
    pub malformed_every: u64,

    /// Fault: stall (send no data) this often (0s = never) ...
    #[arg(long, env = "SIM_STALL_EVERY", default_value = "0s", value_parser = parse_duration)]
    pub stall_every: Duration,

    /// ... for this long.
    #[arg(long, env = "SIM_STALL_FOR", default_value = "10s", value_parser = parse_duration)]
    pub stall_for: Duration,

    /// Close WebSocket connections that send nothing (not even a ping) for this long.
    #[arg(long, env = "SIM_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// New WebSocket connections per second per IP (Upbit: 5; 0 = unlimited).
    #[arg(long, env = "SIM_CONNECT_LIMIT", default_value_t = 5)]
    pub connect_limit: u32,

    /// REST requests per second per IP and group (Upbit: 10; 0 = unlimited).
    #[arg(long, env = "SIM_REST_LIMIT", default_value_t = 10)]
    pub rest_limit: u32,

    /// Deadline for open connections to close after SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Defaults with the given listen address (tests).
    pub fn local(http_addr: &str) -> Self {
        Self::parse_from([
            "upbit-sim",
            "--http-addr",
            http_addr,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
    }
}
