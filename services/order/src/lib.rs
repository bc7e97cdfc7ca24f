//! Order service: order placement, cancellation and queries over gRPC
//! (`exchange.order.v1.OrderService`); market orders walk the live orderbook,
//! limit orders fill when live trades cross their price. Owns Postgres schema
//! `orders`; calls inventory (funds) and market-data (prices).
//!
//! See [`service`] for the flow and its crash recovery, [`matcher`] for limit
//! orders.

pub mod book;
pub mod config;
pub mod domain;
mod error;
mod grpc;
mod holding;
pub mod matcher;
mod metrics;
pub mod record;
pub mod service;
mod store;
mod updates;

use std::net::SocketAddr;
use std::sync::Arc;

use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
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
    config: Config,
}

impl App {
    /// Binds the ports (port 0 allowed) and prepares the lazy database pool.
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        metrics::init();
        let server = Server::bind(
            Some((&config.grpc_addr, &config.grpc)),
            &config.metrics_addr,
            "order",
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
        self.server.grpc_addr().expect("order binds a gRPC port")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// Serves until the stop token is cancelled and the drain completes.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let config = self.config;
        let inventory =
            InventoryServiceClient::new(service_kit::grpc::channel(&config.inventory_url)?);
        let market_data =
            MarketDataServiceClient::new(service_kit::grpc::channel(&config.market_data_url)?);
        let draining = self.server.draining();
        let (stored, to_confirm) = tokio::sync::mpsc::channel(16 * 1024);
        self.server.spawn(
            "confirm-stored",
            service::confirm_stored(inventory.clone(), to_confirm, draining.clone()),
        );
        let orders = Arc::new(service::Orders::new(
            self.pool.clone(),
            inventory,
            market_data,
            service::Rules {
                fee_rate: config.fee_rate,
                max_book_age: config.max_book_age,
                plan_ttl: config.plan_ttl,
                max_open_orders: config.max_open_orders,
                pending_give_up: config.pending_give_up,
                fault: config.fault_after,
            },
            stored,
        ));
        let (changes, _) = tokio::sync::broadcast::channel(4096);
        self.server.spawn(
            "order-updates",
            updates::listen(self.pool.clone(), changes.clone(), draining.clone()),
        );

        let stopping = self.server.stopping();
        let (pg, pool) = (self.pg.clone(), self.pool.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let ready = async move {
            pg.prepare(&pool, sqlx::migrate!("./migrations"), &stopping)
                .await?;
            let _ = ready_tx.send(());
            Ok(())
        };
        if config.matcher {
            let (orders, options, stop) =
                (orders.clone(), self.pg.connect_options()?, draining.clone());
            let (every, min_age) = (config.recovery_interval, config.recovery_min_age);
            self.server.spawn("matcher", async move {
                // Match only once this replica's migrations are done.
                if ready_rx.await.is_err() {
                    return Ok(());
                }
                Box::pin(matcher::run(orders, options, every, min_age, stop)).await
            });
        }
        let routes = Routes::new(OrderServiceServer::new(grpc::Order::new(
            orders, changes, draining,
        )));
        self.server
            .serve_grpc(Some(routes), DESCRIPTORS, ready)
            .await
    }
}

const DESCRIPTORS: &[&[u8]] = &[exchange_proto::order::v1::FILE_DESCRIPTOR_SET];
