#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = market_data::Config::parse();
    let identity = config.runtime.identity("market-data");
    let telemetry = telemetry::init(&identity, |k| std::env::var(k).ok())?;
    let stop = service_kit::lifecycle::signal_token();
    let app = market_data::App::build(config, stop).await?;
    tracing::info!(grpc = %app.grpc_addr(), metrics = %app.metrics_addr(), "market-data listening");
    let result = app.run().await;
    telemetry.shutdown().await;
    result
}
