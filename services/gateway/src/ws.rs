//! `/websocket/v1`: Upbit's public WebSocket protocol, fed from market-data's
//! live streams (which fan out from Redis, so every gateway replica sees every
//! event).
//!
//! Per connection: a request replaces the whole subscription set (the streams
//! of the previous one are cancelled); each type gets a market-data stream with
//! a SNAPSHOT first unless `is_only_realtime`; `is_only_snapshot` reads the
//! current state once. Frames are binary in the connection's format. The
//! upstream streams are always read promptly: a WebSocket client that cannot
//! keep up is disconnected instead of backing up the shared gRPC connection.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use exchange_proto::marketdata::v1 as pb;
use futures_util::{SinkExt, StreamExt};
use prometheus::{IntCounterVec, IntGauge, Opts};
use service_kit::ws::{Incoming, spawn_reader};
use telemetry::propagation::RequestScope;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use upbit::error::ErrorResponse;
use upbit::request::{
    ClientFrame, DataType, RequestWindow, Subscription, invalid_param, parse_request,
    too_many_requests,
};
use upbit::write::{self, Format, STATUS_UP};

use crate::convert;
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

/// Upgrades within the limits, bounding the size of what a client may send.
pub async fn upgrade(ws: WebSocketUpgrade, State(gw): State<Shared>, ip: ClientIp) -> Response {
    let slot = match admit(&gw, ip) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let max = gw.limits.ws_max_message;
    let (session, scope) = session("ws.session");
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
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
    CONNECTIONS.inc();
    let reason = serve(socket, &gw).await;
    CLOSED.with_label_values(&[reason]).inc();
    CONNECTIONS.dec();
}

/// Most frames written between two checks of the other inputs.
const BURST: usize = 256;

async fn serve(socket: WebSocket, gw: &Shared) -> &'static str {
    let (mut sink, stream) = socket.split();
    let mut incoming = spawn_reader(stream);
    let (tx, mut rx) = mpsc::channel::<Message>(gw.ws_buffer.max(16));
    let slow = CancellationToken::new();
    let mut upstream = Upstream::default();
    let mut format = Format::Default;
    let mut window = RequestWindow::default();
    let mut subscribed: Vec<Subscription> = Vec::new();
    let idle = tokio::time::sleep(gw.ws_idle);
    tokio::pin!(idle);
    let reason = loop {
        tokio::select! {
            received = incoming.recv() => {
                idle.as_mut().reset(tokio::time::Instant::now() + gw.ws_idle);
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
                        } else {
                            match validate(gw, request.subscriptions).await {
                                Err(e) => vec![error_frame(&e)],
                                Ok(subscriptions) => {
                                    let request = upbit::request::SubscriptionRequest { subscriptions, ..request };
                                    if let Some(f) = request.format {
                                        format = f;
                                    }
                                    upstream.stop().await;
                                    upstream = Upstream::start(gw, &request.subscriptions, format, &tx, &slow);
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
            out = rx.recv() => {
                let mut next = out;
                let mut written = 0;
                let mut failed = false;
                while let Some(frame) = next.take() {
                    if sink.feed(frame).await.is_err() { failed = true; break; }
                    written += 1;
                    if written < BURST {
                        next = rx.try_recv().ok();
                    }
                }
                if failed || (written > 0 && sink.flush().await.is_err()) {
                    break "client";
                }
            }
            _ = slow.cancelled() => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: 1008, reason: "too slow: messages were not read".into() }))).await;
                break "slow";
            }
            _ = &mut idle => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: 1000, reason: "idle timeout".into() }))).await;
                break "idle";
            }
            _ = gw.draining.cancelled() => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }))).await;
                break "shutdown";
            }
        }
    };
    upstream.stop().await;
    reason
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

/// The upstream tasks of one subscription set.
#[derive(Default)]
struct Upstream {
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl Upstream {
    fn start(
        gw: &Shared,
        subs: &[Subscription],
        format: Format,
        tx: &mpsc::Sender<Message>,
        slow: &CancellationToken,
    ) -> Self {
        let mut up = Self::default();
        let merged = merge(subs);
        let subs = merged.as_slice();
        // The streams of one request are one span of the session's trace.
        let span = tracing::info_span!(
            "ws.subscribe",
            types = %subs.iter().map(|s| s.data_type.as_str()).collect::<Vec<_>>().join(","),
        );
        let scope = RequestScope::current();
        let mut spawn = |task: futures_util::future::BoxFuture<'static, ()>| {
            up.tasks
                .spawn(scope.clone().run(task).instrument(span.clone()));
        };
        // Every live stream of the set is opened before any of them forwards a
        // frame: once the client sees its first frame, nothing of the set can
        // still be connecting (and miss what happens next).
        let live = subs.iter().filter(|s| s.wants_realtime()).count();
        let opened = Arc::new(tokio::sync::Barrier::new(live));
        for sub in subs {
            let depths: HashMap<String, usize> = sub
                .codes
                .iter()
                .cloned()
                .zip(sub.depths.iter().copied())
                .collect();
            let sink = Sink {
                tx: tx.clone(),
                slow: slow.clone(),
                format,
                depths,
                level: level_of(sub),
            };
            let (md, cancel) = (gw.md.clone(), up.cancel.clone());
            let opened = opened.clone();
            let codes = sub.codes.clone();
            let (snapshot, realtime) = (sub.wants_snapshot(), sub.wants_realtime());
            match sub.data_type {
                DataType::Ticker => spawn(Box::pin(tickers(
                    md, codes, snapshot, realtime, sink, cancel, opened,
                ))),
                DataType::Trade => spawn(Box::pin(trades(
                    md, codes, snapshot, realtime, sink, cancel, opened,
                ))),
                DataType::Orderbook => spawn(Box::pin(orderbooks(
                    md, codes, snapshot, realtime, sink, cancel, opened,
                ))),
                DataType::Candle(ref name) => spawn(Box::pin(candles(
                    md,
                    name.clone(),
                    codes,
                    (snapshot, realtime),
                    sink,
                    cancel,
                    opened,
                ))),
            };
        }
        up
    }

    async fn stop(&mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
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

/// Where an upstream task puts frames.
struct Sink {
    tx: mpsc::Sender<Message>,
    slow: CancellationToken,
    format: Format,
    depths: HashMap<String, usize>,
    /// Orderbook grouping (0: none).
    level: rust_decimal::Decimal,
}

impl Sink {
    /// False when the connection is gone or too slow (the task should end).
    fn put(&self, text: String) -> bool {
        match self.tx.try_send(binary(text)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// `o` cut to the market's depth, grouped by the subscription's level
    /// where the market allows it (KRW, a multiple of its price unit).
    fn orderbook(&self, o: &pb::Orderbook, snapshot: bool) -> Option<upbit::Orderbook> {
        let full = convert::orderbook(o, upbit::request::DEFAULT_ORDERBOOK_DEPTH, snapshot);
        let book = convert::skipped(full, "orderbook", &o.market)?;
        let price = book
            .orderbook_units
            .first()
            .map(|u| u.ask_price)
            .unwrap_or_default();
        let level = if book.code.starts_with("KRW-")
            && (self.level % upbit::market::krw_tick(price)).is_zero()
        {
            self.level
        } else {
            rust_decimal::Decimal::ZERO
        };
        Some(book.grouped(level, self.depth(&o.market)))
    }

    fn depth(&self, market: &str) -> usize {
        self.depths
            .get(market)
            .copied()
            .unwrap_or(upbit::request::DEFAULT_ORDERBOOK_DEPTH)
    }
}

/// Backoff between upstream reconnects.
const RETRY: Duration = Duration::from_millis(500);

type Md = exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient<
    service_kit::grpc::Channel,
>;

/// Forwards one market-data stream into the connection until cancelled,
/// reopening it (without a snapshot) when it breaks. `open(snapshot)` opens the
/// stream; `render` turns a message into a frame. After the first attempt to
/// open, waits at `opened` for the other streams of the subscription set.
async fn pump<M, F, Fut, R>(
    open: F,
    render: R,
    sink: Sink,
    cancel: CancellationToken,
    opened: Arc<tokio::sync::Barrier>,
) where
    F: Fn(bool) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>>,
    R: Fn(M, &Sink) -> Option<String>,
{
    let mut first = true;
    let mut waited = false;
    loop {
        let result = tokio::select! { _ = cancel.cancelled() => return, r = open(first) => r };
        if !waited {
            waited = true;
            tokio::select! { _ = cancel.cancelled() => return, _ = opened.wait() => {} }
        }
        if let Ok(resp) = result {
            first = false;
            let mut stream = resp.into_inner();
            loop {
                let next =
                    tokio::select! { _ = cancel.cancelled() => return, m = stream.message() => m };
                let Ok(Some(message)) = next else { break };
                if let Some(frame) = render(message, &sink)
                    && !sink.put(frame)
                {
                    return;
                }
            }
        }
        tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(RETRY) => {} }
    }
}

/// Sends the frames of a one-off snapshot (`is_only_snapshot`).
fn put_all(sink: &Sink, frames: Vec<String>) {
    for frame in frames {
        if !sink.put(frame) {
            return;
        }
    }
}

async fn tickers(
    md: Md,
    codes: Vec<String>,
    snapshot: bool,
    realtime: bool,
    sink: Sink,
    cancel: CancellationToken,
    opened: Arc<tokio::sync::Barrier>,
) {
    if !realtime {
        let request = pb::GetTickersRequest {
            markets: codes,
            quote_currencies: vec![],
        };
        if let Ok(r) = md.clone().get_tickers(request).await {
            let frames = r
                .into_inner()
                .tickers
                .iter()
                .filter_map(|t| convert::skipped(convert::ticker(t, true), "ticker", &t.market))
                .map(|t| write::ticker(&t, sink.format))
                .collect();
            put_all(&sink, frames);
        }
        return;
    }
    let open = |first: bool| {
        let (mut md, markets) = (md.clone(), codes.clone());
        async move {
            md.stream_tickers(pb::StreamTickersRequest {
                markets,
                snapshot: snapshot && first,
            })
            .await
        }
    };
    let render = |m: pb::StreamTickersResponse, sink: &Sink| {
        let t = m.ticker?;
        convert::skipped(convert::ticker(&t, m.snapshot), "ticker", &t.market)
            .map(|t| write::ticker(&t, sink.format))
    };
    pump(open, render, sink, cancel, opened).await;
}

async fn trades(
    md: Md,
    codes: Vec<String>,
    snapshot: bool,
    realtime: bool,
    sink: Sink,
    cancel: CancellationToken,
    opened: Arc<tokio::sync::Barrier>,
) {
    if !realtime {
        let mut frames = Vec::new();
        for market in codes {
            if let Ok(r) = md
                .clone()
                .list_trades(pb::ListTradesRequest {
                    market,
                    count: 1,
                    cursor: None,
                    to: None,
                    after: None,
                })
                .await
            {
                frames.extend(
                    r.into_inner()
                        .trades
                        .iter()
                        .filter_map(|t| {
                            convert::skipped(convert::trade(t, true), "trade", &t.market)
                        })
                        .map(|t| write::trade(&t, sink.format)),
                );
            }
        }
        put_all(&sink, frames);
        return;
    }
    let open = |first: bool| {
        let (mut md, markets) = (md.clone(), codes.clone());
        async move {
            md.stream_trades(pb::StreamTradesRequest {
                markets,
                snapshot: snapshot && first,
            })
            .await
        }
    };
    let render = |m: pb::StreamTradesResponse, sink: &Sink| {
        let t = m.trade?;
        convert::skipped(convert::trade(&t, m.snapshot), "trade", &t.market)
            .map(|t| write::trade(&t, sink.format))
    };
    pump(open, render, sink, cancel, opened).await;
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

/// A live candle of `name` (`candle.1s` … `candle.240m`) per market, built from
/// the trade stream: each trade updates its period's candle (a new period
/// starts from that trade) and the candle is sent. Minute candles start from
/// market-data's current candle (sent as the SNAPSHOT); second candles from the
/// first trade.
async fn candles(
    md: Md,
    name: String,
    codes: Vec<String>,
    (snapshot, realtime): (bool, bool),
    sink: Sink,
    cancel: CancellationToken,
    opened: Arc<tokio::sync::Barrier>,
) {
    let seconds = upbit::types::CANDLE_TYPES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(60, |(_, s)| *s);
    let period = i64::from(seconds) * 1000;
    let mut current: HashMap<String, upbit::Candle> = HashMap::new();
    if let Some(interval) = minute_interval(seconds) {
        let now_start = chrono::Utc::now().timestamp_millis() / period * period;
        for market in &codes {
            let Ok(r) = md
                .clone()
                .list_candles(pb::ListCandlesRequest {
                    market: market.clone(),
                    interval: interval as i32,
                    to: None,
                    count: 1,
                })
                .await
            else {
                continue;
            };
            let Some(c) = r.into_inner().candles.into_iter().next() else {
                continue;
            };
            let Some(candle) = convert::live_candle(&c, &name, upbit::StreamType::Snapshot) else {
                continue;
            };
            if snapshot && !sink.put(write::candle(&candle, sink.format)) {
                return;
            }
            if c.start_time == now_start {
                current.insert(market.clone(), candle);
            }
        }
    }
    if !realtime {
        return;
    }
    let current = std::sync::Mutex::new(current);
    let open = |_first: bool| {
        let (mut md, markets) = (md.clone(), codes.clone());
        async move {
            md.stream_trades(pb::StreamTradesRequest {
                markets,
                snapshot: false,
            })
            .await
        }
    };
    let render = |m: pb::StreamTradesResponse, sink: &Sink| {
        let t = convert::trade(&m.trade?, false)?;
        let mut current = current.lock().ok()?;
        let candle = convert::candle_with_trade(current.remove(&t.code), &name, period, &t);
        let frame = write::candle(&candle, sink.format);
        current.insert(t.code, candle);
        Some(frame)
    };
    pump(open, render, sink, cancel, opened).await;
}

async fn orderbooks(
    md: Md,
    codes: Vec<String>,
    snapshot: bool,
    realtime: bool,
    sink: Sink,
    cancel: CancellationToken,
    opened: Arc<tokio::sync::Barrier>,
) {
    if !realtime {
        if let Ok(r) = md
            .clone()
            .get_orderbooks(pb::GetOrderbooksRequest {
                markets: codes,
                depth: 0,
            })
            .await
        {
            let frames = r
                .into_inner()
                .orderbooks
                .iter()
                .filter_map(|o| sink.orderbook(o, true))
                .map(|o| write::orderbook(&o, sink.format))
                .collect();
            put_all(&sink, frames);
        }
        return;
    }
    let open = |first: bool| {
        let (mut md, markets) = (md.clone(), codes.clone());
        async move {
            md.stream_orderbooks(pb::StreamOrderbooksRequest {
                markets,
                snapshot: snapshot && first,
                depth: 0,
            })
            .await
        }
    };
    let render = |m: pb::StreamOrderbooksResponse, sink: &Sink| {
        let o = m.orderbook?;
        sink.orderbook(&o, m.snapshot)
            .map(|o| write::orderbook(&o, sink.format))
    };
    pump(open, render, sink, cancel, opened).await;
}

/// Registers this module's series at start (0 until the first event).
pub(crate) fn init_metrics() {
    LazyLock::force(&CONNECTIONS);
    for reason in ["client", "slow", "idle", "shutdown"] {
        CLOSED.with_label_values(&[reason]);
    }
}
