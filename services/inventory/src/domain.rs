//! Values the inventory works with, made only by parsing.

use std::str::FromStr;

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::error::InventoryError;

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

/// Largest number of decimal places an amount may have.
pub const MAX_SCALE: u32 = 16;

/// A non-negative amount with at most [`MAX_SCALE`] decimals, from its text.
pub fn amount(field: &str, text: &str) -> Result<Decimal, InventoryError> {
    let text = text.trim();
    if !text
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
    {
        return Err(InventoryError::Invalid(format!(
            "{field} `{text}` is not a plain decimal"
        )));
    }
    let value = Decimal::from_str(text)
        .map_err(|_| InventoryError::Invalid(format!("{field} `{text}` is not a decimal")))?;
    if value.is_sign_negative() {
        return Err(InventoryError::Invalid(format!(
            "{field} must not be negative"
        )));
    }
    if value.normalize().scale() > MAX_SCALE {
        return Err(InventoryError::Invalid(format!(
            "{field} has more than {MAX_SCALE} decimal places"
        )));
    }
    Ok(value.normalize())
}

/// A strictly positive amount.
pub fn positive(field: &str, text: &str) -> Result<Decimal, InventoryError> {
    let value = amount(field, text)?;
    if value.is_zero() {
        return Err(InventoryError::Invalid(format!("{field} must be positive")));
    }
    Ok(value)
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
    use super::*;

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
}
