//! One market-data stream per type in each gateway, shared by every WebSocket
//! subscription of that type whatever its markets.
//!
//! An *upstream* follows market-data's stream of one type (ticker, trade,
//! orderbook) for every market and hands each message to its market's
//! *feed*, which converts it once (only when somebody follows that market)
//! and hands the same [`Event`] to every subscriber through a broadcast ring.
//! A gateway so holds a handful of streams to market-data (three per route in
//! use) however many markets its clients follow: the mesh bounds concurrent
//! requests per connection pool, and a client subscribing every market of
//! every type must not use them up. Each event is
//! rendered at most once per format (and, for orderbooks, per depth and
//! level asked), on the first subscriber's read; the others get the same
//! bytes. A feed lives as long as somebody holds it, an upstream as long as
//! one of its feeds: the last subscription gone, the stream is closed.
//!
//! Buffers: the ring is the feed's, not the connections' — a connection holds
//! only its place in it. A connection more than the ring's length behind
//! ([`Fanout::new`]'s `capacity`, `WS_BUFFER`) is told so ([`Lagged`]) and is
//! closed as too slow; what it has not yet sent is bounded in bytes by the
//! socket's write buffer.
//!
//! Routed sessions (`x-canary`, `x-preview`) get feeds and upstreams of their
//! own, opened with those headers, so they see the versions they asked for.
//!
//! [`Lagged`]: tokio::sync::broadcast::error::RecvError::Lagged

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use exchange_proto::marketdata::v1 as pb;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use prometheus::{IntGaugeVec, Opts};
use rust_decimal::Decimal;
use telemetry::propagation::RequestScope;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;
use upbit::request::DEFAULT_ORDERBOOK_DEPTH;
use upbit::write::{self, Format};

use crate::convert;

static FEEDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let g = IntGaugeVec::new(
        Opts::new(
            "gateway_ws_feeds",
            "Markets followed for WebSocket subscribers, by type (each shared by every \
             subscriber; one market-data stream per type carries them all).",
        ),
        &["type"],
    )
    .expect("valid metric definition");
    prometheus::register(Box::new(g.clone())).expect("metric registered once");
    g
});

/// Registers this module's series at start.
pub(crate) fn init_metrics() {
    for kind in [Kind::Ticker, Kind::Trade, Kind::Orderbook] {
        FEEDS.with_label_values(&[kind.as_str()]);
    }
}

/// What a feed follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Ticker,
    Trade,
    Orderbook,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ticker => "ticker",
            Kind::Trade => "trade",
            Kind::Orderbook => "orderbook",
        }
    }
}

/// One message of a feed, converted once.
#[derive(Debug)]
pub enum Payload {
    /// (Boxed: the largest by far, and an event is allocated once.)
    Ticker(Box<upbit::Ticker>),
    Trade(upbit::Trade),
    /// At the default depth; cut and grouped per subscriber when rendered.
    Orderbook(upbit::Orderbook),
}

/// How a subscriber wants a message written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub format: Format,
    /// Orderbook levels (others ignore it).
    pub depth: usize,
    /// Orderbook grouping, 0 for none (others ignore it).
    pub level: Decimal,
}

/// Most orderbook shapes one event keeps rendered (more are rendered per read).
const MAX_SHAPES: usize = 16;

/// A feed's message and its renderings.
pub struct Event {
    pub payload: Payload,
    /// One per format, for tickers, trades and plain orderbooks.
    frames: [OnceLock<Bytes>; 4],
    /// Orderbooks cut or grouped otherwise.
    shaped: Mutex<Vec<(Shape, Option<Bytes>)>>,
}

fn format_index(format: Format) -> usize {
    match format {
        Format::Default => 0,
        Format::Simple => 1,
        Format::JsonList => 2,
        Format::SimpleList => 3,
    }
}

impl Event {
    pub fn new(payload: Payload) -> Self {
        Self {
            payload,
            frames: Default::default(),
            shaped: Mutex::default(),
        }
    }

    /// The frame in `shape`, rendered once for all who ask alike; none for an
    /// orderbook its market cannot group by the shape's level.
    pub fn frame(&self, shape: Shape) -> Option<Bytes> {
        let plain = !matches!(self.payload, Payload::Orderbook(_))
            || (shape.depth == DEFAULT_ORDERBOOK_DEPTH && shape.level.is_zero());
        if plain {
            return self.frames[format_index(shape.format)]
                .get_or_init(|| render(&self.payload, shape).unwrap_or_default())
                .clone()
                .into();
        }
        let mut shaped = self.shaped.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, bytes)) = shaped.iter().find(|(s, _)| *s == shape) {
            return bytes.clone();
        }
        let bytes = render(&self.payload, shape);
        if shaped.len() < MAX_SHAPES {
            shaped.push((shape, bytes.clone()));
        }
        bytes
    }
}

/// `payload` written in `shape` (none: see [`shaped_book`]).
pub fn render(payload: &Payload, shape: Shape) -> Option<Bytes> {
    Some(Bytes::from(match payload {
        Payload::Ticker(t) => write::ticker(t, shape.format),
        Payload::Trade(t) => write::trade(t, shape.format),
        Payload::Orderbook(o) => write::orderbook(&shaped_book(o, shape)?, shape.format),
    }))
}

/// `book` cut to the shape's depth and grouped by its level. As on Upbit, a
/// level the market does not support (not a KRW market, or not a multiple of
/// its price unit) yields nothing.
pub fn shaped_book(book: &upbit::Orderbook, shape: Shape) -> Option<upbit::Orderbook> {
    if !shape.level.is_zero() && !groupable(book, shape.level) {
        return None;
    }
    Some(book.clone().grouped(shape.level, shape.depth))
}

/// Whether `book` may be grouped by `level`: a KRW market (the only ones
/// Upbit groups) and a multiple of the price unit at its best ask.
pub fn groupable(book: &upbit::Orderbook, level: Decimal) -> bool {
    let price = book
        .orderbook_units
        .first()
        .map(|u| u.ask_price)
        .unwrap_or_default();
    book.code.starts_with("KRW-") && (level % upbit::market::krw_tick(price)).is_zero()
}

/// The subscribers' side of one type and market: a ring of its events. Its
/// market-data stream is its type's [`Upstream`], shared with the other
/// markets. Dropping the last holder leaves the upstream (and closes it when
/// no other market of it is followed).
pub struct Feed {
    kind: Kind,
    market: String,
    tx: broadcast::Sender<Arc<Event>>,
    upstream: Arc<Upstream>,
}

impl Feed {
    /// A place in the ring: every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Returns once the first attempt to open the upstream is over (opened or
    /// failed: it goes on retrying). Events of this market are delivered from
    /// the feed's creation on.
    pub async fn opened(&self) {
        let mut opened = self.upstream.opened.clone();
        let _ = opened.wait_for(|o| *o).await;
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        FEEDS.with_label_values(&[self.kind.as_str()]).dec();
        let mut routes = self
            .upstream
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A feed made for this market since this one was given up has its own ring.
        if routes
            .get(&self.market)
            .is_some_and(|tx| tx.same_channel(&self.tx))
        {
            routes.remove(&self.market);
        }
    }
}

/// Each followed market's ring, by market code.
type Routes = Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Event>>>>>;

/// One market-data stream of a type, for every market, for sessions routed
/// alike: it hands each message to its market's feed, converted only when that
/// feed has subscribers. So a gateway opens at most one stream per type and
/// route (what the mesh's connection pool to market-data counts), however many
/// markets its clients follow. Dropping the last holder closes the stream.
struct Upstream {
    routes: Routes,
    opened: watch::Receiver<bool>,
    _stop: DropGuard,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    market: String,
    /// The routing headers of the sessions it serves.
    route: String,
}

type Md = pb::market_data_service_client::MarketDataServiceClient<service_kit::grpc::Channel>;

/// The feeds of one gateway. See the module documentation.
pub struct Fanout {
    md: Md,
    capacity: usize,
    held: Mutex<Held>,
}

/// What a gateway follows: feeds by type, market and route; upstreams by
/// type and route.
#[derive(Default)]
struct Held {
    feeds: HashMap<Key, Weak<Feed>>,
    upstreams: HashMap<(Kind, String), Weak<Upstream>>,
}

/// Backoff between upstream reconnects.
const RETRY: Duration = Duration::from_millis(500);

/// Most distinct routing-header values (`x-canary`, `x-preview`) with feeds
/// at once. The values are the client's to choose and each gets feeds of its
/// own: without a bound, one client could multiply the gateway's feeds and
/// market-data's streams by sending a new value per connection.
pub const MAX_ROUTES: usize = 16;

impl Fanout {
    /// Feeds from `md`, each keeping its last `capacity` events for
    /// subscribers that are behind.
    pub fn new(md: Md, capacity: usize) -> Self {
        Self {
            md,
            capacity: capacity.max(16),
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.feeds.retain(|_, f| f.strong_count() > 0);
        held.upstreams.retain(|_, u| u.strong_count() > 0);
        held
    }

    /// Whether sessions in `scope` may not have feeds now: routed alike as no
    /// session with feeds is, while [`MAX_ROUTES`] other routes have some.
    pub fn routes_full(&self, scope: &RequestScope) -> bool {
        let route = scope.routing_key();
        if route.is_empty() {
            return false;
        }
        let held = self.held();
        let mut routes: Vec<&str> = held
            .feeds
            .keys()
            .map(|k| k.route.as_str())
            .filter(|r| !r.is_empty())
            .collect();
        routes.sort_unstable();
        routes.dedup();
        !routes.contains(&route.as_str()) && routes.len() >= MAX_ROUTES
    }

    /// Market-data streams open now (one per type and route in use).
    #[cfg(test)]
    pub fn upstreams(&self) -> usize {
        self.held().upstreams.len()
    }

    /// The feed of `kind` for `market` as sessions in `scope` see it: the one
    /// already followed, or a new one.
    pub fn feed(&self, kind: Kind, market: &str, scope: &RequestScope) -> Arc<Feed> {
        let key = Key {
            kind,
            market: market.to_owned(),
            route: scope.routing_key(),
        };
        let mut held = self.held();
        if let Some(feed) = held.feeds.get(&key).and_then(Weak::upgrade) {
            return feed;
        }
        let upstream_key = (kind, key.route.clone());
        let upstream = match held.upstreams.get(&upstream_key).and_then(Weak::upgrade) {
            Some(upstream) => upstream,
            None => {
                let upstream = self.open_upstream(kind, scope);
                held.upstreams
                    .insert(upstream_key, Arc::downgrade(&upstream));
                upstream
            }
        };
        let (tx, _) = broadcast::channel(self.capacity);
        upstream
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.market.clone(), tx.clone());
        FEEDS.with_label_values(&[kind.as_str()]).inc();
        let feed = Arc::new(Feed {
            kind,
            market: key.market.clone(),
            tx,
            upstream,
        });
        held.feeds.insert(key, Arc::downgrade(&feed));
        feed
    }

    /// Starts following market-data's stream of `kind` for sessions in `scope`.
    fn open_upstream(&self, kind: Kind, scope: &RequestScope) -> Arc<Upstream> {
        let routes = Routes::default();
        let (opened_tx, opened) = watch::channel(false);
        let stop = CancellationToken::new();
        // A trace of its own, as long as the stream lives (it outlives the
        // session that opened it), linked from the span that opened it.
        let span = tracing::info_span!(parent: None, "ws.feed", otel.name = "ws.feed", r#type = kind.as_str());
        span.follows_from(tracing::Span::current());
        tokio::spawn(
            scope
                .routing_only()
                .run(follow(
                    self.md.clone(),
                    kind,
                    routes.clone(),
                    opened_tx,
                    stop.clone(),
                ))
                .instrument(span),
        );
        Arc::new(Upstream {
            routes,
            opened,
            _stop: stop.drop_guard(),
        })
    }
}

/// Follows market-data's stream of `kind` until `stop`, reopening it (without
/// a snapshot: subscribers fetch their own) when it breaks, and hands each
/// message to its market's ring in `routes`.
async fn follow(
    mut md: Md,
    kind: Kind,
    routes: Routes,
    opened: watch::Sender<bool>,
    stop: CancellationToken,
) {
    loop {
        let result =
            tokio::select! { _ = stop.cancelled() => return, r = open(&mut md, kind) => r };
        opened.send_replace(true);
        match result {
            Ok(mut stream) => loop {
                let next =
                    tokio::select! { _ = stop.cancelled() => return, m = stream.next() => m };
                match next {
                    Some(Ok(Some(message))) => {
                        let tx = routes
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(message.market())
                            .cloned();
                        if let Some(tx) = tx.filter(|tx| tx.receiver_count() > 0)
                            && let Some(payload) = message.convert()
                        {
                            let _ = tx.send(Arc::new(Event::new(payload)));
                        }
                    }
                    Some(Ok(None)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "feed stream broke; reopening");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => tracing::debug!(error = %e, "feed stream unavailable; retrying"),
        }
        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(RETRY) => {} }
    }
}

/// A message of an upstream, as market-data sent it.
enum Raw {
    /// (Boxed: the largest by far.)
    Ticker(Box<pb::Ticker>),
    Trade(pb::Trade),
    Orderbook(pb::Orderbook),
}

impl Raw {
    fn market(&self) -> &str {
        match self {
            Raw::Ticker(t) => &t.market,
            Raw::Trade(t) => &t.market,
            Raw::Orderbook(o) => &o.market,
        }
    }

    /// Converted, or `None` for one that does not convert (counted, skipped).
    fn convert(self) -> Option<Payload> {
        match self {
            Raw::Ticker(t) => convert::skipped(convert::ticker(&t, false), "ticker", &t.market)
                .map(|t| Payload::Ticker(Box::new(t))),
            Raw::Trade(t) => {
                convert::skipped(convert::trade(&t, false), "trade", &t.market).map(Payload::Trade)
            }
            Raw::Orderbook(o) => {
                let book = convert::orderbook(&o, DEFAULT_ORDERBOOK_DEPTH, false);
                convert::skipped(book, "orderbook", &o.market).map(Payload::Orderbook)
            }
        }
    }
}

type Messages = BoxStream<'static, Result<Option<Raw>, tonic::Status>>;

/// `stream`'s messages, each as a [`Raw`] (`None` for an empty one).
fn raw<M: Send + 'static>(stream: tonic::Streaming<M>, pick: fn(M) -> Option<Raw>) -> Messages {
    stream.map(move |m| m.map(pick)).boxed()
}

/// Opens market-data's stream of `kind` for every market.
async fn open(md: &mut Md, kind: Kind) -> Result<Messages, tonic::Status> {
    let markets = Vec::new();
    Ok(match kind {
        Kind::Ticker => {
            let request = pb::StreamTickersRequest {
                markets,
                snapshot: false,
            };
            raw(md.stream_tickers(request).await?.into_inner(), |m| {
                m.ticker.map(|t| Raw::Ticker(Box::new(t)))
            })
        }
        Kind::Trade => {
            let request = pb::StreamTradesRequest {
                markets,
                snapshot: false,
            };
            raw(md.stream_trades(request).await?.into_inner(), |m| {
                m.trade.map(Raw::Trade)
            })
        }
        Kind::Orderbook => {
            let request = pb::StreamOrderbooksRequest {
                markets,
                snapshot: false,
                depth: 0,
            };
            raw(md.stream_orderbooks(request).await?.into_inner(), |m| {
                m.orderbook.map(Raw::Orderbook)
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Shape {
        fn plain(format: Format) -> Self {
            Self {
                format,
                depth: DEFAULT_ORDERBOOK_DEPTH,
                level: Decimal::ZERO,
            }
        }
    }

    fn book() -> upbit::Orderbook {
        let units = (0..20)
            .map(|i| upbit::OrderbookUnit {
                ask_price: Decimal::from(100_000 + i * 1_000),
                bid_price: Decimal::from(99_000 - i * 1_000),
                ask_size: Decimal::ONE,
                bid_size: Decimal::ONE,
            })
            .collect();
        upbit::Orderbook {
            code: "KRW-BTC".into(),
            total_ask_size: Decimal::from(20),
            total_bid_size: Decimal::from(20),
            orderbook_units: units,
            timestamp: 1,
            level: Decimal::ZERO,
            stream_type: upbit::StreamType::Realtime,
        }
    }

    fn routed(value: &str) -> RequestScope {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-canary", value.parse().unwrap());
        RequestScope::from_headers(&headers)
    }

    #[tokio::test]
    async fn feeds_are_shared_per_market_and_route_and_routes_are_bounded() {
        // Nothing listens there: the feeds keep retrying, which is all this needs.
        let md = Md::new(service_kit::grpc::channel("http://127.0.0.1:9").unwrap());
        let fanout = Fanout::new(md, 16);
        let plain = RequestScope::default();
        let a = fanout.feed(Kind::Trade, "KRW-BTC", &plain);
        let b = fanout.feed(Kind::Trade, "KRW-BTC", &plain);
        assert!(Arc::ptr_eq(&a, &b), "one feed per type and market");
        let other = fanout.feed(Kind::Ticker, "KRW-BTC", &plain);
        assert!(!Arc::ptr_eq(&a, &other));
        let canary = fanout.feed(Kind::Trade, "KRW-BTC", &routed("always"));
        assert!(
            !Arc::ptr_eq(&a, &canary),
            "a routed session's feed is its own"
        );
        assert_eq!(fanout.upstreams(), 3, "trade, ticker, and the routed trade");
        let eth = fanout.feed(Kind::Trade, "KRW-ETH", &plain);
        assert!(!Arc::ptr_eq(&a, &eth));
        assert_eq!(
            fanout.upstreams(),
            3,
            "another market rides the same stream"
        );

        let held: Vec<_> = (1..MAX_ROUTES)
            .map(|i| fanout.feed(Kind::Trade, "KRW-BTC", &routed(&format!("r{i}"))))
            .collect();
        assert!(fanout.routes_full(&routed("one-more")));
        assert!(!fanout.routes_full(&routed("always")), "a route in use");
        assert!(
            !fanout.routes_full(&plain),
            "unrouted sessions are never refused"
        );
        assert_eq!(fanout.upstreams(), 3 + MAX_ROUTES - 1);
        drop(held);
        assert!(
            !fanout.routes_full(&routed("one-more")),
            "gone with their feeds"
        );
        assert_eq!(fanout.upstreams(), 3);
        drop((a, b, canary));
        assert_eq!(fanout.upstreams(), 2, "the routed one closed with its feed");
        drop(eth);
        assert_eq!(
            fanout.upstreams(),
            1,
            "the plain trade stream, with its last market"
        );
    }

    #[test]
    fn an_event_is_rendered_once_per_shape_and_each_shape_as_asked() {
        let event = Event::new(Payload::Orderbook(book()));
        let plain = event.frame(Shape::plain(Format::Default)).unwrap();
        let again = event.frame(Shape::plain(Format::Default)).unwrap();
        assert_eq!(plain.as_ptr(), again.as_ptr(), "the same bytes, not a copy");
        let simple = event.frame(Shape::plain(Format::Simple)).unwrap();
        assert_ne!(plain, simple);
        let five = Shape {
            depth: 5,
            ..Shape::plain(Format::Default)
        };
        let cut = event.frame(five).unwrap();
        assert_eq!(cut.as_ptr(), event.frame(five).unwrap().as_ptr());
        let units = |b: &Bytes| match upbit::parse_message(b) {
            Ok(upbit::Message::Orderbook(o)) => o.orderbook_units.len(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (units(&plain), units(&cut)),
            (20.min(DEFAULT_ORDERBOOK_DEPTH), 5)
        );
        let grouped = Shape {
            level: Decimal::from(10_000),
            ..Shape::plain(Format::Default)
        };
        assert!(
            units(&event.frame(grouped).unwrap()) < units(&plain),
            "grouped by 10,000"
        );
        // Not a multiple of the price unit: nothing, as on Upbit (never the
        // book ungrouped under a level it was not grouped by).
        let odd = Shape {
            level: Decimal::from(12_345),
            ..Shape::plain(Format::Default)
        };
        assert_eq!(event.frame(odd), None);
        let mut btc = book();
        btc.code = "BTC-ETH".into();
        let other = Event::new(Payload::Orderbook(btc));
        assert_eq!(other.frame(grouped), None, "only KRW markets are grouped");
        assert!(other.frame(Shape::plain(Format::Default)).is_some());
    }
}
