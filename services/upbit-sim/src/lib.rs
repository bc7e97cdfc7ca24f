//! upbit-sim: a simulated Upbit exchange for offline runs, tests and benchmarks.

pub mod config;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
    stop: CancellationToken,
}

impl App {
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        let listener = service_kit::server::bind(&config.http_addr, "HTTP_ADDR").await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            config,
            stop,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let router = Router::new().route("/healthz", get(|| async { "ok" }));
        let stop = self.stop.clone();
        let serve = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        tokio::select! {
            result = serve => Ok(result?),
            _ = async {
                self.stop.cancelled().await;
                tokio::time::sleep(self.config.shutdown_timeout).await;
            } => Ok(()),
        }
    }
}
