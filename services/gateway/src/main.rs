#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = gateway::Config::parse();
    let identity = config.runtime.identity("gateway");
    let telemetry = telemetry::init(&identity, |k| std::env::var(k).ok())?;
    let stop = service_kit::lifecycle::signal_token();
    let app = gateway::App::build(config, stop).await?;
    tracing::info!(http = %app.http_addr(), metrics = %app.metrics_addr(), "gateway listening");
    let result = app.run().await;
    telemetry.shutdown().await;
    result
}
