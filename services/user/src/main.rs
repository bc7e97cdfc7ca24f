#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = user::Config::parse();
    let identity = config.runtime.identity("user");
    let telemetry = telemetry::init(&identity, |k| std::env::var(k).ok())?;
    let stop = service_kit::lifecycle::signal_token();
    let app = user::App::build(config, stop).await?;
    tracing::info!(grpc = %app.grpc_addr(), metrics = %app.metrics_addr(), "user listening");
    let result = app.run().await;
    telemetry.shutdown().await;
    result
}
