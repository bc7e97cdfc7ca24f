#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// The service, or one of its jobs (`user retention`).
#[derive(Parser)]
#[command(
    name = "user",
    version,
    about = "User service: accounts, logins, tokens and API keys (gRPC)",
    after_help = telemetry::ENV_HELP
)]
struct Cli {
    #[command(subcommand)]
    job: Option<Job>,
    #[command(flatten)]
    config: user::Config,
}

#[derive(Subcommand)]
enum Job {
    /// Forget what can no longer verify anything, once, then exit: nonces of
    /// expired or revoked API keys, refresh tokens expired over a day ago, and
    /// ended sessions (the service also does this every few seconds). Reads
    /// the service's database settings (DATABASE_URL, …: see user --help).
    Retention,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { job, config } = Cli::parse();
    let identity = config.runtime.identity("user");
    let telemetry = telemetry::init(&identity, |k| std::env::var(k).ok())?;
    let result = match job {
        Some(Job::Retention) => user::retention(&config).await.map(|f| {
            tracing::info!(
                nonces = f.nonces,
                refresh_tokens = f.refresh_tokens,
                sessions = f.sessions,
                "retention: dead records forgotten"
            )
        }),
        None => {
            let stop = service_kit::lifecycle::signal_token();
            let app = user::App::build(config, stop).await?;
            tracing::info!(grpc = %app.grpc_addr(), metrics = %app.metrics_addr(), "user listening");
            app.run().await
        }
    };
    telemetry.shutdown().await;
    result
}
