//! Configuration from flags or environment variables (`--help` lists them).

use clap::Parser;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "upbit-sim",
    version,
    about = "upbit-sim: a simulated Upbit (WebSocket /websocket/v1 and REST /v1/*) for offline runs, tests and benchmarks",
    after_help = telemetry::ENV_HELP
)]
pub struct Config {
    /// HTTP listen address (WebSocket and REST).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http_addr: String,

    /// Deadline for open connections to close after SIGTERM.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = service_kit::config::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
}
