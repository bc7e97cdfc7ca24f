//! Market-data service: the latest ticker and orderbook per market in Redis
//! (published on pub/sub channels for fan-out), trades and 1-minute candles in
//! Postgres, queries and live streams over gRPC
//! (`exchange.marketdata.v1.MarketDataService`). Owns Postgres schema
//! `market_data` and Redis keys `<REDIS_PREFIX>md:*`.

pub mod backfill;
pub mod config;
mod convert;
mod error;
mod grpc;
pub mod hot;
mod ingest;
mod live;
mod markets;
mod metrics;
pub mod store;
mod writer;

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
    subscriber: fred::clients::SubscriberClient,
    config: Config,
}

/// A Redis client builder that reconnects forever with backoff; commands issued
/// while disconnected wait (bounded by their timeout) instead of failing the process.
pub fn redis_builder(url: &str) -> anyhow::Result<fred::types::Builder> {
    telemetry::db::set_redis_url(url);
    let config =
        fred::types::config::Config::from_url(url).context("REDIS_URL is not a redis:// URL")?;
    let mut builder = fred::types::Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_secs(5);
            p.broadcast_channel_capacity = 16_384;
        });
    Ok(builder)
}

/// `market-data retention`: deletes the stored trades older than `keep`
/// (1-minute candles stay) and exits; returns how many it deleted. Run it from
/// a CronJob or by hand; it needs only the database (already migrated by the
/// service).
pub async fn retention(config: &Config, keep: std::time::Duration) -> anyhow::Result<u64> {
    let pool = config.db.pg_config(SCHEMA).lazy_pool()?;
    let keep = chrono::Duration::from_std(keep)?;
    let before = chrono::Utc::now() - keep;
    let deleted = store::forget_old_trades(&pool, before, 10_000).await?;
    pool.close().await;
    Ok(deleted)
}

/// `market-data backfill`: stores the trades Upbit lists for the window that
/// are missing here (and folds them into their candles), then exits. See
/// [`backfill`].
pub async fn backfill(
    config: &Config,
    job: &backfill::Backfill,
) -> anyhow::Result<backfill::Backfilled> {
    let pool = config.db.pg_config(SCHEMA).lazy_pool()?;
    let done = backfill::run(&pool, job).await;
    pool.close().await;
    done
}

impl App {
    /// Binds the ports (port 0 allowed) and prepares lazy Postgres and Redis clients.
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        metrics::init();
        let server = Server::bind(
            Some((&config.grpc_addr, &config.grpc)),
            &config.metrics_addr,
            "market-data",
            &config.runtime,
            &[SERVICE_NAME],
            stop,
        )
        .await?;
        let mut pg = config.db.pg_config(SCHEMA);
        pg.optional_extensions = &["timescaledb"];
        let pool = pg.lazy_pool()?;
        let builder = redis_builder(&config.redis_url)?;
        let redis = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        Ok(Self {
            server,
            pg,
            pool,
            redis,
            subscriber,
            config,
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
    pub async fn run(mut self) -> anyhow::Result<()> {
        let stopping = self.server.stopping();
        let draining = self.server.draining();
        let _connection = self.redis.connect();
        let hot = hot::Hot::new(self.redis.clone(), self.config.redis_prefix.clone());

        let (live, _) = tokio::sync::broadcast::channel(65_536);
        let fan_out = {
            let (hot, live, subscriber, draining) = (
                hot.clone(),
                live.clone(),
                self.subscriber.clone(),
                draining.clone(),
            );
            async move { hot.fan_out(subscriber, live, draining).await }
        };
        self.server.spawn("fan-out", fan_out);

        let writer_stop = CancellationToken::new();
        let (writer, writer_task) = writer::Writer::spawn(
            self.pool.clone(),
            self.config.write_queue,
            self.config.write_batch,
            self.config.write_linger,
            writer_stop.clone(),
        );
        let service = grpc::MarketData::new(
            self.pool.clone(),
            hot,
            writer,
            markets::Markets::new(self.pool.clone(), self.config.markets_ttl),
            live::LiveStreams {
                live,
                draining,
                buffer: self.config.stream_buffer,
                slow_after: self.config.stream_slow_after,
            },
        );

        let (pg, pool, redis) = (self.pg, self.pool.clone(), self.redis.clone());
        let ready = async move {
            pg.prepare(&pool, sqlx::migrate!("./migrations"), &stopping)
                .await?;
            redis
                .wait_for_connect()
                .await
                .context("connecting to Redis")?;
            Ok(())
        };
        let routes = Routes::new(MarketDataServiceServer::new(service));
        let result = self
            .server
            .serve_grpc(Some(routes), DESCRIPTORS, ready)
            .await;
        // The ingest handlers are gone: write what they queued, then close.
        writer_stop.cancel();
        let _ = writer_task.await;
        let _ = self.redis.quit().await;
        result
    }
}

const DESCRIPTORS: &[&[u8]] = &[exchange_proto::marketdata::v1::FILE_DESCRIPTOR_SET];
