//! What every handler shares.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use exchange_proto::marketdata::v1 as pb;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use exchange_proto::order::v1::order_service_client::OrderServiceClient;
use exchange_proto::user::v1::user_service_client::UserServiceClient;
use service_kit::grpc::Channel;
use service_kit::health::Health;
use service_kit::ratelimit::PerSecond;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::ratelimit::RateLimiter;

/// The gRPC clients of the services behind the gateway.
#[derive(Clone)]
pub struct Upstreams {
    pub md: MarketDataServiceClient<Channel>,
    pub user: UserServiceClient<Channel>,
    pub order: OrderServiceClient<Channel>,
    pub inventory: InventoryServiceClient<Channel>,
}

/// Request limits (0 = unlimited).
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    /// Private API requests per second per user or key, Upbit's `default` group.
    pub default: u32,
    /// Order placements and cancels per second per user or key, Upbit's `order` group.
    pub order: u32,
    /// Quotation requests per second per IP and group.
    pub quotation: u32,
    /// Sign-ups per IP per hour.
    pub signup_per_hour: u32,
    /// New WebSocket connections per second per IP.
    pub ws_connects: u32,
}

impl Limits {
    /// The per-second limit of an Upbit exchange group.
    pub fn private(&self, group: &str) -> u32 {
        if group == "order" {
            self.order
        } else {
            self.default
        }
    }
}

pub struct Gateway {
    pub md: MarketDataServiceClient<Channel>,
    pub user: UserServiceClient<Channel>,
    pub order: OrderServiceClient<Channel>,
    pub inventory: InventoryServiceClient<Channel>,
    pub limits: Limits,
    pub limiter: RateLimiter,
    pub ws_connects: PerSecond<IpAddr>,
    pub ws_buffer: usize,
    pub ws_idle: Duration,
    pub trust_forwarded: bool,
    pub served_by: String,
    pub draining: CancellationToken,
    pub health: Health,
    markets: RwLock<Option<(Instant, Arc<Vec<pb::Market>>)>>,
    /// Access tokens the user service verified.
    pub tokens: crate::auth::TokenCache,
}

pub type Shared = Arc<Gateway>;

/// How long the market list is cached.
const MARKETS_TTL: Duration = Duration::from_secs(30);

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        upstreams: Upstreams,
        limits: Limits,
        limiter: RateLimiter,
        ws_buffer: usize,
        ws_idle: Duration,
        trust_forwarded: bool,
        served_by: String,
        draining: CancellationToken,
        health: Health,
    ) -> Self {
        Self {
            md: upstreams.md,
            user: upstreams.user,
            order: upstreams.order,
            inventory: upstreams.inventory,
            limits,
            limiter,
            ws_connects: PerSecond::new(limits.ws_connects),
            ws_buffer,
            ws_idle,
            trust_forwarded,
            served_by,
            draining,
            health,
            markets: RwLock::new(None),
            tokens: Default::default(),
        }
    }

    /// The market list (cached briefly).
    pub async fn markets(&self) -> Result<Arc<Vec<pb::Market>>, ApiError> {
        if let Some((at, list)) = self.markets.read().ok().and_then(|m| m.clone())
            && at.elapsed() < MARKETS_TTL
        {
            return Ok(list);
        }
        let list = Arc::new(
            self.md
                .clone()
                .list_markets(pb::ListMarketsRequest::default())
                .await?
                .into_inner()
                .markets,
        );
        if let Ok(mut cache) = self.markets.write() {
            *cache = Some((Instant::now(), list.clone()));
        }
        Ok(list)
    }
}

/// The client's address: the first `X-Forwarded-For` hop when trusted (behind
/// the mesh ingress), else the TCP peer.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<Shared> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        if state.trust_forwarded
            && let Some(ip) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return Ok(Self(ip));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(Self(peer))
    }
}
