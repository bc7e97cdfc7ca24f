//! Gateway: the only HTTP/WebSocket entry point. Serves Upbit-compatible
//! quotation and exchange endpoints (`/v1/*`) and `/websocket/v1`, the native
//! JSON API under `/api/v1`, and `/healthz` / `/readyz`; calls user, order,
//! inventory and market-data over gRPC and counts rate limits in Redis.

mod auth;
mod batch;
mod board;
pub mod config;
mod convert;
mod error;
mod exchange;
mod fanout;
mod http;
mod idempotency;
mod native;
mod observe;
mod private;
mod quotation;
mod ratelimit;
mod state;
mod views;
mod wallet;
mod web;
mod ws;
mod ws_private;

use std::net::SocketAddr;
use std::sync::Arc;

use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use exchange_proto::order::v1::order_service_client::OrderServiceClient;
use exchange_proto::user::v1::user_service_client::UserServiceClient;
use service_kit::server::Server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// A built gateway, listening, not yet serving.
pub struct App {
    server: Server,
    http: TcpListener,
    http_addr: SocketAddr,
    config: Config,
}

impl App {
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        ws::init_metrics();
        convert::init_metrics();
        board::init_metrics();
        ratelimit::init_metrics();
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
            config,
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
        let config = self.config;
        let channel = service_kit::grpc::channel;
        let upstreams = state::Upstreams {
            md: MarketDataServiceClient::new(channel(&config.market_data_url)?),
            user: UserServiceClient::new(channel(&config.user_url)?),
            order: OrderServiceClient::new(channel(&config.order_url)?),
            inventory: InventoryServiceClient::new(channel(&config.inventory_url)?),
        };
        let redis = market_data_redis(&config.redis_url)?;
        ratelimit::connect(&redis);
        let limiter = ratelimit::RateLimiter::new(redis.clone(), config.redis_prefix.clone());
        let mut gw = state::Gateway::new(
            upstreams,
            state::Limits {
                default: config.rate_limit_default,
                order: config.rate_limit_order,
                quotation: config.rate_limit_quotation,
                signup_per_hour: config.rate_limit_signup,
                per_ip: config.rate_limit_ip,
                origin_per_10s: config.rate_limit_origin,
                auth_per_minute: config.rate_limit_auth,
                login_failures: config.login_failures,
                ws_connects: config.ws_connect_limit,
                ws_open: config.ws_max_connections,
                ws_open_per_ip: config.ws_max_connections_per_ip,
                ws_max_message: config.ws_max_message,
                ws_write_buffer: config.ws_write_buffer,
                ws_buffer: config.ws_buffer,
                ws_idle: config.ws_idle_timeout,
            },
            limiter,
            state::Process {
                served_by: self.server.served_by().to_owned(),
                draining: self.server.draining(),
                health: self.server.health(),
            },
        );
        gw.trusted_proxies = config.trusted_proxies;
        gw.markets_ttl = config.markets_ttl;
        gw.request_timeout = config.request_timeout;
        gw.ws_stall = config.ws_stall_timeout;
        gw.ws_recheck = config.ws_recheck;
        gw.trust_traceparent = config.trust_traceparent;
        gw.tickers = Arc::new(board::TickerBoard::new(config.tickers_from_memory));
        let gw = Arc::new(gw);
        let (board, md, draining) = (gw.tickers.clone(), gw.md.clone(), self.server.draining());
        self.server.spawn("tickers", board.follow(md, draining));
        let router = http::router(gw);
        let draining = self.server.draining();
        let listener = self.http;
        let limits = service_kit::http::Limits {
            header_read: config.header_read_timeout,
        };
        self.server.spawn("http", async move {
            service_kit::http::serve(listener, router, limits, async move {
                draining.cancelled().await
            })
            .await;
            Ok(())
        });
        let result = self.server.serve_grpc(None, &[], async { Ok(()) }).await;
        let _ = fred::interfaces::ClientLike::quit(&redis).await;
        result
    }
}

/// A Redis client that reconnects forever; commands wait at most briefly.
fn market_data_redis(url: &str) -> anyhow::Result<fred::clients::Client> {
    use anyhow::Context as _;
    telemetry::db::set_redis_url(url);
    let config =
        fred::types::config::Config::from_url(url).context("REDIS_URL is not a redis:// URL")?;
    let client = fred::types::Builder::from_config(config)
        .set_policy(fred::types::config::ReconnectPolicy::new_exponential(
            0, 100, 5_000, 2,
        ))
        .with_connection_config(|c| c.connection_timeout = std::time::Duration::from_secs(2))
        .with_performance_config(|p| {
            p.default_command_timeout = std::time::Duration::from_millis(500)
        })
        .build()?;
    Ok(client)
}
