//! The REST quotation subset: `/v1/market/all`, `/v1/ticker`, `/v1/ticker/all`,
//! `/v1/orderbook`, `/v1/trades/ticks`, `/v1/candles/minutes/{unit}`,
//! `/v1/candles/days`, with Upbit's field names, `Remaining-Req` header, per-IP
//! group limits (429) and error bodies.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use upbit::error::ErrorResponse;
use upbit::query::{self, InvalidParam};
use upbit::write::rest::{self, DayFields, MarketInfo, RestCandle};

use crate::AppState;
use crate::engine::SimCandle;

/// Per-IP, per-group request counter (Upbit: 10 per second per group).
pub type RestLimiter = service_kit::ratelimit::PerSecond<(IpAddr, &'static str)>;

/// A REST answer: JSON text or an Upbit error, with the group for `Remaining-Req`.
struct Reply {
    group: &'static str,
    remaining: u32,
    result: Result<String, (StatusCode, ErrorResponse)>,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut resp = match self.result {
            Ok(body) => (
                [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
                body,
            )
                .into_response(),
            Err((status, err)) => (status, axum::Json(err)).into_response(),
        };
        let value = format!(
            "group={}; min={}; sec={}",
            self.group,
            upbit::DEPRECATED_MIN,
            self.remaining
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert("remaining-req", v);
        }
        resp
    }
}

fn bad(e: InvalidParam) -> (StatusCode, ErrorResponse) {
    (
        StatusCode::BAD_REQUEST,
        ErrorResponse::new("validation_error", e.0),
    )
}

fn not_found() -> (StatusCode, ErrorResponse) {
    (
        StatusCode::NOT_FOUND,
        ErrorResponse::new("404", "Code not found"),
    )
}

/// A request's query parameters in order, repeated keys included.
type Params = Query<Vec<(String, String)>>;

/// The first value of `key`.
fn get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Every value of `key` (`markets=A&markets=B`, as pyupbit sends lists, or
/// `markets[]=…`) joined by commas, as a comma list reads.
fn list(q: &[(String, String)], key: &str) -> Option<String> {
    let array = format!("{key}[]");
    let values: Vec<&str> = q
        .iter()
        .filter(|(k, _)| *k == key || *k == array)
        .map(|(_, v)| v.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn limited(
    app: &AppState,
    peer: SocketAddr,
    group: &'static str,
    body: impl FnOnce() -> Result<String, (StatusCode, ErrorResponse)>,
) -> Response {
    match app.rest_limit.take((peer.ip(), group)) {
        Some(remaining) => Reply {
            group,
            // Unlimited: show Upbit's usual allowance rather than u32::MAX.
            remaining: remaining.min(app.rest_limit.limit().max(10)),
            result: body(),
        }
        .into_response(),
        None => Reply {
            group,
            remaining: 0,
            result: Err((
                StatusCode::TOO_MANY_REQUESTS,
                ErrorResponse::new("too_many_requests", "Too many API requests."),
            )),
        }
        .into_response(),
    }
}

pub async fn market_all(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Params,
) -> Response {
    limited(&app, peer, "market", || {
        // Upbit's `is_details`, and `isDetails` as pyupbit sends it.
        let details = ["is_details", "isDetails"]
            .iter()
            .any(|k| get(&q, k).is_some_and(|v| v.eq_ignore_ascii_case("true")));
        let list: Vec<MarketInfo> = app
            .sim
            .markets()
            .iter()
            .map(|m| MarketInfo {
                market: m.code.to_string(),
                korean_name: m.korean_name.clone(),
                english_name: m.english_name.clone(),
                market_event: details.then(|| app.sim.market_event(m.code.as_str())),
            })
            .collect();
        Ok(serde_json::to_string(&list).unwrap_or_default())
    })
}

pub async fn ticker(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Params,
) -> Response {
    limited(&app, peer, "ticker", || {
        let codes = query::markets(list(&q, "markets").as_deref()).map_err(bad)?;
        let engine = app.sim.engine();
        let mut items = Vec::with_capacity(codes.len());
        for code in &codes {
            if !engine.has_market(code.as_str()) {
                return Err(not_found());
            }
            if let Some(t) = engine.ticker(code.as_str()) {
                items.push(rest::ticker(t));
            }
        }
        Ok(rest::array(items))
    })
}

pub async fn ticker_all(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Params,
) -> Response {
    limited(&app, peer, "ticker", || {
        let quotes =
            query::quote_currencies(list(&q, "quote_currencies").as_deref()).map_err(bad)?;
        let engine = app.sim.engine();
        let items = app
            .sim
            .markets()
            .iter()
            .filter(|m| quotes.is_empty() || quotes.iter().any(|q| q == m.code.quote()))
            .filter_map(|m| engine.ticker(m.code.as_str()).map(rest::ticker))
            .collect::<Vec<_>>();
        Ok(rest::array(items))
    })
}

pub async fn orderbook(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Params,
) -> Response {
    limited(&app, peer, "orderbook", || {
        let codes = query::markets(list(&q, "markets").as_deref()).map_err(bad)?;
        let depth =
            query::count(get(&q, "count"), 30, query::MAX_ORDERBOOK_DEPTH).map_err(bad)? as usize;
        if let Some(level) = get(&q, "level").filter(|l| !l.is_empty() && *l != "0") {
            return Err(bad(InvalidParam(format!(
                "level {level} is not supported; only 0"
            ))));
        }
        let engine = app.sim.engine();
        let mut items = Vec::with_capacity(codes.len());
        for code in &codes {
            if !engine.has_market(code.as_str()) {
                return Err(not_found());
            }
            if let Some(o) = engine.orderbook(code.as_str()) {
                let mut o = o.clone();
                o.orderbook_units.truncate(depth);
                o.total_ask_size = o.orderbook_units.iter().map(|u| u.ask_size).sum();
                o.total_bid_size = o.orderbook_units.iter().map(|u| u.bid_size).sum();
                items.push(rest::orderbook(&o));
            }
        }
        Ok(rest::array(items))
    })
}

pub async fn trades(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Params,
) -> Response {
    limited(&app, peer, "trade", || {
        let code = query::market(get(&q, "market")).map_err(bad)?;
        let count = query::count(get(&q, "count"), 1, query::MAX_TRADES).map_err(bad)? as usize;
        let cursor = match get(&q, "cursor").filter(|c| !c.is_empty()) {
            Some(c) => Some(
                c.parse::<i64>()
                    .map_err(|_| bad(InvalidParam("cursor must be a sequential_id".into())))?,
            ),
            None => None,
        };
        let to = query::trades_to(get(&q, "to"), get(&q, "days_ago"), crate::feed::now_ms())
            .map_err(bad)?;
        let engine = app.sim.engine();
        if !engine.has_market(code.as_str()) {
            return Err(not_found());
        }
        let items = engine
            .trades(code.as_str())
            .into_iter()
            .filter(|t| cursor.is_none_or(|c| t.sequential_id < c))
            .filter(|t| to.is_none_or(|to| t.trade_timestamp < to))
            .take(count)
            .map(|t| rest::trade(&t))
            .collect::<Vec<_>>();
        Ok(rest::array(items))
    })
}

/// Aggregates 1-minute candles into periods of `period_ms` aligned to UTC
/// midnight, newest first, `count` periods before `to`.
fn aggregate(candles: &[SimCandle], period_ms: i64, to: i64, count: u32) -> Vec<(i64, SimCandle)> {
    let to_period = to - to.rem_euclid(period_ms);
    // Periods strictly before `to`: the period containing `to` counts only if it started before.
    let end = if to_period == to {
        to
    } else {
        to_period + period_ms
    };
    let start = end - period_ms * i64::from(count);
    let mut out: Vec<(i64, SimCandle)> = Vec::new();
    for c in candles.iter().filter(|c| c.start >= start && c.start < to) {
        let p = c.start - c.start.rem_euclid(period_ms);
        match out.last_mut() {
            Some((ps, acc)) if *ps == p => {
                acc.high = acc.high.max(c.high);
                acc.low = acc.low.min(c.low);
                acc.close = c.close;
                acc.volume += c.volume;
                acc.value += c.value;
                acc.last_ts = c.last_ts;
            }
            _ => out.push((p, c.clone())),
        }
    }
    out.reverse();
    out
}

fn candles_reply(
    app: &AppState,
    q: &[(String, String)],
    period_ms: i64,
    unit: Option<u32>,
) -> Result<String, (StatusCode, ErrorResponse)> {
    let code = query::market(get(q, "market")).map_err(bad)?;
    let count = query::count(get(q, "count"), 1, query::MAX_CANDLES).map_err(bad)?;
    let to = query::to_time(get(q, "to"))
        .map_err(bad)?
        .unwrap_or_else(|| crate::feed::now_ms() + 1);
    let engine = app.sim.engine();
    if !engine.has_market(code.as_str()) {
        return Err(not_found());
    }
    let all = engine.candles(code.as_str());
    drop(engine);
    let is_day = unit.is_none();
    // One extra period for the previous close of day candles.
    let periods = aggregate(&all, period_ms, to, count + u32::from(is_day));
    let mut items = Vec::new();
    for (i, (start, c)) in periods.iter().enumerate().take(count as usize) {
        let day = is_day.then(|| {
            let prev = periods.get(i + 1).map(|(_, p)| p.close).unwrap_or(c.open);
            let change = c.close - prev;
            DayFields {
                prev_closing_price: prev,
                change_price: change,
                change_rate: if prev.is_zero() {
                    Decimal::ZERO
                } else {
                    (change / prev).round_dp(8)
                },
                converted_trade_price: None,
            }
        });
        items.push(rest::candle(&RestCandle {
            market: code.to_string(),
            start: *start,
            opening_price: c.open,
            high_price: c.high,
            low_price: c.low,
            trade_price: c.close,
            timestamp: c.last_ts,
            candle_acc_trade_price: c.value.round_dp(8),
            candle_acc_trade_volume: c.volume,
            unit,
            day,
            first_day_of_period: false,
        }));
    }
    Ok(rest::array(items))
}

pub async fn candles_minutes(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(unit): Path<String>,
    Query(q): Params,
) -> Response {
    limited(&app, peer, "candle", || {
        let unit = query::minute_unit(&unit).map_err(bad)?;
        candles_reply(&app, &q, i64::from(unit) * 60_000, Some(unit))
    })
}

pub async fn candles_days(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Params,
) -> Response {
    limited(&app, peer, "candle", || {
        candles_reply(&app, &q, 86_400_000, None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(start: i64, close: i64) -> SimCandle {
        let p = Decimal::from(close);
        SimCandle {
            start,
            open: p,
            high: p,
            low: p,
            close: p,
            volume: Decimal::ONE,
            value: p,
            last_ts: start + 1,
        }
    }

    #[test]
    fn aggregation_groups_aligned_periods_newest_first_with_gaps() {
        let m = 60_000;
        // Minutes 0,1,2,4 (3 is a gap), 5, 9.
        let minutes = [
            c(0, 10),
            c(m, 12),
            c(2 * m, 8),
            c(4 * m, 11),
            c(5 * m, 15),
            c(9 * m, 9),
        ];
        let five = aggregate(&minutes, 5 * m, 10 * m, 2);
        assert_eq!(five.len(), 2);
        let (s, newest) = &five[0];
        assert_eq!(*s, 5 * m);
        assert_eq!(
            (newest.open, newest.close, newest.high, newest.volume),
            (
                Decimal::from(15),
                Decimal::from(9),
                Decimal::from(15),
                Decimal::from(2)
            )
        );
        let (s, older) = &five[1];
        assert_eq!(*s, 0);
        assert_eq!(
            (older.open, older.close, older.high, older.low),
            (
                Decimal::from(10),
                Decimal::from(11),
                Decimal::from(12),
                Decimal::from(8)
            )
        );
        // `count` periods before the exclusive `to`; empty periods are gaps.
        let ones = aggregate(&minutes, m, 9 * m, 5);
        assert_eq!(
            ones.iter().map(|(s, _)| *s / m).collect::<Vec<_>>(),
            vec![5, 4]
        );
    }
}
