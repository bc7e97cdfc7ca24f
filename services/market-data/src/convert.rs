//! Between the wire (`exchange.marketdata.v1`) and the rows of [`crate::store`].

use chrono::DateTime;
use exchange_proto::marketdata::v1 as pb;
use rust_decimal::Decimal;

use crate::error::MarketDataError;
use crate::store::{self, CandleRow, MarketRow, Period, TradeRow};

pub fn check_market(code: &str) -> Result<(), MarketDataError> {
    upbit::market::MarketCode::parse(code)
        .map(|_| ())
        .map_err(|e| MarketDataError::invalid(e.to_string()))
}

/// `KRW` of `KRW-BTC`.
pub fn quote_of(market: &str) -> &str {
    market.split('-').next().unwrap_or("")
}

/// The first `depth` levels of `book`, with its totals over those levels.
pub fn truncate(mut book: pb::Orderbook, depth: usize) -> pb::Orderbook {
    if book.units.len() > depth {
        book.units.truncate(depth);
        let sum = |f: fn(&pb::OrderbookUnit) -> &str| -> String {
            book.units
                .iter()
                .filter_map(|u| store::decimal(f(u)))
                .sum::<Decimal>()
                .normalize()
                .to_string()
        };
        book.total_ask_size = sum(|u| &u.ask_size);
        book.total_bid_size = sum(|u| &u.bid_size);
    }
    book
}

/// A trade to store; none when it is not one (bad code, price, volume or time).
pub fn to_trade_row(t: &pb::Trade) -> Option<TradeRow> {
    check_market(&t.market).ok()?;
    let price = store::decimal(&t.trade_price).filter(|p| *p > Decimal::ZERO)?;
    let volume = store::decimal(&t.trade_volume).filter(|v| *v > Decimal::ZERO)?;
    let ts = DateTime::from_timestamp_millis(t.trade_timestamp)?;
    Some(TradeRow {
        market: t.market.clone(),
        ts,
        sequential_id: t.sequential_id,
        price,
        volume,
        ask_bid: if t.ask_bid == pb::Side::Ask as i32 {
            "ASK"
        } else {
            "BID"
        },
        prev_closing_price: store::decimal(&t.prev_closing_price).unwrap_or_default(),
        change_price: store::decimal(&t.change_price).unwrap_or_default(),
    })
}

pub fn trade_from_row(r: TradeRow) -> pb::Trade {
    let ts = r.ts.timestamp_millis();
    let change = match r.change_price.cmp(&Decimal::ZERO) {
        std::cmp::Ordering::Equal => pb::Change::Even,
        _ => match r.price.cmp(&r.prev_closing_price) {
            std::cmp::Ordering::Greater => pb::Change::Rise,
            std::cmp::Ordering::Less => pb::Change::Fall,
            std::cmp::Ordering::Equal => pb::Change::Even,
        },
    };
    pb::Trade {
        market: r.market,
        trade_price: r.price.normalize().to_string(),
        trade_volume: r.volume.normalize().to_string(),
        ask_bid: if r.ask_bid == "ASK" {
            pb::Side::Ask
        } else {
            pb::Side::Bid
        } as i32,
        prev_closing_price: r.prev_closing_price.normalize().to_string(),
        change: change as i32,
        change_price: r.change_price.normalize().to_string(),
        trade_timestamp: ts,
        timestamp: ts,
        sequential_id: r.sequential_id,
        ..Default::default()
    }
}

pub fn market_to_pb(m: &MarketRow) -> pb::Market {
    pb::Market {
        market: m.market.clone(),
        korean_name: m.korean_name.clone(),
        english_name: m.english_name.clone(),
        warning: m.warning,
        caution: Some(m.caution.into()),
    }
}

/// A market to register; none when its code is not one.
pub fn market_from_pb(m: &pb::Market) -> Option<MarketRow> {
    check_market(&m.market).ok()?;
    Some(MarketRow {
        market: m.market.clone(),
        korean_name: m.korean_name.clone(),
        english_name: m.english_name.clone(),
        warning: m.warning,
        caution: m.caution(),
    })
}

/// The candle period of an interval; none when unspecified.
pub fn period_of(interval: pb::CandleInterval) -> Option<Period> {
    use pb::CandleInterval as I;
    Some(match interval {
        I::Minute1 => Period::Minutes(1),
        I::Minute3 => Period::Minutes(3),
        I::Minute5 => Period::Minutes(5),
        I::Minute10 => Period::Minutes(10),
        I::Minute15 => Period::Minutes(15),
        I::Minute30 => Period::Minutes(30),
        I::Minute60 => Period::Minutes(60),
        I::Minute240 => Period::Minutes(240),
        I::Day1 => Period::Days,
        I::Week1 => Period::Weeks,
        I::Month1 => Period::Months,
        I::Unspecified => return None,
    })
}

/// A stored candle on the wire; day candles carry the change from the
/// previous close.
pub fn candle_to_pb(
    market: &str,
    interval: pb::CandleInterval,
    period: Period,
    r: CandleRow,
) -> pb::Candle {
    let mut c = pb::Candle {
        market: market.to_owned(),
        interval: interval as i32,
        start_time: r.start.timestamp_millis(),
        opening_price: r.open.normalize().to_string(),
        high_price: r.high.normalize().to_string(),
        low_price: r.low.normalize().to_string(),
        trade_price: r.close.normalize().to_string(),
        timestamp: r.last_trade.timestamp_millis(),
        candle_acc_trade_price: r.value.normalize().to_string(),
        candle_acc_trade_volume: r.volume.normalize().to_string(),
        ..Default::default()
    };
    if period == Period::Days {
        let prev = r.prev_close.unwrap_or(r.open);
        let change = r.close - prev;
        c.prev_closing_price = prev.normalize().to_string();
        c.change_price = change.normalize().to_string();
        c.change_rate = if prev.is_zero() {
            "0".into()
        } else {
            (change / prev).round_dp(8).normalize().to_string()
        };
    }
    c
}
