//! Values the inventory works with, made only by parsing, and what an order's
//! terms lock.
//!
//! The money rules themselves (each balance change with its ledger rows, the
//! checks of every fill against the order's terms, the faucet's cap) are the
//! PL/pgSQL functions of `migrations/0002_money_functions.sql` and
//! `0003_order_terms.sql`: one statement, one transaction per change.

use exchange_proto::decimal::{self, DecimalError};
use rust_decimal::{Decimal, RoundingStrategy};
use uuid::Uuid;

use crate::error::InventoryError;

impl From<DecimalError> for InventoryError {
    fn from(e: DecimalError) -> Self {
        InventoryError::Invalid(e.to_string())
    }
}

/// Which side an order is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Bid,
    Ask,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Bid => "bid",
            Side::Ask => "ask",
        }
    }
}

/// One execution of an order, as settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    pub seq: u32,
    pub price: Decimal,
    pub volume: Decimal,
    pub funds: Decimal,
    pub fee: Decimal,
}

/// Largest fee rate an order may carry.
pub fn max_fee_rate() -> Decimal {
    Decimal::new(1, 1)
}

/// What an order may do with its funds (Upbit's `ord_type` with its amounts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Buy or sell `volume` at `price` or better.
    Limit { price: Decimal, volume: Decimal },
    /// Market buy spending at most `budget` (fees excluded).
    Price { budget: Decimal },
    /// Market sell of `volume`.
    Market { volume: Decimal },
}

/// An order's terms, checked for its side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terms {
    pub side: Side,
    pub kind: Kind,
    pub fee_rate: Decimal,
}

fn ceil8(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(8, RoundingStrategy::AwayFromZero)
}

fn too_large() -> InventoryError {
    InventoryError::Invalid("the order's amounts are too large".into())
}

impl Terms {
    pub fn new(side: Side, kind: Kind, fee_rate: Decimal) -> Result<Self, InventoryError> {
        if fee_rate.is_sign_negative() || fee_rate >= max_fee_rate() {
            return Err(InventoryError::Invalid(format!(
                "fee_rate must be at least 0 and below {}",
                max_fee_rate()
            )));
        }
        match (side, kind) {
            (_, Kind::Limit { .. }) | (Side::Bid, Kind::Price { .. }) => {}
            (Side::Ask, Kind::Market { .. }) => {}
            _ => {
                return Err(InventoryError::Invalid(
                    "PRICE orders are bids and MARKET orders are asks".into(),
                ));
            }
        }
        let terms = Self {
            side,
            kind,
            fee_rate,
        };
        terms.lock()?;
        Ok(terms)
    }

    /// What the order locks: bids the most they can spend plus its fee rounded
    /// up to 8 places (quote currency), asks their volume (base currency).
    pub fn lock(&self) -> Result<Decimal, InventoryError> {
        let spend = match (self.side, self.kind) {
            (Side::Bid, Kind::Limit { price, volume }) => {
                price.checked_mul(volume).ok_or_else(too_large)?
            }
            (Side::Bid, Kind::Price { budget }) => budget,
            (Side::Ask, Kind::Limit { volume, .. } | Kind::Market { volume }) => return Ok(volume),
            _ => return Err(InventoryError::Invalid("terms do not fit the side".into())),
        };
        let fee = spend.checked_mul(self.fee_rate).ok_or_else(too_large)?;
        spend.checked_add(ceil8(fee)).ok_or_else(too_large)
    }

    /// The terms as the `settle` function takes them, with what to lock and
    /// the time by which the reservation must be made.
    pub fn to_json(
        &self,
        not_after: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<serde_json::Value, InventoryError> {
        let w = decimal::to_wire;
        let (kind, price, volume, budget) = match self.kind {
            Kind::Limit { price, volume } => ("limit", Some(w(price)), Some(w(volume)), None),
            Kind::Price { budget } => ("price", None, None, Some(w(budget))),
            Kind::Market { volume } => ("market", None, Some(w(volume)), None),
        };
        Ok(serde_json::json!({
            "kind": kind,
            "price": price,
            "volume": volume,
            "budget": budget,
            "fee_rate": w(self.fee_rate),
            "lock": w(self.lock()?),
            "not_after": not_after.map(|t| t.to_rfc3339()),
        }))
    }
}

/// A non-negative amount with at most [`decimal::MAX_SCALE`] decimals.
pub fn amount(field: &str, text: &str) -> Result<Decimal, InventoryError> {
    Ok(decimal::non_negative(field, text)?)
}

/// A strictly positive amount.
pub fn positive(field: &str, text: &str) -> Result<Decimal, InventoryError> {
    Ok(decimal::positive(field, text)?)
}

pub fn uuid(field: &str, text: &str) -> Result<Uuid, InventoryError> {
    Uuid::parse_str(text).map_err(|_| InventoryError::Invalid(format!("{field} must be a UUID")))
}

/// A currency code: 1 to 16 uppercase letters or digits.
pub fn currency(text: &str) -> Result<String, InventoryError> {
    let ok = !text.is_empty()
        && text.len() <= 16
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if ok {
        Ok(text.to_owned())
    } else {
        Err(InventoryError::Invalid(format!(
            "`{text}` is not a currency code like KRW"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn amounts_parse_exactly_or_are_refused() {
        assert_eq!(amount("a", "10000000").unwrap(), Decimal::from(10_000_000));
        assert_eq!(amount("a", "0.00016823").unwrap().to_string(), "0.00016823");
        assert_eq!(amount("a", "1.50").unwrap().to_string(), "1.5");
        assert!(amount("a", "-1").is_err());
        assert!(amount("a", "1e5").is_err());
        assert!(amount("a", "0.00000000000000001").is_err(), "17 decimals");
        assert!(positive("a", "0").is_err());
        assert!(currency("krw").is_err());
        assert_eq!(currency("BTC").unwrap(), "BTC");
    }

    #[test]
    fn terms_lock_what_the_order_can_spend() {
        let rate = d("0.0005");
        let limit_bid = Terms::new(
            Side::Bid,
            Kind::Limit {
                price: d("148000000"),
                volume: d("0.01"),
            },
            rate,
        )
        .unwrap();
        assert_eq!(limit_bid.lock().unwrap(), d("1480740"));
        let market_buy = Terms::new(
            Side::Bid,
            Kind::Price {
                budget: d("10000.123"),
            },
            rate,
        )
        .unwrap();
        assert_eq!(
            market_buy.lock().unwrap(),
            d("10005.12306150"),
            "fee 5.0000615 rounded up to 8 places"
        );
        let sell = Terms::new(Side::Ask, Kind::Market { volume: d("0.5") }, rate).unwrap();
        assert_eq!(sell.lock().unwrap(), d("0.5"));
        for (side, kind, rate) in [
            (Side::Ask, Kind::Price { budget: d("1") }, rate),
            (Side::Bid, Kind::Market { volume: d("1") }, rate),
            (Side::Ask, Kind::Market { volume: d("1") }, d("0.1")),
            (Side::Ask, Kind::Market { volume: d("1") }, d("-0.001")),
            (
                Side::Bid,
                Kind::Limit {
                    price: d("99999999999999999999"),
                    volume: d("99999999999999999999"),
                },
                rate,
            ),
        ] {
            assert!(
                Terms::new(side, kind, rate).is_err(),
                "{side:?} {kind:?} {rate}"
            );
        }
    }
}
