//! Parsing WebSocket frames in the DEFAULT or SIMPLE format.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};
use serde_json::value::RawValue;

use crate::error::ErrorBody;
use crate::types::{CANDLE_TYPES, Candle, Message, Orderbook, Ticker, Trade};

/// Why a frame could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("frame is not UTF-8 JSON: {0}")]
    Json(String),
    #[error("frame has no `type`")]
    NoType,
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("invalid {kind} message: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

/// Parses a decimal from JSON number or string text, accepting exponents
/// (`8.428e-05`) without going through `f64`.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let text = text.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if text.is_empty() {
        return None;
    }
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()
    } else {
        Decimal::from_str(text).ok()
    }
}

pub(crate) fn de_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let raw: &'de RawValue = Deserialize::deserialize(d)?;
    parse_decimal(raw.get())
        .ok_or_else(|| D::Error::custom(format!("`{}` is not a decimal", raw.get())))
}

pub(crate) fn de_opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    let raw: &'de RawValue = Deserialize::deserialize(d)?;
    if raw.get() == "null" {
        return Ok(None);
    }
    parse_decimal(raw.get())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("`{}` is not a decimal", raw.get())))
}

/// The value of `"key":"value"` when `frame` starts with it (after `{`, `[{` or
/// `,`), for the first of `keys` that matches; with the bytes after it.
fn leading_str<'a>(frame: &'a [u8], keys: [&str; 2]) -> Option<(&'a str, &'a [u8])> {
    let rest = frame.strip_prefix(b"[").unwrap_or(frame);
    let rest = rest
        .strip_prefix(b"{")
        .or_else(|| rest.strip_prefix(b","))?;
    for key in keys {
        let Some(after) = rest
            .strip_prefix(b"\"")
            .and_then(|r| r.strip_prefix(key.as_bytes()))
            .and_then(|r| r.strip_prefix(b"\":\""))
        else {
            continue;
        };
        let end = after.iter().position(|b| matches!(b, b'"' | b'\\'))?;
        if after[end] != b'"' {
            return None;
        }
        let value = std::str::from_utf8(&after[..end]).ok()?;
        return Some((value, &after[end + 1..]));
    }
    None
}

/// The `type` of a frame when it comes first, as Upbit writes it (DEFAULT
/// `{"type":"trade",...`, SIMPLE `{"ty":"trade",...`); None otherwise.
fn leading_type(frame: &[u8]) -> Option<&str> {
    leading_str(frame, ["type", "ty"]).map(|(kind, _)| kind)
}

/// The type and market code of a data frame without parsing the rest of it:
/// read from its first bytes when it starts with them (as Upbit writes every
/// message), or else found by an allocation-free scan of the whole document.
/// None when the frame has no string `type` and `code`.
pub fn frame_head(frame: &[u8]) -> Option<(&str, &str)> {
    if let Some((kind, rest)) = leading_str(frame, ["type", "ty"])
        && let Some((code, _)) = leading_str(rest, ["code", "cd"])
    {
        return Some((kind, code));
    }
    #[derive(Deserialize)]
    struct TypeAndCode<'a> {
        #[serde(alias = "ty", borrow)]
        r#type: Option<&'a str>,
        #[serde(alias = "cd", borrow)]
        code: Option<&'a str>,
    }
    match serde_json::from_slice::<TypeAndCode<'_>>(frame) {
        Ok(TypeAndCode {
            r#type: Some(kind),
            code: Some(code),
        }) => Some((kind, code)),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(alias = "ty", borrow, default)]
    r#type: Option<&'a str>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

fn invalid(kind: &'static str, err: serde_json::Error) -> ParseError {
    ParseError::Invalid {
        kind,
        reason: err.to_string(),
    }
}

/// Parses one frame (text or the payload of a binary frame). A `*_LIST` frame
/// (a one-element array) is accepted too.
pub fn parse_message(bytes: &[u8]) -> Result<Message, ParseError> {
    let trimmed = trim_ascii(bytes);
    // JSON_LIST / SIMPLE_LIST wrap each message in an array.
    if trimmed.first() == Some(&b'[') {
        let items: Vec<&RawValue> =
            serde_json::from_slice(trimmed).map_err(|e| ParseError::Json(e.to_string()))?;
        let [item] = items.as_slice() else {
            return Err(ParseError::Json(format!(
                "expected one message in a list frame, got {}",
                items.len()
            )));
        };
        return parse_message(item.get().as_bytes());
    }
    // The type usually comes first: read it there instead of parsing the frame
    // twice (once for the type, once for the message).
    let head: Head<'_> = match leading_type(trimmed) {
        Some(kind) => Head {
            r#type: Some(kind),
            status: None,
            error: None,
        },
        None => serde_json::from_slice(trimmed).map_err(|e| ParseError::Json(e.to_string()))?,
    };
    let Some(kind) = head.r#type else {
        if let Some(status) = head.status {
            return Ok(Message::Status(status));
        }
        if let Some(error) = head.error {
            return Ok(Message::Error(error));
        }
        return Err(ParseError::NoType);
    };
    match kind {
        "ticker" => serde_json::from_slice::<Ticker>(trimmed)
            .map(Message::Ticker)
            .map_err(|e| invalid("ticker", e)),
        "trade" => serde_json::from_slice::<Trade>(trimmed)
            .map(Message::Trade)
            .map_err(|e| invalid("trade", e)),
        "orderbook" => serde_json::from_slice::<Orderbook>(trimmed)
            .map(Message::Orderbook)
            .map_err(|e| invalid("orderbook", e)),
        k if CANDLE_TYPES.iter().any(|(t, _)| *t == k) => {
            let mut candle =
                serde_json::from_slice::<Candle>(trimmed).map_err(|e| invalid("candle", e))?;
            candle.candle_type = k.to_owned();
            Ok(Message::Candle(candle))
        }
        other => Err(ParseError::UnknownType(other.to_owned())),
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// One element of `GET /v1/trades/ticks` (the fields a backfill stores).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RestTrade {
    pub market: String,
    /// The trade's time, epoch milliseconds (the stream's `trade_timestamp`).
    pub timestamp: i64,
    #[serde(deserialize_with = "de_decimal")]
    pub trade_price: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub trade_volume: Decimal,
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub prev_closing_price: Option<Decimal>,
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub change_price: Option<Decimal>,
    pub ask_bid: crate::types::AskBid,
    pub sequential_id: i64,
}

/// Parses the body of `GET /v1/trades/ticks` (numbers read exactly, never
/// through `f64`).
pub fn parse_rest_trades(body: &[u8]) -> Result<Vec<RestTrade>, ParseError> {
    serde_json::from_slice(body).map_err(|e| ParseError::Invalid {
        kind: "trades/ticks",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_read_from_the_start_or_found_anywhere() {
        let default = br#"{"type":"orderbook","code":"KRW-BTC","total_ask_size":1}"#;
        assert_eq!(frame_head(default), Some(("orderbook", "KRW-BTC")));
        let simple = br#"[{"ty":"ticker","cd":"KRW-ETH","tp":1}]"#;
        assert_eq!(frame_head(simple), Some(("ticker", "KRW-ETH")));
        let reordered = br#"{"code":"KRW-XRP","tp":1,"type":"trade"}"#;
        assert_eq!(frame_head(reordered), Some(("trade", "KRW-XRP")));
        assert_eq!(
            frame_head(br#"{"type":"orderbook","code":"KRW"#),
            None,
            "truncated"
        );
    }

    #[test]
    fn the_type_is_read_once_from_the_start() {
        assert_eq!(
            leading_type(br#"{"type":"trade","code":"KRW-BTC"}"#),
            Some("trade")
        );
        assert_eq!(
            leading_type(br#"{"ty":"orderbook","cd":"KRW-BTC"}"#),
            Some("orderbook")
        );
        // Escapes or another first key: found by the full parse instead.
        assert_eq!(
            leading_type(br#"{"type":"tr\u0061de","code":"KRW-BTC"}"#),
            None
        );
        assert_eq!(leading_type(br#"{"code":"KRW-BTC","type":"trade"}"#), None);
        assert!(matches!(
            parse_message(br#"{"code":"KRW-BTC","type":"nope"}"#),
            Err(ParseError::UnknownType(t)) if t == "nope"
        ));
        assert!(matches!(
            parse_message(br#"{"type":"trade","code":"KRW-BTC","trade_pr"#),
            Err(ParseError::Invalid { kind: "trade", .. })
        ));
    }

    #[test]
    fn rest_trades_read_numbers_exactly() {
        let body = br#"[{"market":"KRW-BTC","trade_date_utc":"2026-12-03","trade_time_utc":"01:02:03",
            "timestamp":1764723723000,"trade_price":94000000.0,"trade_volume":8.428e-05,
            "prev_closing_price":93000000,"change_price":1000000.0,"ask_bid":"BID","sequential_id":17647237230000001}]"#;
        let t = &super::parse_rest_trades(body).unwrap()[0];
        assert_eq!(t.trade_volume.to_string(), "0.00008428");
        assert_eq!(t.trade_price, rust_decimal::Decimal::from(94_000_000));
        assert_eq!(
            (t.timestamp, t.sequential_id),
            (1764723723000, 17647237230000001)
        );
        assert!(super::parse_rest_trades(br#"[{"market":"KRW-BTC"}]"#).is_err());
        assert!(super::parse_rest_trades(br#"{"error":{"name":"x","message":"y"}}"#).is_err());
    }
}
