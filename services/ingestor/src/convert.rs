//! Upbit messages → the normalised protobuf events market-data ingests.

use exchange_proto::marketdata::v1 as pb;
use rust_decimal::Decimal;
use upbit::{AskBid, Change, MarketState};

/// The normalised text (`148601000`, `0.00016823`), written without `Display`.
fn d(v: Decimal) -> String {
    upbit::write::decimal_string(v)
}

fn od(v: Option<Decimal>) -> String {
    v.map(d).unwrap_or_default()
}

fn side(a: AskBid) -> i32 {
    match a {
        AskBid::Ask => pb::Side::Ask as i32,
        AskBid::Bid => pb::Side::Bid as i32,
    }
}

fn change(c: Change) -> i32 {
    match c {
        Change::Rise => pb::Change::Rise as i32,
        Change::Even => pb::Change::Even as i32,
        Change::Fall => pb::Change::Fall as i32,
    }
}

pub fn ticker(t: &upbit::Ticker) -> pb::Ticker {
    pb::Ticker {
        market: t.code.clone(),
        opening_price: d(t.opening_price),
        high_price: d(t.high_price),
        low_price: d(t.low_price),
        trade_price: d(t.trade_price),
        prev_closing_price: d(t.prev_closing_price),
        change: change(t.change),
        change_price: d(t.change_price),
        signed_change_price: d(t.signed_change_price),
        change_rate: d(t.change_rate),
        signed_change_rate: d(t.signed_change_rate),
        trade_volume: d(t.trade_volume),
        acc_trade_volume: d(t.acc_trade_volume),
        acc_trade_volume_24h: d(t.acc_trade_volume_24h),
        acc_trade_price: d(t.acc_trade_price),
        acc_trade_price_24h: d(t.acc_trade_price_24h),
        trade_timestamp: t.trade_timestamp,
        ask_bid: t.ask_bid.map(side).unwrap_or_default(),
        acc_ask_volume: d(t.acc_ask_volume),
        acc_bid_volume: d(t.acc_bid_volume),
        highest_52_week_price: od(t.highest_52_week_price),
        highest_52_week_date: t.highest_52_week_date.clone().unwrap_or_default(),
        lowest_52_week_price: od(t.lowest_52_week_price),
        lowest_52_week_date: t.lowest_52_week_date.clone().unwrap_or_default(),
        market_state: match t.market_state {
            MarketState::Preview => pb::MarketState::Preview,
            MarketState::Active => pb::MarketState::Active,
            MarketState::Delisted => pb::MarketState::Delisted,
        } as i32,
        timestamp: t.timestamp,
    }
}

pub fn trade(t: &upbit::Trade) -> pb::Trade {
    pb::Trade {
        market: t.code.clone(),
        trade_price: d(t.trade_price),
        trade_volume: d(t.trade_volume),
        ask_bid: side(t.ask_bid),
        prev_closing_price: d(t.prev_closing_price),
        change: change(t.change),
        change_price: d(t.change_price),
        trade_timestamp: t.trade_timestamp,
        timestamp: t.timestamp,
        sequential_id: t.sequential_id,
        best_ask_price: od(t.best_ask_price),
        best_ask_size: od(t.best_ask_size),
        best_bid_price: od(t.best_bid_price),
        best_bid_size: od(t.best_bid_size),
    }
}

pub fn orderbook(o: &upbit::Orderbook) -> pb::Orderbook {
    pb::Orderbook {
        market: o.code.clone(),
        timestamp: o.timestamp,
        total_ask_size: d(o.total_ask_size),
        total_bid_size: d(o.total_bid_size),
        units: o
            .orderbook_units
            .iter()
            .map(|u| pb::OrderbookUnit {
                ask_price: d(u.ask_price),
                bid_price: d(u.bid_price),
                ask_size: d(u.ask_size),
                bid_size: d(u.bid_size),
            })
            .collect(),
        level: d(o.level),
    }
}
