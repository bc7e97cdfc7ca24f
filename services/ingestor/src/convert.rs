//! Upbit messages → the normalised protobuf events market-data ingests.

use exchange_proto::marketdata::v1 as pb;
use rust_decimal::Decimal;
use upbit::{AskBid, Change, MarketState, MarketWarning};

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
        warning: t.market_warning == MarketWarning::Caution,
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

/// Frames of the feed straight into events, without the typed Upbit message in
/// between: the fields are read with [`upbit::scan`] and decimals copied as
/// their normalised text, which under load is about half the ingestor's work
/// saved. It reads what [`upbit::parse_message`] reads, and nothing it rejects:
/// anything unusual (escapes, a duplicate or mistyped field, `*_LIST` frames)
/// gives None and the caller parses the frame the full way instead.
pub mod direct {
    use exchange_proto::marketdata::v1 as pb;
    use pb::market_event::Event;
    use upbit::scan::{self, Reader, Value};

    /// A decimal as `de_decimal` reads it, in its normalised text.
    fn dec(v: Value<'_>, raw: &str) -> Option<String> {
        match v {
            Value::Num(n) => {
                scan::plain_decimal(n).or_else(|| upbit::parse::parse_decimal(raw).map(super::d))
            }
            Value::Str(_) | Value::Escaped(_) => upbit::parse::parse_decimal(raw).map(super::d),
            _ => None,
        }
    }

    /// An optional decimal as `de_opt_decimal` reads it ("" when null).
    fn opt_dec(v: Value<'_>, raw: &str) -> Option<String> {
        match v {
            Value::Null => Some(String::new()),
            _ => dec(v, raw),
        }
    }

    /// The scalar that comes next.
    fn val<'a>(r: &mut Reader<'a>) -> Option<Value<'a>> {
        Some(r.scalar().ok()?.0)
    }

    fn dec_at(r: &mut Reader<'_>) -> Option<String> {
        let (v, raw) = r.scalar().ok()?;
        dec(v, raw)
    }

    fn opt_dec_at(r: &mut Reader<'_>) -> Option<String> {
        let (v, raw) = r.scalar().ok()?;
        opt_dec(v, raw)
    }

    fn int(v: Value<'_>) -> Option<i64> {
        match v {
            Value::Num(n) if !n.contains(['.', 'e', 'E']) => n.parse().ok(),
            _ => None,
        }
    }

    fn string(v: Value<'_>) -> Option<String> {
        match v {
            Value::Str(s) => Some(s.to_owned()),
            _ => None,
        }
    }

    fn opt_string(v: Value<'_>) -> Option<String> {
        match v {
            Value::Null => Some(String::new()),
            _ => string(v),
        }
    }

    fn side(v: Value<'_>) -> Option<i32> {
        match v {
            Value::Str("ASK") => Some(pb::Side::Ask as i32),
            Value::Str("BID") => Some(pb::Side::Bid as i32),
            _ => None,
        }
    }

    fn change(v: Value<'_>) -> Option<i32> {
        Some(match v {
            Value::Str("RISE") => pb::Change::Rise,
            Value::Str("EVEN") => pb::Change::Even,
            Value::Str("FALL") => pb::Change::Fall,
            _ => return None,
        } as i32)
    }

    fn stream_type(v: Value<'_>) -> Option<()> {
        matches!(v, Value::Str("SNAPSHOT" | "REALTIME")).then_some(())
    }

    /// One arm of a field table: sets the field (its `?` rejects the frame), then
    /// names the field's slot in the bits `fields` returns.
    macro_rules! slot {
        ($slot:expr, $set:expr) => {{
            $set;
            $slot
        }};
    }

    /// Reads the fields of the object entered last: `field` converts the value
    /// of a key it knows and gives its slot, or Some(None) for a key it does not
    /// (skipped). Returns the slots seen; None on a duplicate field (which the
    /// full parser rejects) or a value `field` does not take.
    fn fields<'a>(
        r: &mut Reader<'a>,
        mut field: impl FnMut(&str, &mut Reader<'a>) -> Option<Option<u32>>,
    ) -> Option<u64> {
        let mut seen = 0u64;
        while let Some(key) = r.key().ok()? {
            match field(key, r)? {
                Some(slot) => {
                    let bit = 1u64 << slot;
                    if seen & bit != 0 {
                        return None;
                    }
                    seen |= bit;
                }
                None => r.skip().ok()?,
            }
        }
        Some(seen)
    }

    /// The event of a `ticker`, `trade` or `orderbook` frame, or None.
    pub fn event(kind: &str, frame: &[u8]) -> Option<Event> {
        let mut r = Reader::new(frame).ok()?;
        r.object().ok()?;
        let event = match kind {
            "trade" => Event::Trade(trade(&mut r)?),
            "ticker" => Event::Ticker(ticker(&mut r)?),
            "orderbook" => Event::Orderbook(orderbook(&mut r)?),
            _ => return None,
        };
        r.end().ok()?;
        Some(event)
    }

    fn trade(r: &mut Reader<'_>) -> Option<pb::Trade> {
        let mut t = pb::Trade {
            prev_closing_price: "0".into(),
            change: pb::Change::Even as i32,
            change_price: "0".into(),
            ..Default::default()
        };
        let mut side_set = false;
        let seen = fields(r, |key, r| {
            Some(Some(match key {
                "code" | "cd" => slot!(0, t.market = string(val(r)?)?),
                "trade_price" | "tp" => slot!(1, t.trade_price = dec_at(r)?),
                "trade_volume" | "tv" => slot!(2, t.trade_volume = dec_at(r)?),
                "ask_bid" | "ab" => {
                    t.ask_bid = side(val(r)?)?;
                    side_set = true;
                    3
                }
                "prev_closing_price" | "pcp" => slot!(4, t.prev_closing_price = dec_at(r)?),
                "change" | "c" => slot!(5, t.change = change(val(r)?)?),
                "change_price" | "cp" => slot!(6, t.change_price = dec_at(r)?),
                "trade_timestamp" | "ttms" => slot!(7, t.trade_timestamp = int(val(r)?)?),
                "timestamp" | "tms" => slot!(8, t.timestamp = int(val(r)?)?),
                "sequential_id" | "sid" => slot!(9, t.sequential_id = int(val(r)?)?),
                "best_ask_price" | "bap" => slot!(10, t.best_ask_price = opt_dec_at(r)?),
                "best_ask_size" | "bas" => slot!(11, t.best_ask_size = opt_dec_at(r)?),
                "best_bid_price" | "bbp" => slot!(12, t.best_bid_price = opt_dec_at(r)?),
                "best_bid_size" | "bbs" => slot!(13, t.best_bid_size = opt_dec_at(r)?),
                "stream_type" | "st" => slot!(14, stream_type(val(r)?)?),
                _ => return Some(None),
            }))
        })?;
        // Required: code, price, volume, side, trade_timestamp, sequential_id.
        let required = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 7) | (1 << 9);
        (seen & required == required && side_set).then_some(t)
    }

    fn ticker(r: &mut Reader<'_>) -> Option<pb::Ticker> {
        let mut t = pb::Ticker {
            opening_price: "0".into(),
            high_price: "0".into(),
            low_price: "0".into(),
            prev_closing_price: "0".into(),
            change: pb::Change::Even as i32,
            change_price: "0".into(),
            signed_change_price: "0".into(),
            change_rate: "0".into(),
            signed_change_rate: "0".into(),
            trade_volume: "0".into(),
            acc_trade_volume: "0".into(),
            acc_trade_volume_24h: "0".into(),
            acc_trade_price: "0".into(),
            acc_trade_price_24h: "0".into(),
            acc_ask_volume: "0".into(),
            acc_bid_volume: "0".into(),
            market_state: pb::MarketState::Active as i32,
            ..Default::default()
        };
        let seen = fields(r, |key, r| {
            Some(Some(match key {
                "code" | "cd" => slot!(0, t.market = string(val(r)?)?),
                "opening_price" | "op" => slot!(1, t.opening_price = dec_at(r)?),
                "high_price" | "hp" => slot!(2, t.high_price = dec_at(r)?),
                "low_price" | "lp" => slot!(3, t.low_price = dec_at(r)?),
                "trade_price" | "tp" => slot!(4, t.trade_price = dec_at(r)?),
                "prev_closing_price" | "pcp" => slot!(5, t.prev_closing_price = dec_at(r)?),
                "change" | "c" => slot!(6, t.change = change(val(r)?)?),
                "change_price" | "cp" => slot!(7, t.change_price = dec_at(r)?),
                "signed_change_price" | "scp" => slot!(8, t.signed_change_price = dec_at(r)?),
                "change_rate" | "cr" => slot!(9, t.change_rate = dec_at(r)?),
                "signed_change_rate" | "scr" => slot!(10, t.signed_change_rate = dec_at(r)?),
                "trade_volume" | "tv" => slot!(11, t.trade_volume = dec_at(r)?),
                "acc_trade_volume" | "atv" => slot!(12, t.acc_trade_volume = dec_at(r)?),
                "acc_trade_volume_24h" | "atv24h" => slot!(13, t.acc_trade_volume_24h = dec_at(r)?),
                "acc_trade_price" | "atp" => slot!(14, t.acc_trade_price = dec_at(r)?),
                "acc_trade_price_24h" | "atp24h" => slot!(15, t.acc_trade_price_24h = dec_at(r)?),
                "trade_timestamp" | "ttms" => slot!(16, t.trade_timestamp = int(val(r)?)?),
                "ask_bid" | "ab" => {
                    t.ask_bid = match val(r)? {
                        Value::Null => 0,
                        v => side(v)?,
                    };
                    17
                }
                "acc_ask_volume" | "aav" => slot!(18, t.acc_ask_volume = dec_at(r)?),
                "acc_bid_volume" | "abv" => slot!(19, t.acc_bid_volume = dec_at(r)?),
                "highest_52_week_price" | "h52wp" => {
                    slot!(20, t.highest_52_week_price = opt_dec_at(r)?)
                }
                "highest_52_week_date" | "h52wdt" => {
                    slot!(21, t.highest_52_week_date = opt_string(val(r)?)?)
                }
                "lowest_52_week_price" | "l52wp" => {
                    slot!(22, t.lowest_52_week_price = opt_dec_at(r)?)
                }
                "lowest_52_week_date" | "l52wdt" => {
                    slot!(23, t.lowest_52_week_date = opt_string(val(r)?)?)
                }
                "market_state" | "ms" => {
                    t.market_state = match val(r)? {
                        Value::Str("PREVIEW") => pb::MarketState::Preview,
                        Value::Str("ACTIVE") => pb::MarketState::Active,
                        Value::Str("DELISTED") => pb::MarketState::Delisted,
                        _ => return None,
                    } as i32;
                    24
                }
                "delisting_date" | "dd" => slot!(25, opt_string(val(r)?)?),
                "market_warning" | "mw" => {
                    t.warning = match val(r)? {
                        Value::Str("NONE") => false,
                        Value::Str("CAUTION") => true,
                        _ => return None,
                    };
                    28
                }
                "timestamp" | "tms" => slot!(26, t.timestamp = int(val(r)?)?),
                "stream_type" | "st" => slot!(27, stream_type(val(r)?)?),
                _ => return Some(None),
            }))
        })?;
        // Required: code and trade_price.
        let required = (1 << 0) | (1 << 4);
        (seen & required == required).then_some(t)
    }

    fn orderbook(r: &mut Reader<'_>) -> Option<pb::Orderbook> {
        let mut o = pb::Orderbook {
            total_ask_size: "0".into(),
            total_bid_size: "0".into(),
            level: "0".into(),
            ..Default::default()
        };
        let seen = fields(r, |key, r| {
            Some(Some(match key {
                "code" | "cd" => slot!(0, o.market = string(val(r)?)?),
                "total_ask_size" | "tas" => slot!(1, o.total_ask_size = dec_at(r)?),
                "total_bid_size" | "tbs" => slot!(2, o.total_bid_size = dec_at(r)?),
                "orderbook_units" | "obu" => {
                    r.array().ok()?;
                    while r.item().ok()? {
                        o.units.push(unit(r)?);
                    }
                    3
                }
                "timestamp" | "tms" => slot!(4, o.timestamp = int(val(r)?)?),
                "level" | "lv" => slot!(5, o.level = dec_at(r)?),
                "stream_type" | "st" => slot!(6, stream_type(val(r)?)?),
                _ => return Some(None),
            }))
        })?;
        // Required: code and orderbook_units.
        let required = (1 << 0) | (1 << 3);
        (seen & required == required).then_some(o)
    }

    fn unit(r: &mut Reader<'_>) -> Option<pb::OrderbookUnit> {
        r.object().ok()?;
        let mut u = pb::OrderbookUnit::default();
        let seen = fields(r, |key, r| {
            Some(Some(match key {
                "ask_price" | "ap" => slot!(0, u.ask_price = dec_at(r)?),
                "bid_price" | "bp" => slot!(1, u.bid_price = dec_at(r)?),
                "ask_size" | "as" => slot!(2, u.ask_size = dec_at(r)?),
                "bid_size" | "bs" => slot!(3, u.bid_size = dec_at(r)?),
                _ => return Some(None),
            }))
        })?;
        (seen == 0b1111).then_some(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::market_event::Event;
    use upbit::Message;
    use upbit::write::{self, Format};
    use upbit_sim::engine::{Engine, Payload};

    /// The full way: Upbit's parser, then the conversion.
    fn full(frame: &[u8]) -> Option<Event> {
        match upbit::parse_message(frame).ok()? {
            Message::Ticker(t) => Some(Event::Ticker(ticker(&t))),
            Message::Trade(t) => Some(Event::Trade(trade(&t))),
            Message::Orderbook(o) => Some(Event::Orderbook(orderbook(&o))),
            _ => None,
        }
    }

    fn fast(frame: &[u8]) -> Option<Event> {
        let (kind, _) = upbit::parse::frame_head(frame)?;
        direct::event(kind, frame)
    }

    /// The direct reading never accepts what the full parser rejects, and where
    /// it accepts it agrees with it exactly.
    fn agrees(frame: &[u8]) -> bool {
        match fast(frame) {
            Some(event) => {
                assert_eq!(
                    Some(event),
                    full(frame),
                    "{}",
                    String::from_utf8_lossy(frame)
                );
                true
            }
            None => false,
        }
    }

    fn frames() -> Vec<Vec<u8>> {
        let markets = upbit_sim::markets::parse(
            "KRW-BTC,KRW-ETH,KRW-SHIB,KRW-DOGE,BTC-ETH,USDT-BTC,KRW-A:1000000,KRW-B:0.00001",
        )
        .unwrap();
        let mut engine = Engine::new(markets, 11);
        assert!(engine.set_warning("KRW-DOGE", true));
        let mut out = Vec::new();
        for n in 0..3_000 {
            for payload in engine.step(1_751_606_040_365 + n) {
                for format in [Format::Default, Format::Simple] {
                    let text = match &payload {
                        Payload::Ticker(t) => write::ticker(t, format),
                        Payload::Trade(t) => write::trade(t, format),
                        Payload::Orderbook(o) => write::orderbook(o, format),
                    };
                    out.push(text.into_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn every_simulated_frame_is_read_directly_and_the_same() {
        for frame in frames() {
            assert!(
                agrees(&frame),
                "not read directly: {}",
                String::from_utf8_lossy(&frame)
            );
        }
    }

    #[test]
    fn unusual_frames_are_read_the_same_or_left_to_the_full_parser() {
        let trade = r#"{"type":"trade","code":"KRW-BTC","trade_price":148601000,"trade_volume":0.00016823,"ask_bid":"BID","prev_closing_price":148737000,"change":"FALL","change_price":136000,"trade_date":"2025-07-04","trade_time":"05:14:00","trade_timestamp":1751606040365,"timestamp":1751606040401,"sequential_id":1751606040365000,"best_ask_price":148602000,"best_ask_size":0.0134662,"best_bid_price":148600000,"best_bid_size":0.04296774,"stream_type":"REALTIME"}"#;
        let with = |from: &str, to: &str| trade.replacen(from, to, 1);
        // Read directly, and the same as the full way.
        for frame in [
            trade.to_owned(),
            with(r#""trade_price":148601000"#, r#""trade_price":148601000.0"#),
            with(
                r#""trade_volume":0.00016823"#,
                r#""trade_volume":0.000168230"#,
            ),
            with(
                r#""trade_price":148601000"#,
                r#""trade_price":"148601000.00""#,
            ),
            with(r#""trade_price":148601000"#, r#""trade_price":1.48601E8"#),
            with(
                r#""trade_volume":0.00016823"#,
                r#""trade_volume":1.6823e-4"#,
            ),
            with(r#""best_ask_price":148602000"#, r#""best_ask_price":null"#),
            with(r#","change":"FALL""#, ""),
            with(
                r#""stream_type""#,
                r#""extra":{"a":[1,2,{"b":null}]},"stream_type""#,
            ),
            with(
                r#""sequential_id":1751606040365000"#,
                r#""sequential_id":4611686018427387904"#,
            ),
            with(r#""trade_price":148601000"#, r#""trade_price":-0.0"#),
            with(
                r#""trade_price":148601000"#,
                r#""trade_price":12345678901234567890.123456789"#,
            ),
            format!(" \n{}\t", trade.replace(',', " ,\n ")),
        ] {
            assert!(agrees(frame.as_bytes()), "should be read directly: {frame}");
        }
        // Left to the full parser (which accepts or rejects them).
        for frame in [
            format!("[{trade}]"),
            with(r#""code":"KRW-BTC""#, r#""code":"KRW-\u0042TC""#),
            with(r#""code":"KRW-BTC""#, r#""c\u006fde":"KRW-BTC""#),
            with(r#""change":"FALL""#, r#""change":"F\u0041LL""#),
            with(r#""code":"KRW-BTC""#, r#""code":"KRW-BTC","cd":"KRW-ETH""#),
            with(r#""ask_bid":"BID""#, r#""ask_bid":"UP""#),
            with(r#","ask_bid":"BID""#, ""),
            with(
                r#""trade_timestamp":1751606040365"#,
                r#""trade_timestamp":1751606040365.0"#,
            ),
            with(
                r#""sequential_id":1751606040365000"#,
                r#""sequential_id":"1""#,
            ),
            with(
                r#""sequential_id":1751606040365000"#,
                r#""sequential_id":99999999999999999999"#,
            ),
            with(r#""code":"KRW-BTC""#, r#""code":7"#),
            with(r#""trade_price":148601000"#, r#""trade_price":null"#),
            with(r#""trade_price":148601000"#, r#""trade_price":" 1""#),
            with(r#""stream_type":"REALTIME""#, r#""stream_type":"LIVE""#),
            trade[..trade.len() - 10].to_owned(),
            with("}", "},"),
        ] {
            assert!(
                !agrees(frame.as_bytes()),
                "should be left to the full parser: {frame}"
            );
        }
        let ticker = br#"{"ty":"ticker","cd":"KRW-ETH","tp":5200000,"ab":null,"h52wp":null,"ms":"PREVIEW","dd":null,"tms":1}"#;
        assert!(agrees(ticker));
        // Upbit's investment warning on the ticker.
        let warned = br#"{"ty":"ticker","cd":"KRW-ETH","tp":5200000,"mw":"CAUTION","tms":1}"#;
        assert!(agrees(warned));
        let Some(Event::Ticker(t)) = fast(warned) else {
            panic!("a ticker")
        };
        assert!(t.warning, "CAUTION is a warning");
        let plain =
            br#"{"ty":"ticker","cd":"KRW-ETH","tp":5200000,"market_warning":"NONE","tms":1}"#;
        assert!(agrees(plain));
        let odd = br#"{"ty":"ticker","cd":"KRW-ETH","tp":5200000,"mw":"WARNING","tms":1}"#;
        assert!(
            !agrees(odd),
            "an unknown warning is left to the full parser"
        );
        let Some(Event::Ticker(t)) = full(odd) else {
            panic!("the full parser keeps the ticker")
        };
        assert!(!t.warning, "and reads an unknown warning as none");
        let book = br#"{"type":"orderbook","code":"KRW-XRP","orderbook_units":[],"timestamp":5,"level":0}"#;
        assert!(agrees(book));
        let bad_unit =
            br#"{"type":"orderbook","code":"KRW-XRP","orderbook_units":[{"ap":1,"bp":1,"as":1}]}"#;
        assert!(!agrees(bad_unit), "a unit without bid_size");
    }

    #[test]
    fn damaged_frames_are_never_read_differently() {
        // Cut, overwrite and insert bytes at pseudo-random places in real frames:
        // whatever the direct reading accepts, the full parser reads the same.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let noise = br#"{}[],:"\ -.0123456789eE+tfnul"#;
        let mut accepted = 0;
        for frame in frames().into_iter().step_by(7) {
            for _ in 0..6 {
                let mut f = frame.clone();
                let at = (next() % f.len() as u64) as usize;
                match next() % 3 {
                    0 => f.truncate(at),
                    1 => f[at] = noise[(next() % noise.len() as u64) as usize],
                    _ => f.insert(at, noise[(next() % noise.len() as u64) as usize]),
                }
                accepted += usize::from(agrees(&f));
            }
        }
        // Many damages leave a valid frame (a digit for a digit, a space).
        assert!(
            accepted > 100,
            "only {accepted} damaged frames were read directly"
        );
    }
}
