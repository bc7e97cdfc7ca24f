//! Gateway: the only HTTP/WebSocket entry point. Serves the native JSON API under
//! `/api/v1`, Upbit-compatible `/v1/*` and `/websocket/v1`, the dashboard, and
//! `/healthz` / `/readyz`; calls user, order, inventory and market-data over gRPC.

pub mod config;
mod error;
mod http;

use std::net::SocketAddr;

use service_kit::server::Server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// A built gateway, listening, not yet serving.
pub struct App {
    server: Server,
    http: TcpListener,
    http_addr: SocketAddr,
}

impl App {
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        let http = service_kit::server::bind(&config.http_addr, "HTTP_ADDR").await?;
        let http_addr = http.local_addr()?;
        let server = Server::bind(
            None,
            &config.metrics_addr,
            "gateway",
            &config.runtime,
            &[],
            stop,
        )
        .await?;
        Ok(Self {
            server,
            http,
            http_addr,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// Serves until the stop token is cancelled and the drain completes.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let router = http::router(self.server.health());
        let draining = self.server.draining();
        let listener = self.http;
        self.server.spawn("http", async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { draining.cancelled().await })
                .await?;
            Ok(())
        });
        self.server.serve_grpc(None, &[], async { Ok(()) }).await
    }
}
