//! `/websocket/v1`: Upbit's public WebSocket protocol.
//!
//! One text frame `[{ticket},{type,codes,...},{format}]` subscribes; a new request
//! replaces the whole subscription set; each subscribed code first gets a SNAPSHOT
//! message (unless `is_only_realtime`), then REALTIME messages (unless
//! `is_only_snapshot`). Data frames are binary UTF-8 JSON in the connection's
//! format. `PING` is answered with `{"status":"UP"}`; malformed requests with an
//! error frame. Connections idle longer than the idle timeout are closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use service_kit::ws::{Incoming, spawn_reader};
use tokio::sync::broadcast::error::RecvError;
use upbit::StreamType;
use upbit::error::{ErrorBody, ErrorResponse};
use upbit::request::{
    ClientFrame, DataType, RequestWindow, Subscription, invalid_param, parse_request,
    too_many_requests,
};
use upbit::write::{Format, STATUS_UP};

use crate::AppState;
use crate::engine::{Event, Payload, render};

pub async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(app): State<Arc<AppState>>,
) -> Response {
    if app.connects.take(peer.ip()).is_none() {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(ErrorResponse::new(
                "too_many_requests",
                "Too many connection requests.",
            )),
        )
            .into_response();
    }
    ws.on_upgrade(move |socket| connection(socket, app))
}

/// What a connection is subscribed to: type → code → orderbook depth.
#[derive(Default)]
struct Subscriptions {
    realtime: HashMap<&'static str, HashMap<String, usize>>,
    list: Vec<Subscription>,
}

impl Subscriptions {
    fn depth_for(&self, event: &Event) -> Option<usize> {
        self.realtime
            .get(event.payload.type_name())?
            .get(event.payload.code())
            .copied()
    }
}

fn type_key(t: &DataType) -> Option<&'static str> {
    match t {
        DataType::Ticker => Some("ticker"),
        DataType::Trade => Some("trade"),
        DataType::Orderbook => Some("orderbook"),
        DataType::Candle(_) => None,
    }
}

fn error_frame(name: &str, message: &str) -> Message {
    Message::Binary(
        ErrorResponse::new(name, message)
            .to_json()
            .into_bytes()
            .into(),
    )
}

/// Most events written between two checks of the other inputs.
const BURST: usize = 256;

async fn connection(socket: WebSocket, app: Arc<AppState>) {
    let sim = app.sim.clone();
    let (mut sink, stream) = socket.split();
    let mut incoming = spawn_reader(stream);
    let mut events = sim.subscribe();
    let mut drops = sim.drops();
    drops.borrow_and_update();
    let mut subs = Subscriptions::default();
    let mut format = Format::Default;
    let mut limit = RequestWindow::default();
    let idle = tokio::time::sleep(app.idle_timeout);
    tokio::pin!(idle);
    let stop = app.stop.clone();
    // Dropped first on return, before the socket: the count is right by the
    // time the peer sees the connection end.
    let mut subscribed = crate::feed::SubscribedGuard::new(sim.clone());
    loop {
        tokio::select! {
            received = incoming.recv() => {
                idle.as_mut().reset(tokio::time::Instant::now() + app.idle_timeout);
                let text = match received {
                    None => return,
                    Some(Incoming::Heard) => continue,
                    Some(Incoming::Text(t)) => t,
                };
                let replies = handle_request(&text, &app, &mut subs, &mut format, &mut limit);
                subscribed.set(!subs.list.is_empty());
                tracing::debug!(subscriptions = subs.list.len(), "request handled");
                for reply in replies {
                    if sink.feed(reply).await.is_err() { return; }
                }
                if sink.flush().await.is_err() { return; }
            }
            received = events.recv() => {
                let mut next = Some(received);
                let mut written = 0;
                // Write a burst of events, then flush once.
                while let Some(received) = next.take() {
                    let event = match received {
                        Ok(e) => e,
                        Err(RecvError::Lagged(_)) => { next = events.try_recv().ok().map(Ok); continue; }
                        Err(RecvError::Closed) => return,
                    };
                    if let Some(depth) = subs.depth_for(&event).filter(|_| !sim.stalled()) {
                        let mut frame = event.frame(format, depth);
                        if sim.take_malformed() {
                            // Half a message: what a broken upstream sends.
                            frame.truncate(frame.len() / 2);
                        }
                        if sink.feed(Message::Binary(frame)).await.is_err() { return; }
                        written += 1;
                    }
                    if written < BURST {
                        next = match events.try_recv() {
                            Ok(e) => Some(Ok(e)),
                            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                            Err(_) => None,
                        };
                    }
                }
                if written > 0 && sink.flush().await.is_err() { return; }
            }
            _ = drops.changed() => {
                // Simulated network failure: no close frame.
                tracing::debug!("dropping the connection (/sim/drop)");
                return;
            }
            _ = &mut idle => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: 1000, reason: "idle timeout".into() }))).await;
                return;
            }
            _ = stop.cancelled() => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }))).await;
                return;
            }
        }
    }
}

fn handle_request(
    text: &str,
    app: &AppState,
    subs: &mut Subscriptions,
    format: &mut Format,
    limit: &mut RequestWindow,
) -> Vec<Message> {
    let frame = match parse_request(text) {
        Ok(f) => f,
        Err(ErrorBody { name, message }) => return vec![error_frame(&name, &message)],
    };
    match frame {
        ClientFrame::Ping => vec![Message::Binary(STATUS_UP.as_bytes().to_vec().into())],
        ClientFrame::ListSubscriptions { ticket } => {
            let result: Vec<serde_json::Value> = subs
                .list
                .iter()
                .map(|s| {
                    // `level` is the orderbook's only, a number (as Upbit lists it).
                    let mut v = serde_json::json!({"type": s.data_type.as_str(), "codes": s.codes});
                    if s.data_type == DataType::Orderbook {
                        let level = s.level.as_deref().unwrap_or("0");
                        v["level"] = serde_json::Value::from(level.parse::<f64>().unwrap_or(0.0));
                    }
                    v
                })
                .collect();
            let body = serde_json::json!({"method": "LIST_SUBSCRIPTIONS", "result": result, "ticket": ticket});
            vec![Message::Binary(body.to_string().into_bytes().into())]
        }
        ClientFrame::Subscribe(request) => {
            if !limit.allow() {
                let e = too_many_requests();
                return vec![error_frame(&e.name, &e.message)];
            }
            if request
                .subscriptions
                .iter()
                .any(|s| matches!(s.data_type, DataType::Candle(_)))
            {
                return vec![error_frame(
                    "INVALID_PARAM",
                    "candle streams are not simulated; subscribe to ticker, trade or orderbook",
                )];
            }
            let engine = app.sim.engine();
            if let Some(unknown) = request
                .subscriptions
                .iter()
                .flat_map(|s| &s.codes)
                .find(|c| !engine.has_market(c))
            {
                let e = invalid_param(format!("unknown market code: {unknown}"));
                return vec![error_frame(&e.name, &e.message)];
            }
            if let Some(f) = request.format {
                *format = f;
            }
            let mut replies = Vec::new();
            let mut realtime: HashMap<&'static str, HashMap<String, usize>> = HashMap::new();
            for sub in &request.subscriptions {
                let Some(key) = type_key(&sub.data_type) else {
                    continue;
                };
                for (code, depth) in sub.codes.iter().zip(&sub.depths) {
                    if sub.wants_snapshot() {
                        let snapshot = match key {
                            "ticker" => engine.ticker(code).cloned().map(|mut t| {
                                t.stream_type = StreamType::Snapshot;
                                Payload::Ticker(t)
                            }),
                            "trade" => engine.trades(code).into_iter().next().map(|mut t| {
                                t.stream_type = StreamType::Snapshot;
                                Payload::Trade(t)
                            }),
                            _ => engine.orderbook(code).cloned().map(|mut o| {
                                o.stream_type = StreamType::Snapshot;
                                Payload::Orderbook(o)
                            }),
                        };
                        if let Some(p) = snapshot {
                            replies.push(Message::Binary(
                                render(&p, *format, *depth).into_bytes().into(),
                            ));
                        }
                    }
                    if sub.wants_realtime() {
                        realtime
                            .entry(key)
                            .or_default()
                            .insert(code.clone(), *depth);
                    }
                }
            }
            subs.realtime = realtime;
            subs.list = request.subscriptions;
            replies
        }
    }
}
