//! The market registry: what the ingestors registered, cached in memory and
//! read again when a request names a market the cache does not have.

use std::sync::RwLock;

use exchange_proto::marketdata::v1 as pb;
use sqlx::PgPool;

use crate::convert::{check_market, market_from_pb, quote_of};
use crate::error::MarketDataError;
use crate::store::{self, MarketRow};

pub struct Markets {
    pool: PgPool,
    cache: RwLock<Option<Vec<MarketRow>>>,
}

impl Markets {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: RwLock::default(),
        }
    }

    /// Every market, from the cache unless `refresh`.
    pub async fn known(&self, refresh: bool) -> Result<Vec<MarketRow>, MarketDataError> {
        if !refresh && let Some(cached) = self.cache.read().ok().and_then(|c| c.clone()) {
            return Ok(cached);
        }
        let rows = store::list_markets(&self.pool)
            .await
            .map_err(|e| MarketDataError::unavailable("the market list", &e))?;
        if let Ok(mut cache) = self.cache.write() {
            *cache = Some(rows.clone());
        }
        Ok(rows)
    }

    /// The requested markets, all checked to exist; all markets (optionally of
    /// some quote currencies) when none are requested.
    pub async fn resolve(
        &self,
        requested: &[String],
        quotes: &[String],
    ) -> Result<Vec<String>, MarketDataError> {
        if requested.is_empty() {
            let all = self.known(false).await?;
            return Ok(all
                .into_iter()
                .map(|m| m.market)
                .filter(|m| quotes.is_empty() || quotes.iter().any(|q| q == quote_of(m)))
                .collect());
        }
        for code in requested {
            check_market(code)?;
        }
        let mut known = self.known(false).await?;
        let missing = |known: &[MarketRow]| {
            requested
                .iter()
                .find(|r| !known.iter().any(|m| &m.market == *r))
                .cloned()
        };
        if missing(&known).is_some() {
            known = self.known(true).await?;
        }
        if let Some(code) = missing(&known) {
            return Err(MarketDataError::UnknownMarket(code));
        }
        Ok(requested.to_vec())
    }

    /// Stores the markets an ingestor follows (names and Upbit's designations).
    pub async fn register(&self, message: &pb::IngestRequest) -> Result<(), MarketDataError> {
        let rows: Vec<MarketRow> = message.markets.iter().filter_map(market_from_pb).collect();
        store::upsert_markets(&self.pool, &rows)
            .await
            .map_err(MarketDataError::database)?;
        self.known(true).await?;
        tracing::info!(source = %message.source, markets = rows.len(), "markets registered");
        Ok(())
    }
}
