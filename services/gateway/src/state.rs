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
    /// Private API requests per second per user (all their keys together), Upbit's `default` group.
    pub default: u32,
    /// Order placements and cancels per second per user (all their keys together), Upbit's `order` group.
    pub order: u32,
    /// Quotation requests per second per IP and group.
    pub quotation: u32,
    /// Sign-ups per IP per hour.
    pub signup_per_hour: u32,
    /// Requests per second per IP on every route, before authentication.
    pub per_ip: u32,
    /// Quotation and public WebSocket requests carrying `Origin`, per IP per
    /// 10 s (Upbit's browser rule).
    pub origin_per_10s: u32,
    /// Sign-in, sign-up and refresh requests per IP per minute.
    pub auth_per_minute: u32,
    /// Failed logins per account in 15 minutes.
    pub login_failures: u32,
    /// New WebSocket connections per second per IP.
    pub ws_connects: u32,
    /// Open WebSocket connections per process, and per IP (0 = unlimited).
    pub ws_open: usize,
    pub ws_open_per_ip: usize,
    /// Largest WebSocket message a client may send, in bytes.
    pub ws_max_message: usize,
    /// Bytes a WebSocket connection gathers before writing to its socket, and
    /// so about the most it holds unsent: a client that does not read stalls
    /// only its own connection, which falls behind its feeds and is closed.
    pub ws_write_buffer: usize,
    /// Messages a feed keeps for its slowest WebSocket client.
    pub ws_buffer: usize,
    /// How long a WebSocket connection may stay silent.
    pub ws_idle: Duration,
}

/// What the gateway takes from the process serving it.
pub struct Process {
    /// This process's `service/version/pod`.
    pub served_by: String,
    pub draining: CancellationToken,
    pub health: Health,
}

impl Limits {
    /// The per-second limit of an Upbit exchange group.
    pub fn private(&self, group: &str) -> u32 {
        match group {
            "order" => self.order,
            // Upbit's order-test group: 8/s, never more than placements.
            "order-test" => self.order.min(8),
            _ => self.default,
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
    pub ws_open: Arc<WsSlots>,
    /// The market-data streams WebSocket subscriptions share.
    pub fanout: Arc<crate::fanout::Fanout>,
    /// Longest a WebSocket write may wait for the client to read before the
    /// connection is closed as too slow.
    pub ws_stall: Duration,
    /// How often a private WebSocket's credentials are checked again.
    pub ws_recheck: Duration,
    /// Proxies whose X-Forwarded-For entries are trusted (see [`ClientIp`]).
    pub trusted_proxies: usize,
    /// Longest time a request may take to be read and answered.
    pub request_timeout: Duration,
    /// Whether a client's `traceparent` becomes the parent of its request's
    /// trace (otherwise it is only linked).
    pub trust_traceparent: bool,
    pub served_by: String,
    pub draining: CancellationToken,
    pub health: Health,
    markets: RwLock<Option<(Instant, Arc<Vec<pb::Market>>)>>,
    /// How long the market list (names, warning and caution) is cached.
    pub markets_ttl: Duration,
    /// Access tokens the user service verified.
    pub tokens: crate::auth::TokenCache,
    /// Tickers followed on market-data's stream.
    pub tickers: Arc<crate::board::TickerBoard>,
}

pub type Shared = Arc<Gateway>;

impl Gateway {
    /// A gateway with these limits; the settings below them start at their
    /// defaults (no trusted proxy, 10 s WebSocket stall, 30 s requests, market
    /// list cached 30 s).
    pub fn new(
        upstreams: Upstreams,
        limits: Limits,
        limiter: RateLimiter,
        process: Process,
    ) -> Self {
        let fanout = Arc::new(crate::fanout::Fanout::new(
            upstreams.md.clone(),
            limits.ws_buffer,
        ));
        let Process {
            served_by,
            draining,
            health,
        } = process;
        Self {
            md: upstreams.md,
            user: upstreams.user,
            order: upstreams.order,
            inventory: upstreams.inventory,
            limits,
            limiter,
            ws_connects: PerSecond::new(limits.ws_connects),
            ws_open: Arc::new(WsSlots::default()),
            fanout,
            ws_stall: Duration::from_secs(10),
            ws_recheck: Duration::from_secs(60),
            trusted_proxies: 0,
            request_timeout: Duration::from_secs(30),
            trust_traceparent: false,
            served_by,
            draining,
            health,
            markets: RwLock::new(None),
            markets_ttl: Duration::from_secs(30),
            tokens: Default::default(),
            tickers: Default::default(),
        }
    }

    /// The market list (cached briefly).
    pub async fn markets(&self) -> Result<Arc<Vec<pb::Market>>, ApiError> {
        if let Some((at, list)) = self.markets.read().ok().and_then(|m| m.clone())
            && at.elapsed() < self.markets_ttl
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

/// Open WebSocket connections, in all and per client IP.
#[derive(Default)]
pub struct WsSlots {
    open: std::sync::Mutex<(usize, std::collections::HashMap<IpAddr, usize>)>,
}

/// Why a connection was not let in.
#[derive(Debug, PartialEq, Eq)]
pub enum WsFull {
    Process,
    Ip,
}

/// A connection's place, given back when dropped.
pub struct WsSlot {
    slots: Arc<WsSlots>,
    ip: IpAddr,
}

impl WsSlots {
    /// A place for one more connection from `ip` within the limits (0 = none).
    pub fn take(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        max_per_ip: usize,
    ) -> Result<WsSlot, WsFull> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if max > 0 && open.0 >= max {
            return Err(WsFull::Process);
        }
        let per_ip = open.1.get(&ip).copied().unwrap_or(0);
        if max_per_ip > 0 && per_ip >= max_per_ip {
            return Err(WsFull::Ip);
        }
        open.0 += 1;
        open.1.insert(ip, per_ip + 1);
        Ok(WsSlot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// The client's address. Each of the `trusted` proxies in front of the gateway
/// appends the address it saw to `X-Forwarded-For`, so the client's is the
/// `trusted`-th entry from the right; entries further left were written by the
/// client and are ignored. With no trusted proxy, or a header with fewer
/// entries than proxies, it is the TCP peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    pub fn of(forwarded: Option<&str>, peer: IpAddr, trusted: usize) -> Self {
        if trusted == 0 {
            return Self(peer);
        }
        let hops: Vec<&str> = forwarded
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        hops.len()
            .checked_sub(trusted)
            .and_then(|i| hops[i].parse::<IpAddr>().ok())
            .map_or(Self(peer), Self)
    }
}

impl FromRequestParts<Shared> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        Ok(Self::of(forwarded, peer, state.trusted_proxies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hops_trusted_proxies_added_count() {
        let peer = IpAddr::from([10, 0, 0, 9]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // No proxy trusted: whatever the client writes is ignored.
        assert_eq!(ClientIp::of(Some("1.2.3.4"), peer, 0).0, peer);
        // Behind one proxy: the entry it appended, not the client's own ones.
        assert_eq!(
            ClientIp::of(Some("6.6.6.6, 7.7.7.7, 1.2.3.4"), peer, 1).0,
            ip("1.2.3.4")
        );
        assert_eq!(ClientIp::of(Some("1.2.3.4"), peer, 1).0, ip("1.2.3.4"));
        // Two proxies: the address the outer one saw.
        assert_eq!(
            ClientIp::of(Some("6.6.6.6, 1.2.3.4, 10.1.1.1"), peer, 2).0,
            ip("1.2.3.4")
        );
        // Fewer entries than proxies, none, or garbage: the peer.
        assert_eq!(ClientIp::of(Some("1.2.3.4"), peer, 2).0, peer);
        assert_eq!(ClientIp::of(None, peer, 1).0, peer);
        assert_eq!(ClientIp::of(Some("not-an-ip"), peer, 1).0, peer);
    }
}
