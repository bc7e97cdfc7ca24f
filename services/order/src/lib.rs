//! Order service: order placement, cancellation and queries over gRPC
//! (`exchange.order.v1.OrderService`); market orders walk the live orderbook,
//! limit orders fill when live trades cross their price. Owns Postgres schema
//! `orders`; calls inventory (funds) and market-data (prices).

pub mod config;
mod grpc;

use std::net::SocketAddr;

use exchange_proto::order::v1::order_service_server::{OrderServiceServer, SERVICE_NAME};
use service_kit::postgres::PgConfig;
use service_kit::server::Server;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use config::Config;

/// Schema (and default role) owned by this service.
pub const SCHEMA: &str = "orders";

/// A built service, listening, not yet serving.
pub struct App {
    server: Server,
    pg: PgConfig,
    pool: sqlx::PgPool,
}

impl App {
    /// Binds the ports (port 0 allowed) and prepares the lazy database pool.
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        let server = Server::bind(
            Some(&config.grpc_addr),
            &config.metrics_addr,
            "order",
            &config.runtime,
            &[SERVICE_NAME],
            stop,
        )
        .await?;
        let pg = config.db.pg_config(SCHEMA);
        let pool = pg.lazy_pool()?;
        Ok(Self { server, pg, pool })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.server.grpc_addr().expect("order binds a gRPC port")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// Serves until the stop token is cancelled and the drain completes.
    pub async fn run(self) -> anyhow::Result<()> {
        let stopping = self.server.stopping();
        let (pg, pool) = (self.pg, self.pool.clone());
        let ready = async move {
            pg.prepare(&pool, sqlx::migrate!("./migrations"), &stopping)
                .await
        };
        let routes = Routes::new(OrderServiceServer::new(grpc::Order::new(self.pool)));
        self.server
            .serve_grpc(Some(routes), DESCRIPTORS, ready)
            .await
    }
}

const DESCRIPTORS: &[&[u8]] = &[exchange_proto::order::v1::FILE_DESCRIPTOR_SET];
