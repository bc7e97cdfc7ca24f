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
    let head: Head<'_> =
        serde_json::from_slice(trimmed).map_err(|e| ParseError::Json(e.to_string()))?;
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
