//! Inventory service: per-user paper balances (available and locked per currency),
//! reservations for open orders and an append-only ledger, over gRPC
//! (`exchange.inventory.v1.InventoryService`). Owns Postgres schema `inventory`.

pub mod config;
pub mod domain;
mod error;
mod grpc;
mod metrics;
mod store;

use std::net::SocketAddr;

use exchange_proto::inventory::v1::inventory_service_server::{
    InventoryServiceServer, SERVICE_NAME,
};
use service_kit::postgres::PgConfig;
use service_kit::server::Server;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use config::Config;

/// Schema (and default role) owned by this service.
pub const SCHEMA: &str = "inventory";

/// A built service, listening, not yet serving.
pub struct App {
    server: Server,
    pg: PgConfig,
    pool: sqlx::PgPool,
    config: Config,
}

impl App {
    /// Binds the ports (port 0 allowed) and prepares the lazy database pool.
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        metrics::init();
        let server = Server::bind(
            Some((&config.grpc_addr, &config.grpc)),
            &config.metrics_addr,
            "inventory",
            &config.runtime,
            &[SERVICE_NAME],
            stop,
        )
        .await?;
        let pg = config.db.pg_config(SCHEMA);
        let pool = pg.lazy_pool()?;
        Ok(Self {
            server,
            pg,
            pool,
            config,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.server
            .grpc_addr()
            .expect("inventory binds a gRPC port")
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
        let config = self.config;
        let service = grpc::Inventory::new(
            self.pool,
            grpc::Settings {
                initial_krw: config.initial_krw_balance,
                deposit_cap: config.deposit_cap,
                deposit_currencies: config.deposit_currencies,
                fault_after_commit: config.fault_unavailable_after_commit,
            },
        );
        let routes = Routes::new(InventoryServiceServer::new(service));
        self.server
            .serve_grpc(Some(routes), DESCRIPTORS, ready)
            .await
    }
}

const DESCRIPTORS: &[&[u8]] = &[exchange_proto::inventory::v1::FILE_DESCRIPTOR_SET];
