//! market-data protobuf → Upbit protocol messages.

use std::str::FromStr;

use exchange_proto::marketdata::v1 as pb;
use rust_decimal::Decimal;
use upbit::{AskBid, Change, MarketState, StreamType};

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_default()
}

fn od(s: &str) -> Option<Decimal> {
    if s.is_empty() {
        None
    } else {
        Decimal::from_str(s).ok()
    }
}

fn os(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_owned())
    }
}

fn side(v: i32) -> Option<AskBid> {
    match pb::Side::try_from(v) {
        Ok(pb::Side::Ask) => Some(AskBid::Ask),
        Ok(pb::Side::Bid) => Some(AskBid::Bid),
        _ => None,
    }
}

fn change(v: i32) -> Change {
    match pb::Change::try_from(v) {
        Ok(pb::Change::Rise) => Change::Rise,
        Ok(pb::Change::Fall) => Change::Fall,
        _ => Change::Even,
    }
}

fn stream(snapshot: bool) -> StreamType {
    if snapshot {
        StreamType::Snapshot
    } else {
        StreamType::Realtime
    }
}

pub fn ticker(t: &pb::Ticker, snapshot: bool) -> upbit::Ticker {
    upbit::Ticker {
        code: t.market.clone(),
        opening_price: d(&t.opening_price),
        high_price: d(&t.high_price),
        low_price: d(&t.low_price),
        trade_price: d(&t.trade_price),
        prev_closing_price: d(&t.prev_closing_price),
        change: change(t.change),
        change_price: d(&t.change_price),
        signed_change_price: d(&t.signed_change_price),
        change_rate: d(&t.change_rate),
        signed_change_rate: d(&t.signed_change_rate),
        trade_volume: d(&t.trade_volume),
        acc_trade_volume: d(&t.acc_trade_volume),
        acc_trade_volume_24h: d(&t.acc_trade_volume_24h),
        acc_trade_price: d(&t.acc_trade_price),
        acc_trade_price_24h: d(&t.acc_trade_price_24h),
        trade_timestamp: t.trade_timestamp,
        ask_bid: side(t.ask_bid),
        acc_ask_volume: d(&t.acc_ask_volume),
        acc_bid_volume: d(&t.acc_bid_volume),
        highest_52_week_price: od(&t.highest_52_week_price),
        highest_52_week_date: os(&t.highest_52_week_date),
        lowest_52_week_price: od(&t.lowest_52_week_price),
        lowest_52_week_date: os(&t.lowest_52_week_date),
        market_state: match pb::MarketState::try_from(t.market_state) {
            Ok(pb::MarketState::Preview) => MarketState::Preview,
            Ok(pb::MarketState::Delisted) => MarketState::Delisted,
            _ => MarketState::Active,
        },
        delisting_date: None,
        timestamp: t.timestamp,
        stream_type: stream(snapshot),
    }
}

pub fn trade(t: &pb::Trade, snapshot: bool) -> upbit::Trade {
    upbit::Trade {
        code: t.market.clone(),
        trade_price: d(&t.trade_price),
        trade_volume: d(&t.trade_volume),
        ask_bid: side(t.ask_bid).unwrap_or(AskBid::Bid),
        prev_closing_price: d(&t.prev_closing_price),
        change: change(t.change),
        change_price: d(&t.change_price),
        trade_timestamp: t.trade_timestamp,
        timestamp: t.timestamp,
        sequential_id: t.sequential_id,
        best_ask_price: od(&t.best_ask_price),
        best_ask_size: od(&t.best_ask_size),
        best_bid_price: od(&t.best_bid_price),
        best_bid_size: od(&t.best_bid_size),
        stream_type: stream(snapshot),
    }
}

/// An orderbook cut to `depth` levels (totals follow the cut).
pub fn orderbook(o: &pb::Orderbook, depth: usize, snapshot: bool) -> upbit::Orderbook {
    let units: Vec<upbit::OrderbookUnit> = o
        .units
        .iter()
        .take(depth)
        .map(|u| upbit::OrderbookUnit {
            ask_price: d(&u.ask_price),
            bid_price: d(&u.bid_price),
            ask_size: d(&u.ask_size),
            bid_size: d(&u.bid_size),
        })
        .collect();
    let (total_ask_size, total_bid_size) = if units.len() < o.units.len() {
        (
            units.iter().map(|u| u.ask_size).sum(),
            units.iter().map(|u| u.bid_size).sum(),
        )
    } else {
        (d(&o.total_ask_size), d(&o.total_bid_size))
    };
    upbit::Orderbook {
        code: o.market.clone(),
        total_ask_size,
        total_bid_size,
        orderbook_units: units,
        timestamp: o.timestamp,
        level: d(&o.level),
        stream_type: stream(snapshot),
    }
}

pub fn candle(c: &pb::Candle, unit: Option<u32>) -> upbit::write::rest::RestCandle {
    let long = matches!(
        pb::CandleInterval::try_from(c.interval),
        Ok(pb::CandleInterval::Week1 | pb::CandleInterval::Month1)
    );
    let day = (!c.prev_closing_price.is_empty()).then(|| upbit::write::rest::DayFields {
        prev_closing_price: d(&c.prev_closing_price),
        change_price: d(&c.change_price),
        change_rate: d(&c.change_rate),
    });
    upbit::write::rest::RestCandle {
        market: c.market.clone(),
        start: c.start_time,
        opening_price: d(&c.opening_price),
        high_price: d(&c.high_price),
        low_price: d(&c.low_price),
        trade_price: d(&c.trade_price),
        timestamp: c.timestamp,
        candle_acc_trade_price: d(&c.candle_acc_trade_price),
        candle_acc_trade_volume: d(&c.candle_acc_trade_volume),
        unit,
        day,
        first_day_of_period: long,
    }
}
