//! Configuration from flags or environment variables (`--help` lists them).

use clap::Parser;
use service_kit::config::{GrpcArgs, RuntimeArgs};
use service_kit::postgres::DbArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "market-data",
    version,
    about = "Market data: latest tickers/orderbooks in Redis, trades and candles in Postgres (gRPC)",
    after_help = telemetry::ENV_HELP
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: String,

    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9101")]
    pub metrics_addr: String,

    #[command(flatten)]
    pub db: DbArgs,

    /// Redis URL for hot state and pub/sub fan-out.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Prefix of every Redis key and channel (keys are `<prefix>md:*`).
    #[arg(long, env = "REDIS_PREFIX", default_value = "")]
    pub redis_prefix: String,

    /// Trades written to Postgres per batch.
    #[arg(long, env = "WRITE_BATCH", default_value_t = 5000)]
    pub write_batch: usize,

    /// At most one Postgres write per this interval unless a batch is full: at low
    /// rates, fewer and larger transactions (each costs about a millisecond of
    /// Postgres CPU whatever its size); trades reach Postgres at most this much later.
    #[arg(long, env = "WRITE_LINGER", default_value = "50ms", value_parser = service_kit::config::parse_duration)]
    pub write_linger: std::time::Duration,

    /// Trades that may wait for Postgres in memory before ingest slows down.
    #[arg(long, env = "WRITE_QUEUE", default_value_t = 500_000)]
    pub write_queue: usize,

    /// Messages buffered per live stream consumer before it is dropped as too slow.
    #[arg(long, env = "STREAM_BUFFER", default_value_t = 4096)]
    pub stream_buffer: usize,

    /// A live stream consumer whose buffer stays full this long is dropped.
    #[arg(long, env = "STREAM_SLOW_AFTER", default_value = "5s", value_parser = service_kit::config::parse_duration)]
    pub stream_slow_after: std::time::Duration,

    /// How long the market list (names and Upbit's designations) is served from
    /// memory. The instance an ingestor streams to updates it at once; every other
    /// replica and version is at most this stale.
    #[arg(long, env = "MARKETS_TTL", default_value = "10s", value_parser = service_kit::config::parse_duration)]
    pub markets_ttl: std::time::Duration,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(flatten)]
    pub grpc: GrpcArgs,
}
