//! `/websocket/v1`: Upbit's public WebSocket protocol, fed from market-data's
//! live streams (which fan out from Redis, so every gateway replica sees every
//! event).
//!
//! Per connection: a request replaces the whole subscription set (its places
//! in the feeds of the previous one are given up); each type object gets a
//! SNAPSHOT first unless `is_only_realtime` (read once from market-data, or for
//! tickers from the gateway's memory), then the live messages of its markets'
//! feeds ([`crate::fanout`]: one market-data stream per type and market in
//! the gateway, each message rendered once per format and shared by every
//! connection); `is_only_snapshot` reads the current state once. Frames are
//! binary in the connection's format. The feeds never wait for a connection:
//! a client more than a feed's ring behind is disconnected as too slow, and
//! what a connection has not sent yet is bounded in bytes by its write buffer.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use exchange_proto::marketdata::v1 as pb;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, SinkExt, StreamExt};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use service_kit::ws::{Incoming, spawn_reader};
use telemetry::propagation::RequestScope;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tracing::Instrument;
use upbit::error::ErrorResponse;
use upbit::request::{
    ClientFrame, DataType, RequestWindow, Subscription, invalid_param, parse_request,
    too_many_requests,
};
use upbit::write::{self, Format, STATUS_UP};

use crate::convert;
use crate::fanout::{self, Event, Feed, Kind, Payload, Shape};
use crate::state::{ClientIp, Shared, WsFull, WsSlot};

static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new("gateway_ws_connections", "Open WebSocket connections.").expect("valid");
    prometheus::register(Box::new(g.clone())).expect("registered once");
    g
});

static CLOSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "gateway_ws_closed_total",
            "WebSocket connections closed, by reason.",
        ),
        &["reason"],
    )
    .expect("valid");
    prometheus::register(Box::new(c.clone())).expect("registered once");
    c
});

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(ErrorResponse::new("too_many_requests", message)),
    )
        .into_response()
}

/// A connection slot within the limits (new connections per second per IP,
/// open connections per IP and per process), or the refusal.
pub(crate) fn admit(gw: &Shared, ip: ClientIp) -> Result<WsSlot, Box<Response>> {
    if gw.ws_connects.take(ip.0).is_none() {
        return Err(Box::new(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many connection requests.",
        )));
    }
    gw.ws_open
        .take(ip.0, gw.limits.ws_open, gw.limits.ws_open_per_ip)
        .map_err(|full| {
            Box::new(match full {
                WsFull::Ip => refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many open connections from this address.",
                ),
                WsFull::Process => refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "This server holds all the connections it can; retry shortly.",
                ),
            })
        })
}

/// Bytes read from the socket at a time: client messages are small requests
/// (tungstenite's default, 128 KiB per connection, is most of an idle
/// connection's memory). A larger message still fits: the buffer grows.
pub(crate) const READ_BUFFER: usize = 4096;

/// `ws` with its buffers bounded: what a client may send (`ws_max_message`),
/// what is read at a time, what is gathered unsent (`ws_write_buffer`).
pub(crate) fn bounded(ws: WebSocketUpgrade, limits: &crate::state::Limits) -> WebSocketUpgrade {
    let (max, write) = (limits.ws_max_message, limits.ws_write_buffer);
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(write)
        .max_write_buffer_size(write.saturating_mul(4).max(max))
}

/// Upgrades within the limits, bounding the size of what a client may send.
pub async fn upgrade(ws: WebSocketUpgrade, State(gw): State<Shared>, ip: ClientIp) -> Response {
    let slot = match admit(&gw, ip) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let (session, scope) = session("ws.session");
    bounded(ws, &gw.limits).on_upgrade(move |socket| {
        scope
            .run(async move {
                connection(socket, gw).await;
                drop(slot);
            })
            .instrument(session)
    })
}

/// A WebSocket session is a trace: a span that lives as long as the
/// connection, child of the upgrade request's, and the request's forwarded
/// headers (`x-canary`, `x-preview`, …), so every stream the session opens to
/// market-data carries both, as the request's own calls would.
pub(crate) fn session(name: &'static str) -> (tracing::Span, RequestScope) {
    let span = tracing::info_span!("ws.session", otel.name = name, otel.kind = "server");
    (span, RequestScope::current())
}

pub(crate) fn binary(text: String) -> Message {
    Message::Binary(text.into_bytes().into())
}

pub(crate) fn error_frame(e: &upbit::error::ErrorBody) -> Message {
    binary(ErrorResponse::new(e.name.clone(), e.message.clone()).to_json())
}

async fn connection(socket: WebSocket, gw: Shared) {
    counted(serve(socket, &gw)).await;
}

/// Runs a connection (public or private) counted in `gateway_ws_connections`
/// while open, and in `gateway_ws_closed_total` by why it ended.
pub(crate) async fn counted(session: impl std::future::Future<Output = &'static str>) {
    CONNECTIONS.inc();
    let reason = session.await;
    CLOSED.with_label_values(&[reason]).inc();
    CONNECTIONS.dec();
}

/// Most frames written between two checks of the other inputs.
const BURST: usize = 256;

async fn serve(socket: WebSocket, gw: &Shared) -> &'static str {
    let (mut sink, stream) = socket.split();
    let mut incoming = spawn_reader(stream);
    let mut frames: Frames = futures_util::stream::pending().boxed();
    let mut format = Format::Default;
    let mut window = RequestWindow::default();
    let mut subscribed: Vec<Subscription> = Vec::new();
    let idle = tokio::time::sleep(gw.limits.ws_idle);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            received = incoming.recv() => {
                idle.as_mut().reset(tokio::time::Instant::now() + gw.limits.ws_idle);
                let text = match received {
                    None => break "client",
                    Some(Incoming::Heard) => continue,
                    Some(Incoming::Text(t)) => t,
                };
                let replies = match parse_request(&text) {
                    Err(e) => vec![error_frame(&e)],
                    Ok(ClientFrame::Ping) => vec![binary(STATUS_UP.to_owned())],
                    Ok(ClientFrame::ListSubscriptions { ticket }) => {
                        // `level` is the orderbook's only, a number (as Upbit lists it).
                        let result: Vec<serde_json::Value> = subscribed.iter().map(|s| {
                            let mut v = serde_json::json!({"type": s.data_type.as_str(), "codes": s.codes});
                            if s.data_type == DataType::Orderbook {
                                v["level"] = serde_json::Value::from(level_of(s).to_string().parse::<f64>().unwrap_or(0.0));
                            }
                            v
                        }).collect();
                        vec![binary(serde_json::json!({"method": "LIST_SUBSCRIPTIONS", "result": result, "ticket": ticket}).to_string())]
                    }
                    Ok(ClientFrame::Subscribe(request)) => {
                        if !window.allow() {
                            vec![error_frame(&too_many_requests())]
                        } else if gw.fanout.routes_full(&RequestScope::current()) {
                            vec![error_frame(&invalid_param(format!(
                                "at most {} distinct x-canary/x-preview values may stream at once; use one in use or none",
                                fanout::MAX_ROUTES
                            )))]
                        } else {
                            match validate(gw, request.subscriptions).await {
                                Err(e) => vec![error_frame(&e)],
                                Ok(subscriptions) => {
                                    let request = upbit::request::SubscriptionRequest { subscriptions, ..request };
                                    if let Some(f) = request.format {
                                        format = f;
                                    }
                                    frames = subscribe(gw, &request.subscriptions, format);
                                    subscribed = request.subscriptions;
                                    Vec::new()
                                }
                            }
                        }
                    }
                };
                let mut failed = false;
                for reply in replies {
                    failed = failed || sink.feed(reply).await.is_err();
                }
                if failed || sink.flush().await.is_err() {
                    break "client";
                }
            }
            out = frames.next() => {
                let Some(first) = out else {
                    // Snapshots only, all sent.
                    frames = futures_util::stream::pending().boxed();
                    continue;
                };
                let burst = tokio::time::timeout(gw.ws_stall, write_burst(&mut sink, first, &mut frames));
                match burst.await {
                    Ok(Burst::Written) => {}
                    Ok(Burst::Failed) => break "client",
                    Ok(Burst::Behind) => {
                        close(&mut sink, gw, 1008, "too slow: messages were not read").await;
                        break "slow";
                    }
                    // The client has read nothing for that long: its socket is
                    // full, a close frame would not get through either.
                    Err(_stalled) => break "slow",
                }
            }
            _ = &mut idle => {
                close(&mut sink, gw, 1000, "idle timeout").await;
                break "idle";
            }
            _ = gw.draining.cancelled() => {
                close(&mut sink, gw, 1001, "server shutting down").await;
                break "shutdown";
            }
        }
    }
}

type WsSink = futures_util::stream::SplitSink<WebSocket, Message>;

/// How a burst of writes ended.
enum Burst {
    Written,
    /// The socket failed: the client is gone.
    Failed,
    /// The connection fell a feed's ring behind.
    Behind,
}

/// Writes `first` and what else is ready (up to [`BURST`] frames), then
/// flushes.
async fn write_burst(sink: &mut WsSink, first: Out, frames: &mut Frames) -> Burst {
    let mut next = Some(first);
    let mut written = 0;
    while let Some(out) = next.take() {
        let Out::Frame(frame) = out else {
            return Burst::Behind;
        };
        if sink.feed(Message::Binary(frame)).await.is_err() {
            return Burst::Failed;
        }
        written += 1;
        if written < BURST {
            next = frames.next().now_or_never().flatten();
        }
    }
    match sink.flush().await {
        Ok(()) => Burst::Written,
        Err(_) => Burst::Failed,
    }
}

/// Sends a close frame, giving up after the stall timeout (a client that
/// reads nothing would hold the connection open forever otherwise).
pub(crate) async fn close(sink: &mut WsSink, gw: &Shared, code: u16, reason: &'static str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(gw.ws_stall, sink.send(frame)).await;
}

/// The subscriptions with their codes checked: a malformed code is an error;
/// a well-formed code of no listed market is dropped (it would have no data,
/// as on Upbit), so it does not fail the rest of the request; a request left
/// with no code at all is an error.
async fn validate(
    gw: &Shared,
    subs: Vec<Subscription>,
) -> Result<Vec<Subscription>, upbit::error::ErrorBody> {
    let markets = gw
        .markets()
        .await
        .map_err(|_| invalid_param("market list temporarily unavailable; retry"))?;
    let listed: std::collections::HashSet<&str> =
        markets.iter().map(|m| m.market.as_str()).collect();
    let mut unknown = Vec::new();
    let mut kept = Vec::with_capacity(subs.len());
    for mut sub in subs {
        if let Some(level) = &sub.level
            && level
                .parse::<rust_decimal::Decimal>()
                .ok()
                .filter(|l| !l.is_sign_negative() && l.scale() <= 8)
                .is_none()
        {
            return Err(invalid_param(format!(
                "level `{level}` is not a price unit like 10000"
            )));
        }
        let mut codes = Vec::with_capacity(sub.codes.len());
        let mut depths = Vec::with_capacity(sub.codes.len());
        for (code, depth) in sub.codes.into_iter().zip(sub.depths) {
            if upbit::market::MarketCode::parse(&code).is_err() {
                return Err(invalid_param(format!(
                    "`{code}` is not a market code like KRW-BTC"
                )));
            }
            if listed.contains(code.as_str()) {
                codes.push(code);
                depths.push(depth);
            } else {
                unknown.push(code);
            }
        }
        if !codes.is_empty() {
            (sub.codes, sub.depths) = (codes, depths);
            kept.push(sub);
        }
    }
    if kept.is_empty() {
        return Err(invalid_param(format!(
            "unknown market code: {}",
            unknown.first().map_or("", String::as_str)
        )));
    }
    Ok(kept)
}

/// The orderbook grouping a subscription asks for (0 when none or unreadable;
/// [`validate`] refuses unreadable ones).
fn level_of(sub: &Subscription) -> rust_decimal::Decimal {
    sub.level
        .as_deref()
        .and_then(|l| l.parse().ok())
        .unwrap_or_default()
}

/// Type objects of the same type (and snapshot/realtime choice) as one, with
/// their codes together: one upstream stream each, however a request repeats
/// itself.
fn merge(subs: &[Subscription]) -> Vec<Subscription> {
    let mut merged: Vec<Subscription> = Vec::new();
    for sub in subs {
        let same = merged.iter_mut().find(|m| {
            m.data_type == sub.data_type
                && m.only_snapshot == sub.only_snapshot
                && m.only_realtime == sub.only_realtime
                && m.level == sub.level
        });
        match same {
            Some(m) => {
                for (code, depth) in sub.codes.iter().zip(&sub.depths) {
                    if !m.codes.contains(code) {
                        m.codes.push(code.clone());
                        m.depths.push(*depth);
                    }
                }
            }
            None => merged.push(sub.clone()),
        }
    }
    merged
}

/// The market-data interval of a minute candle type (`None` for seconds,
/// which market-data does not keep).
fn minute_interval(seconds: u32) -> Option<pb::CandleInterval> {
    use pb::CandleInterval as I;
    Some(match seconds {
        60 => I::Minute1,
        180 => I::Minute3,
        300 => I::Minute5,
        600 => I::Minute10,
        900 => I::Minute15,
        1800 => I::Minute30,
        3600 => I::Minute60,
        14400 => I::Minute240,
        _ => return None,
    })
}

/// What a connection's subscriptions produce.
enum Out {
    Frame(Bytes),
    /// The connection fell a feed's whole ring behind.
    Slow,
}

type Frames = BoxStream<'static, Out>;

/// Live subscription type objects, by type (`candle` for every candle type).
static SUBSCRIPTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let g = IntGaugeVec::new(
        Opts::new(
            "gateway_ws_subscriptions",
            "Realtime WebSocket subscriptions (type objects) being served, by type.",
        ),
        &["type"],
    )
    .expect("valid");
    prometheus::register(Box::new(g.clone())).expect("registered once");
    g
});

fn type_label(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Ticker => "ticker",
        DataType::Trade => "trade",
        DataType::Orderbook => "orderbook",
        DataType::Candle(_) => "candle",
    }
}

/// Counts a realtime subscription for as long as it is held.
struct Counted(&'static str);

impl Counted {
    fn new(label: &'static str) -> Self {
        SUBSCRIPTIONS.with_label_values(&[label]).inc();
        Self(label)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        SUBSCRIPTIONS.with_label_values(&[self.0]).dec();
    }
}

/// The frames of a subscription set: a place in each feed is taken now, so
/// nothing published from here on is missed; once every feed of the set has
/// opened (so once the client sees a frame, nothing of the set is still
/// connecting), each type object's snapshot, then its live frames.
fn subscribe(gw: &Shared, subs: &[Subscription], format: Format) -> Frames {
    let scope = RequestScope::current();
    let merged = merge(subs);
    // One span of the session per request: the snapshot reads run in it, and
    // each feed it opens links to it.
    let span = tracing::info_span!(
        "ws.subscribe",
        types = %merged.iter().map(|s| s.data_type.as_str()).collect::<Vec<_>>().join(","),
    );
    let _in = span.enter();
    let mut feeds = Vec::new();
    let mut labels = Vec::new();
    let parts: Vec<Frames> = merged
        .into_iter()
        .map(|sub| {
            if sub.wants_realtime() {
                labels.push(type_label(&sub.data_type));
            }
            part(gw, sub, format, &scope, &mut feeds, &span)
        })
        .collect();
    futures_util::stream::once(async move {
        futures_util::future::join_all(feeds.iter().map(|f| f.opened())).await;
        let counted: Vec<Counted> = labels.into_iter().map(Counted::new).collect();
        futures_util::stream::select_all(parts).map(move |out| {
            let _live = &counted;
            out
        })
    })
    .flatten()
    .fuse()
    .boxed()
}

/// The feed a type object follows (candles are made from trades).
fn kind_of(data_type: &DataType) -> Kind {
    match data_type {
        DataType::Ticker => Kind::Ticker,
        DataType::Trade | DataType::Candle(_) => Kind::Trade,
        DataType::Orderbook => Kind::Orderbook,
    }
}

/// One type object: its snapshot (unless `is_only_realtime`), then its live
/// frames (unless `is_only_snapshot`). The feeds it follows are added to
/// `feeds`.
fn part(
    gw: &Shared,
    sub: Subscription,
    format: Format,
    scope: &RequestScope,
    feeds: &mut Vec<Arc<Feed>>,
    span: &tracing::Span,
) -> Frames {
    let level = level_of(&sub);
    let shapes: Vec<Shape> = sub
        .depths
        .iter()
        .map(|&depth| Shape {
            format,
            depth,
            level,
        })
        .collect();
    let live: Vec<(Arc<Feed>, broadcast::Receiver<Arc<Event>>, Shape)> = if sub.wants_realtime() {
        sub.codes
            .iter()
            .zip(&shapes)
            .map(|(code, shape)| {
                let feed = gw.fanout.feed(kind_of(&sub.data_type), code, scope);
                let rx = feed.subscribe();
                feeds.push(feed.clone());
                (feed, rx, *shape)
            })
            .collect()
    } else {
        Vec::new()
    };
    let gw = gw.clone();
    let span = span.clone();
    futures_util::stream::once(async move {
        let (frames, candles) = snapshot(&gw, &sub, format, &shapes).instrument(span).await;
        let following = !live.is_empty();
        let first = futures_util::stream::iter(frames.into_iter().map(Out::Frame));
        let live = live.into_iter().map(|(feed, rx, shape)| {
            BroadcastStream::new(rx)
                .map(move |event| {
                    let _held = &feed;
                    (event, shape)
                })
                .boxed()
        });
        let live = futures_util::stream::select_all(live);
        match candles {
            None => first
                .chain(live.filter_map(|(event, shape)| {
                    std::future::ready(match event {
                        Ok(event) => event.frame(shape).map(Out::Frame),
                        Err(_lagged) => Some(Out::Slow),
                    })
                }))
                .boxed(),
            // Nothing live to build candles from (`is_only_snapshot`).
            Some(_) if !following => first.boxed(),
            Some(mut candles) => {
                let mut every = tokio::time::interval(CANDLE_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let ticks = tokio_stream::wrappers::IntervalStream::new(every).map(|_| None);
                let trades = live.map(|(event, _)| Some(event));
                let inputs = futures_util::stream::select(trades, ticks);
                first
                    .chain(inputs.flat_map(move |input| {
                        futures_util::stream::iter(match input {
                            Some(Ok(event)) => {
                                candles.add(&event.payload);
                                Vec::new()
                            }
                            Some(Err(_lagged)) => vec![Out::Slow],
                            None => candles.flush(format),
                        })
                    }))
                    .boxed()
            }
        }
    })
    .flatten()
    .boxed()
}

/// How often live candles changed by trades are sent: as on Upbit, at most
/// once a second each, and only when a trade changed them.
const CANDLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The live candles of one candle type object, built from trades: each trade
/// updates its period's candle (a new period starts from that trade); the
/// candles trades changed are sent every [`CANDLE_EVERY`].
struct Candles {
    name: String,
    /// Milliseconds.
    period: i64,
    current: HashMap<String, upbit::Candle>,
    /// Candles changed since the last send: a period's last state, and the
    /// one before it when a new period started in between (each is sent).
    changed: Vec<upbit::Candle>,
}

impl Candles {
    fn add(&mut self, payload: &Payload) {
        let Payload::Trade(t) = payload else {
            return;
        };
        let before = self.current.remove(&t.code);
        let candle = convert::candle_with_trade(before, &self.name, self.period, t);
        match self.changed.iter_mut().find(|c| {
            c.code == candle.code && c.candle_date_time_utc == candle.candle_date_time_utc
        }) {
            Some(pending) => *pending = candle.clone(),
            None => self.changed.push(candle.clone()),
        }
        self.current.insert(t.code.clone(), candle);
    }

    /// The frames of the candles changed since the last call, oldest first.
    fn flush(&mut self, format: Format) -> Vec<Out> {
        self.changed
            .drain(..)
            .map(|c| Out::Frame(Bytes::from(write::candle(&c, format))))
            .collect()
    }
}

/// The snapshot frames of a type object (none for `is_only_realtime`), and
/// for a candle type the live candles' starting state. Minute candles start
/// from market-data's current candle (sent as the SNAPSHOT); second candles
/// from the first trade.
async fn snapshot(
    gw: &Shared,
    sub: &Subscription,
    format: Format,
    shapes: &[Shape],
) -> (Vec<Bytes>, Option<Candles>) {
    let wanted = sub.wants_snapshot();
    let mut md = gw.md.clone();
    let codes = sub.codes.clone();
    let frames = match &sub.data_type {
        DataType::Ticker if wanted => {
            let held = if RequestScope::current().routed() {
                None
            } else {
                gw.tickers.current(&codes)
            };
            let tickers = match held {
                Some(t) => t,
                None => md
                    .get_tickers(pb::GetTickersRequest {
                        markets: codes,
                        quote_currencies: vec![],
                    })
                    .await
                    .map(|r| r.into_inner().tickers)
                    .unwrap_or_default(),
            };
            tickers
                .iter()
                .filter_map(|t| convert::skipped(convert::ticker(t, true), "ticker", &t.market))
                .map(|t| Bytes::from(write::ticker(&t, format)))
                .collect()
        }
        DataType::Trade if wanted => {
            let mut frames = Vec::new();
            for market in codes {
                let request = pb::ListTradesRequest {
                    market,
                    count: 1,
                    cursor: None,
                    to: None,
                    after: None,
                };
                if let Ok(r) = md.list_trades(request).await {
                    frames.extend(
                        r.into_inner()
                            .trades
                            .iter()
                            .filter_map(|t| {
                                convert::skipped(convert::trade(t, true), "trade", &t.market)
                            })
                            .map(|t| Bytes::from(write::trade(&t, format))),
                    );
                }
            }
            frames
        }
        DataType::Orderbook if wanted => {
            let request = pb::GetOrderbooksRequest {
                markets: codes.clone(),
                depth: 0,
            };
            let books = md
                .get_orderbooks(request)
                .await
                .map(|r| r.into_inner().orderbooks)
                .unwrap_or_default();
            books
                .iter()
                .filter_map(|o| {
                    let shape = codes
                        .iter()
                        .position(|c| *c == o.market)
                        .and_then(|i| shapes.get(i))?;
                    let full = convert::orderbook(o, upbit::request::DEFAULT_ORDERBOOK_DEPTH, true);
                    let book = convert::skipped(full, "orderbook", &o.market)?;
                    let shaped = fanout::shaped_book(&book, *shape)?;
                    Some(Bytes::from(write::orderbook(&shaped, format)))
                })
                .collect()
        }
        DataType::Candle(name) => {
            return candle_snapshot(&mut md, name, codes, wanted, format).await;
        }
        _ => Vec::new(),
    };
    (frames, None)
}

async fn candle_snapshot(
    md: &mut Md,
    name: &str,
    codes: Vec<String>,
    wanted: bool,
    format: Format,
) -> (Vec<Bytes>, Option<Candles>) {
    let seconds = upbit::types::CANDLE_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(60, |(_, s)| *s);
    let period = i64::from(seconds) * 1000;
    let mut candles = Candles {
        name: name.to_owned(),
        period,
        current: HashMap::new(),
        changed: Vec::new(),
    };
    let mut frames = Vec::new();
    if let Some(interval) = minute_interval(seconds) {
        let now_start = chrono::Utc::now().timestamp_millis() / period * period;
        for market in codes {
            let request = pb::ListCandlesRequest {
                market: market.clone(),
                interval: interval as i32,
                to: None,
                count: 1,
            };
            let Ok(r) = md.list_candles(request).await else {
                continue;
            };
            let Some(c) = r.into_inner().candles.into_iter().next() else {
                continue;
            };
            let Some(candle) = convert::live_candle(&c, name, upbit::StreamType::Snapshot) else {
                continue;
            };
            if wanted {
                frames.push(Bytes::from(write::candle(&candle, format)));
            }
            if c.start_time == now_start {
                candles.current.insert(market, candle);
            }
        }
    }
    (frames, Some(candles))
}

type Md = pb::market_data_service_client::MarketDataServiceClient<service_kit::grpc::Channel>;

/// Registers this module's series at start (0 until the first event).
pub(crate) fn init_metrics() {
    LazyLock::force(&CONNECTIONS);
    for reason in ["client", "slow", "idle", "shutdown"] {
        CLOSED.with_label_values(&[reason]);
    }
    for label in ["ticker", "trade", "orderbook", "candle"] {
        SUBSCRIPTIONS.with_label_values(&[label]);
    }
    fanout::init_metrics();
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    fn trade(price: &str, at_ms: i64) -> Payload {
        let t = pb::Trade {
            market: "KRW-BTC".into(),
            trade_price: price.into(),
            trade_volume: "0.1".into(),
            trade_timestamp: at_ms,
            timestamp: at_ms,
            ..Default::default()
        };
        Payload::Trade(convert::trade(&t, false).unwrap())
    }

    fn sent(out: Vec<Out>) -> Vec<upbit::Candle> {
        out.into_iter()
            .map(|o| match o {
                Out::Frame(b) => match upbit::parse_message(&b) {
                    Ok(upbit::Message::Candle(c)) => c,
                    other => panic!("{other:?}"),
                },
                Out::Slow => panic!("slow"),
            })
            .collect()
    }

    #[test]
    fn candles_are_sent_at_most_once_a_period_and_only_when_changed() {
        let mut candles = Candles {
            name: "candle.1m".into(),
            period: 60_000,
            current: HashMap::new(),
            changed: Vec::new(),
        };
        let minute = 1_700_000_040_000; // a minute's start
        for (i, price) in ["100", "105", "99", "101"].iter().enumerate() {
            candles.add(&trade(price, minute + i as i64 * 100));
        }
        // Four trades in one minute: one frame, the minute as it stands.
        let once = sent(candles.flush(Format::Default));
        assert_eq!(once.len(), 1);
        let c = &once[0];
        assert_eq!(
            (c.opening_price, c.high_price, c.low_price, c.trade_price),
            (
                Decimal::from(100),
                Decimal::from(105),
                Decimal::from(99),
                Decimal::from(101)
            )
        );
        // Nothing changed: nothing sent.
        assert!(candles.flush(Format::Default).is_empty());
        // A trade that ends the minute and starts the next: both are sent,
        // oldest first, the new one from that trade alone.
        candles.add(&trade("102", minute + 59_900));
        candles.add(&trade("103", minute + 60_100));
        let both = sent(candles.flush(Format::Default));
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].trade_price, Decimal::from(102));
        assert_eq!(
            (both[1].opening_price, both[1].trade_price),
            (Decimal::from(103), Decimal::from(103))
        );
        assert!(both[0].candle_date_time_utc < both[1].candle_date_time_utc);
    }
}
