//! Upbit-compatible quotation endpoints (`/v1/market/all`, `/v1/ticker`,
//! `/v1/ticker/all`, `/v1/orderbook`, `/v1/trades/ticks`, `/v1/candles/*`) with
//! Upbit's field names, `Remaining-Req` header, per-IP group limits and errors.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use exchange_proto::marketdata::v1 as pb;
use upbit::query;
use upbit::write::rest;

use crate::convert;
use crate::error::ApiError;
use crate::ratelimit::{Decision, too_many};
use crate::state::{ClientIp, Shared};

type Params = Query<HashMap<String, String>>;

fn param<'a>(q: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    q.get(key).map(String::as_str)
}

/// Unknown markets answer Upbit's 404 `Code not found`.
fn market_error(status: tonic::Status) -> ApiError {
    if status.code() == tonic::Code::NotFound {
        ApiError::code_not_found()
    } else {
        status.into()
    }
}

/// Counts the request in `group`, runs `body` when allowed, and answers JSON
/// with `Remaining-Req`.
async fn limited<F>(gw: &Shared, ip: ClientIp, group: &'static str, body: F) -> Response
where
    F: Future<Output = Result<String, ApiError>>,
{
    let decision = gw
        .limiter
        .check(group, &ip.0.to_string(), gw.limits.quotation)
        .await;
    if decision == Decision::Limited {
        return too_many(group, gw.limits.quotation);
    }
    let mut resp = match body.await {
        Ok(json) => (
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            json,
        )
            .into_response(),
        Err(e) => e.into_response(),
    };
    if let Some(v) = decision.header(group, gw.limits.quotation) {
        resp.headers_mut().insert("remaining-req", v);
    }
    resp
}

pub async fn market_all(State(gw): State<Shared>, ip: ClientIp, Query(q): Params) -> Response {
    let details = param(&q, "is_details") == Some("true");
    limited(&gw.clone(), ip, "market", async move {
        let markets = gw.markets().await?;
        let list: Vec<rest::MarketInfo> = markets
            .iter()
            .map(|m| rest::MarketInfo {
                market: m.market.clone(),
                korean_name: m.korean_name.clone(),
                english_name: m.english_name.clone(),
                market_event: details.then(|| rest::MarketEvent {
                    warning: m.warning,
                    ..Default::default()
                }),
            })
            .collect();
        Ok(serde_json::to_string(&list).unwrap_or_default())
    })
    .await
}

pub async fn ticker(State(gw): State<Shared>, ip: ClientIp, Query(q): Params) -> Response {
    limited(&gw.clone(), ip, "ticker", async move {
        let markets = query::markets(param(&q, "markets"))?;
        let request = pb::GetTickersRequest {
            markets: markets.iter().map(|m| m.to_string()).collect(),
            quote_currencies: vec![],
        };
        let tickers = gw
            .md
            .clone()
            .get_tickers(request)
            .await
            .map_err(market_error)?
            .into_inner()
            .tickers;
        Ok(rest::array(
            tickers
                .iter()
                .filter_map(|t| convert::skipped(convert::ticker(t, false), "ticker", &t.market))
                .map(|t| rest::ticker(&t)),
        ))
    })
    .await
}

pub async fn ticker_all(State(gw): State<Shared>, ip: ClientIp, Query(q): Params) -> Response {
    limited(&gw.clone(), ip, "ticker", async move {
        let quotes = query::quote_currencies(param(&q, "quote_currencies"))?;
        let request = pb::GetTickersRequest {
            markets: vec![],
            quote_currencies: quotes,
        };
        let tickers = gw
            .md
            .clone()
            .get_tickers(request)
            .await?
            .into_inner()
            .tickers;
        Ok(rest::array(
            tickers
                .iter()
                .filter_map(|t| convert::skipped(convert::ticker(t, false), "ticker", &t.market))
                .map(|t| rest::ticker(&t)),
        ))
    })
    .await
}

pub async fn orderbook(State(gw): State<Shared>, ip: ClientIp, Query(q): Params) -> Response {
    limited(&gw.clone(), ip, "orderbook", async move {
        let markets = query::markets(param(&q, "markets"))?;
        let depth = query::count(
            param(&q, "count"),
            query::MAX_ORDERBOOK_DEPTH,
            query::MAX_ORDERBOOK_DEPTH,
        )?;
        if let Some(level) = param(&q, "level").filter(|l| !l.is_empty() && *l != "0") {
            return Err(ApiError::bad_request(format!(
                "level {level} is not supported; only 0"
            )));
        }
        let request = pb::GetOrderbooksRequest {
            markets: markets.iter().map(|m| m.to_string()).collect(),
            depth,
        };
        let books = gw
            .md
            .clone()
            .get_orderbooks(request)
            .await
            .map_err(market_error)?
            .into_inner()
            .orderbooks;
        Ok(rest::array(
            books
                .iter()
                .filter_map(|o| {
                    let book = convert::orderbook(o, depth as usize, false);
                    convert::skipped(book, "orderbook", &o.market)
                })
                .map(|o| rest::orderbook(&o)),
        ))
    })
    .await
}

pub async fn trades(State(gw): State<Shared>, ip: ClientIp, Query(q): Params) -> Response {
    limited(&gw.clone(), ip, "trade", async move {
        let market = query::market(param(&q, "market"))?;
        let count = query::count(param(&q, "count"), 1, query::MAX_TRADES)?;
        let now = chrono::Utc::now().timestamp_millis();
        let to = query::trades_to(param(&q, "to"), param(&q, "days_ago"), now)?;
        let cursor = match param(&q, "cursor").filter(|c| !c.is_empty()) {
            Some(c) => Some(
                c.parse::<i64>()
                    .map_err(|_| ApiError::bad_request("cursor must be a sequential_id"))?,
            ),
            None => None,
        };
        let request = pb::ListTradesRequest {
            market: market.to_string(),
            count,
            cursor,
            to,
            after: None,
        };
        let trades = gw
            .md
            .clone()
            .list_trades(request)
            .await
            .map_err(market_error)?
            .into_inner()
            .trades;
        Ok(rest::array(
            trades
                .iter()
                .filter_map(|t| convert::skipped(convert::trade(t, false), "trade", &t.market))
                .map(|t| rest::trade(&t)),
        ))
    })
    .await
}

async fn candles(
    gw: &Shared,
    q: &HashMap<String, String>,
    interval: pb::CandleInterval,
    unit: Option<u32>,
) -> Result<String, ApiError> {
    let market = query::market(param(q, "market"))?;
    let count = query::count(param(q, "count"), 1, query::MAX_CANDLES)?;
    let to = query::to_time(param(q, "to"))?;
    let request = pb::ListCandlesRequest {
        market: market.to_string(),
        interval: interval as i32,
        to,
        count,
    };
    let candles = gw
        .md
        .clone()
        .list_candles(request)
        .await
        .map_err(market_error)?
        .into_inner()
        .candles;
    Ok(rest::array(
        candles
            .iter()
            .filter_map(|c| convert::skipped(convert::candle(c, unit), "candle", &c.market))
            .map(|c| rest::candle(&c)),
    ))
}

pub async fn candles_minutes(
    State(gw): State<Shared>,
    ip: ClientIp,
    Path(unit): Path<String>,
    Query(q): Params,
) -> Response {
    limited(&gw.clone(), ip, "candle", async move {
        let unit = query::minute_unit(&unit)?;
        let interval = match unit {
            1 => pb::CandleInterval::Minute1,
            3 => pb::CandleInterval::Minute3,
            5 => pb::CandleInterval::Minute5,
            10 => pb::CandleInterval::Minute10,
            15 => pb::CandleInterval::Minute15,
            30 => pb::CandleInterval::Minute30,
            60 => pb::CandleInterval::Minute60,
            _ => pb::CandleInterval::Minute240,
        };
        candles(&gw, &q, interval, Some(unit)).await
    })
    .await
}

pub async fn candles_days(State(gw): State<Shared>, ip: ClientIp, Query(q): Params) -> Response {
    limited(&gw.clone(), ip, "candle", async move {
        candles(&gw, &q, pb::CandleInterval::Day1, None).await
    })
    .await
}

pub async fn candles_weeks(State(gw): State<Shared>, ip: ClientIp, Query(q): Params) -> Response {
    limited(&gw.clone(), ip, "candle", async move {
        candles(&gw, &q, pb::CandleInterval::Week1, None).await
    })
    .await
}

pub async fn candles_months(State(gw): State<Shared>, ip: ClientIp, Query(q): Params) -> Response {
    limited(&gw.clone(), ip, "candle", async move {
        candles(&gw, &q, pb::CandleInterval::Month1, None).await
    })
    .await
}
