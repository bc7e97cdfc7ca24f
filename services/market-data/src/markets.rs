//! The market registry: what the ingestors registered, cached in memory for a
//! bounded time and read again sooner when a request names a market the cache
//! does not have.
//!
//! Only the instance an ingestor streams to learns of a change as it happens;
//! the others (replicas, the other version during a canary) see it when their
//! cache expires, so the time-to-live bounds how stale any of them can be.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use exchange_proto::marketdata::v1 as pb;
use sqlx::PgPool;

use crate::convert::{check_market, market_from_pb, quote_of};
use crate::error::MarketDataError;
use crate::store::{self, MarketRow};

pub struct Markets {
    pool: PgPool,
    ttl: Duration,
    cache: RwLock<Option<(Instant, Vec<MarketRow>)>>,
}

impl Markets {
    /// A registry whose cached list is read again once it is `ttl` old.
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            ttl,
            cache: RwLock::default(),
        }
    }

    /// Every market, from the cache unless `refresh` or the cache has expired.
    pub async fn known(&self, refresh: bool) -> Result<Vec<MarketRow>, MarketDataError> {
        if !refresh && let Some(cached) = self.cached() {
            return Ok(cached);
        }
        let read_at = Instant::now();
        let rows = store::list_markets(&self.pool)
            .await
            .map_err(|e| MarketDataError::unavailable("the market list", &e))?;
        if let Ok(mut cache) = self.cache.write() {
            // A slower read that started earlier never replaces a newer one.
            if cache.as_ref().is_none_or(|(at, _)| *at <= read_at) {
                *cache = Some((read_at, rows.clone()));
            }
        }
        Ok(rows)
    }

    fn cached(&self) -> Option<Vec<MarketRow>> {
        let cache = self.cache.read().ok()?;
        let (at, rows) = cache.as_ref()?;
        (at.elapsed() < self.ttl).then(|| rows.clone())
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
