#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = upbit_sim::Config::parse();
    let identity = service_kit::config::RuntimeArgs {
        service_version: config.service_version.clone(),
        pod_name: config.pod_name.clone(),
        ..Default::default()
    }
    .identity("upbit-sim");
    let telemetry = telemetry::init(&identity, |k| std::env::var(k).ok())?;
    let stop = service_kit::lifecycle::signal_token();
    let app = upbit_sim::App::build(config, stop).await?;
    tracing::info!(http = %app.http_addr(), metrics = %app.metrics_addr(), "upbit-sim listening");
    let result = app.run().await;
    telemetry.shutdown().await;
    result
}
