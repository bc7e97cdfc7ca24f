//! Ingestor: keeps a WebSocket subscription to Upbit (or `upbit-sim`) for the
//! configured markets and forwards normalised events to market-data in batches.
//!
//! feed (WebSocket) → [`buffer::Buffer`] (bounded, conflating) → forwarder (gRPC
//! client stream). Serves gRPC health and reflection only; ready once the feed is
//! subscribed the first time.

pub mod buffer;
pub mod config;
mod convert;
pub mod feed;
mod forward;
pub mod markets;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use service_kit::server::Server;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// A built service, listening, not yet serving.
pub struct App {
    server: Server,
    config: Config,
}

impl App {
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        metrics::init();
        let server = Server::bind(
            Some((&config.grpc_addr, &config.grpc)),
            &config.metrics_addr,
            "ingestor",
            &config.runtime,
            &[],
            stop,
        )
        .await?;
        Ok(Self { server, config })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.server.grpc_addr().expect("ingestor binds a gRPC port")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// Runs the feed and the forwarder until the stop token is cancelled.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let config = self.config;
        let draining = self.server.draining();
        // Ingest is a client stream: no call timeout (the answer comes at its end).
        let channel = service_kit::grpc::streaming_channel(&config.market_data_url)?;
        let buffer = Arc::new(buffer::Buffer::new(config.buffer_trades));
        let subscribed = Arc::new(Notify::new());
        let source = config.runtime.identity("ingestor").served_by();

        let pipeline = {
            let (buffer, subscribed, draining) =
                (buffer.clone(), subscribed.clone(), draining.clone());
            async move {
                let lister = markets::Lister::new(&config.upbit_rest_url)?;
                let listed = lister.fetch_until_listed(&draining).await?;
                let chosen = markets::select(&config.markets, &listed);
                anyhow::ensure!(
                    !chosen.is_empty(),
                    "UPBIT_MARKETS={} selects no market",
                    config.markets
                );
                let feed_config = feed::FeedConfig {
                    url: config.upbit_ws_url.clone(),
                    markets: chosen.iter().map(|m| m.market.clone()).collect(),
                    ping_interval: config.ping_interval,
                    stale_after: config.stale_after,
                    max_connects_per_sec: config.max_connects_per_sec,
                    format: config.feed_format,
                };
                let (followed, markets) = watch::channel(chosen);
                let refresh = async {
                    if !config.markets_refresh.is_zero() {
                        let every = config.markets_refresh;
                        lister
                            .follow(&config.markets, every, followed, draining.clone())
                            .await;
                    }
                };
                let forward_config = forward::ForwardConfig {
                    source,
                    markets,
                    batch_max: config.batch_max,
                    batch_linger: config.batch_linger,
                };
                let feed_stop = CancellationToken::new();
                let feed = feed::run(feed_config, buffer.clone(), feed_stop.clone(), move || {
                    subscribed.notify_one()
                });
                let forwarder = forward::run(channel, forward_config, buffer, draining.clone());
                // Stop reading the feed first, then let the forwarder flush.
                let stop_feed = async {
                    draining.cancelled().await;
                    feed_stop.cancel();
                };
                let (feed, forwarder, (), ()) = tokio::join!(feed, forwarder, stop_feed, refresh);
                feed?;
                forwarder
            }
        };
        self.server.spawn("pipeline", pipeline);
        let ready = async move {
            subscribed.notified().await;
            Ok(())
        };
        self.server.serve_grpc(None, &[], ready).await
    }
}
