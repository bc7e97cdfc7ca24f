//! Query parameters of the REST quotation API, validated the same way by the
//! simulator and the gateway.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::market::MarketCode;

/// Minute units of `/v1/candles/minutes/{unit}`.
pub const MINUTE_UNITS: &[u32] = &[1, 3, 5, 10, 15, 30, 60, 240];
/// Largest `count` of a candles request.
pub const MAX_CANDLES: u32 = 200;
/// Largest `count` of a trades request.
pub const MAX_TRADES: u32 = 500;
/// Largest orderbook depth.
pub const MAX_ORDERBOOK_DEPTH: u32 = 30;

/// A rejected parameter: the message is safe to show to clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidParam(pub String);

fn invalid(msg: impl Into<String>) -> InvalidParam {
    InvalidParam(msg.into())
}

/// Codes one `markets` list may hold: more than Upbit lists in all its quote
/// currencies, since clients ask for every market at once (ccxt's `fetchTickers`
/// and `fetchOrderBooks` without symbols), yet a bound on one request's work.
pub const MAX_MARKETS: usize = 1000;

/// `markets=KRW-BTC,KRW-ETH` (required, at least one, at most [`MAX_MARKETS`]).
pub fn markets(value: Option<&str>) -> Result<Vec<MarketCode>, InvalidParam> {
    let value = value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid("markets is required, e.g. markets=KRW-BTC,KRW-ETH"))?;
    let codes: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if codes.is_empty() {
        return Err(invalid("markets is required, e.g. markets=KRW-BTC,KRW-ETH"));
    }
    if codes.len() > MAX_MARKETS {
        return Err(invalid(format!(
            "at most {MAX_MARKETS} markets per request"
        )));
    }
    codes
        .into_iter()
        .map(|c| MarketCode::parse(c).map_err(|e| invalid(e.to_string())))
        .collect()
}

/// `market=KRW-BTC` (required).
pub fn market(value: Option<&str>) -> Result<MarketCode, InvalidParam> {
    let value = value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid("market is required, e.g. market=KRW-BTC"))?;
    MarketCode::parse(value).map_err(|e| invalid(e.to_string()))
}

/// `count` between 1 and `max`, `default` when absent.
pub fn count(value: Option<&str>, default: u32, max: u32) -> Result<u32, InvalidParam> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| invalid(format!("count must be between 1 and {max}"))),
    }
}

/// `to` of candles: ISO 8601 (`2025-01-02T04:28:00`, `2025-01-02 04:28:00`,
/// with `Z` or an offset such as `+09:00`); no offset means UTC. Returns epoch ms.
pub fn to_time(value: Option<&str>) -> Result<Option<i64>, InvalidParam> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(Some(t.timestamp_millis()));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(v, fmt) {
            return Ok(Some(t.timestamp_millis()));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, fmt) {
            return Ok(Some(
                DateTime::<Utc>::from_naive_utc_and_offset(t, Utc).timestamp_millis(),
            ));
        }
    }
    Err(invalid(
        "to must be an ISO 8601 time such as 2025-01-02T04:28:00 (UTC) or 2025-01-02T13:28:00+09:00",
    ))
}

/// `to` (`HHmmss` or `HH:mm:ss`, UTC) and `days_ago` (1..=7) of
/// `/v1/trades/ticks`, as an exclusive epoch-ms bound relative to `now_ms`.
pub fn trades_to(
    to: Option<&str>,
    days_ago: Option<&str>,
    now_ms: i64,
) -> Result<Option<i64>, InvalidParam> {
    let days = match days_ago.map(str::trim).filter(|v| !v.is_empty()) {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=7).contains(d))
            .ok_or_else(|| invalid("days_ago must be between 1 and 7"))?,
    };
    let day_start = now_ms - now_ms.rem_euclid(86_400_000) - days * 86_400_000;
    let Some(t) = to.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok((days > 0).then_some(day_start + 86_400_000));
    };
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    let parsed = (digits.len() == 6 && digits.chars().all(|c| c.is_ascii_digit()))
        .then(|| {
            let n = |i: usize| digits[i..i + 2].parse::<i64>().unwrap_or(99);
            (n(0), n(2), n(4))
        })
        .filter(|(h, m, s)| *h < 24 && *m < 60 && *s < 60);
    let (h, m, s) = parsed.ok_or_else(|| invalid("to must be HHmmss or HH:mm:ss"))?;
    Ok(Some(day_start + ((h * 60 + m) * 60 + s) * 1000))
}

/// The `{unit}` of `/v1/candles/minutes/{unit}`.
pub fn minute_unit(value: &str) -> Result<u32, InvalidParam> {
    value
        .parse::<u32>()
        .ok()
        .filter(|u| MINUTE_UNITS.contains(u))
        .ok_or_else(|| invalid("unit must be one of 1, 3, 5, 10, 15, 30, 60, 240"))
}

/// `quote_currencies=KRW,BTC` (optional; empty = all).
pub fn quote_currencies(value: Option<&str>) -> Result<Vec<String>, InvalidParam> {
    let Some(v) = value else {
        return Ok(Vec::new());
    };
    v.split(',')
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(|q| {
            if q.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                && q.len() <= 16
            {
                Ok(q.to_owned())
            } else {
                Err(invalid(format!("`{q}` is not a quote currency like KRW")))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markets_takes_every_listed_market_at_once_within_a_bound() {
        // ccxt's fetchTickers() names every market Upbit lists (over 200).
        let all: Vec<String> = (0..MAX_MARKETS).map(|i| format!("KRW-C{i}")).collect();
        assert_eq!(markets(Some(&all.join(","))).unwrap().len(), MAX_MARKETS);
        let more = format!("{},KRW-BTC", all.join(","));
        assert!(markets(Some(&more)).unwrap_err().0.contains("at most 1000"));
        assert!(markets(Some(" , ")).is_err(), "none");
    }

    #[test]
    fn to_accepts_upbit_formats() {
        let utc = Some(1_735_792_080_000);
        assert_eq!(to_time(Some("2025-01-02T04:28:00")), Ok(utc));
        assert_eq!(to_time(Some("2025-01-02 04:28:00")), Ok(utc));
        assert_eq!(to_time(Some("2025-01-02T04:28:00Z")), Ok(utc));
        assert_eq!(to_time(Some("2025-01-02T13:28:00+09:00")), Ok(utc));
        assert_eq!(to_time(None), Ok(None));
        assert!(to_time(Some("yesterday")).is_err());
    }

    #[test]
    fn trades_to_is_a_time_of_day_days_ago() {
        let now = 1_735_792_085_824; // 2025-01-02T04:28:05.824Z
        let day = 1_735_776_000_000; // 2025-01-02T00:00:00Z
        assert_eq!(
            trades_to(Some("04:00:00"), None, now),
            Ok(Some(day + 4 * 3_600_000))
        );
        assert_eq!(
            trades_to(Some("040000"), Some("1"), now),
            Ok(Some(day - 86_400_000 + 4 * 3_600_000))
        );
        assert_eq!(trades_to(None, None, now), Ok(None));
        assert!(trades_to(Some("25:00:00"), None, now).is_err());
        assert!(trades_to(None, Some("9"), now).is_err());
    }

    #[test]
    fn counts_markets_and_units() {
        assert_eq!(count(None, 1, 200), Ok(1));
        assert_eq!(count(Some("200"), 1, 200), Ok(200));
        assert!(count(Some("201"), 1, 200).is_err());
        assert!(count(Some("0"), 1, 200).is_err());
        assert!(count(Some("-3"), 1, 200).is_err());
        assert_eq!(markets(Some("KRW-BTC, KRW-ETH")).unwrap().len(), 2);
        assert!(markets(Some("")).is_err());
        assert!(markets(Some("krw-btc")).is_err());
        assert_eq!(minute_unit("240"), Ok(240));
        assert!(minute_unit("2").is_err());
        assert_eq!(
            quote_currencies(Some("KRW,BTC")).unwrap(),
            vec!["KRW", "BTC"]
        );
    }
}
