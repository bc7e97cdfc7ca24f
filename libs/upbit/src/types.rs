//! Upbit quotation messages. Field names are the DEFAULT format's; each field also
//! accepts its SIMPLE abbreviation when parsing. Date and time strings that Upbit
//! sends beside a timestamp are derived from that timestamp when writing.

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::parse::{de_decimal, de_opt_decimal};

/// Taker side of a trade (`ask_bid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum AskBid {
    #[serde(rename = "ASK")]
    Ask,
    #[serde(rename = "BID")]
    Bid,
}

impl AskBid {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ask => "ASK",
            Self::Bid => "BID",
        }
    }
}

/// Direction against the previous close (`change`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Default)]
pub enum Change {
    #[serde(rename = "RISE")]
    Rise,
    #[default]
    #[serde(rename = "EVEN")]
    Even,
    #[serde(rename = "FALL")]
    Fall,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rise => "RISE",
            Self::Even => "EVEN",
            Self::Fall => "FALL",
        }
    }

    /// The change of `price` against `prev_close`.
    pub fn between(prev_close: Decimal, price: Decimal) -> Self {
        match price.cmp(&prev_close) {
            std::cmp::Ordering::Greater => Self::Rise,
            std::cmp::Ordering::Equal => Self::Even,
            std::cmp::Ordering::Less => Self::Fall,
        }
    }
}

/// `stream_type`: the first message of a subscription is a SNAPSHOT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Default)]
pub enum StreamType {
    #[serde(rename = "SNAPSHOT")]
    Snapshot,
    #[default]
    #[serde(rename = "REALTIME")]
    Realtime,
}

impl StreamType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "SNAPSHOT",
            Self::Realtime => "REALTIME",
        }
    }
}

/// `market_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Default)]
pub enum MarketState {
    #[serde(rename = "PREVIEW")]
    Preview,
    #[default]
    #[serde(rename = "ACTIVE")]
    Active,
    #[serde(rename = "DELISTED")]
    Delisted,
}

impl MarketState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preview => "PREVIEW",
            Self::Active => "ACTIVE",
            Self::Delisted => "DELISTED",
        }
    }
}

/// `market_warning` of a ticker: whether Upbit designated the market for an
/// investment warning (유의). Upbit deprecated it for `market_event` of
/// `market/all`, and still sends it. A value Upbit may add later reads as
/// `None`: a deprecated hint never costs the ticker that carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Default)]
pub enum MarketWarning {
    #[serde(rename = "CAUTION")]
    Caution,
    // Last: serde's `other` must be.
    #[default]
    #[serde(rename = "NONE", other)]
    None,
}

impl MarketWarning {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Caution => "CAUTION",
        }
    }

    /// `Caution` when the market is under an investment warning.
    pub fn of(warning: bool) -> Self {
        if warning { Self::Caution } else { Self::None }
    }
}

/// A ticker message.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Ticker {
    #[serde(alias = "cd")]
    pub code: String,
    #[serde(alias = "op", default, deserialize_with = "de_decimal")]
    pub opening_price: Decimal,
    #[serde(alias = "hp", default, deserialize_with = "de_decimal")]
    pub high_price: Decimal,
    #[serde(alias = "lp", default, deserialize_with = "de_decimal")]
    pub low_price: Decimal,
    #[serde(alias = "tp", deserialize_with = "de_decimal")]
    pub trade_price: Decimal,
    #[serde(alias = "pcp", default, deserialize_with = "de_decimal")]
    pub prev_closing_price: Decimal,
    #[serde(alias = "c", default)]
    pub change: Change,
    #[serde(alias = "cp", default, deserialize_with = "de_decimal")]
    pub change_price: Decimal,
    #[serde(alias = "scp", default, deserialize_with = "de_decimal")]
    pub signed_change_price: Decimal,
    #[serde(alias = "cr", default, deserialize_with = "de_decimal")]
    pub change_rate: Decimal,
    #[serde(alias = "scr", default, deserialize_with = "de_decimal")]
    pub signed_change_rate: Decimal,
    #[serde(alias = "tv", default, deserialize_with = "de_decimal")]
    pub trade_volume: Decimal,
    #[serde(alias = "atv", default, deserialize_with = "de_decimal")]
    pub acc_trade_volume: Decimal,
    #[serde(alias = "atv24h", default, deserialize_with = "de_decimal")]
    pub acc_trade_volume_24h: Decimal,
    #[serde(alias = "atp", default, deserialize_with = "de_decimal")]
    pub acc_trade_price: Decimal,
    #[serde(alias = "atp24h", default, deserialize_with = "de_decimal")]
    pub acc_trade_price_24h: Decimal,
    #[serde(alias = "ttms", default)]
    pub trade_timestamp: i64,
    #[serde(alias = "ab", default)]
    pub ask_bid: Option<AskBid>,
    #[serde(alias = "aav", default, deserialize_with = "de_decimal")]
    pub acc_ask_volume: Decimal,
    #[serde(alias = "abv", default, deserialize_with = "de_decimal")]
    pub acc_bid_volume: Decimal,
    #[serde(alias = "h52wp", default, deserialize_with = "de_opt_decimal")]
    pub highest_52_week_price: Option<Decimal>,
    /// `yyyy-MM-dd`
    #[serde(alias = "h52wdt", default)]
    pub highest_52_week_date: Option<String>,
    #[serde(alias = "l52wp", default, deserialize_with = "de_opt_decimal")]
    pub lowest_52_week_price: Option<Decimal>,
    #[serde(alias = "l52wdt", default)]
    pub lowest_52_week_date: Option<String>,
    #[serde(alias = "ms", default)]
    pub market_state: MarketState,
    #[serde(alias = "dd", default)]
    pub delisting_date: Option<String>,
    #[serde(alias = "mw", default)]
    pub market_warning: MarketWarning,
    #[serde(alias = "tms", default)]
    pub timestamp: i64,
    #[serde(alias = "st", default)]
    pub stream_type: StreamType,
}

/// A trade message.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Trade {
    #[serde(alias = "cd")]
    pub code: String,
    #[serde(alias = "tp", deserialize_with = "de_decimal")]
    pub trade_price: Decimal,
    #[serde(alias = "tv", deserialize_with = "de_decimal")]
    pub trade_volume: Decimal,
    #[serde(alias = "ab")]
    pub ask_bid: AskBid,
    #[serde(alias = "pcp", default, deserialize_with = "de_decimal")]
    pub prev_closing_price: Decimal,
    #[serde(alias = "c", default)]
    pub change: Change,
    #[serde(alias = "cp", default, deserialize_with = "de_decimal")]
    pub change_price: Decimal,
    #[serde(alias = "ttms")]
    pub trade_timestamp: i64,
    #[serde(alias = "tms", default)]
    pub timestamp: i64,
    /// Unique per market, not ordered; may exceed 2^53.
    #[serde(alias = "sid")]
    pub sequential_id: i64,
    #[serde(alias = "bap", default, deserialize_with = "de_opt_decimal")]
    pub best_ask_price: Option<Decimal>,
    #[serde(alias = "bas", default, deserialize_with = "de_opt_decimal")]
    pub best_ask_size: Option<Decimal>,
    #[serde(alias = "bbp", default, deserialize_with = "de_opt_decimal")]
    pub best_bid_price: Option<Decimal>,
    #[serde(alias = "bbs", default, deserialize_with = "de_opt_decimal")]
    pub best_bid_size: Option<Decimal>,
    #[serde(alias = "st", default)]
    pub stream_type: StreamType,
}

/// One orderbook level (best first in [`Orderbook::orderbook_units`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OrderbookUnit {
    #[serde(alias = "ap", deserialize_with = "de_decimal")]
    pub ask_price: Decimal,
    #[serde(alias = "bp", deserialize_with = "de_decimal")]
    pub bid_price: Decimal,
    #[serde(alias = "as", deserialize_with = "de_decimal")]
    pub ask_size: Decimal,
    #[serde(alias = "bs", deserialize_with = "de_decimal")]
    pub bid_size: Decimal,
}

/// An orderbook message: a full snapshot of the top levels, not a delta.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Orderbook {
    #[serde(alias = "cd")]
    pub code: String,
    #[serde(alias = "tas", default, deserialize_with = "de_decimal")]
    pub total_ask_size: Decimal,
    #[serde(alias = "tbs", default, deserialize_with = "de_decimal")]
    pub total_bid_size: Decimal,
    #[serde(alias = "obu")]
    pub orderbook_units: Vec<OrderbookUnit>,
    #[serde(alias = "tms", default)]
    pub timestamp: i64,
    #[serde(alias = "lv", default, deserialize_with = "de_decimal")]
    pub level: Decimal,
    #[serde(alias = "st", default)]
    pub stream_type: StreamType,
}

/// Candle units of the WebSocket `candle.*` types, in seconds.
pub const CANDLE_TYPES: &[(&str, u32)] = &[
    ("candle.1s", 1),
    ("candle.1m", 60),
    ("candle.3m", 180),
    ("candle.5m", 300),
    ("candle.10m", 600),
    ("candle.15m", 900),
    ("candle.30m", 1800),
    ("candle.60m", 3600),
    ("candle.240m", 14400),
];

/// A candle message (`candle.1m` etc.).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Candle {
    /// The `type`, e.g. `candle.1m`.
    #[serde(skip)]
    pub candle_type: String,
    #[serde(alias = "cd")]
    pub code: String,
    /// `yyyy-MM-ddTHH:mm:ss`, UTC, no zone.
    #[serde(alias = "cdttmu")]
    pub candle_date_time_utc: String,
    #[serde(alias = "op", deserialize_with = "de_decimal")]
    pub opening_price: Decimal,
    #[serde(alias = "hp", deserialize_with = "de_decimal")]
    pub high_price: Decimal,
    #[serde(alias = "lp", deserialize_with = "de_decimal")]
    pub low_price: Decimal,
    #[serde(alias = "tp", deserialize_with = "de_decimal")]
    pub trade_price: Decimal,
    #[serde(alias = "catv", default, deserialize_with = "de_decimal")]
    pub candle_acc_trade_volume: Decimal,
    #[serde(alias = "catp", default, deserialize_with = "de_decimal")]
    pub candle_acc_trade_price: Decimal,
    #[serde(alias = "tms", default)]
    pub timestamp: i64,
    #[serde(alias = "st", default)]
    pub stream_type: StreamType,
}

impl Orderbook {
    /// The book grouped by `level` (a price unit; 0 leaves it as it is): asks
    /// at their price rounded up to the level, bids rounded down, sizes summed,
    /// at most `depth` units (totals then follow the cut, as for any cut book).
    pub fn grouped(mut self, level: Decimal, depth: usize) -> Self {
        if level > Decimal::ZERO {
            let group = |prices: Vec<(Decimal, Decimal)>, up: bool| {
                let mut out: Vec<(Decimal, Decimal)> = Vec::new();
                for (price, size) in prices {
                    let steps = price / level;
                    let p = if up { steps.ceil() } else { steps.floor() } * level;
                    match out.last_mut() {
                        Some((last, total)) if *last == p => *total += size,
                        _ => out.push((p.normalize(), size)),
                    }
                }
                out
            };
            let units = &self.orderbook_units;
            let asks = group(
                units.iter().map(|u| (u.ask_price, u.ask_size)).collect(),
                true,
            );
            let bids = group(
                units.iter().map(|u| (u.bid_price, u.bid_size)).collect(),
                false,
            );
            // A side with fewer groups is padded with empty ones (price 0).
            let empty = (Decimal::ZERO, Decimal::ZERO);
            self.orderbook_units = (0..asks.len().max(bids.len()))
                .map(|i| {
                    let ((ask_price, ask_size), (bid_price, bid_size)) = (
                        asks.get(i).copied().unwrap_or(empty),
                        bids.get(i).copied().unwrap_or(empty),
                    );
                    OrderbookUnit {
                        ask_price,
                        bid_price,
                        ask_size,
                        bid_size,
                    }
                })
                .collect();
            self.level = level;
        }
        if self.orderbook_units.len() > depth {
            // A cut book's totals are of what it shows.
            self.orderbook_units.truncate(depth);
            self.total_ask_size = self.orderbook_units.iter().map(|u| u.ask_size).sum();
            self.total_bid_size = self.orderbook_units.iter().map(|u| u.bid_size).sum();
        }
        self
    }
}

/// Any frame a quotation WebSocket sends.
// Messages are parsed, converted and dropped; boxing the ticker would only add an
// allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Ticker(Ticker),
    Trade(Trade),
    Orderbook(Orderbook),
    Candle(Candle),
    /// `{"status":"UP"}`, the answer to a `PING` text frame.
    Status(String),
    /// An error frame.
    Error(crate::error::ErrorBody),
}

impl Message {
    /// The market code the message is about, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Ticker(t) => Some(&t.code),
            Self::Trade(t) => Some(&t.code),
            Self::Orderbook(o) => Some(&o.code),
            Self::Candle(c) => Some(&c.code),
            Self::Status(_) | Self::Error(_) => None,
        }
    }
}

#[cfg(test)]
mod grouping_tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_book_groups_asks_up_and_bids_down_by_its_level() {
        let unit = |ap: &str, as_: &str, bp: &str, bs: &str| OrderbookUnit {
            ask_price: d(ap),
            ask_size: d(as_),
            bid_price: d(bp),
            bid_size: d(bs),
        };
        let book = Orderbook {
            code: "KRW-BTC".into(),
            total_ask_size: d("6"),
            total_bid_size: d("6"),
            orderbook_units: vec![
                unit("150001000", "1", "149999000", "1"),
                unit("150005000", "2", "149995000", "2"),
                unit("150012000", "3", "149985000", "3"),
            ],
            timestamp: 1,
            level: Decimal::ZERO,
            stream_type: StreamType::Realtime,
        };
        let grouped = book.clone().grouped(d("10000"), 30);
        assert_eq!(grouped.level, d("10000"));
        assert_eq!(
            grouped
                .orderbook_units
                .iter()
                .map(|u| (u.ask_price, u.ask_size, u.bid_price, u.bid_size))
                .collect::<Vec<_>>(),
            [
                (d("150010000"), d("3"), d("149990000"), d("3")),
                (d("150020000"), d("3"), d("149980000"), d("3")),
            ]
        );
        assert_eq!(grouped.total_ask_size, d("6"));
        let cut = book.grouped(Decimal::ZERO, 2);
        assert_eq!((cut.orderbook_units.len(), cut.total_ask_size), (2, d("3")));
        assert_eq!(
            crate::market::supported_levels("KRW", d("150000000")),
            [
                d("0"),
                d("10000"),
                d("100000"),
                d("1000000"),
                d("10000000"),
                d("100000000")
            ]
        );
        assert_eq!(crate::market::supported_levels("BTC", d("0.03")), [d("0")]);
    }
}
