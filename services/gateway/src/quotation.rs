//! Upbit-compatible quotation endpoints (`/v1/market/all`, `/v1/ticker`,
//! `/v1/ticker/all`, `/v1/orderbook`, `/v1/trades/ticks`, `/v1/candles/*`) with
//! Upbit's field names, `Remaining-Req` header, per-IP group limits and errors.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use exchange_proto::marketdata::v1 as pb;
use upbit::query;
use upbit::write::rest;

use crate::convert;
use crate::error::ApiError;
use crate::ratelimit::{Decision, too_many};
use crate::state::{ClientIp, Shared};

/// A request's query parameters as sent, in order, repeated keys included.
pub struct QueryList(Vec<(String, String)>);

impl QueryList {
    /// The first value of `key`.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key` (`markets=A&markets=B`, or `markets[]=…`) joined
    /// by commas, so a list sent as repeated keys (pyupbit) reads as the same
    /// list sent comma separated.
    fn list(&self, key: &str) -> Option<String> {
        let array = format!("{key}[]");
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, _)| *k == key || *k == array)
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for QueryList {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .take(MAX_PARAMS + 1)
            .collect();
        if params.len() > MAX_PARAMS {
            // Never a shorter answer than asked for: a client would miss markets.
            return Err(ApiError::bad_request(format!(
                "at most {MAX_PARAMS} query parameters per request"
            )));
        }
        Ok(Self(params))
    }
}

type Params = QueryList;

/// Most query parameters one request may have: every market a request may
/// name as a key of its own (`markets=A&markets=B`, as pyupbit sends them),
/// and the rest.
const MAX_PARAMS: usize = upbit::query::MAX_MARKETS + 64;

fn param<'a>(q: &'a QueryList, key: &str) -> Option<&'a str> {
    q.get(key)
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
    if matches!(decision, Decision::Limited | Decision::Blocked { .. }) {
        return too_many(decision, group, gw.limits.quotation);
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

pub async fn market_all(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    // Upbit's `is_details`; pyupbit sends `isDetails`.
    let details = [param(&q, "is_details"), param(&q, "isDetails")]
        .into_iter()
        .flatten()
        .any(|v| v.eq_ignore_ascii_case("true"));
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
                    caution: m.caution(),
                }),
            })
            .collect();
        Ok(serde_json::to_string(&list).unwrap_or_default())
    })
    .await
}

/// A ticker reply from the gateway's memory ([`crate::board`]), unless the
/// request is routed to particular versions downstream.
fn from_memory(reply: impl FnOnce() -> Option<crate::board::FromMemory>) -> Option<String> {
    if telemetry::propagation::RequestScope::current().routed() {
        return None;
    }
    let reply = reply()?;
    if let Some(fed_by) = &reply.served_by {
        telemetry::propagation::record_served_by_value(fed_by);
    }
    Some(reply.body)
}

pub async fn ticker(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "ticker", async move {
        let markets = query::markets(q.list("markets").as_deref())?;
        if let Some(body) = from_memory(|| gw.tickers.tickers(markets.iter().map(|m| m.as_str()))) {
            return Ok(body);
        }
        crate::board::count_fallback();
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

/// `/v1/orderbook/instruments`: each market's quote currency, its tick size at
/// the current price (Upbit's KRW ticks depend on the price), and the levels
/// its orderbook may be grouped by.
pub async fn orderbook_instruments(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "orderbook", async move {
        let markets = query::markets(q.list("markets").as_deref())?;
        let prices = prices(&gw, &markets).await?;
        let list: Vec<serde_json::Value> = markets
            .iter()
            .zip(prices)
            .map(|(m, price)| {
                let levels: Vec<String> = upbit::market::supported_levels(m.quote(), price)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                serde_json::json!({
                    "market": m.as_str(),
                    "quote_currency": m.quote(),
                    "tick_size": upbit::market::tick_size(m.quote(), price).normalize().to_string(),
                    "supported_levels": levels,
                })
            })
            .collect();
        Ok(serde_json::Value::from(list).to_string())
    })
    .await
}

/// `/v1/orderbook/supported_levels` (Upbit's older form of the levels, as
/// numbers).
pub async fn orderbook_levels(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "orderbook", async move {
        let markets = query::markets(q.list("markets").as_deref())?;
        let prices = prices(&gw, &markets).await?;
        let list: Vec<serde_json::Value> = markets
            .iter()
            .zip(prices)
            .map(|(m, price)| {
                let levels: Vec<serde_json::Value> =
                    upbit::market::supported_levels(m.quote(), price)
                        .iter()
                        .map(|l| {
                            serde_json::Value::from(
                                rust_decimal::prelude::ToPrimitive::to_u64(l).unwrap_or(0),
                            )
                        })
                        .collect();
                serde_json::json!({"market": m.as_str(), "supported_levels": levels})
            })
            .collect();
        Ok(serde_json::Value::from(list).to_string())
    })
    .await
}

pub async fn ticker_all(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "ticker", async move {
        let quotes = query::quote_currencies(q.list("quote_currencies").as_deref())?;
        if gw.tickers.is_live() {
            let listed = gw.markets().await?;
            let wanted = listed.iter().map(|m| m.market.as_str()).filter(|m| {
                quotes.is_empty()
                    || quotes
                        .iter()
                        .any(|q| m.split('-').next() == Some(q.as_str()))
            });
            if let Some(body) = from_memory(|| gw.tickers.listed(wanted)) {
                return Ok(body);
            }
        }
        crate::board::count_fallback();
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

pub async fn orderbook(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "orderbook", async move {
        let markets = query::markets(q.list("markets").as_deref())?;
        let depth = query::count(
            param(&q, "count"),
            query::MAX_ORDERBOOK_DEPTH,
            query::MAX_ORDERBOOK_DEPTH,
        )?;
        let level = match param(&q, "level").filter(|l| !l.is_empty()) {
            None => rust_decimal::Decimal::ZERO,
            Some(l) => l
                .parse::<rust_decimal::Decimal>()
                .ok()
                .filter(|l| !l.is_sign_negative() && l.scale() <= 8)
                .ok_or_else(|| ApiError::bad_request("level must be a price unit, e.g. 10000"))?,
        };
        let request = pb::GetOrderbooksRequest {
            markets: markets.iter().map(|m| m.to_string()).collect(),
            // Grouping folds the whole book, then cuts it.
            depth: if level.is_zero() {
                depth
            } else {
                query::MAX_ORDERBOOK_DEPTH
            },
        };
        let books = gw
            .md
            .clone()
            .get_orderbooks(request)
            .await
            .map_err(market_error)?
            .into_inner()
            .orderbooks;
        let mut grouped = Vec::with_capacity(books.len());
        for o in &books {
            let full = query::MAX_ORDERBOOK_DEPTH as usize;
            let Some(book) =
                convert::skipped(convert::orderbook(o, full, false), "orderbook", &o.market)
            else {
                continue;
            };
            // As on Upbit: a level the market does not support yields nothing
            // for it (`[]` for a request of that market alone), not an error.
            if !level.is_zero() && !crate::fanout::groupable(&book, level) {
                continue;
            }
            grouped.push(book.grouped(level, depth as usize));
        }
        Ok(rest::array(grouped.iter().map(rest::orderbook)))
    })
    .await
}

/// The last trade price of each of `markets` (zero when unknown).
async fn prices(
    gw: &Shared,
    markets: &[upbit::market::MarketCode],
) -> Result<Vec<rust_decimal::Decimal>, ApiError> {
    let tickers = gw
        .md
        .clone()
        .get_tickers(pb::GetTickersRequest {
            markets: markets.iter().map(|m| m.to_string()).collect(),
            quote_currencies: vec![],
        })
        .await
        .map_err(market_error)?
        .into_inner()
        .tickers;
    Ok(markets
        .iter()
        .map(|m| {
            tickers
                .iter()
                .find(|t| t.market == m.as_str())
                .and_then(|t| t.trade_price.parse().ok())
                .unwrap_or_default()
        })
        .collect())
}

pub async fn trades(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
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
    q: &QueryList,
    interval: pb::CandleInterval,
    unit: Option<u32>,
) -> Result<String, ApiError> {
    let list = candle_list(gw, q, param(q, "market"), interval, unit).await?;
    Ok(rest::array(list.iter().map(rest::candle)))
}

async fn candle_list(
    gw: &Shared,
    q: &QueryList,
    market: Option<&str>,
    interval: pb::CandleInterval,
    unit: Option<u32>,
) -> Result<Vec<rest::RestCandle>, ApiError> {
    let market = query::market(market)?;
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
    Ok(candles
        .iter()
        .filter_map(|c| convert::skipped(convert::candle(c, unit), "candle", &c.market))
        .collect())
}

pub async fn candles_minutes(
    State(gw): State<Shared>,
    ip: ClientIp,
    Path(unit): Path<String>,
    q: Params,
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

/// Folds candles or trades (newest first, each a [`rest::RestCandle`]) into
/// the periods `period_start` maps their starts to: the first one's opening
/// price, the last one's close, the extremes and sums, the period's start.
/// Newest first, at most `count`.
pub fn fold_candles(
    pieces: &[rest::RestCandle],
    period_start: impl Fn(i64) -> i64,
    count: usize,
    first_day_of_period: bool,
) -> Vec<rest::RestCandle> {
    let mut folded: Vec<rest::RestCandle> = Vec::new();
    for p in pieces.iter().rev() {
        let start = period_start(p.start);
        match folded.last_mut() {
            Some(c) if c.start == start => {
                c.high_price = c.high_price.max(p.high_price);
                c.low_price = c.low_price.min(p.low_price);
                c.trade_price = p.trade_price;
                c.timestamp = p.timestamp;
                c.candle_acc_trade_price += p.candle_acc_trade_price;
                c.candle_acc_trade_volume += p.candle_acc_trade_volume;
            }
            _ => folded.push(rest::RestCandle {
                start,
                unit: None,
                day: None,
                first_day_of_period,
                ..p.clone()
            }),
        }
    }
    folded.reverse();
    folded.truncate(count);
    folded
}

/// Start of the UTC year of an epoch-ms time.
fn year_start(ms: i64) -> i64 {
    use chrono::Datelike;
    let year = chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .year();
    chrono::NaiveDate::from_ymd_opt(year, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(0, |t| t.and_utc().timestamp_millis())
}

/// `/v1/candles/years`: market-data's month candles (200 of them, 16 years)
/// folded by year.
pub async fn candles_years(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "candle", async move {
        let market = query::market(param(&q, "market"))?;
        let count = query::count(param(&q, "count"), 1, query::MAX_CANDLES)?;
        let to = query::to_time(param(&q, "to"))?;
        let months = gw
            .md
            .clone()
            .list_candles(pb::ListCandlesRequest {
                market: market.to_string(),
                interval: pb::CandleInterval::Month1 as i32,
                // Years that start before `to`, with their months before it.
                to,
                count: query::MAX_CANDLES,
            })
            .await
            .map_err(market_error)?
            .into_inner()
            .candles;
        let months: Vec<rest::RestCandle> = months
            .iter()
            .filter_map(|c| convert::skipped(convert::candle(c, None), "candle", &c.market))
            .collect();
        let years = fold_candles(&months, year_start, count as usize, true);
        Ok(rest::array(years.iter().map(rest::candle)))
    })
    .await
}

/// Trades read at most for one `/v1/candles/seconds` answer.
const MAX_SECOND_TRADES: usize = 2000;

/// The start of the second `ms` falls in.
fn second(ms: i64) -> i64 {
    ms.div_euclid(1000) * 1000
}

/// Trades (newest first) without their oldest second's, unless every trade
/// before it was read (`all_read`): reading stopped somewhere in that second,
/// so its candle would miss trades and a client paging back with `to` would
/// never see it whole. A second that is all there is stays, whole or not.
fn whole_seconds(pieces: &[rest::RestCandle], all_read: bool) -> &[rest::RestCandle] {
    let Some(oldest) = pieces.last().map(|p| second(p.start)) else {
        return pieces;
    };
    if all_read {
        return pieces;
    }
    let newer = pieces
        .iter()
        .rposition(|p| second(p.start) != oldest)
        .map_or(0, |i| i + 1);
    if newer == 0 { pieces } else { &pieces[..newer] }
}

/// `/v1/candles/seconds`: one-second candles folded from the market's trades
/// (market-data keeps no second candles), before `to`; seconds without trades
/// have no candle, as on Upbit.
pub async fn candles_seconds(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "candle", async move {
        let market = query::market(param(&q, "market"))?;
        let count = query::count(param(&q, "count"), 1, query::MAX_CANDLES)? as usize;
        let to = query::to_time(param(&q, "to"))?;
        let mut pieces: Vec<rest::RestCandle> = Vec::new();
        let mut cursor = None;
        let mut all_read;
        loop {
            let trades = gw
                .md
                .clone()
                .list_trades(pb::ListTradesRequest {
                    market: market.to_string(),
                    count: query::MAX_TRADES,
                    cursor,
                    to: if cursor.is_none() { to } else { None },
                    after: None,
                })
                .await
                .map_err(market_error)?
                .into_inner()
                .trades;
            all_read = trades.len() < query::MAX_TRADES as usize;
            let Some(last) = trades.last() else { break };
            cursor = Some(last.sequential_id);
            pieces.extend(
                trades
                    .iter()
                    .filter_map(|t| convert::skipped(convert::trade_piece(t), "trade", &t.market)),
            );
            // Past `count` seconds back, every newer second is whole.
            let seconds = pieces.first().map_or(0, |p| second(p.start))
                - pieces.last().map_or(0, |p| second(p.start));
            if all_read || pieces.len() >= MAX_SECOND_TRADES || seconds / 1000 > count as i64 {
                break;
            }
        }
        let pieces = whole_seconds(&pieces, all_read);
        let candles = fold_candles(pieces, second, count, false);
        Ok(rest::array(candles.iter().map(rest::candle)))
    })
    .await
}

/// Day candles; `converting_price_unit=KRW` adds `converted_trade_price`,
/// the close times that day's close of `KRW-<quote>` (null on a day it has
/// none).
pub async fn candles_days(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "candle", async move {
        let day = pb::CandleInterval::Day1;
        let mut list = candle_list(&gw, &q, param(&q, "market"), day, None).await?;
        match param(&q, "converting_price_unit").filter(|u| !u.is_empty()) {
            None => {}
            Some("KRW") => {
                let quote = param(&q, "market")
                    .and_then(|m| m.split_once('-'))
                    .map_or("KRW", |(quote, _)| quote);
                let rates: std::collections::HashMap<i64, rust_decimal::Decimal> = if quote == "KRW"
                {
                    list.iter()
                        .map(|c| (c.start, rust_decimal::Decimal::ONE))
                        .collect()
                } else {
                    let krw = format!("KRW-{quote}");
                    candle_list(&gw, &q, Some(&krw), day, None)
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| (c.start, c.trade_price))
                        .collect()
                };
                for c in &mut list {
                    let converted = rates
                        .get(&c.start)
                        .map(|rate| (c.trade_price * rate).round_dp(8).normalize());
                    if let Some(day) = c.day.as_mut() {
                        day.converted_trade_price = Some(converted);
                    }
                }
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "converting_price_unit must be KRW, not {other}"
                )));
            }
        }
        Ok(rest::array(list.iter().map(rest::candle)))
    })
    .await
}

pub async fn candles_weeks(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "candle", async move {
        candles(&gw, &q, pb::CandleInterval::Week1, None).await
    })
    .await
}

pub async fn candles_months(State(gw): State<Shared>, ip: ClientIp, q: Params) -> Response {
    limited(&gw.clone(), ip, "candle", async move {
        candles(&gw, &q, pb::CandleInterval::Month1, None).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    fn piece(ms: i64) -> rest::RestCandle {
        rest::RestCandle {
            market: "KRW-BTC".into(),
            start: ms,
            opening_price: Decimal::ONE,
            high_price: Decimal::ONE,
            low_price: Decimal::ONE,
            trade_price: Decimal::ONE,
            timestamp: ms,
            candle_acc_trade_price: Decimal::ONE,
            candle_acc_trade_volume: Decimal::ONE,
            unit: None,
            day: None,
            first_day_of_period: false,
        }
    }

    #[test]
    fn a_second_read_in_part_is_left_for_the_next_page() {
        // Newest first: one trade at 10.2 s, three in the second starting at 5 s.
        let pieces = [piece(10_200), piece(5_900), piece(5_500), piece(5_100)];
        let starts = |p: &[rest::RestCandle]| p.iter().map(|c| c.start).collect::<Vec<_>>();
        assert_eq!(starts(whole_seconds(&pieces, false)), vec![10_200]);
        // Reading reached the market's first trade: the oldest second is whole.
        assert_eq!(starts(whole_seconds(&pieces, true)), starts(&pieces));
        // One second only: kept (nothing else to answer with).
        assert_eq!(whole_seconds(&pieces[1..], false).len(), 3);
        assert!(whole_seconds(&[], false).is_empty());
        // So the candle of the 5 s second never appears with part of its trades.
        let candles = fold_candles(whole_seconds(&pieces, false), second, 200, false);
        assert_eq!(starts(&candles), vec![10_000]);
    }
}
