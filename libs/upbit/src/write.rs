//! Writing Upbit JSON: the WebSocket formats and the REST quotation shapes.
//!
//! Decimals are written as JSON numbers in their exact, normalised text
//! (`148601000`, `0.00016823`), as Upbit sends them.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::types::{Candle, Orderbook, OrderbookUnit, Ticker, Trade};

/// The `format` of a WebSocket connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Default,
    Simple,
    /// DEFAULT keys, each message wrapped in a one-element array.
    JsonList,
    /// SIMPLE keys, each message wrapped in a one-element array.
    SimpleList,
}

impl Format {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "DEFAULT" => Some(Self::Default),
            "SIMPLE" => Some(Self::Simple),
            "JSON_LIST" => Some(Self::JsonList),
            "SIMPLE_LIST" => Some(Self::SimpleList),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "DEFAULT",
            Self::Simple => "SIMPLE",
            Self::JsonList => "JSON_LIST",
            Self::SimpleList => "SIMPLE_LIST",
        }
    }

    fn simple(self) -> bool {
        matches!(self, Self::Simple | Self::SimpleList)
    }

    fn list(self) -> bool {
        matches!(self, Self::JsonList | Self::SimpleList)
    }
}

/// The answer to a `PING` text frame.
pub const STATUS_UP: &str = r#"{"status":"UP"}"#;

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    // Codes, dates and enum names need no escaping: copy them whole.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A decimal in its normalised text form (see [`push_decimal`]).
pub fn decimal_string(d: Decimal) -> String {
    let mut out = String::with_capacity(24);
    push_decimal(&mut out, d);
    out
}

/// Appends a decimal as a JSON number in its normalised form (`148601000`,
/// `0.00016823`): trailing zeros dropped, never an exponent. This is on the hot
/// path of every writer, so it formats the mantissa directly.
pub fn push_decimal(out: &mut String, d: Decimal) {
    if d.is_zero() {
        out.push('0');
        return;
    }
    if d.is_sign_negative() {
        out.push('-');
    }
    let mut scale = d.scale() as usize;
    let mut digits_buf = itoa::Buffer::new();
    let digits = match u64::try_from(d.mantissa().unsigned_abs()) {
        Ok(mut m) => {
            while scale > 0 && m.is_multiple_of(10) {
                m /= 10;
                scale -= 1;
            }
            digits_buf.format(m)
        }
        Err(_) => {
            let mut m = d.mantissa().unsigned_abs();
            while scale > 0 && m.is_multiple_of(10) {
                m /= 10;
                scale -= 1;
            }
            digits_buf.format(m)
        }
    };
    let len = digits.len();
    if scale == 0 {
        out.push_str(digits);
    } else if len > scale {
        out.push_str(&digits[..len - scale]);
        out.push('.');
        out.push_str(&digits[len - scale..]);
    } else {
        out.push_str("0.");
        for _ in 0..scale - len {
            out.push('0');
        }
        out.push_str(digits);
    }
}

/// A JSON object writer choosing DEFAULT or SIMPLE keys.
struct Obj<'a> {
    out: &'a mut String,
    simple: bool,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut String, simple: bool) -> Self {
        out.push('{');
        Self {
            out,
            simple,
            first: true,
        }
    }
    fn key(&mut self, long: &str, short: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(if self.simple { short } else { long });
        self.out.push_str("\":");
    }
    fn str(&mut self, long: &str, short: &str, v: &str) -> &mut Self {
        self.key(long, short);
        push_json_str(self.out, v);
        self
    }
    fn opt_str(&mut self, long: &str, short: &str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.str(long, short, v),
            None => self.null(long, short),
        }
    }
    fn dec(&mut self, long: &str, short: &str, v: Decimal) -> &mut Self {
        self.key(long, short);
        push_decimal(self.out, v);
        self
    }
    fn opt_dec(&mut self, long: &str, short: &str, v: Option<Decimal>) -> &mut Self {
        match v {
            Some(v) => self.dec(long, short, v),
            None => self.null(long, short),
        }
    }
    fn int(&mut self, long: &str, short: &str, v: i64) -> &mut Self {
        self.key(long, short);
        self.out.push_str(itoa::Buffer::new().format(v));
        self
    }
    fn bool(&mut self, long: &str, short: &str, v: bool) -> &mut Self {
        self.key(long, short);
        self.out.push_str(if v { "true" } else { "false" });
        self
    }
    fn null(&mut self, long: &str, short: &str) -> &mut Self {
        self.key(long, short);
        self.out.push_str("null");
        self
    }
    fn raw(&mut self, long: &str, short: &str) -> &mut String {
        self.key(long, short);
        self.out
    }
    fn close(self) {
        self.out.push('}');
    }
}

fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The text `yyyy-MM-ddTHH:mm:ss` of an epoch-ms timestamp in UTC, written digit
/// by digit (chrono's formatter was a measurable part of writing every ticker
/// and trade). Slices of it give the date and the time, dashed or compact.
#[derive(Clone, Copy)]
pub struct Stamp {
    dashed: [u8; 19],
    compact: [u8; 14],
}

impl Stamp {
    pub fn new(ms: i64) -> Self {
        use chrono::{Datelike, Timelike};
        let t = utc(ms);
        // Years outside 0..=9999 cannot occur in a feed; clamp rather than widen.
        let year = t.year().clamp(0, 9999) as u32;
        let parts = [
            (year / 100) as u8,
            (year % 100) as u8,
            t.month() as u8,
            t.day() as u8,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
        ];
        let digits = |v: u8| [b'0' + v / 10, b'0' + v % 10];
        let mut dashed = *b"0000-00-00T00:00:00";
        let mut compact = *b"00000000000000";
        for (i, (&v, at)) in parts.iter().zip([0, 2, 5, 8, 11, 14, 17]).enumerate() {
            dashed[at..at + 2].copy_from_slice(&digits(v));
            compact[2 * i..2 * i + 2].copy_from_slice(&digits(v));
        }
        Self { dashed, compact }
    }

    fn text(bytes: &[u8]) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    /// `yyyy-MM-ddTHH:mm:ss`
    pub fn iso(&self) -> &str {
        Self::text(&self.dashed)
    }
    /// `yyyy-MM-dd`
    pub fn dashed_date(&self) -> &str {
        Self::text(&self.dashed[..10])
    }
    /// `HH:mm:ss`
    pub fn dashed_time(&self) -> &str {
        Self::text(&self.dashed[11..])
    }
    /// `yyyyMMdd`
    pub fn compact_date(&self) -> &str {
        Self::text(&self.compact[..8])
    }
    /// `HHmmss`
    pub fn compact_time(&self) -> &str {
        Self::text(&self.compact[8..])
    }
}

/// `yyyyMMdd` and `HHmmss` of an epoch-ms timestamp, UTC (ticker fields).
pub fn compact_date_time(ms: i64) -> (String, String) {
    let s = Stamp::new(ms);
    (s.compact_date().to_owned(), s.compact_time().to_owned())
}

/// `yyyy-MM-dd` and `HH:mm:ss` of an epoch-ms timestamp, UTC (trade fields).
pub fn dashed_date_time(ms: i64) -> (String, String) {
    let s = Stamp::new(ms);
    (s.dashed_date().to_owned(), s.dashed_time().to_owned())
}

/// `yyyy-MM-ddTHH:mm:ss` of an epoch-ms timestamp in UTC and in KST (UTC+9).
pub fn candle_date_times(ms: i64) -> (String, String) {
    (
        Stamp::new(ms).iso().to_owned(),
        Stamp::new(ms + 9 * 3_600_000).iso().to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StreamType;
    use std::str::FromStr;

    #[test]
    fn stamps_read_like_chrono_formatting() {
        let mut ms = -86_400_000 * 365; // 1969
        while ms < 4_102_444_800_000 {
            // ... to 2100, in uneven steps that hit every field
            let t = utc(ms);
            let s = Stamp::new(ms);
            assert_eq!(s.iso(), t.format("%Y-%m-%dT%H:%M:%S").to_string());
            assert_eq!(s.compact_date(), t.format("%Y%m%d").to_string());
            assert_eq!(s.compact_time(), t.format("%H%M%S").to_string());
            assert_eq!(s.dashed_date(), t.format("%Y-%m-%d").to_string());
            assert_eq!(s.dashed_time(), t.format("%H:%M:%S").to_string());
            ms += 7_777_777_777 + 999;
        }
        assert_eq!(Stamp::new(1_700_000_000_123).iso(), "2023-11-14T22:13:20");
    }

    #[test]
    fn strings_are_escaped_only_when_they_need_it() {
        let mut out = String::new();
        push_json_str(&mut out, "KRW-BTC");
        push_json_str(&mut out, "a\"b\\c\nd\u{1}");
        assert_eq!(out, r#""KRW-BTC""a\"b\\c\nd\u0001""#);
    }

    #[test]
    fn reused_level_texts_give_the_frames_written_afresh() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        // Levels as (ask price, bid price, size of both).
        let book = |levels: &[(&str, &str, &str)]| {
            let units: Vec<OrderbookUnit> = levels
                .iter()
                .map(|&(ap, bp, size)| OrderbookUnit {
                    ask_price: d(ap),
                    bid_price: d(bp),
                    ask_size: d(size),
                    bid_size: d(size),
                })
                .collect();
            Orderbook {
                code: "KRW-BTC".into(),
                total_ask_size: units.iter().map(|u| u.ask_size).sum(),
                total_bid_size: units.iter().map(|u| u.bid_size).sum(),
                orderbook_units: units,
                timestamp: 1_700_000_000_000,
                level: Decimal::ZERO,
                stream_type: StreamType::Realtime,
            }
        };
        let books = [
            book(&[("101", "100", "1"), ("102", "99", "2"), ("103", "98", "3")]),
            // one size changes
            book(&[
                ("101", "100", "0.5"),
                ("102", "99", "2"),
                ("103", "98", "3"),
            ]),
            // the same value written with another scale
            book(&[
                ("101", "100", "0.50"),
                ("102", "99", "2.0"),
                ("103", "98", "3"),
            ]),
            // the price moves: every level changes
            book(&[
                ("102", "101", "1"),
                ("103", "100", "0.5"),
                ("104", "99", "2"),
            ]),
            // fewer levels, then more again
            book(&[("102", "101", "1")]),
            book(&[("102", "101", "1"), ("103", "100", "7"), ("104", "99", "2")]),
        ];
        for format in [Format::Default, Format::Simple, Format::SimpleList] {
            let mut levels = LevelTexts::default();
            for ob in &books {
                assert_eq!(
                    orderbook_reusing(ob, format, &mut levels),
                    orderbook(ob, format)
                );
            }
        }
    }

    #[test]
    fn decimals_print_like_normalised_display() {
        for text in [
            "0",
            "1",
            "-1",
            "148601000",
            "0.00016823",
            "0.50000000",
            "100.10",
            "-0.0000001",
            "79228162514264337593543950335",
            "0.0000000000000000000000000001",
            "12345678901234567890.12345678",
            "1000000",
            "10.0",
            "-45.600",
        ] {
            let d = Decimal::from_str(text).unwrap();
            let mut out = String::new();
            push_decimal(&mut out, d);
            let expected = if d.is_zero() {
                "0".to_owned()
            } else {
                d.normalize().to_string()
            };
            assert_eq!(out, expected, "{text}");
        }
    }
}

/// Writes one frame into a string of `capacity` (sized for the message, so a
/// 30-level orderbook is not copied through three reallocations).
fn frame(format: Format, capacity: usize, body: impl FnOnce(&mut String, bool)) -> String {
    let mut out = String::with_capacity(capacity);
    if format.list() {
        out.push('[');
    }
    body(&mut out, format.simple());
    if format.list() {
        out.push(']');
    }
    out
}

/// A ticker frame.
pub fn ticker(t: &Ticker, format: Format) -> String {
    frame(format, 1024, |out, simple| {
        let stamp = Stamp::new(t.trade_timestamp);
        let mut o = Obj::open(out, simple);
        o.str("type", "ty", "ticker")
            .str("code", "cd", &t.code)
            .dec("opening_price", "op", t.opening_price)
            .dec("high_price", "hp", t.high_price)
            .dec("low_price", "lp", t.low_price)
            .dec("trade_price", "tp", t.trade_price)
            .dec("prev_closing_price", "pcp", t.prev_closing_price)
            .str("change", "c", t.change.as_str())
            .dec("change_price", "cp", t.change_price)
            .dec("signed_change_price", "scp", t.signed_change_price)
            .dec("change_rate", "cr", t.change_rate)
            .dec("signed_change_rate", "scr", t.signed_change_rate)
            .dec("trade_volume", "tv", t.trade_volume)
            .dec("acc_trade_volume", "atv", t.acc_trade_volume)
            .dec("acc_trade_volume_24h", "atv24h", t.acc_trade_volume_24h)
            .dec("acc_trade_price", "atp", t.acc_trade_price)
            .dec("acc_trade_price_24h", "atp24h", t.acc_trade_price_24h)
            .str("trade_date", "tdt", stamp.compact_date())
            .str("trade_time", "ttm", stamp.compact_time())
            .int("trade_timestamp", "ttms", t.trade_timestamp)
            .opt_str("ask_bid", "ab", t.ask_bid.map(|a| a.as_str()))
            .dec("acc_ask_volume", "aav", t.acc_ask_volume)
            .dec("acc_bid_volume", "abv", t.acc_bid_volume)
            .opt_dec("highest_52_week_price", "h52wp", t.highest_52_week_price)
            .opt_str(
                "highest_52_week_date",
                "h52wdt",
                t.highest_52_week_date.as_deref(),
            )
            .opt_dec("lowest_52_week_price", "l52wp", t.lowest_52_week_price)
            .opt_str(
                "lowest_52_week_date",
                "l52wdt",
                t.lowest_52_week_date.as_deref(),
            )
            .str("market_state", "ms", t.market_state.as_str())
            .bool("is_trading_suspended", "its", false)
            .opt_str("delisting_date", "dd", t.delisting_date.as_deref())
            .str("market_warning", "mw", t.market_warning.as_str())
            .int("timestamp", "tms", t.timestamp)
            .str("stream_type", "st", t.stream_type.as_str());
        o.close();
    })
}

/// A trade frame.
pub fn trade(t: &Trade, format: Format) -> String {
    frame(format, 640, |out, simple| {
        let stamp = Stamp::new(t.trade_timestamp);
        let mut o = Obj::open(out, simple);
        o.str("type", "ty", "trade")
            .str("code", "cd", &t.code)
            .dec("trade_price", "tp", t.trade_price)
            .dec("trade_volume", "tv", t.trade_volume)
            .str("ask_bid", "ab", t.ask_bid.as_str())
            .dec("prev_closing_price", "pcp", t.prev_closing_price)
            .str("change", "c", t.change.as_str())
            .dec("change_price", "cp", t.change_price)
            .str("trade_date", "td", stamp.dashed_date())
            .str("trade_time", "ttm", stamp.dashed_time())
            .int("trade_timestamp", "ttms", t.trade_timestamp)
            .int("timestamp", "tms", t.timestamp)
            .int("sequential_id", "sid", t.sequential_id)
            .opt_dec("best_ask_price", "bap", t.best_ask_price)
            .opt_dec("best_ask_size", "bas", t.best_ask_size)
            .opt_dec("best_bid_price", "bbp", t.best_bid_price)
            .opt_dec("best_bid_size", "bbs", t.best_bid_size)
            .str("stream_type", "st", t.stream_type.as_str());
        o.close();
    })
}

fn push_units(out: &mut String, units: &[OrderbookUnit], simple: bool) {
    out.push('[');
    for (i, u) in units.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_unit(out, u, simple);
    }
    out.push(']');
}

fn push_unit(out: &mut String, u: &OrderbookUnit, simple: bool) {
    let mut o = Obj::open(out, simple);
    o.dec("ask_price", "ap", u.ask_price)
        .dec("bid_price", "bp", u.bid_price)
        .dec("ask_size", "as", u.ask_size)
        .dec("bid_size", "bs", u.bid_size);
    o.close();
}

/// The text of one book's levels as its previous frame wrote them, so that the
/// next frame copies each level that did not change instead of writing it again
/// (a publisher's book changes a few levels per update unless its price moves).
/// Keep one per book and format; see [`orderbook_reusing`].
#[derive(Debug, Default)]
pub struct LevelTexts {
    levels: Vec<(OrderbookUnit, String)>,
}

impl LevelTexts {
    fn push_units(&mut self, out: &mut String, units: &[OrderbookUnit], simple: bool) {
        out.push('[');
        for (i, u) in units.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match self.levels.get_mut(i) {
                Some((was, _)) if was == u => {}
                Some((was, text)) => {
                    text.clear();
                    push_unit(text, u, simple);
                    was.clone_from(u);
                }
                None => {
                    let mut text = String::with_capacity(128);
                    push_unit(&mut text, u, simple);
                    self.levels.push((u.clone(), text));
                }
            }
            out.push_str(&self.levels[i].1);
        }
        out.push(']');
    }
}

/// An orderbook frame.
pub fn orderbook(ob: &Orderbook, format: Format) -> String {
    orderbook_with(ob, format, None)
}

/// An orderbook frame, the same as [`orderbook`], copying the levels that equal
/// those of the frame `levels` was last used for (the same book, in the same
/// `format`'s keys).
pub fn orderbook_reusing(ob: &Orderbook, format: Format, levels: &mut LevelTexts) -> String {
    orderbook_with(ob, format, Some(levels))
}

fn orderbook_with(ob: &Orderbook, format: Format, levels: Option<&mut LevelTexts>) -> String {
    frame(
        format,
        256 + 128 * ob.orderbook_units.len(),
        |out, simple| {
            let mut o = Obj::open(out, simple);
            o.str("type", "ty", "orderbook")
                .str("code", "cd", &ob.code)
                .dec("total_ask_size", "tas", ob.total_ask_size)
                .dec("total_bid_size", "tbs", ob.total_bid_size);
            let units = o.raw("orderbook_units", "obu");
            match levels {
                Some(levels) => levels.push_units(units, &ob.orderbook_units, simple),
                None => push_units(units, &ob.orderbook_units, simple),
            }
            o.int("timestamp", "tms", ob.timestamp)
                .dec("level", "lv", ob.level)
                .str("stream_type", "st", ob.stream_type.as_str());
            o.close();
        },
    )
}

/// A candle frame.
pub fn candle(c: &Candle, format: Format) -> String {
    frame(format, 640, |out, simple| {
        let kst =
            chrono::NaiveDateTime::parse_from_str(&c.candle_date_time_utc, "%Y-%m-%dT%H:%M:%S")
                .map(|t| {
                    (t + Duration::hours(9))
                        .format("%Y-%m-%dT%H:%M:%S")
                        .to_string()
                })
                .unwrap_or_default();
        let mut o = Obj::open(out, simple);
        o.str("type", "ty", &c.candle_type)
            .str("code", "cd", &c.code)
            .str("candle_date_time_utc", "cdttmu", &c.candle_date_time_utc)
            .str("candle_date_time_kst", "cdttmk", &kst)
            .dec("opening_price", "op", c.opening_price)
            .dec("high_price", "hp", c.high_price)
            .dec("low_price", "lp", c.low_price)
            .dec("trade_price", "tp", c.trade_price)
            .dec("candle_acc_trade_volume", "catv", c.candle_acc_trade_volume)
            .dec("candle_acc_trade_price", "catp", c.candle_acc_trade_price)
            .int("timestamp", "tms", c.timestamp)
            .str("stream_type", "st", c.stream_type.as_str());
        o.close();
    })
}

/// A `myOrder` frame (private WebSocket). Upbit sends numbers as JSON
/// numbers and an absent value as null.
pub fn my_order(e: &crate::private::MyOrder, format: Format) -> String {
    frame(format, 1024, |out, simple| {
        let mut o = Obj::open(out, simple);
        o.str("type", "ty", "myOrder")
            .str("code", "cd", &e.code)
            .str("uuid", "uid", &e.uuid)
            .str("ask_bid", "ab", e.ask_bid)
            .str("order_type", "ot", &e.order_type)
            .str("state", "s", e.state)
            .opt_str("trade_uuid", "tuid", e.trade_uuid.as_deref())
            .opt_dec("price", "p", e.price)
            .dec("avg_price", "ap", e.avg_price)
            .opt_dec("volume", "v", e.volume)
            .dec("remaining_volume", "rv", e.remaining_volume)
            .dec("executed_volume", "ev", e.executed_volume)
            .int("trades_count", "tc", e.trades_count)
            .dec("reserved_fee", "rsf", e.reserved_fee)
            .dec("remaining_fee", "rmf", e.remaining_fee)
            .dec("paid_fee", "pf", e.paid_fee)
            .dec("locked", "l", e.locked)
            .dec("executed_funds", "ef", e.executed_funds)
            .opt_str("time_in_force", "tif", e.time_in_force.as_deref())
            .opt_dec("trade_fee", "tf", e.trade_fee);
        match e.is_maker {
            Some(m) => o.bool("is_maker", "im", m),
            None => o.null("is_maker", "im"),
        };
        o.opt_str("identifier", "id", e.identifier.as_deref())
            .opt_str("smp_type", "smpt", e.smp_type.as_deref())
            .dec("prevented_volume", "pv", e.prevented_volume)
            .dec("prevented_locked", "pl", e.prevented_locked);
        match e.trade_timestamp {
            Some(t) => o.int("trade_timestamp", "ttms", t),
            None => o.null("trade_timestamp", "ttms"),
        };
        o.int("order_timestamp", "otms", e.order_timestamp)
            .int("timestamp", "tms", e.timestamp)
            .str("stream_type", "st", "REALTIME");
        o.close();
    })
}

/// A `myAsset` frame (private WebSocket).
pub fn my_asset(e: &crate::private::MyAsset, format: Format) -> String {
    frame(format, 256 + 96 * e.assets.len(), |out, simple| {
        let mut o = Obj::open(out, simple);
        o.str("type", "ty", "myAsset")
            .str("asset_uuid", "astuid", &e.asset_uuid);
        let list = o.raw("assets", "ast");
        list.push('[');
        for (i, (currency, balance, locked)) in e.assets.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            let mut a = Obj::open(list, simple);
            a.str("currency", "cu", currency)
                .dec("balance", "b", *balance)
                .dec("locked", "l", *locked);
            a.close();
        }
        list.push(']');
        o.int("asset_timestamp", "asttms", e.asset_timestamp)
            .int("timestamp", "tms", e.timestamp)
            .str("stream_type", "st", "REALTIME");
        o.close();
    })
}

/// REST quotation shapes (`/v1/ticker`, `/v1/trades/ticks`, `/v1/orderbook`,
/// `/v1/candles/*`, `/v1/market/all`). Arrays are built by the caller with
/// [`rest::array`].
pub mod rest {
    use super::*;

    /// `[a,b,c]` from already-written JSON objects.
    pub fn array<I: IntoIterator<Item = String>>(items: I) -> String {
        let mut out = String::from("[");
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&item);
        }
        out.push(']');
        out
    }

    /// One element of `GET /v1/ticker`.
    pub fn ticker(t: &Ticker) -> String {
        let mut out = String::with_capacity(640);
        let (date, time) = compact_date_time(t.trade_timestamp);
        let (date_kst, time_kst) = compact_date_time(t.trade_timestamp + 9 * 3_600_000);
        let mut o = Obj::open(&mut out, false);
        o.str("market", "", &t.code)
            .str("trade_date", "", &date)
            .str("trade_time", "", &time)
            .str("trade_date_kst", "", &date_kst)
            .str("trade_time_kst", "", &time_kst)
            .int("trade_timestamp", "", t.trade_timestamp)
            .dec("opening_price", "", t.opening_price)
            .dec("high_price", "", t.high_price)
            .dec("low_price", "", t.low_price)
            .dec("trade_price", "", t.trade_price)
            .dec("prev_closing_price", "", t.prev_closing_price)
            .str("change", "", t.change.as_str())
            .dec("change_price", "", t.change_price)
            .dec("change_rate", "", t.change_rate)
            .dec("signed_change_price", "", t.signed_change_price)
            .dec("signed_change_rate", "", t.signed_change_rate)
            .dec("trade_volume", "", t.trade_volume)
            .dec("acc_trade_price", "", t.acc_trade_price)
            .dec("acc_trade_price_24h", "", t.acc_trade_price_24h)
            .dec("acc_trade_volume", "", t.acc_trade_volume)
            .dec("acc_trade_volume_24h", "", t.acc_trade_volume_24h)
            .opt_dec("highest_52_week_price", "", t.highest_52_week_price)
            .opt_str(
                "highest_52_week_date",
                "",
                t.highest_52_week_date.as_deref(),
            )
            .opt_dec("lowest_52_week_price", "", t.lowest_52_week_price)
            .opt_str("lowest_52_week_date", "", t.lowest_52_week_date.as_deref())
            .int("timestamp", "", t.timestamp);
        o.close();
        out
    }

    /// One element of `GET /v1/trades/ticks`.
    pub fn trade(t: &Trade) -> String {
        let mut out = String::with_capacity(320);
        let (date, time) = dashed_date_time(t.trade_timestamp);
        let mut o = Obj::open(&mut out, false);
        o.str("market", "", &t.code)
            .str("trade_date_utc", "", &date)
            .str("trade_time_utc", "", &time)
            .int("timestamp", "", t.trade_timestamp)
            .dec("trade_price", "", t.trade_price)
            .dec("trade_volume", "", t.trade_volume)
            .dec("prev_closing_price", "", t.prev_closing_price)
            .dec("change_price", "", t.change_price)
            .str("ask_bid", "", t.ask_bid.as_str())
            .int("sequential_id", "", t.sequential_id);
        o.close();
        out
    }

    /// One element of `GET /v1/orderbook`.
    pub fn orderbook(ob: &Orderbook) -> String {
        let mut out = String::with_capacity(2048);
        let mut o = Obj::open(&mut out, false);
        o.str("market", "", &ob.code)
            .int("timestamp", "", ob.timestamp)
            .dec("total_ask_size", "", ob.total_ask_size)
            .dec("total_bid_size", "", ob.total_bid_size);
        push_units(o.raw("orderbook_units", ""), &ob.orderbook_units, false);
        o.dec("level", "", ob.level);
        o.close();
        out
    }

    /// A candle for `GET /v1/candles/minutes/{unit}` (`unit` set) or
    /// `GET /v1/candles/days` (`day` set).
    #[derive(Clone, Debug, PartialEq)]
    pub struct RestCandle {
        pub market: String,
        /// Start of the period, epoch ms.
        pub start: i64,
        pub opening_price: Decimal,
        pub high_price: Decimal,
        pub low_price: Decimal,
        pub trade_price: Decimal,
        /// Last trade's timestamp.
        pub timestamp: i64,
        pub candle_acc_trade_price: Decimal,
        pub candle_acc_trade_volume: Decimal,
        pub unit: Option<u32>,
        pub day: Option<DayFields>,
        /// Weeks and months carry `first_day_of_period` (`yyyy-MM-dd`).
        pub first_day_of_period: bool,
    }

    /// Extra fields of day candles.
    #[derive(Clone, Debug, PartialEq)]
    pub struct DayFields {
        pub prev_closing_price: Decimal,
        pub change_price: Decimal,
        pub change_rate: Decimal,
        /// With `converting_price_unit`: the close in that currency (`Some(None)`
        /// writes null: no rate for that day).
        pub converted_trade_price: Option<Option<Decimal>>,
    }

    /// One element of a candles response.
    pub fn candle(c: &RestCandle) -> String {
        let mut out = String::with_capacity(400);
        let (utc, kst) = candle_date_times(c.start);
        let mut o = Obj::open(&mut out, false);
        o.str("market", "", &c.market)
            .str("candle_date_time_utc", "", &utc)
            .str("candle_date_time_kst", "", &kst)
            .dec("opening_price", "", c.opening_price)
            .dec("high_price", "", c.high_price)
            .dec("low_price", "", c.low_price)
            .dec("trade_price", "", c.trade_price)
            .int("timestamp", "", c.timestamp)
            .dec("candle_acc_trade_price", "", c.candle_acc_trade_price)
            .dec("candle_acc_trade_volume", "", c.candle_acc_trade_volume);
        if let Some(unit) = c.unit {
            o.int("unit", "", i64::from(unit));
        }
        if c.first_day_of_period {
            let date = super::utc(c.start).format("%Y-%m-%d").to_string();
            o.str("first_day_of_period", "", &date);
        }
        if let Some(day) = &c.day {
            o.dec("prev_closing_price", "", day.prev_closing_price)
                .dec("change_price", "", day.change_price)
                .dec("change_rate", "", day.change_rate);
            if let Some(converted) = day.converted_trade_price {
                o.opt_dec("converted_trade_price", "", converted);
            }
        }
        o.close();
        out
    }

    pub use crate::market::{Caution, MarketEvent};

    /// One element of `GET /v1/market/all`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize)]
    pub struct MarketInfo {
        pub market: String,
        pub korean_name: String,
        pub english_name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub market_event: Option<MarketEvent>,
    }
}
