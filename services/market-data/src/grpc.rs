//! gRPC adapter: check the request, call the registry ([`crate::markets`]),
//! Redis ([`crate::hot`]), Postgres ([`crate::store`]), the ingest pipeline
//! ([`crate::ingest`]) or the live streams ([`crate::live`]), convert, and map
//! errors ([`crate::error`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use exchange_proto::marketdata::v1 as pb;
use exchange_proto::marketdata::v1::market_data_service_server::MarketDataService;
use sqlx::PgPool;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{
    candle_to_pb, check_market, market_to_pb, period_of, quote_of, trade_from_row, truncate,
};
use crate::error::MarketDataError;
use crate::hot::{Hot, Live};
use crate::ingest::Ingest;
use crate::live::{BoxStream, LiveStreams};
use crate::markets::Markets;
use crate::store;
use crate::writer::Writer;

/// Largest `count` of ListTrades and ListCandles.
const MAX_TRADES: u32 = 500;
const MAX_CANDLES: u32 = 200;
const MAX_DEPTH: u32 = 30;

/// 9999-12-31T23:59:59.999Z, the latest `to` of a candle query.
const LATEST_TO_MS: i64 = 253_402_300_799_999;

pub struct MarketData {
    pool: PgPool,
    hot: Hot,
    markets: Arc<Markets>,
    ingest: Ingest,
    streams: LiveStreams,
}

fn count(requested: u32, max: u32) -> Result<u32, MarketDataError> {
    match requested {
        0 => Ok(1),
        n if n <= max => Ok(n),
        _ => Err(MarketDataError::invalid(format!(
            "count must be between 1 and {max}"
        ))),
    }
}

fn depth(requested: u32) -> Result<usize, MarketDataError> {
    match requested {
        0 => Ok(MAX_DEPTH as usize),
        n if n <= MAX_DEPTH => Ok(n as usize),
        _ => Err(MarketDataError::invalid(format!(
            "depth must be between 1 and {MAX_DEPTH}"
        ))),
    }
}

impl MarketData {
    pub fn new(
        pool: PgPool,
        hot: Hot,
        writer: Writer,
        markets: Markets,
        streams: LiveStreams,
    ) -> Self {
        let markets = Arc::new(markets);
        Self {
            ingest: Ingest {
                hot: hot.clone(),
                writer,
                markets: markets.clone(),
                draining: streams.draining.clone(),
            },
            streams,
            pool,
            hot,
            markets,
        }
    }
}

#[tonic::async_trait]
impl MarketDataService for MarketData {
    async fn ingest(
        &self,
        request: Request<Streaming<pb::IngestRequest>>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        Ok(Response::new(self.ingest.run(request.into_inner()).await?))
    }

    async fn list_markets(
        &self,
        request: Request<pb::ListMarketsRequest>,
    ) -> Result<Response<pb::ListMarketsResponse>, Status> {
        let quotes = request.into_inner().quote_currencies;
        let markets = self
            .markets
            .known(false)
            .await?
            .iter()
            .filter(|m| quotes.is_empty() || quotes.iter().any(|q| q == quote_of(&m.market)))
            .map(market_to_pb)
            .collect();
        Ok(Response::new(pb::ListMarketsResponse { markets }))
    }

    async fn get_tickers(
        &self,
        request: Request<pb::GetTickersRequest>,
    ) -> Result<Response<pb::GetTickersResponse>, Status> {
        let req = request.into_inner();
        let markets = self
            .markets
            .resolve(&req.markets, &req.quote_currencies)
            .await?;
        let tickers = self
            .hot
            .tickers(&markets)
            .await
            .map_err(MarketDataError::redis)?
            .into_iter()
            .flatten()
            .collect();
        Ok(Response::new(pb::GetTickersResponse { tickers }))
    }

    async fn get_orderbooks(
        &self,
        request: Request<pb::GetOrderbooksRequest>,
    ) -> Result<Response<pb::GetOrderbooksResponse>, Status> {
        let req = request.into_inner();
        let depth = depth(req.depth)?;
        let markets = self.markets.resolve(&req.markets, &[]).await?;
        let orderbooks = self
            .hot
            .orderbooks(&markets)
            .await
            .map_err(MarketDataError::redis)?
            .into_iter()
            .flatten()
            .map(|o| truncate(o, depth))
            .collect();
        Ok(Response::new(pb::GetOrderbooksResponse { orderbooks }))
    }

    async fn list_trades(
        &self,
        request: Request<pb::ListTradesRequest>,
    ) -> Result<Response<pb::ListTradesResponse>, Status> {
        let req = request.into_inner();
        let count = count(req.count, MAX_TRADES)?;
        self.markets
            .resolve(std::slice::from_ref(&req.market), &[])
            .await?;
        let page = match req.after {
            Some(_) if req.cursor.is_some() || req.to.is_some() => {
                return Err(
                    MarketDataError::invalid("after cannot be combined with cursor or to").into(),
                );
            }
            Some(after) => store::TradePage::After(
                DateTime::from_timestamp_millis(after.timestamp)
                    .ok_or_else(|| MarketDataError::invalid("after.timestamp is not a time"))?,
                after.sequential_id,
            ),
            None => store::TradePage::Newest {
                cursor: req.cursor,
                to: req.to.and_then(DateTime::from_timestamp_millis),
            },
        };
        let trades = store::list_trades(&self.pool, &req.market, count, page)
            .await
            .map_err(MarketDataError::database)?
            .into_iter()
            .map(trade_from_row)
            .collect();
        Ok(Response::new(pb::ListTradesResponse { trades }))
    }

    async fn list_candles(
        &self,
        request: Request<pb::ListCandlesRequest>,
    ) -> Result<Response<pb::ListCandlesResponse>, Status> {
        let req = request.into_inner();
        let count = count(req.count, MAX_CANDLES)?;
        let interval =
            pb::CandleInterval::try_from(req.interval).unwrap_or(pb::CandleInterval::Unspecified);
        let period =
            period_of(interval).ok_or_else(|| MarketDataError::invalid("interval is required"))?;
        self.markets
            .resolve(std::slice::from_ref(&req.market), &[])
            .await?;
        // No candle is older than 1970 or newer than the year 9999; bounding
        // `to` keeps the periods it spans inside what Postgres can represent.
        let to = match req.to {
            Some(ms) if ms <= 0 => {
                return Ok(Response::new(pb::ListCandlesResponse::default()));
            }
            Some(ms) => DateTime::from_timestamp_millis(ms.min(LATEST_TO_MS))
                .ok_or_else(|| MarketDataError::invalid("to is out of range"))?,
            None => Utc::now() + chrono::Duration::milliseconds(1),
        };
        let rows = store::list_candles(&self.pool, &req.market, period, to, count)
            .await
            .map_err(MarketDataError::database)?;
        let candles = rows
            .into_iter()
            .map(|r| candle_to_pb(&req.market, interval, period, r))
            .collect();
        Ok(Response::new(pb::ListCandlesResponse { candles }))
    }

    async fn stream_tickers(
        &self,
        request: Request<pb::StreamTickersRequest>,
    ) -> Result<Response<BoxStream<pb::StreamTickersResponse>>, Status> {
        let req = request.into_inner();
        // Subscribed first: an update published while the snapshot is read is not lost.
        let live = self.streams.subscribe();
        for m in &req.markets {
            check_market(m)?;
        }
        let snapshot = if req.snapshot {
            let markets = self.markets.resolve(&req.markets, &[]).await?;
            self.hot
                .tickers(&markets)
                .await
                .map_err(MarketDataError::redis)?
                .into_iter()
                .flatten()
                .map(|t| pb::StreamTickersResponse {
                    ticker: Some(t),
                    snapshot: true,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(self.streams.stream(
            "ticker",
            req.markets,
            live,
            snapshot,
            |live| match live {
                Live::Ticker(t) => Some(pb::StreamTickersResponse {
                    ticker: Some((**t).clone()),
                    snapshot: false,
                }),
                _ => None,
            },
        )))
    }

    async fn stream_trades(
        &self,
        request: Request<pb::StreamTradesRequest>,
    ) -> Result<Response<BoxStream<pb::StreamTradesResponse>>, Status> {
        let req = request.into_inner();
        // Subscribed first: an update published while the snapshot is read is not lost.
        let live = self.streams.subscribe();
        for m in &req.markets {
            check_market(m)?;
        }
        let mut snapshot = Vec::new();
        if req.snapshot {
            for market in self.markets.resolve(&req.markets, &[]).await? {
                let last = store::list_trades(
                    &self.pool,
                    &market,
                    1,
                    store::TradePage::Newest {
                        cursor: None,
                        to: None,
                    },
                )
                .await
                .map_err(MarketDataError::database)?;
                snapshot.extend(last.into_iter().map(|r| pb::StreamTradesResponse {
                    trade: Some(trade_from_row(r)),
                    snapshot: true,
                }));
            }
        }
        Ok(Response::new(self.streams.stream(
            "trade",
            req.markets,
            live,
            snapshot,
            |live| match live {
                Live::Trade(t) => Some(pb::StreamTradesResponse {
                    trade: Some((**t).clone()),
                    snapshot: false,
                }),
                _ => None,
            },
        )))
    }

    async fn stream_orderbooks(
        &self,
        request: Request<pb::StreamOrderbooksRequest>,
    ) -> Result<Response<BoxStream<pb::StreamOrderbooksResponse>>, Status> {
        let req = request.into_inner();
        // Subscribed first: an update published while the snapshot is read is not lost.
        let live = self.streams.subscribe();
        for m in &req.markets {
            check_market(m)?;
        }
        let depth = depth(req.depth)?;
        let snapshot = if req.snapshot {
            let markets = self.markets.resolve(&req.markets, &[]).await?;
            self.hot
                .orderbooks(&markets)
                .await
                .map_err(MarketDataError::redis)?
                .into_iter()
                .flatten()
                .map(|o| pb::StreamOrderbooksResponse {
                    orderbook: Some(truncate(o, depth)),
                    snapshot: true,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(self.streams.stream(
            "orderbook",
            req.markets,
            live,
            snapshot,
            move |live| match live {
                Live::Orderbook(o) => Some(pb::StreamOrderbooksResponse {
                    orderbook: Some(truncate((**o).clone(), depth)),
                    snapshot: false,
                }),
                _ => None,
            },
        )))
    }
}
