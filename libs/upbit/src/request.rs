//! WebSocket subscription requests: `[{"ticket":..},{"type":..,"codes":[..]},..,{"format":..}]`.
//!
//! A server parses them with [`parse_request`] (errors carry Upbit's names:
//! `WRONG_FORMAT`, `NO_TICKET`, `NO_TYPE`, `NO_CODES`, `INVALID_PARAM`); a client
//! builds one complete request with [`SubscriptionRequest::to_json`], because a new
//! request replaces the whole previous subscription set.

use serde_json::{Map, Value, json};

use crate::error::ErrorBody;
use crate::types::CANDLE_TYPES;
use crate::write::Format;

/// Orderbook depths a code suffix may ask for (`KRW-BTC.15`).
pub const ORDERBOOK_DEPTHS: &[usize] = &[1, 5, 15, 30];
/// Depth used when none (or an unsupported one) is given.
pub const DEFAULT_ORDERBOOK_DEPTH: usize = 30;

/// Most type objects one request may hold (Upbit has 15 types; a request
/// naming more objects than that repeats itself).
pub const MAX_TYPE_OBJECTS: usize = 15;
/// Most codes one type object may list (a server checks them against its
/// markets, so it may allow fewer).
pub const MAX_CODES: usize = 1000;
/// Longest market code, with an orderbook depth suffix.
pub const MAX_CODE_LEN: usize = 32;

/// The data type of one subscription.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Ticker,
    Trade,
    Orderbook,
    /// `candle.1s` .. `candle.240m`; the payload is the type name.
    Candle(String),
}

impl DataType {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ticker" => Some(Self::Ticker),
            "trade" => Some(Self::Trade),
            "orderbook" => Some(Self::Orderbook),
            t if CANDLE_TYPES.iter().any(|(name, _)| *name == t) => {
                Some(Self::Candle(t.to_owned()))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Ticker => "ticker",
            Self::Trade => "trade",
            Self::Orderbook => "orderbook",
            Self::Candle(t) => t,
        }
    }
}

/// One type object of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub data_type: DataType,
    /// Market codes without any depth suffix.
    pub codes: Vec<String>,
    /// Orderbook depth per code, parallel to `codes` (orderbook only).
    pub depths: Vec<usize>,
    /// Orderbook price grouping (KRW only; 0 = none).
    pub level: Option<String>,
    pub only_snapshot: bool,
    pub only_realtime: bool,
}

impl Subscription {
    pub fn new(data_type: DataType, codes: Vec<String>) -> Self {
        let depths = vec![DEFAULT_ORDERBOOK_DEPTH; codes.len()];
        Self {
            data_type,
            codes,
            depths,
            level: None,
            only_snapshot: false,
            only_realtime: false,
        }
    }

    /// Whether the SNAPSHOT message is wanted.
    pub fn wants_snapshot(&self) -> bool {
        !self.only_realtime || self.only_snapshot
    }

    /// Whether REALTIME messages are wanted.
    pub fn wants_realtime(&self) -> bool {
        !self.only_snapshot
    }
}

/// A parsed text frame from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// The text `PING`; answer [`crate::write::STATUS_UP`].
    Ping,
    Subscribe(SubscriptionRequest),
    /// `{"method":"LIST_SUBSCRIPTIONS"}`.
    ListSubscriptions {
        ticket: String,
    },
}

/// A complete subscription request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub ticket: String,
    pub subscriptions: Vec<Subscription>,
    /// `None` keeps the connection's current format.
    pub format: Option<Format>,
}

/// Upbit's limit on subscription requests per connection: 5 per second and 100
/// per minute.
#[derive(Debug, Default)]
pub struct RequestWindow(std::collections::VecDeque<std::time::Instant>);

impl RequestWindow {
    /// Counts a request; false when it is over the limit (and not counted).
    pub fn allow(&mut self) -> bool {
        use std::time::{Duration, Instant};
        let now = Instant::now();
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.0.pop_front();
        }
        let last_second = self
            .0
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) < Duration::from_secs(1))
            .count();
        if last_second >= 5 || self.0.len() >= 100 {
            return false;
        }
        self.0.push_back(now);
        true
    }
}

/// The error frame for a refused request.
pub fn too_many_requests() -> ErrorBody {
    error(
        "TOO_MANY_REQUESTS",
        "at most 5 requests per second and 100 per minute",
    )
}

/// An `INVALID_PARAM` error frame.
pub fn invalid_param(message: impl Into<String>) -> ErrorBody {
    error("INVALID_PARAM", message)
}

fn error(name: &str, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        name: name.to_owned(),
        message: message.into(),
    }
}

fn flag(obj: &Map<String, Value>, snake: &str, camel: &str) -> Result<bool, ErrorBody> {
    match obj.get(snake).or_else(|| obj.get(camel)) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(error(
            "INVALID_PARAM",
            format!("`{snake}` must be a boolean"),
        )),
    }
}

/// Parses one text frame from a WebSocket client.
pub fn parse_request(text: &str) -> Result<ClientFrame, ErrorBody> {
    let trimmed = text.trim();
    if trimmed == "PING" {
        return Ok(ClientFrame::Ping);
    }
    let value: Value = serde_json::from_str(trimmed)
        .map_err(|_| error("WRONG_FORMAT", "request is not valid JSON"))?;
    let Value::Array(items) = value else {
        return Err(error("WRONG_FORMAT", "request must be a JSON array"));
    };
    let mut ticket = None;
    let mut subscriptions = Vec::new();
    let mut format = None;
    let mut list_method = false;
    for item in &items {
        let Value::Object(obj) = item else {
            return Err(error("WRONG_FORMAT", "request items must be objects"));
        };
        if let Some(t) = obj.get("ticket") {
            match t {
                Value::String(s) if !s.trim().is_empty() => ticket = Some(s.clone()),
                _ => return Err(error("NO_TICKET", "ticket must be a non-empty string")),
            }
        } else if let Some(f) = obj.get("format") {
            let parsed = f.as_str().and_then(Format::parse).ok_or_else(|| {
                error(
                    "INVALID_PARAM",
                    "format must be DEFAULT, SIMPLE, JSON_LIST or SIMPLE_LIST",
                )
            })?;
            format = Some(parsed);
        } else if let Some(m) = obj.get("method") {
            if m.as_str() == Some("LIST_SUBSCRIPTIONS") {
                list_method = true;
            } else {
                return Err(error("INVALID_PARAM", "unknown method"));
            }
        } else if let Some(t) = obj.get("type") {
            let name = t
                .as_str()
                .ok_or_else(|| error("INVALID_PARAM", "type must be a string"))?;
            let data_type = DataType::parse(name).ok_or_else(|| {
                error(
                    "INVALID_PARAM",
                    format!(
                        "unknown type `{}`",
                        name.chars().take(32).collect::<String>()
                    ),
                )
            })?;
            if subscriptions.len() == MAX_TYPE_OBJECTS {
                return Err(error(
                    "INVALID_PARAM",
                    format!("at most {MAX_TYPE_OBJECTS} type objects per request"),
                ));
            }
            subscriptions.push(parse_type_object(data_type, obj)?);
        } else {
            return Err(error("WRONG_FORMAT", "unrecognised request item"));
        }
    }
    let ticket = ticket.ok_or_else(|| error("NO_TICKET", "a ticket object is required"))?;
    if list_method {
        return Ok(ClientFrame::ListSubscriptions { ticket });
    }
    if subscriptions.is_empty() {
        return Err(error("NO_TYPE", "at least one type object is required"));
    }
    Ok(ClientFrame::Subscribe(SubscriptionRequest {
        ticket,
        subscriptions,
        format,
    }))
}

fn parse_type_object(
    data_type: DataType,
    obj: &Map<String, Value>,
) -> Result<Subscription, ErrorBody> {
    let codes = match obj.get("codes") {
        Some(Value::Array(codes)) if !codes.is_empty() => codes,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(error("NO_CODES", "codes must list at least one market"));
        }
        Some(_) => return Err(error("INVALID_PARAM", "codes must be an array of strings")),
    };
    if codes.len() > MAX_CODES {
        return Err(error(
            "INVALID_PARAM",
            format!("at most {MAX_CODES} codes per type"),
        ));
    }
    let mut sub = Subscription::new(data_type.clone(), Vec::with_capacity(codes.len()));
    sub.depths.clear();
    // De-duplicated in linear time: a request may list many codes.
    let mut seen = std::collections::HashSet::with_capacity(codes.len());
    for code in codes {
        let code = code
            .as_str()
            .ok_or_else(|| error("INVALID_PARAM", "codes must be an array of strings"))?;
        if code.len() > MAX_CODE_LEN {
            return Err(error("INVALID_PARAM", "a market code is too long"));
        }
        let (market, depth) = match code.split_once('.') {
            Some((market, n)) if data_type == DataType::Orderbook => {
                let depth = n
                    .parse::<usize>()
                    .ok()
                    .filter(|d| ORDERBOOK_DEPTHS.contains(d))
                    .unwrap_or(DEFAULT_ORDERBOOK_DEPTH);
                (market, depth)
            }
            _ => (code, DEFAULT_ORDERBOOK_DEPTH),
        };
        if market.is_empty() {
            return Err(error("INVALID_PARAM", "empty market code"));
        }
        if seen.insert(market) {
            sub.codes.push(market.to_owned());
            sub.depths.push(depth);
        }
    }
    sub.only_snapshot = flag(obj, "is_only_snapshot", "isOnlySnapshot")?;
    sub.only_realtime = flag(obj, "is_only_realtime", "isOnlyRealtime")?;
    sub.level = match obj.get("level") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(error("INVALID_PARAM", "level must be a number")),
    };
    Ok(sub)
}

impl SubscriptionRequest {
    /// The request as Upbit expects it, one JSON array.
    pub fn to_json(&self) -> String {
        let mut items = vec![json!({ "ticket": self.ticket })];
        for sub in &self.subscriptions {
            let mut obj = Map::new();
            obj.insert("type".into(), Value::from(sub.data_type.as_str()));
            let codes: Vec<Value> = sub
                .codes
                .iter()
                .zip(
                    sub.depths
                        .iter()
                        .chain(std::iter::repeat(&DEFAULT_ORDERBOOK_DEPTH)),
                )
                .map(|(code, depth)| {
                    if sub.data_type == DataType::Orderbook && *depth != DEFAULT_ORDERBOOK_DEPTH {
                        Value::from(format!("{code}.{depth}"))
                    } else {
                        Value::from(code.as_str())
                    }
                })
                .collect();
            obj.insert("codes".into(), Value::Array(codes));
            if sub.only_snapshot {
                obj.insert("is_only_snapshot".into(), Value::Bool(true));
            }
            if sub.only_realtime {
                obj.insert("is_only_realtime".into(), Value::Bool(true));
            }
            if let Some(level) = &sub.level {
                obj.insert("level".into(), Value::from(level.as_str()));
            }
            items.push(Value::Object(obj));
        }
        if let Some(format) = self.format {
            items.push(json!({ "format": format.as_str() }));
        }
        Value::Array(items).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        parse_request(text).unwrap_err().name
    }

    #[test]
    fn full_request_parses_with_depth_suffixes_and_flags() {
        let text = r#"[{"ticket":"t1"},{"type":"ticker","codes":["KRW-BTC","KRW-ETH"]},
            {"type":"orderbook","codes":["KRW-BTC.15","KRW-ETH.7"],"isOnlyRealtime":true},
            {"format":"SIMPLE"}]"#;
        let ClientFrame::Subscribe(req) = parse_request(text).unwrap() else {
            panic!("expected a subscription");
        };
        assert_eq!(req.ticket, "t1");
        assert_eq!(req.format, Some(Format::Simple));
        assert_eq!(req.subscriptions[0].codes, vec!["KRW-BTC", "KRW-ETH"]);
        let ob = &req.subscriptions[1];
        assert_eq!(ob.codes, vec!["KRW-BTC", "KRW-ETH"]);
        assert_eq!(
            ob.depths,
            vec![15, 30],
            "unsupported depth falls back to 30"
        );
        assert!(ob.only_realtime && !ob.wants_snapshot());
        // What a client builds parses back to the same request.
        let again = parse_request(&req.to_json()).unwrap();
        assert_eq!(again, ClientFrame::Subscribe(req));
    }

    #[test]
    fn errors_carry_upbit_names() {
        assert_eq!(parse_err("hello"), "WRONG_FORMAT");
        assert_eq!(parse_err(r#"{"ticket":"x"}"#), "WRONG_FORMAT");
        assert_eq!(
            parse_err(r#"[{"type":"ticker","codes":["KRW-BTC"]}]"#),
            "NO_TICKET"
        );
        assert_eq!(parse_err(r#"[{"ticket":"x"}]"#), "NO_TYPE");
        assert_eq!(
            parse_err(r#"[{"ticket":"x"},{"type":"ticker"}]"#),
            "NO_CODES"
        );
        assert_eq!(
            parse_err(r#"[{"ticket":"x"},{"type":"ticker","codes":[]}]"#),
            "NO_CODES"
        );
        assert_eq!(
            parse_err(r#"[{"ticket":"x"},{"type":"bogus","codes":["A-B"]}]"#),
            "INVALID_PARAM"
        );
        assert_eq!(
            parse_err(r#"[{"ticket":"x"},{"type":"trade","codes":["KRW-BTC"]},{"format":"XML"}]"#),
            "INVALID_PARAM"
        );
    }

    #[test]
    fn requests_are_bounded_and_parse_in_linear_time() {
        let type_objects = |n: usize| {
            let mut items = vec![r#"{"ticket":"x"}"#.to_owned()];
            items.extend((0..n).map(|_| r#"{"type":"trade","codes":["KRW-BTC"]}"#.to_owned()));
            format!("[{}]", items.join(","))
        };
        assert!(parse_request(&type_objects(MAX_TYPE_OBJECTS)).is_ok());
        assert_eq!(
            parse_err(&type_objects(MAX_TYPE_OBJECTS + 1)),
            "INVALID_PARAM"
        );
        assert_eq!(parse_err(&type_objects(2000)), "INVALID_PARAM");
        let codes = |n: usize| {
            let list: Vec<String> = (0..n).map(|i| format!("\"KRW-A{i}\"")).collect();
            format!(
                r#"[{{"ticket":"x"}},{{"type":"ticker","codes":[{}]}}]"#,
                list.join(",")
            )
        };
        let ClientFrame::Subscribe(r) = parse_request(&codes(MAX_CODES)).unwrap() else {
            panic!("a subscription");
        };
        assert_eq!(r.subscriptions[0].codes.len(), MAX_CODES);
        assert_eq!(parse_err(&codes(MAX_CODES + 1)), "INVALID_PARAM");
        let long = format!(
            r#"[{{"ticket":"x"}},{{"type":"ticker","codes":["KRW-{}"]}}]"#,
            "A".repeat(100)
        );
        assert_eq!(parse_err(&long), "INVALID_PARAM");
        // Many repeats of one code are one code.
        let repeated: Vec<&str> = std::iter::repeat_n(r#""KRW-BTC""#, MAX_CODES).collect();
        let text = format!(
            r#"[{{"ticket":"x"}},{{"type":"ticker","codes":[{}]}}]"#,
            repeated.join(",")
        );
        let ClientFrame::Subscribe(r) = parse_request(&text).unwrap() else {
            panic!("a subscription");
        };
        assert_eq!(r.subscriptions[0].codes, ["KRW-BTC"]);
    }

    #[test]
    fn request_window_allows_five_per_second() {
        let mut w = RequestWindow::default();
        let allowed = (0..8).filter(|_| w.allow()).count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn ping_and_list_subscriptions() {
        assert_eq!(parse_request(" PING "), Ok(ClientFrame::Ping));
        assert_eq!(
            parse_request(r#"[{"ticket":"q"},{"method":"LIST_SUBSCRIPTIONS"}]"#),
            Ok(ClientFrame::ListSubscriptions { ticket: "q".into() })
        );
    }
}
