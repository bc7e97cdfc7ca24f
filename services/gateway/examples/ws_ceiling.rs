//! The ceiling for `scripts/bench-ws`: the least a WebSocket server can do to
//! hand one message to N subscribers on this machine, with the gateway's HTTP
//! and WebSocket stack (axum, tungstenite) and its socket buffer settings.
//!
//! `POST /sim/trade` makes a trade frame (the shape and size of the gateway's,
//! `trade_timestamp` now) and broadcasts the same bytes to every connection
//! that subscribed (sent any text frame); `/metrics` counts them as
//! `gateway_ws_subscriptions`. So `ws_clients`, pointed here for all three of
//! its addresses, measures this server exactly as it measures the gateway.
//!
//! Usage: ws_ceiling --port PORT

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;

struct Hub {
    tx: broadcast::Sender<bytes::Bytes>,
    subscribed: AtomicI64,
    seq: AtomicI64,
}

async fn upgrade(ws: WebSocketUpgrade, State(hub): State<Arc<Hub>>) -> axum::response::Response {
    // The gateway's settings (its defaults: 4 KiB reads, 16 KiB writes).
    ws.read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(64 * 1024)
        .on_upgrade(move |socket| serve(socket, hub))
}

async fn serve(socket: WebSocket, hub: Arc<Hub>) {
    let (mut sink, mut stream) = socket.split();
    // Wait for the subscription, then forward until either side ends.
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(_))) => break,
            Some(Ok(_)) => continue,
            _ => return,
        }
    }
    let mut rx = hub.tx.subscribe();
    hub.subscribed.fetch_add(1, Ordering::Relaxed);
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    while let Ok(frame) = rx.recv().await {
        if sink.send(Message::Binary(frame)).await.is_err() {
            break;
        }
    }
    reader.abort();
    hub.subscribed.fetch_sub(1, Ordering::Relaxed);
}

async fn trade(State(hub): State<Arc<Hub>>, body: String) -> &'static str {
    let price = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["price"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "150000000".into());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let seq = hub.seq.fetch_add(1, Ordering::Relaxed);
    // A trade as the gateway writes it (DEFAULT format), about its size.
    let frame = format!(
        r#"{{"type":"trade","code":"KRW-BTC","trade_price":{price},"trade_volume":0.001,"ask_bid":"BID","prev_closing_price":148000000,"change":"RISE","change_price":2000000,"trade_date":"2026-12-03","trade_time":"08:00:00","trade_timestamp":{now},"timestamp":{now},"sequential_id":{seq},"best_ask_price":150001000,"best_ask_size":0.5,"best_bid_price":149999000,"best_bid_size":0.5,"stream_type":"REALTIME"}}"#
    );
    let _ = hub.tx.send(bytes::Bytes::from(frame));
    "{}"
}

async fn metrics(State(hub): State<Arc<Hub>>) -> String {
    format!(
        "gateway_ws_subscriptions {}\n",
        hub.subscribed.load(Ordering::Relaxed)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 0u16;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => port = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other} (--port PORT)"),
        }
    }
    let hub = Arc::new(Hub {
        tx: broadcast::channel(1024).0,
        subscribed: AtomicI64::new(0),
        seq: AtomicI64::new(0),
    });
    let app = axum::Router::new()
        .route("/websocket/v1", get(upgrade))
        .route("/sim/trade", post(trade))
        .route("/metrics", get(metrics))
        .with_state(hub);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
