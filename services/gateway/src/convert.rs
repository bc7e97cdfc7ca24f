//! market-data protobuf → Upbit protocol messages.

use std::sync::LazyLock;

use exchange_proto::decimal;
use exchange_proto::marketdata::v1 as pb;
use prometheus::IntCounter;
use rust_decimal::Decimal;
use upbit::{AskBid, Change, MarketState, StreamType};

/// A decimal from market-data: empty means 0 (not known yet); a malformed one
/// makes the whole message unusable (`None`, logged and counted by the caller
/// through [`skipped`]), never a 0.
fn d(s: &str) -> Option<Decimal> {
    if s.is_empty() {
        Some(Decimal::ZERO)
    } else {
        decimal::parse(s).ok()
    }
}

/// An optional decimal: `Some(None)` when absent, `None` when malformed.
fn od(s: &str) -> Option<Option<Decimal>> {
    if s.is_empty() {
        Some(None)
    } else {
        decimal::parse(s).ok().map(Some)
    }
}

static SKIPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new(
        "gateway_malformed_messages_total",
        "Upstream messages (market data, orders, balances) with a malformed decimal, skipped rather than shown with a 0.",
    )
    .expect("valid");
    prometheus::register(Box::new(c.clone())).expect("registered once");
    c
});

/// Counts and logs a message that could not be converted.
pub fn skipped<T>(converted: Option<T>, what: &str, market: &str) -> Option<T> {
    if converted.is_none() {
        SKIPPED.inc();
        tracing::warn!(
            what,
            market,
            "skipped an upstream message with a malformed decimal"
        );
    }
    converted
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

pub fn ticker(t: &pb::Ticker, snapshot: bool) -> Option<upbit::Ticker> {
    Some(upbit::Ticker {
        code: t.market.clone(),
        opening_price: d(&t.opening_price)?,
        high_price: d(&t.high_price)?,
        low_price: d(&t.low_price)?,
        trade_price: d(&t.trade_price)?,
        prev_closing_price: d(&t.prev_closing_price)?,
        change: change(t.change),
        change_price: d(&t.change_price)?,
        signed_change_price: d(&t.signed_change_price)?,
        change_rate: d(&t.change_rate)?,
        signed_change_rate: d(&t.signed_change_rate)?,
        trade_volume: d(&t.trade_volume)?,
        acc_trade_volume: d(&t.acc_trade_volume)?,
        acc_trade_volume_24h: d(&t.acc_trade_volume_24h)?,
        acc_trade_price: d(&t.acc_trade_price)?,
        acc_trade_price_24h: d(&t.acc_trade_price_24h)?,
        trade_timestamp: t.trade_timestamp,
        ask_bid: side(t.ask_bid),
        acc_ask_volume: d(&t.acc_ask_volume)?,
        acc_bid_volume: d(&t.acc_bid_volume)?,
        highest_52_week_price: od(&t.highest_52_week_price)?,
        highest_52_week_date: os(&t.highest_52_week_date),
        lowest_52_week_price: od(&t.lowest_52_week_price)?,
        lowest_52_week_date: os(&t.lowest_52_week_date),
        market_state: match pb::MarketState::try_from(t.market_state) {
            Ok(pb::MarketState::Preview) => MarketState::Preview,
            Ok(pb::MarketState::Delisted) => MarketState::Delisted,
            _ => MarketState::Active,
        },
        delisting_date: None,
        market_warning: upbit::MarketWarning::of(t.warning),
        timestamp: t.timestamp,
        stream_type: stream(snapshot),
    })
}

pub fn trade(t: &pb::Trade, snapshot: bool) -> Option<upbit::Trade> {
    Some(upbit::Trade {
        code: t.market.clone(),
        trade_price: d(&t.trade_price)?,
        trade_volume: d(&t.trade_volume)?,
        ask_bid: side(t.ask_bid).unwrap_or(AskBid::Bid),
        prev_closing_price: d(&t.prev_closing_price)?,
        change: change(t.change),
        change_price: d(&t.change_price)?,
        trade_timestamp: t.trade_timestamp,
        timestamp: t.timestamp,
        sequential_id: t.sequential_id,
        best_ask_price: od(&t.best_ask_price)?,
        best_ask_size: od(&t.best_ask_size)?,
        best_bid_price: od(&t.best_bid_price)?,
        best_bid_size: od(&t.best_bid_size)?,
        stream_type: stream(snapshot),
    })
}

/// An orderbook cut to `depth` levels (totals follow the cut).
pub fn orderbook(o: &pb::Orderbook, depth: usize, snapshot: bool) -> Option<upbit::Orderbook> {
    let units: Vec<upbit::OrderbookUnit> = o
        .units
        .iter()
        .take(depth)
        .map(|u| {
            Some(upbit::OrderbookUnit {
                ask_price: d(&u.ask_price)?,
                bid_price: d(&u.bid_price)?,
                ask_size: d(&u.ask_size)?,
                bid_size: d(&u.bid_size)?,
            })
        })
        .collect::<Option<_>>()?;
    let (total_ask_size, total_bid_size) = if units.len() < o.units.len() {
        (
            units.iter().map(|u| u.ask_size).sum(),
            units.iter().map(|u| u.bid_size).sum(),
        )
    } else {
        (d(&o.total_ask_size)?, d(&o.total_bid_size)?)
    };
    Some(upbit::Orderbook {
        code: o.market.clone(),
        total_ask_size,
        total_bid_size,
        orderbook_units: units,
        timestamp: o.timestamp,
        level: d(&o.level)?,
        stream_type: stream(snapshot),
    })
}

pub fn candle(c: &pb::Candle, unit: Option<u32>) -> Option<upbit::write::rest::RestCandle> {
    let long = matches!(
        pb::CandleInterval::try_from(c.interval),
        Ok(pb::CandleInterval::Week1 | pb::CandleInterval::Month1)
    );
    let day = if c.prev_closing_price.is_empty() {
        None
    } else {
        Some(upbit::write::rest::DayFields {
            prev_closing_price: d(&c.prev_closing_price)?,
            change_price: d(&c.change_price)?,
            change_rate: d(&c.change_rate)?,
            converted_trade_price: None,
        })
    };
    Some(upbit::write::rest::RestCandle {
        market: c.market.clone(),
        start: c.start_time,
        opening_price: d(&c.opening_price)?,
        high_price: d(&c.high_price)?,
        low_price: d(&c.low_price)?,
        trade_price: d(&c.trade_price)?,
        timestamp: c.timestamp,
        candle_acc_trade_price: d(&c.candle_acc_trade_price)?,
        candle_acc_trade_volume: d(&c.candle_acc_trade_volume)?,
        unit,
        day,
        first_day_of_period: long,
    })
}

/// One trade as a candle of its own (to be folded into periods).
pub fn trade_piece(t: &pb::Trade) -> Option<upbit::write::rest::RestCandle> {
    let (price, volume) = (d(&t.trade_price)?, d(&t.trade_volume)?);
    Some(upbit::write::rest::RestCandle {
        market: t.market.clone(),
        start: t.trade_timestamp,
        opening_price: price,
        high_price: price,
        low_price: price,
        trade_price: price,
        timestamp: t.trade_timestamp,
        candle_acc_trade_price: price * volume,
        candle_acc_trade_volume: volume,
        unit: None,
        day: None,
        first_day_of_period: false,
    })
}

/// `yyyy-MM-ddTHH:mm:ss` (UTC) of an epoch-ms time.
fn utc_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// A stored candle as the WebSocket's `name` type (`candle.1m` …).
pub fn live_candle(
    c: &pb::Candle,
    name: &str,
    stream_type: upbit::StreamType,
) -> Option<upbit::Candle> {
    Some(upbit::Candle {
        candle_type: name.to_owned(),
        code: c.market.clone(),
        candle_date_time_utc: utc_text(c.start_time),
        opening_price: d(&c.opening_price)?,
        high_price: d(&c.high_price)?,
        low_price: d(&c.low_price)?,
        trade_price: d(&c.trade_price)?,
        candle_acc_trade_volume: d(&c.candle_acc_trade_volume)?,
        candle_acc_trade_price: d(&c.candle_acc_trade_price)?,
        timestamp: c.timestamp,
        stream_type,
    })
}

/// `current` (the market's candle of `name`, `period` ms long) with trade `t`
/// in it; a new candle when `t` falls in a later period (or there is none).
pub fn candle_with_trade(
    current: Option<upbit::Candle>,
    name: &str,
    period: i64,
    t: &upbit::Trade,
) -> upbit::Candle {
    let start = utc_text(t.trade_timestamp.div_euclid(period) * period);
    let funds = t.trade_price * t.trade_volume;
    match current {
        Some(mut c) if c.candle_date_time_utc == start => {
            c.high_price = c.high_price.max(t.trade_price);
            c.low_price = c.low_price.min(t.trade_price);
            c.trade_price = t.trade_price;
            c.candle_acc_trade_volume += t.trade_volume;
            c.candle_acc_trade_price += funds;
            c.timestamp = t.trade_timestamp;
            c.stream_type = upbit::StreamType::Realtime;
            c
        }
        // A trade late for its period does not reopen it.
        Some(c) if c.candle_date_time_utc > start => c,
        _ => upbit::Candle {
            candle_type: name.to_owned(),
            code: t.code.clone(),
            candle_date_time_utc: start,
            opening_price: t.trade_price,
            high_price: t.trade_price,
            low_price: t.trade_price,
            trade_price: t.trade_price,
            candle_acc_trade_volume: t.trade_volume,
            candle_acc_trade_price: funds,
            timestamp: t.trade_timestamp,
            stream_type: upbit::StreamType::Realtime,
        },
    }
}

/// Registers this module's series at start (0 until the first event).
pub(crate) fn init_metrics() {
    LazyLock::force(&SKIPPED);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_decimal_spoils_the_message_instead_of_showing_zero() {
        let good = pb::Trade {
            market: "KRW-BTC".into(),
            trade_price: "148601000".into(),
            trade_volume: "0.00016823".into(),
            ..Default::default()
        };
        let t = trade(&good, false).unwrap();
        assert_eq!(t.trade_price, Decimal::from(148_601_000));
        assert_eq!(t.change_price, Decimal::ZERO, "an empty field is 0");
        assert_eq!(t.best_ask_price, None, "an empty optional field is absent");
        for bad in ["abc", "1e5", "NaN"] {
            let mut t = good.clone();
            t.trade_volume = bad.into();
            assert!(trade(&t, false).is_none(), "{bad}");
            let mut t = good.clone();
            t.best_bid_size = bad.into();
            assert!(trade(&t, false).is_none(), "{bad}");
        }
        let book = pb::Orderbook {
            market: "KRW-BTC".into(),
            units: vec![pb::OrderbookUnit {
                ask_price: "1".into(),
                bid_price: "x".into(),
                ask_size: "1".into(),
                bid_size: "1".into(),
            }],
            ..Default::default()
        };
        assert!(orderbook(&book, 30, false).is_none());
        assert!(skipped(orderbook(&book, 30, false), "orderbook", "KRW-BTC").is_none());
    }
}
