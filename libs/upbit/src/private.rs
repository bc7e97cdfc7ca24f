//! Upbit's private WebSocket (`/websocket/v1/private`): the `myOrder` and
//! `myAsset` subscription requests and the events they stream. Frames are
//! written by [`crate::write::my_order`] and [`crate::write::my_asset`].

use rust_decimal::Decimal;
use serde_json::Value;

use crate::error::ErrorBody;
use crate::request::invalid_param;
use crate::write::Format;

/// Most market codes in one `myOrder` type.
pub const MAX_CODES: usize = 1000;

/// What a private request subscribes to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrivateRequest {
    pub ticket: String,
    /// `Some(codes)` when `myOrder` is subscribed (empty: every market).
    pub my_order: Option<Vec<String>>,
    pub my_asset: bool,
    pub format: Option<Format>,
}

/// A frame a client sends on the private socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrivateFrame {
    Ping,
    Subscribe(PrivateRequest),
}

fn error(name: &str, message: &str) -> ErrorBody {
    ErrorBody {
        name: name.to_owned(),
        message: message.to_owned(),
    }
}

/// Reads `[{ticket},{type: myOrder, codes?},{type: myAsset},{format?}]`, or
/// `PING`. Public types on the private socket are refused, as Upbit does.
pub fn parse_private_request(text: &str) -> Result<PrivateFrame, ErrorBody> {
    let trimmed = text.trim();
    if trimmed == "PING" {
        return Ok(PrivateFrame::Ping);
    }
    let value: Value = serde_json::from_str(trimmed)
        .map_err(|_| error("WRONG_FORMAT", "request is not valid JSON"))?;
    let Value::Array(items) = value else {
        return Err(error("WRONG_FORMAT", "request must be a JSON array"));
    };
    let mut request = PrivateRequest::default();
    let mut ticket = None;
    for item in &items {
        let Value::Object(obj) = item else {
            return Err(error("WRONG_FORMAT", "request items must be objects"));
        };
        if let Some(t) = obj.get("ticket") {
            match t {
                Value::String(s) if !s.trim().is_empty() && s.len() <= 256 => {
                    ticket = Some(s.clone())
                }
                _ => return Err(error("NO_TICKET", "ticket must be a non-empty string")),
            }
        } else if let Some(f) = obj.get("format") {
            request.format = Some(f.as_str().and_then(Format::parse).ok_or_else(|| {
                invalid_param("format must be DEFAULT, SIMPLE, JSON_LIST or SIMPLE_LIST")
            })?);
        } else if let Some(t) = obj.get("type") {
            match t.as_str() {
                Some("myOrder") => request.my_order = Some(codes(obj.get("codes"))?),
                Some("myAsset") => request.my_asset = true,
                Some(other) if other.len() <= 32 => {
                    return Err(invalid_param(format!(
                        "type {other} is not served here: the private socket serves myOrder and myAsset (public types are on /websocket/v1)"
                    )));
                }
                _ => return Err(invalid_param("type must be myOrder or myAsset")),
            }
        } else {
            return Err(error("WRONG_FORMAT", "unknown request item"));
        }
    }
    request.ticket = ticket.ok_or_else(|| error("NO_TICKET", "a ticket is required"))?;
    if request.my_order.is_none() && !request.my_asset {
        return Err(error("NO_TYPE", "a type is required (myOrder or myAsset)"));
    }
    Ok(PrivateFrame::Subscribe(request))
}

fn codes(value: Option<&Value>) -> Result<Vec<String>, ErrorBody> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(invalid_param("codes must be an array of market codes"));
    };
    if items.len() > MAX_CODES {
        return Err(invalid_param(format!("at most {MAX_CODES} codes")));
    }
    let mut codes: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let code = item
            .as_str()
            .filter(|c| crate::market::MarketCode::parse(c).is_ok())
            .ok_or_else(|| invalid_param("codes must be upper-case market codes (KRW-BTC)"))?;
        codes.push(code.to_owned());
    }
    codes.sort_unstable();
    codes.dedup();
    Ok(codes)
}

/// One `myOrder` event: a state change of an order, or one of its fills
/// (`state` "trade", with the fill's price and volume).
#[derive(Clone, Debug, PartialEq)]
pub struct MyOrder {
    pub code: String,
    pub uuid: String,
    /// `ASK` or `BID`.
    pub ask_bid: &'static str,
    pub order_type: String,
    pub state: &'static str,
    pub trade_uuid: Option<String>,
    /// The order's price, or the fill's (state trade).
    pub price: Option<Decimal>,
    pub avg_price: Decimal,
    /// The order's volume, or the fill's (state trade).
    pub volume: Option<Decimal>,
    pub remaining_volume: Decimal,
    pub executed_volume: Decimal,
    pub trades_count: i64,
    pub reserved_fee: Decimal,
    pub remaining_fee: Decimal,
    pub paid_fee: Decimal,
    pub locked: Decimal,
    pub executed_funds: Decimal,
    pub time_in_force: Option<String>,
    /// The fill's fee (state trade only).
    pub trade_fee: Option<Decimal>,
    /// Whether the fill made (true) or took (false) liquidity (state trade only).
    pub is_maker: Option<bool>,
    pub identifier: Option<String>,
    pub smp_type: Option<String>,
    pub prevented_volume: Decimal,
    pub prevented_locked: Decimal,
    pub trade_timestamp: Option<i64>,
    pub order_timestamp: i64,
    pub timestamp: i64,
}

/// One `myAsset` event: the balances that changed.
#[derive(Clone, Debug, PartialEq)]
pub struct MyAsset {
    pub asset_uuid: String,
    /// `(currency, balance, locked)`.
    pub assets: Vec<(String, Decimal, Decimal)>,
    pub asset_timestamp: i64,
    pub timestamp: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribe(text: &str) -> PrivateRequest {
        match parse_private_request(text).unwrap() {
            PrivateFrame::Subscribe(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_upbits_private_requests() {
        assert_eq!(parse_private_request(" PING "), Ok(PrivateFrame::Ping));
        let r = subscribe(r#"[{"ticket":"t"},{"type":"myOrder"}]"#);
        assert_eq!((r.my_order, r.my_asset), (Some(vec![]), false));
        let r = subscribe(
            r#"[{"ticket":"t"},{"type":"myOrder","codes":["KRW-ETH","KRW-BTC","KRW-ETH"]},{"type":"myAsset"},{"format":"SIMPLE"}]"#,
        );
        assert_eq!(
            (r.my_order, r.my_asset, r.format),
            (
                Some(vec!["KRW-BTC".to_owned(), "KRW-ETH".to_owned()]),
                true,
                Some(Format::Simple)
            )
        );
        for (bad, name) in [
            (r#"[{"type":"myOrder"}]"#, "NO_TICKET"),
            (r#"[{"ticket":"t"}]"#, "NO_TYPE"),
            (
                r#"[{"ticket":"t"},{"type":"ticker","codes":["KRW-BTC"]}]"#,
                "INVALID_PARAM",
            ),
            (
                r#"[{"ticket":"t"},{"type":"myOrder","codes":["krw-btc"]}]"#,
                "INVALID_PARAM",
            ),
            (
                r#"[{"ticket":"t"},{"type":"myOrder","codes":"KRW-BTC"}]"#,
                "INVALID_PARAM",
            ),
            (r#"{"ticket":"t"}"#, "WRONG_FORMAT"),
            ("not json", "WRONG_FORMAT"),
        ] {
            assert_eq!(parse_private_request(bad).unwrap_err().name, name, "{bad}");
        }
    }
}
