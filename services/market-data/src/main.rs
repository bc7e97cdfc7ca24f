#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// The service, or one of its jobs (`market-data retention`, `market-data backfill`).
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
    /// Store the trades Upbit lists for the last --since that are missing here
    /// (each folded into its 1-minute candle exactly once), then exit. Safe
    /// beside live ingest and to repeat: a trade already stored is skipped.
    /// Exits 1 if a market could not be fetched (the others are stored).
    Backfill {
        /// How far back from now (at most 7d, and shorter than TRADE_RETENTION).
        #[arg(long, env = "BACKFILL_SINCE", default_value = "6h", value_parser = service_kit::config::parse_duration)]
        since: std::time::Duration,
        /// Upbit's REST API (or upbit-sim's).
        #[arg(long, env = "UPBIT_REST_URL", default_value = "https://api.upbit.com")]
        upbit_url: String,
        /// Markets, comma-separated; default: every market the ingestor listed.
        #[arg(long, env = "BACKFILL_MARKETS", value_delimiter = ',')]
        markets: Vec<String>,
        /// Requests per second to Upbit at most (its limit for trades is 10).
        #[arg(long, env = "BACKFILL_RATE", default_value_t = 5)]
        rate: u32,
        /// The trade retention (`market-data retention`'s --keep): --since must be shorter.
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
        Some(Job::Backfill {
            since,
            upbit_url,
            markets,
            rate,
            keep,
        }) => {
            let job = market_data::backfill::Backfill {
                upbit_url,
                since,
                markets,
                rate,
                keep,
                page: market_data::backfill::PAGE,
            };
            match market_data::backfill(&config, &job).await {
                Ok(done) if done.failed.is_empty() => {
                    tracing::info!(?done, "backfill: done");
                    Ok(())
                }
                Ok(done) => Err(anyhow::anyhow!(
                    "backfill: {} of {} markets could not be fetched: {:?}",
                    done.failed.len(),
                    done.markets,
                    done.failed
                )),
                Err(e) => Err(e),
            }
        }
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
