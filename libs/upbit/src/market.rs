//! Market codes, tick sizes and minimum order totals.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A market code `QUOTE-BASE`, e.g. `KRW-BTC`: uppercase ASCII letters and digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MarketCode {
    code: String,
    split: usize,
}

/// Why a market code is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a market code like KRW-BTC")]
pub struct InvalidMarket(pub String);

impl MarketCode {
    /// Parses `QUOTE-BASE` (split on the first `-`).
    pub fn parse(text: &str) -> Result<Self, InvalidMarket> {
        let bad = || InvalidMarket(text.to_owned());
        let split = text.find('-').ok_or_else(bad)?;
        let (quote, base) = (&text[..split], &text[split + 1..]);
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 16
                && p.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        };
        if !part_ok(quote) || !part_ok(base) {
            return Err(bad());
        }
        Ok(Self {
            code: text.to_owned(),
            split,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.code
    }

    /// The currency prices are quoted in (`KRW`).
    pub fn quote(&self) -> &str {
        &self.code[..self.split]
    }

    /// The currency traded (`BTC`).
    pub fn base(&self) -> &str {
        &self.code[self.split + 1..]
    }
}

impl fmt::Display for MarketCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)
    }
}

const fn d(mantissa: u32, scale: u32) -> Decimal {
    Decimal::from_parts(mantissa, 0, 0, false, scale)
}

/// (lower bound, tick) for KRW prices, highest first (policy since 2025-07-31).
const KRW_TICKS: [(Decimal, Decimal); 14] = [
    (d(1_000_000, 0), d(1000, 0)),
    (d(500_000, 0), d(500, 0)),
    (d(100_000, 0), d(100, 0)),
    (d(50_000, 0), d(50, 0)),
    (d(10_000, 0), d(10, 0)),
    (d(5_000, 0), d(5, 0)),
    (d(100, 0), d(1, 0)),
    (d(10, 0), d(1, 1)),
    (d(1, 0), d(1, 2)),
    (d(1, 1), d(1, 3)),
    (d(1, 2), d(1, 4)),
    (d(1, 3), d(1, 5)),
    (d(1, 4), d(1, 6)),
    (d(1, 5), d(1, 7)),
];

/// (lower bound, tick) for USDT prices, highest first.
const USDT_TICKS: [(Decimal, Decimal); 6] = [
    (d(10, 0), d(1, 2)),
    (d(1, 0), d(1, 3)),
    (d(1, 1), d(1, 4)),
    (d(1, 2), d(1, 5)),
    (d(1, 3), d(1, 6)),
    (d(1, 4), d(1, 7)),
];

/// The smallest tick of every market: 1e-8.
const SATOSHI: Decimal = d(1, 8);

fn tick_from(table: &[(Decimal, Decimal)], price: Decimal) -> Decimal {
    table
        .iter()
        .find(|(floor, _)| price >= *floor)
        .map_or(SATOSHI, |(_, tick)| *tick)
}

/// KRW market tick size for `price`.
pub fn krw_tick(price: Decimal) -> Decimal {
    tick_from(&KRW_TICKS, price)
}

/// USDT market tick size for `price`.
pub fn usdt_tick(price: Decimal) -> Decimal {
    tick_from(&USDT_TICKS, price)
}

/// Tick size of `price` in a market quoted in `quote`.
pub fn tick_size(quote: &str, price: Decimal) -> Decimal {
    match quote {
        "KRW" => krw_tick(price),
        "USDT" => usdt_tick(price),
        // BTC markets and anything else: one satoshi.
        _ => SATOSHI,
    }
}

/// Whether `price` is a multiple of its tick.
pub fn is_on_tick(quote: &str, price: Decimal) -> bool {
    let tick = tick_size(quote, price);
    (price % tick).is_zero()
}

/// `price` rounded down to its tick.
pub fn floor_to_tick(quote: &str, price: Decimal) -> Decimal {
    let tick = tick_size(quote, price);
    ((price / tick).floor() * tick).normalize()
}

/// The orderbook levels (price units an orderbook may be grouped by) of a
/// market trading at `price`: `0` (no grouping) and, in KRW markets (the only
/// ones Upbit groups), the tick times 10, 100, … 100,000.
pub fn supported_levels(quote: &str, price: Decimal) -> Vec<Decimal> {
    let mut levels = vec![Decimal::ZERO];
    if quote == "KRW" {
        let mut level = krw_tick(price);
        for _ in 0..5 {
            level *= Decimal::TEN;
            levels.push(level.normalize());
        }
    }
    levels
}

/// Minimum order total in the quote currency (5,000 KRW; 0.00005 BTC; 0.5 USDT).
pub fn min_order_total(quote: &str) -> Decimal {
    match quote {
        "KRW" => d(5000, 0),
        "BTC" => d(5, 5),
        "USDT" => d(5, 1),
        _ => Decimal::ZERO,
    }
}

/// Why a market is under caution: `market_event.caution` of
/// `/v1/market/all?is_details=true`. Upbit may add reasons; unknown ones are
/// ignored when read, missing ones read as false.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct Caution {
    pub price_fluctuations: bool,
    pub trading_volume_soaring: bool,
    pub deposit_amount_soaring: bool,
    pub global_price_differences: bool,
    pub concentration_of_small_accounts: bool,
}

impl Caution {
    /// The reasons set, in Upbit's order and spelling.
    pub fn reasons(&self) -> Vec<&'static str> {
        [
            (self.price_fluctuations, "PRICE_FLUCTUATIONS"),
            (self.trading_volume_soaring, "TRADING_VOLUME_SOARING"),
            (self.deposit_amount_soaring, "DEPOSIT_AMOUNT_SOARING"),
            (self.global_price_differences, "GLOBAL_PRICE_DIFFERENCES"),
            (
                self.concentration_of_small_accounts,
                "CONCENTRATION_OF_SMALL_ACCOUNTS",
            ),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// A market's designations, `market_event` of `/v1/market/all?is_details=true`:
/// `warning` is Upbit's investment warning (투자유의), `caution` its reasons
/// for caution (주의).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MarketEvent {
    pub warning: bool,
    pub caution: Caution,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn market_events_read_as_upbit_writes_them() {
        // Upbit's shape, plus a reason it may add later and one it may drop.
        let json = r#"{"warning": true, "caution": {"PRICE_FLUCTUATIONS": true,
            "TRADING_VOLUME_SOARING": false, "GLOBAL_PRICE_DIFFERENCES": true,
            "SOMETHING_NEW": true}}"#;
        let event: MarketEvent = serde_json::from_str(json).unwrap();
        assert!(event.warning);
        assert_eq!(
            event.caution.reasons(),
            ["PRICE_FLUCTUATIONS", "GLOBAL_PRICE_DIFFERENCES"]
        );
        let written = serde_json::to_value(event).unwrap();
        assert_eq!(written["caution"]["GLOBAL_PRICE_DIFFERENCES"], true);
        assert_eq!(written["caution"]["DEPOSIT_AMOUNT_SOARING"], false);
        assert_eq!(written["caution"].as_object().unwrap().len(), 5);
        let empty: MarketEvent = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, MarketEvent::default());
        assert!(empty.caution.reasons().is_empty());
    }

    #[test]
    fn market_codes() {
        let m = MarketCode::parse("KRW-BTC").unwrap();
        assert_eq!((m.quote(), m.base()), ("KRW", "BTC"));
        let m = MarketCode::parse("USDT-1INCH").unwrap();
        assert_eq!(m.base(), "1INCH");
        for bad in [
            "krw-btc",
            "KRWBTC",
            "-BTC",
            "KRW-",
            "KRW-BTC-X",
            "",
            "KRW-B TC",
        ] {
            assert!(MarketCode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn krw_ticks_follow_the_table_at_each_boundary() {
        let cases = [
            ("2000000", "1000"),
            ("1000000", "1000"),
            ("999500", "500"),
            ("500000", "500"),
            ("499900", "100"),
            ("100000", "100"),
            ("99950", "50"),
            ("50000", "50"),
            ("49990", "10"),
            ("10000", "10"),
            ("9995", "5"),
            ("5000", "5"),
            ("4999", "1"),
            ("100", "1"),
            ("99.9", "0.1"),
            ("10", "0.1"),
            ("9.99", "0.01"),
            ("1", "0.01"),
            ("0.999", "0.001"),
            ("0.05", "0.0001"),
            ("0.005", "0.00001"),
            ("0.0005", "0.000001"),
            ("0.00005", "0.0000001"),
            ("0.000005", "0.00000001"),
        ];
        for (price, tick) in cases {
            assert_eq!(krw_tick(dec(price)), dec(tick), "price {price}");
        }
    }

    #[test]
    fn on_tick_and_flooring() {
        assert!(is_on_tick("KRW", dec("148601000")));
        assert!(!is_on_tick("KRW", dec("148601500")));
        assert!(is_on_tick("KRW", dec("5005")));
        assert!(!is_on_tick("KRW", dec("5003")));
        assert_eq!(floor_to_tick("KRW", dec("148601999")), dec("148601000"));
        assert_eq!(floor_to_tick("KRW", dec("12.34")), dec("12.3"));
        assert!(is_on_tick("BTC", dec("0.00012345")));
        assert!(!is_on_tick("BTC", dec("0.000123451")));
        assert_eq!(min_order_total("KRW"), dec("5000"));
    }
}
