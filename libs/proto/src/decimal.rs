//! Decimals on the wire: every quantity in the contracts is a string holding a
//! plain decimal (`"148601000"`, `"0.00016823"`), and this module is the one
//! place they are read and written.
//!
//! Reading is strict and bounded: digits with at most one point (no sign but a
//! leading `-`, no exponent, no spaces inside), at most [`MAX_INTEGER_DIGITS`]
//! before the point, [`MAX_SCALE`] after it and [`MAX_DIGITS`] in all. A value
//! that does not fit is an error, never rounded and never read as 0, so every
//! `Decimal` that came from outside fits `rust_decimal` exactly and leaves room
//! for the checked arithmetic done with it.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// Most digits before the point.
pub const MAX_INTEGER_DIGITS: usize = 20;
/// Most digits after the point (trailing zeros do not count).
pub const MAX_SCALE: usize = 16;
/// Most significant digits in all (what a `Decimal` holds exactly).
pub const MAX_DIGITS: usize = 28;
/// Longest text shown back in an error message.
const SHOWN: usize = 32;

/// Why a text is not a wire decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    Empty,
    NotPlain,
    TooLarge,
    TooPrecise,
    TooManyDigits,
    Negative,
    NotPositive,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "is empty"),
            Self::NotPlain => write!(
                f,
                "is not a plain decimal (digits with at most one point, no exponent)"
            ),
            Self::TooLarge => write!(
                f,
                "has more than {MAX_INTEGER_DIGITS} digits before the point"
            ),
            Self::TooPrecise => write!(f, "has more than {MAX_SCALE} decimal places"),
            Self::TooManyDigits => write!(f, "has more than {MAX_DIGITS} significant digits"),
            Self::Negative => write!(f, "must not be negative"),
            Self::NotPositive => write!(f, "must be positive"),
        }
    }
}

/// A field whose text is not an acceptable decimal; its message names the
/// field, shows (the start of) the text and says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecimalError {
    pub field: String,
    pub text: String,
    pub why: Malformed,
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.text.chars().take(SHOWN).collect();
        let more = if self.text.chars().count() > SHOWN {
            "…"
        } else {
            ""
        };
        write!(f, "{} `{shown}{more}` {}", self.field, self.why)
    }
}

impl std::error::Error for DecimalError {}

/// Reads a wire decimal (signed), normalised (no trailing zeros).
pub fn parse(text: &str) -> Result<Decimal, Malformed> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Malformed::Empty);
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let point_without_digits = body.contains('.') && frac.is_empty();
    if int.is_empty() || point_without_digits || !digits(int) || !digits(frac) {
        return Err(Malformed::NotPlain);
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if int.len() > MAX_INTEGER_DIGITS {
        return Err(Malformed::TooLarge);
    }
    if frac.len() > MAX_SCALE {
        return Err(Malformed::TooPrecise);
    }
    let significant = if int.is_empty() {
        frac.trim_start_matches('0').len()
    } else {
        int.len() + frac.len()
    };
    if significant > MAX_DIGITS {
        return Err(Malformed::TooManyDigits);
    }
    let mut plain = String::with_capacity(int.len() + frac.len() + 3);
    if negative {
        plain.push('-');
    }
    plain.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        plain.push('.');
        plain.push_str(frac);
    }
    // Within the bounds above a Decimal holds the value exactly.
    Decimal::from_str(&plain)
        .map(|d| d.normalize())
        .map_err(|_| Malformed::TooManyDigits)
}

fn field_error(field: &str, text: &str, why: Malformed) -> DecimalError {
    DecimalError {
        field: field.to_owned(),
        text: text.to_owned(),
        why,
    }
}

/// A decimal ≥ 0 from `field`.
pub fn non_negative(field: &str, text: &str) -> Result<Decimal, DecimalError> {
    let value = parse(text).map_err(|why| field_error(field, text, why))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(field_error(field, text, Malformed::Negative));
    }
    Ok(value.abs())
}

/// A decimal > 0 from `field`.
pub fn positive(field: &str, text: &str) -> Result<Decimal, DecimalError> {
    let value = non_negative(field, text)?;
    if value.is_zero() {
        return Err(field_error(field, text, Malformed::NotPositive));
    }
    Ok(value)
}

/// A decimal > 0 from `field`, or `None` when the field is empty (not given).
pub fn optional_positive(field: &str, text: &str) -> Result<Option<Decimal>, DecimalError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    positive(field, text).map(Some)
}

/// The wire text of a decimal: plain, normalised (`"1.5"`, never `"1.50"` or `"1.5e0"`).
pub fn to_wire(d: Decimal) -> String {
    d.normalize().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn plain_decimals_read_exactly() {
        assert_eq!(parse("148601000"), Ok(d("148601000")));
        assert_eq!(parse("0.00016823"), Ok(d("0.00016823")));
        assert_eq!(parse("1.50").map(to_wire), Ok("1.5".to_owned()));
        assert_eq!(parse("-2.5"), Ok(d("-2.5")));
        assert_eq!(parse(" 7 "), Ok(d("7")));
        assert_eq!(parse("0"), Ok(Decimal::ZERO));
        assert_eq!(parse("00012.3400"), Ok(d("12.34")));
        assert_eq!(
            parse("99999999999999999999.12345678"),
            Ok(d("99999999999999999999.12345678"))
        );
        assert_eq!(
            parse("0.0000000000000001"),
            Ok(d("0.0000000000000001")),
            "16 places"
        );
    }

    #[test]
    fn everything_else_is_refused_with_a_reason() {
        for (text, why) in [
            ("", Malformed::Empty),
            ("  ", Malformed::Empty),
            ("1e5", Malformed::NotPlain),
            ("1E-8", Malformed::NotPlain),
            ("+1", Malformed::NotPlain),
            ("1.2.3", Malformed::NotPlain),
            (".5", Malformed::NotPlain),
            ("5.", Malformed::NotPlain),
            ("-", Malformed::NotPlain),
            ("NaN", Malformed::NotPlain),
            ("1 000", Malformed::NotPlain),
            ("٣", Malformed::NotPlain),
            ("0x10", Malformed::NotPlain),
            ("79228162514264337593543950000", Malformed::TooLarge),
            ("0.00000000000000001", Malformed::TooPrecise),
            ("12345678901234567890.123456789", Malformed::TooManyDigits),
        ] {
            assert_eq!(parse(text), Err(why), "{text:?}");
        }
        let e = positive("price", "79228162514264337593543950335").unwrap_err();
        assert_eq!(e.why, Malformed::TooLarge);
        assert_eq!(
            e.to_string(),
            "price `79228162514264337593543950335` has more than 20 digits before the point"
        );
        let long = "9".repeat(100);
        assert!(positive("volume", &long).unwrap_err().to_string().len() < 120);
        assert_eq!(
            positive("volume", "0").unwrap_err().why,
            Malformed::NotPositive
        );
        assert_eq!(
            non_negative("fee", "-1").unwrap_err().why,
            Malformed::Negative
        );
        assert_eq!(non_negative("fee", "-0").unwrap(), Decimal::ZERO);
        assert_eq!(optional_positive("price", "").unwrap(), None);
        assert_eq!(optional_positive("price", "3").unwrap(), Some(d("3")));
    }

    #[test]
    fn products_of_bounded_values_are_checked_not_panics() {
        let big = parse("99999999999999999999").unwrap();
        assert_eq!(big.checked_mul(big), None);
        assert!(big.checked_mul(parse("0.0001").unwrap()).is_some());
    }
}
