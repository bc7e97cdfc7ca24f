//! The default market list: real Upbit codes and names with plausible prices.

use std::str::FromStr;

use rust_decimal::Decimal;
use upbit::market::MarketCode;

/// A market the simulator trades.
#[derive(Clone, Debug)]
pub struct MarketSpec {
    pub code: MarketCode,
    pub korean_name: String,
    pub english_name: String,
    /// Starting price (also the first previous close).
    pub price: Decimal,
}

const DEFAULTS: &[(&str, &str, &str, &str)] = &[
    ("KRW-BTC", "비트코인", "Bitcoin", "148000000"),
    ("KRW-ETH", "이더리움", "Ethereum", "5200000"),
    ("KRW-XRP", "리플", "XRP", "3200"),
    ("KRW-SOL", "솔라나", "Solana", "280000"),
    ("KRW-DOGE", "도지코인", "Dogecoin", "320"),
    ("KRW-ADA", "에이다", "Cardano", "1100"),
    ("KRW-TRX", "트론", "TRON", "400"),
    ("KRW-AVAX", "아발란체", "Avalanche", "38000"),
    ("KRW-LINK", "체인링크", "Chainlink", "25000"),
    ("KRW-DOT", "폴카닷", "Polkadot", "6500"),
    ("KRW-BCH", "비트코인캐시", "Bitcoin Cash", "700000"),
    ("KRW-ETC", "이더리움클래식", "Ethereum Classic", "30000"),
    ("KRW-SHIB", "시바이누", "Shiba Inu", "0.02"),
    ("KRW-USDT", "테더", "Tether", "1400"),
    ("KRW-SUI", "수이", "Sui", "5000"),
    ("KRW-XLM", "스텔라루멘", "Stellar Lumens", "550"),
    ("KRW-HBAR", "헤데라", "Hedera", "280"),
    ("KRW-NEAR", "니어프로토콜", "NEAR Protocol", "4000"),
    ("BTC-ETH", "이더리움", "Ethereum", "0.035"),
    ("USDT-BTC", "비트코인", "Bitcoin", "105000"),
];

/// The default markets.
pub fn defaults() -> Vec<MarketSpec> {
    DEFAULTS
        .iter()
        .map(|(code, ko, en, price)| MarketSpec {
            code: MarketCode::parse(code).expect("default codes are valid"),
            korean_name: (*ko).to_owned(),
            english_name: (*en).to_owned(),
            price: Decimal::from_str(price).expect("default prices are valid"),
        })
        .collect()
}

/// Parses `SIM_MARKETS`: a comma list of `CODE` (a default market) or
/// `CODE:PRICE` (any market at that starting price).
pub fn parse(spec: &str) -> Result<Vec<MarketSpec>, String> {
    let defaults = defaults();
    let mut out: Vec<MarketSpec> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (code, price) = match item.split_once(':') {
            Some((c, p)) => (c, Some(p)),
            None => (item, None),
        };
        let code = MarketCode::parse(code).map_err(|e| e.to_string())?;
        let known = defaults.iter().find(|m| m.code == code);
        let price = match (price, known) {
            (Some(p), _) => Decimal::from_str(p)
                .ok()
                .filter(|p| *p > Decimal::ZERO)
                .ok_or_else(|| format!("`{p}` is not a positive price for {code}"))?,
            (None, Some(m)) => m.price,
            (None, None) => {
                return Err(format!(
                    "{code} is not a default market; give it a price: {code}:1000"
                ));
            }
        };
        if out.iter().any(|m| m.code == code) {
            continue;
        }
        out.push(MarketSpec {
            korean_name: known.map(|m| m.korean_name.clone()).unwrap_or_default(),
            english_name: known
                .map(|m| m.english_name.clone())
                .unwrap_or_else(|| code.base().to_owned()),
            code,
            price,
        });
    }
    if out.is_empty() {
        return Err("SIM_MARKETS lists no market".into());
    }
    Ok(out)
}
