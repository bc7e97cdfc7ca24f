//! The parser and writers against Upbit's documented payloads.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;
use upbit::write::{self, Format};
use upbit::{AskBid, Change, Message, ParseError, StreamType, parse_message};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn write_as(msg: &Message, format: Format) -> String {
    match msg {
        Message::Ticker(t) => write::ticker(t, format),
        Message::Trade(t) => write::trade(t, format),
        Message::Orderbook(o) => write::orderbook(o, format),
        Message::Candle(c) => write::candle(c, format),
        other => panic!("not a data message: {other:?}"),
    }
}

/// Compares two JSON texts; numbers by exact decimal value (read from their
/// text, as `serde_json::Value` would round them through f64).
fn assert_same_json(ours: &str, theirs: &str, path: &str) {
    use std::collections::BTreeMap;
    type Raw = Box<serde_json::value::RawValue>;
    let (a, b) = (ours.trim(), theirs.trim());
    if b.starts_with('{') {
        let a: BTreeMap<String, Raw> =
            serde_json::from_str(a).unwrap_or_else(|e| panic!("{path}: {e}"));
        let b: BTreeMap<String, Raw> = serde_json::from_str(b).unwrap();
        for (k, vb) in &b {
            let va = a
                .get(k)
                .unwrap_or_else(|| panic!("{path}.{k} missing in our output"));
            assert_same_json(va.get(), vb.get(), &format!("{path}.{k}"));
        }
        let extra: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        assert!(
            extra.is_empty(),
            "{path}: extra keys in our output: {extra:?}"
        );
    } else if b.starts_with('[') {
        let a: Vec<Raw> = serde_json::from_str(a).unwrap_or_else(|e| panic!("{path}: {e}"));
        let b: Vec<Raw> = serde_json::from_str(b).unwrap();
        assert_eq!(a.len(), b.len(), "{path}: array lengths");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_same_json(x.get(), y.get(), &format!("{path}[{i}]"));
        }
    } else if b.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        let da = upbit::parse::parse_decimal(a).unwrap_or_else(|| panic!("{path}: {a}"));
        let db = upbit::parse::parse_decimal(b).unwrap();
        assert_eq!(da, db, "{path}");
    } else {
        let va: Value = serde_json::from_str(a).unwrap();
        let vb: Value = serde_json::from_str(b).unwrap();
        assert_eq!(va, vb, "{path}");
    }
}

/// Parse the documented payload, write it in the same format, and get the same
/// document (all keys, exact values) and the same message back.
fn round_trip(name: &str, format: Format) -> Message {
    let text = fixture(name);
    let msg = parse_message(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let written = write_as(&msg, format);
    assert_same_json(&written, &text, name);
    let again = parse_message(written.as_bytes()).unwrap();
    assert_eq!(again, msg, "{name}: parse(write(x)) != x");
    // The list formats wrap the same object.
    let list_format = if format == Format::Simple {
        Format::SimpleList
    } else {
        Format::JsonList
    };
    let listed = write_as(&msg, list_format);
    assert!(listed.starts_with("[{") && listed.ends_with("}]"));
    assert_eq!(parse_message(listed.as_bytes()).unwrap(), msg);
    msg
}

#[test]
fn ticker_default_and_simple_round_trip_to_the_same_message() {
    let Message::Ticker(d) = round_trip("ticker_default", Format::Default) else {
        panic!()
    };
    let Message::Ticker(s) = round_trip("ticker_simple", Format::Simple) else {
        panic!()
    };
    assert_eq!(d, s, "DEFAULT and SIMPLE describe the same ticker");
    assert_eq!(d.code, "KRW-BTC");
    assert_eq!(d.trade_price, dec("32287000"));
    assert_eq!(d.acc_trade_price_24h, dec("228827082483.70729"));
    assert_eq!(d.change, Change::Rise);
    assert_eq!(d.ask_bid, Some(AskBid::Ask));
    assert_eq!(d.highest_52_week_date.as_deref(), Some("2022-03-28"));
    assert_eq!(d.delisting_date, None);
}

#[test]
fn trade_payloads_keep_exact_decimals_exponents_and_big_ids() {
    let Message::Trade(t) = round_trip("trade_default", Format::Default) else {
        panic!()
    };
    assert_eq!(t.trade_volume, dec("0.00016823"));
    assert_eq!(t.ask_bid, AskBid::Bid);
    assert_eq!(t.sequential_id, 1_751_606_040_365_000);
    assert_eq!(t.best_bid_size, Some(dec("0.04296774")));

    let Message::Trade(s) = round_trip("trade_simple", Format::Simple) else {
        panic!()
    };
    assert_eq!(s.trade_volume, dec("0.00008428"), "8.428e-05 read exactly");
    assert_eq!(
        s.sequential_id, 17_516_060_403_650_001,
        "beyond 2^53, exact"
    );
    assert_eq!(s.stream_type, StreamType::Snapshot);
}

#[test]
fn orderbook_payloads_round_trip() {
    let Message::Orderbook(o) = round_trip("orderbook_default", Format::Default) else {
        panic!()
    };
    assert_eq!(o.orderbook_units.len(), 2);
    assert_eq!(o.orderbook_units[1].bid_size, dec("29.53969126"));
    let Message::Orderbook(s) = round_trip("orderbook_simple", Format::Simple) else {
        panic!()
    };
    assert_eq!(s.orderbook_units, o.orderbook_units);
    assert_eq!(s.total_ask_size, dec("7.3265"));
}

#[test]
fn candle_payloads_round_trip() {
    let Message::Candle(c) = round_trip("candle_default", Format::Default) else {
        panic!()
    };
    assert_eq!(c.candle_type, "candle.1s");
    assert_eq!(c.candle_acc_trade_price, dec("860743.53071"));
    let Message::Candle(s) = round_trip("candle_simple", Format::Simple) else {
        panic!()
    };
    assert_eq!(s.candle_type, "candle.1m");
    assert_eq!(s.code, "KRW-ETH");
}

#[test]
fn unknown_fields_are_ignored() {
    let mut doc: Value = serde_json::from_str(&fixture("trade_default")).unwrap();
    doc["brand_new_field"] = serde_json::json!({"nested": [1, 2, 3]});
    doc["another"] = Value::from("x");
    let msg = parse_message(doc.to_string().as_bytes()).unwrap();
    let plain = parse_message(fixture("trade_default").as_bytes()).unwrap();
    assert_eq!(msg, plain);
}

#[test]
fn status_and_error_frames() {
    assert_eq!(
        parse_message(write::STATUS_UP.as_bytes()).unwrap(),
        Message::Status("UP".into())
    );
    let err =
        parse_message(br#"{"error":{"name":"NO_CODES","message":"codes required"}}"#).unwrap();
    let Message::Error(body) = err else {
        panic!("{err:?}")
    };
    assert_eq!(body.name, "NO_CODES");
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    let trade = fixture("trade_default");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "empty"),
        (b"not json".to_vec(), "garbage"),
        (vec![0xff, 0xfe, 0x00], "not utf-8"),
        (trade.as_bytes()[..trade.len() / 2].to_vec(), "truncated"),
        (br#"{"code":"KRW-BTC"}"#.to_vec(), "no type"),
        (
            br#"{"type":"weather","code":"KRW-BTC"}"#.to_vec(),
            "unknown type",
        ),
        (
            br#"{"type":"trade","code":"KRW-BTC"}"#.to_vec(),
            "missing fields",
        ),
        (
            trade.replace("148601000,", "\"abc\",").into_bytes(),
            "price not a number",
        ),
        (
            trade.replace("\"BID\"", "\"SIDEWAYS\"").into_bytes(),
            "bad enum",
        ),
        (
            trade.replace("1751606040365000", "1e400").into_bytes(),
            "id overflow",
        ),
        (
            br#"[{"type":"trade"},{"type":"trade"}]"#.to_vec(),
            "list of two",
        ),
        (br#"[]"#.to_vec(), "empty list"),
        (
            br#"{"type":"orderbook","code":"X","orderbook_units":[{"ap":1}]}"#.to_vec(),
            "short unit",
        ),
    ];
    for (bytes, label) in cases {
        let result = parse_message(&bytes);
        assert!(
            result.is_err(),
            "{label}: expected an error, got {result:?}"
        );
    }
    assert_eq!(
        parse_message(br#"{"type":"weather"}"#),
        Err(ParseError::UnknownType("weather".into()))
    );
}

/// Deterministic mutations of every fixture: flipping, dropping and duplicating
/// bytes must give a value or an error, never a panic.
#[test]
fn mutated_payloads_never_panic() {
    let names = [
        "ticker_default",
        "ticker_simple",
        "trade_default",
        "trade_simple",
        "orderbook_default",
        "orderbook_simple",
        "candle_default",
        "candle_simple",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for name in names {
        let original = fixture(name).into_bytes();
        for _ in 0..400 {
            let mut bytes = original.clone();
            for _ in 0..(1 + next() % 4) {
                let i = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[i] = (next() % 256) as u8,
                    1 => {
                        bytes.remove(i);
                    }
                    _ => {
                        let b = bytes[i];
                        bytes.insert(i, b);
                    }
                }
            }
            if parse_message(&bytes).is_err() {
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "mutations should produce some errors");
}
