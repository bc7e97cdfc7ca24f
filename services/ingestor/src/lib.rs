//! Ingestor: keeps a WebSocket subscription to Upbit (or `upbit-sim`) and forwards
//! normalised events to market-data. Serves gRPC health and reflection only.

pub mod config;

use std::net::SocketAddr;

use service_kit::server::Server;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// A built service, listening, not yet serving.
pub struct App {
    server: Server,
}

impl App {
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        let server = Server::bind(
            Some(&config.grpc_addr),
            &config.metrics_addr,
            "ingestor",
            &config.runtime,
            &[],
            stop,
        )
        .await?;
        Ok(Self { server })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.server.grpc_addr().expect("ingestor binds a gRPC port")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// Serves until the stop token is cancelled and the drain completes.
    pub async fn run(self) -> anyhow::Result<()> {
        self.server.serve_grpc(None, &[], async { Ok(()) }).await
    }
}
