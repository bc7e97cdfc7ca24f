//! Market-data service: the latest ticker and orderbook per market in Redis
//! (published on pub/sub channels for fan-out), trades and 1-minute candles in
//! Postgres, queries and live streams over gRPC
//! (`exchange.marketdata.v1.MarketDataService`). Owns Postgres schema
//! `market_data` and Redis keys `md:*`.

pub mod config;
mod grpc;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use exchange_proto::marketdata::v1::market_data_service_server::{
    MarketDataServiceServer, SERVICE_NAME,
};
use fred::prelude::{ClientLike, ReconnectPolicy};
use service_kit::postgres::PgConfig;
use service_kit::server::Server;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use config::Config;

/// Schema (and default role) owned by this service.
pub const SCHEMA: &str = "market_data";

/// A built service, listening, not yet serving.
pub struct App {
    server: Server,
    pg: PgConfig,
    pool: sqlx::PgPool,
    redis: fred::clients::Client,
}

/// A Redis client that reconnects forever with backoff; commands issued while
/// disconnected wait (bounded by their timeout) instead of failing the process.
pub fn redis_client(url: &str) -> anyhow::Result<fred::clients::Client> {
    let config =
        fred::types::config::Config::from_url(url).context("REDIS_URL is not a redis:// URL")?;
    let client = fred::types::Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(5);
        })
        .build()?;
    Ok(client)
}

impl App {
    /// Binds the ports (port 0 allowed) and prepares lazy Postgres and Redis clients.
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        let server = Server::bind(
            Some(&config.grpc_addr),
            &config.metrics_addr,
            "market-data",
            &config.runtime,
            &[SERVICE_NAME],
            stop,
        )
        .await?;
        let pg = config.db.pg_config(SCHEMA);
        let pool = pg.lazy_pool()?;
        let redis = redis_client(&config.redis_url)?;
        Ok(Self {
            server,
            pg,
            pool,
            redis,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.server
            .grpc_addr()
            .expect("market-data binds a gRPC port")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// Serves until the stop token is cancelled and the drain completes.
    pub async fn run(self) -> anyhow::Result<()> {
        let stopping = self.server.stopping();
        let (pg, pool, redis) = (self.pg, self.pool.clone(), self.redis.clone());
        let _connection = redis.connect();
        let ready = async move {
            pg.prepare(&pool, sqlx::migrate!("./migrations"), &stopping)
                .await?;
            redis
                .wait_for_connect()
                .await
                .context("connecting to Redis")?;
            Ok(())
        };
        let routes = Routes::new(MarketDataServiceServer::new(grpc::MarketData::new(
            self.pool,
            self.redis.clone(),
        )));
        let result = self
            .server
            .serve_grpc(Some(routes), DESCRIPTORS, ready)
            .await;
        let _ = self.redis.quit().await;
        result
    }
}

const DESCRIPTORS: &[&[u8]] = &[exchange_proto::marketdata::v1::FILE_DESCRIPTOR_SET];
