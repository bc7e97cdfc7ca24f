//! Upbit's market designations ([`upbit::market::Caution`]) on the wire.

use upbit::market::Caution;

use crate::marketdata::v1::MarketCaution;

impl From<Caution> for MarketCaution {
    fn from(c: Caution) -> Self {
        Self {
            price_fluctuations: c.price_fluctuations,
            trading_volume_soaring: c.trading_volume_soaring,
            deposit_amount_soaring: c.deposit_amount_soaring,
            global_price_differences: c.global_price_differences,
            concentration_of_small_accounts: c.concentration_of_small_accounts,
        }
    }
}

impl From<MarketCaution> for Caution {
    fn from(c: MarketCaution) -> Self {
        Self {
            price_fluctuations: c.price_fluctuations,
            trading_volume_soaring: c.trading_volume_soaring,
            deposit_amount_soaring: c.deposit_amount_soaring,
            global_price_differences: c.global_price_differences,
            concentration_of_small_accounts: c.concentration_of_small_accounts,
        }
    }
}

impl crate::marketdata::v1::Market {
    /// The caution flags (all false when the field is absent).
    pub fn caution(&self) -> Caution {
        self.caution.unwrap_or_default().into()
    }
}
