//! The native JSON API for market data (`/api/v1/...`), used by the dashboard and
//! the load tests. Decimals are strings; timestamps epoch milliseconds.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use exchange_proto::marketdata::v1 as pb;
use serde::Serialize;
use upbit::query;

use crate::error::ApiError;
use crate::state::Shared;

type Params = Query<HashMap<String, String>>;

fn param<'a>(q: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    q.get(key).map(String::as_str)
}

#[derive(Serialize)]
pub struct MarketView {
    market: String,
    korean_name: String,
    english_name: String,
    /// Upbit's investment warning (투자유의).
    warning: bool,
    /// Upbit's reasons for caution (주의), e.g. `PRICE_FLUCTUATIONS`; empty when none.
    caution: Vec<&'static str>,
}

#[derive(Serialize)]
pub struct Markets {
    markets: Vec<MarketView>,
}

pub async fn markets(State(gw): State<Shared>) -> Result<Json<Markets>, ApiError> {
    let markets = gw
        .markets()
        .await?
        .iter()
        .map(|m| MarketView {
            market: m.market.clone(),
            korean_name: m.korean_name.clone(),
            english_name: m.english_name.clone(),
            warning: m.warning,
            caution: m.caution().reasons(),
        })
        .collect();
    Ok(Json(Markets { markets }))
}

#[derive(Serialize)]
pub struct TickerView {
    market: String,
    price: String,
    open: String,
    high: String,
    low: String,
    prev_close: String,
    change: &'static str,
    change_rate: String,
    volume_24h: String,
    value_24h: String,
    timestamp: i64,
}

fn change_name(v: i32) -> &'static str {
    match pb::Change::try_from(v) {
        Ok(pb::Change::Rise) => "RISE",
        Ok(pb::Change::Fall) => "FALL",
        _ => "EVEN",
    }
}

fn side_name(v: i32) -> &'static str {
    if v == pb::Side::Ask as i32 {
        "ask"
    } else {
        "bid"
    }
}

#[derive(Serialize)]
pub struct Tickers {
    tickers: Vec<TickerView>,
}

/// `GET /api/v1/tickers?markets=KRW-BTC,KRW-ETH` or `?quote=KRW` (all when neither).
pub async fn tickers(
    State(gw): State<Shared>,
    Query(q): Params,
) -> Result<Json<Tickers>, ApiError> {
    let markets = match param(&q, "markets").filter(|m| !m.is_empty()) {
        Some(m) => query::markets(Some(m))?
            .iter()
            .map(|c| c.to_string())
            .collect(),
        None => vec![],
    };
    let quotes = query::quote_currencies(param(&q, "quote"))?;
    let tickers = gw
        .md
        .clone()
        .get_tickers(pb::GetTickersRequest {
            markets,
            quote_currencies: quotes,
        })
        .await?
        .into_inner()
        .tickers
        .into_iter()
        .map(|t| TickerView {
            change: change_name(t.change),
            market: t.market,
            price: t.trade_price,
            open: t.opening_price,
            high: t.high_price,
            low: t.low_price,
            prev_close: t.prev_closing_price,
            change_rate: t.signed_change_rate,
            volume_24h: t.acc_trade_volume_24h,
            value_24h: t.acc_trade_price_24h,
            timestamp: t.timestamp,
        })
        .collect();
    Ok(Json(Tickers { tickers }))
}

#[derive(Serialize)]
pub struct Level {
    price: String,
    size: String,
}

#[derive(Serialize)]
pub struct OrderbookView {
    market: String,
    timestamp: i64,
    asks: Vec<Level>,
    bids: Vec<Level>,
}

/// `GET /api/v1/orderbooks/{market}?depth=15`
pub async fn orderbook(
    State(gw): State<Shared>,
    Path(market): Path<String>,
    Query(q): Params,
) -> Result<Json<OrderbookView>, ApiError> {
    let market = query::market(Some(&market))?;
    let depth = query::count(
        param(&q, "depth"),
        query::MAX_ORDERBOOK_DEPTH,
        query::MAX_ORDERBOOK_DEPTH,
    )?;
    let book = gw
        .md
        .clone()
        .get_orderbooks(pb::GetOrderbooksRequest {
            markets: vec![market.to_string()],
            depth,
        })
        .await?
        .into_inner()
        .orderbooks
        .into_iter()
        .next()
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no orderbook yet",
            )
        })?;
    Ok(Json(OrderbookView {
        market: book.market,
        timestamp: book.timestamp,
        asks: book
            .units
            .iter()
            .map(|u| Level {
                price: u.ask_price.clone(),
                size: u.ask_size.clone(),
            })
            .collect(),
        bids: book
            .units
            .iter()
            .map(|u| Level {
                price: u.bid_price.clone(),
                size: u.bid_size.clone(),
            })
            .collect(),
    }))
}

#[derive(Serialize)]
pub struct TradeView {
    market: String,
    price: String,
    volume: String,
    side: &'static str,
    sequential_id: i64,
    timestamp: i64,
}

#[derive(Serialize)]
pub struct Trades {
    trades: Vec<TradeView>,
}

/// `GET /api/v1/trades/{market}?count=50&cursor=<sequential_id>`
pub async fn trades(
    State(gw): State<Shared>,
    Path(market): Path<String>,
    Query(q): Params,
) -> Result<Json<Trades>, ApiError> {
    let market = query::market(Some(&market))?;
    let count = query::count(param(&q, "count"), 50, query::MAX_TRADES)?;
    let cursor = match param(&q, "cursor").filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| ApiError::bad_request("cursor must be a sequential_id"))?,
        ),
        None => None,
    };
    let trades = gw
        .md
        .clone()
        .list_trades(pb::ListTradesRequest {
            market: market.to_string(),
            count,
            cursor,
            to: None,
            after: None,
        })
        .await?
        .into_inner()
        .trades
        .into_iter()
        .map(|t| TradeView {
            side: side_name(t.ask_bid),
            market: t.market,
            price: t.trade_price,
            volume: t.trade_volume,
            sequential_id: t.sequential_id,
            timestamp: t.trade_timestamp,
        })
        .collect();
    Ok(Json(Trades { trades }))
}

#[derive(Serialize)]
pub struct CandleView {
    start: i64,
    open: String,
    high: String,
    low: String,
    close: String,
    volume: String,
    value: String,
}

#[derive(Serialize)]
pub struct Candles {
    market: String,
    interval: String,
    candles: Vec<CandleView>,
}

/// `GET /api/v1/candles/{market}?interval=1m|3m|5m|10m|15m|30m|60m|240m|1d|1w|1M&count=&to=<epoch ms>`
pub async fn candles(
    State(gw): State<Shared>,
    Path(market): Path<String>,
    Query(q): Params,
) -> Result<Json<Candles>, ApiError> {
    use pb::CandleInterval as I;
    let market = query::market(Some(&market))?;
    let name = param(&q, "interval").unwrap_or("1m").to_owned();
    let interval = match name.as_str() {
        "1m" => I::Minute1,
        "3m" => I::Minute3,
        "5m" => I::Minute5,
        "10m" => I::Minute10,
        "15m" => I::Minute15,
        "30m" => I::Minute30,
        "60m" | "1h" => I::Minute60,
        "240m" | "4h" => I::Minute240,
        "1d" => I::Day1,
        "1w" => I::Week1,
        "1M" => I::Month1,
        _ => {
            return Err(ApiError::bad_request(
                "interval must be one of 1m 3m 5m 10m 15m 30m 60m 240m 1d 1w 1M",
            ));
        }
    };
    let count = query::count(param(&q, "count"), 100, query::MAX_CANDLES)?;
    let to = match param(&q, "to").filter(|t| !t.is_empty()) {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| ApiError::bad_request("to must be epoch milliseconds"))?,
        ),
        None => None,
    };
    let candles = gw
        .md
        .clone()
        .list_candles(pb::ListCandlesRequest {
            market: market.to_string(),
            interval: interval as i32,
            to,
            count,
        })
        .await?
        .into_inner()
        .candles
        .into_iter()
        .map(|c| CandleView {
            start: c.start_time,
            open: c.opening_price,
            high: c.high_price,
            low: c.low_price,
            close: c.trade_price,
            volume: c.candle_acc_trade_volume,
            value: c.candle_acc_trade_price,
        })
        .collect();
    Ok(Json(Candles {
        market: market.to_string(),
        interval: name,
        candles,
    }))
}
