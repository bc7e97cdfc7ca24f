//! The admin port (`METRICS_ADDR`): `/metrics`, `/healthz`, and, with
//! `SIM_CONTROLS` (on by default, off in the chart), the controls for tests,
//! demos and benchmarks — on this port only, never on the feed's:
//!
//! - `GET  /sim/stats` — rate, messages generated, frames sent, connections subscribed
//! - `POST /sim/rate?eps=N` — generator rate in messages/s (0 pauses)
//! - `POST /sim/trade` `{"market","price","volume","ask_bid","timestamp"?}` — trade now
//!   at that price (emits trade, ticker, orderbook)
//! - `POST /sim/drop` — drop every open WebSocket connection (no close frame)
//! - `POST /sim/stall?secs=N` — send no data frames for N seconds
//! - `POST /sim/malformed?count=N` — send the next N data frames malformed
//! - `POST /sim/market-event` `{"market","warning"?,"caution"?:{"PRICE_FLUCTUATIONS":true,…}}`
//!   — designate a market as Upbit does (`/v1/market/all?is_details=true`; the
//!   warning also sets its tickers' `market_warning` to `CAUTION`)
//!
//! `/metrics` has the process's common metrics and the simulator's `upbit_sim_*`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use upbit::AskBid;
use upbit::error::ErrorResponse;
use upbit::market::MarketEvent;

use crate::AppState;

fn bad(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(ErrorResponse::new("validation_error", message)),
    )
        .into_response()
}

fn number(q: &HashMap<String, String>, key: &str) -> Result<u64, String> {
    q.get(key)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("{key} must be a non-negative integer"))
}

pub async fn stats(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "rate": app.sim.rate(),
        "generated": app.sim.generated(),
        "frames_sent": app.sim.frames_sent(),
        "subscribed": app.sim.subscribed(),
        "markets": app.sim.markets().len(),
    }))
}

/// The admin port's router: `/metrics`, `/healthz`, and with `controls` the
/// `/sim/*` controls.
pub fn router(state: Arc<AppState>, controls: bool) -> axum::Router {
    use axum::routing::{get, post};
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }));
    let router = if controls {
        router
            .route("/sim/stats", get(stats))
            .route("/sim/rate", post(rate))
            .route("/sim/trade", post(trade))
            .route("/sim/drop", post(drop_connections))
            .route("/sim/stall", post(stall))
            .route("/sim/malformed", post(malformed))
            .route("/sim/market-event", post(market_event))
    } else {
        router
    };
    router.with_state(state)
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let sim = &app.sim;
    let mut out = String::new();
    for (name, kind, help, value) in [
        (
            "upbit_sim_messages_generated_total",
            "counter",
            "Feed messages generated (trades, tickers, orderbooks; replayed lines included).",
            sim.generated(),
        ),
        (
            "upbit_sim_frames_sent_total",
            "counter",
            "Data frames written to WebSocket connections, over all connections.",
            sim.frames_sent(),
        ),
        (
            "upbit_sim_connection_drops_total",
            "counter",
            "Times every open WebSocket connection was dropped on purpose (POST /sim/drop, SIM_DROP_EVERY).",
            sim.drop_count(),
        ),
        (
            "upbit_sim_subscribed_connections",
            "gauge",
            "WebSocket connections with a subscription in force.",
            sim.subscribed(),
        ),
        (
            "upbit_sim_rate_messages_per_second",
            "gauge",
            "The generator's target rate (0: paused).",
            sim.rate(),
        ),
        (
            "upbit_sim_stalled",
            "gauge",
            "1 while data frames are held back on purpose (POST /sim/stall, SIM_STALL_EVERY).",
            u64::from(sim.stalled()),
        ),
    ] {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
    service_kit::admin::metrics_page(out)
}

pub async fn rate(
    State(app): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match number(&q, "eps") {
        Ok(eps) => {
            app.sim.set_rate(eps);
            Json(serde_json::json!({ "rate": eps })).into_response()
        }
        Err(message) => bad(message),
    }
}

#[derive(Deserialize)]
pub struct TradeRequest {
    market: String,
    price: String,
    volume: String,
    #[serde(default)]
    ask_bid: Option<String>,
    #[serde(default)]
    timestamp: Option<i64>,
}

pub async fn trade(State(app): State<Arc<AppState>>, Json(req): Json<TradeRequest>) -> Response {
    let (Some(price), Some(volume)) = (
        upbit::parse::parse_decimal(&req.price),
        upbit::parse::parse_decimal(&req.volume),
    ) else {
        return bad("price and volume must be decimals");
    };
    let side = match req.ask_bid.as_deref() {
        None | Some("BID") => AskBid::Bid,
        Some("ASK") => AskBid::Ask,
        Some(_) => return bad("ask_bid must be ASK or BID"),
    };
    let now = req.timestamp.unwrap_or_else(crate::feed::now_ms);
    let result = app
        .sim
        .engine()
        .inject(&req.market, price, volume, side, now);
    match result {
        Ok(payloads) => {
            let sid = match &payloads[0] {
                crate::engine::Payload::Trade(t) => t.sequential_id,
                _ => 0,
            };
            app.sim.publish(payloads);
            Json(serde_json::json!({ "sequential_id": sid, "price": price.to_string() }))
                .into_response()
        }
        Err(e) => bad(e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct MarketEventRequest {
    market: String,
    #[serde(flatten)]
    event: MarketEvent,
}

pub async fn market_event(
    State(app): State<Arc<AppState>>,
    Json(req): Json<MarketEventRequest>,
) -> Response {
    match app.sim.set_market_event(&req.market, req.event) {
        Ok(()) => Json(serde_json::json!({ "market": req.market, "market_event": req.event }))
            .into_response(),
        Err(e) => bad(e),
    }
}

pub async fn drop_connections(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    app.sim.drop_connections();
    Json(serde_json::json!({ "dropped": true }))
}

pub async fn stall(
    State(app): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match number(&q, "secs") {
        Ok(secs) => {
            app.sim.stall_for(Duration::from_secs(secs));
            Json(serde_json::json!({ "stalled_for_secs": secs })).into_response()
        }
        Err(message) => bad(message),
    }
}

pub async fn malformed(
    State(app): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match number(&q, "count") {
        Ok(n) => {
            app.sim.malform_next(n);
            Json(serde_json::json!({ "malformed_next": n })).into_response()
        }
        Err(message) => bad(message),
    }
}
