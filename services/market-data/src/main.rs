#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// The service, or one of its jobs (`market-data retention`).
#[derive(Parser)]
#[command(
    name = "market-data",
    version,
    about = "Market data: latest tickers/orderbooks in Redis, trades and candles in Postgres (gRPC)",
    after_help = telemetry::ENV_HELP
)]
struct Cli {
    #[command(subcommand)]
    job: Option<Job>,
    #[command(flatten)]
    config: market_data::Config,
}

#[derive(Subcommand)]
enum Job {
    /// Delete stored trades older than --keep, then exit (1-minute candles stay).
    /// Reads the service's database settings (DATABASE_URL, …: see market-data --help).
    Retention {
        /// How long to keep trades.
        #[arg(long, env = "TRADE_RETENTION", default_value = "30d", value_parser = service_kit::config::parse_duration)]
        keep: std::time::Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { job, config } = Cli::parse();
    let identity = config.runtime.identity("market-data");
    let telemetry = telemetry::init(&identity, |k| std::env::var(k).ok())?;
    let result = match job {
        Some(Job::Retention { keep }) => market_data::retention(&config, keep)
            .await
            .map(|deleted| tracing::info!(deleted, ?keep, "retention: old trades deleted")),
        None => {
            let stop = service_kit::lifecycle::signal_token();
            let app = market_data::App::build(config, stop).await?;
            tracing::info!(grpc = %app.grpc_addr(), metrics = %app.metrics_addr(), "market-data listening");
            app.run().await
        }
    };
    telemetry.shutdown().await;
    result
}
