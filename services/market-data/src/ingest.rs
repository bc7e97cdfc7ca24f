//! The ingest pipeline: an ingestor's stream of events becomes the newest
//! ticker and orderbook per market in Redis (published for the fan-out) and
//! every trade queued for Postgres, deduplicated by Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use exchange_proto::marketdata::v1 as pb;
use futures_util::FutureExt;
use pb::market_event::Event;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::Instrument;

use crate::convert::{check_market, to_trade_row};
use crate::error::MarketDataError;
use crate::hot::{self, Applied, Batch, Hot};
use crate::markets::Markets;
use crate::metrics;
use crate::store::TradeRow;
use crate::writer::Writer;

/// Largest number of events merged into one Redis round trip.
const COALESCE_EVENTS: usize = 10_000;

/// One ingest batch in this many is traced (its Redis script, as a trace of
/// its own; the first batch always is). The ingest call itself has no span: it
/// lasts as long as the ingestor's connection.
pub const TRACE_BATCH_EVERY: u64 = 100;

fn sampled(counter: &AtomicU64) -> bool {
    counter
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(TRACE_BATCH_EVERY)
}

/// A root span for a sampled ingest batch, else none (nothing inside is traced).
fn ingest_span(batch: &Batch) -> tracing::Span {
    static BATCHES: AtomicU64 = AtomicU64::new(0);
    if !sampled(&BATCHES) {
        return tracing::Span::none();
    }
    tracing::info_span!(
        parent: None,
        "ingest batch",
        otel.kind = "consumer",
        messaging.batch.message_count = batch.tickers.len() + batch.orderbooks.len() + batch.trades.len(),
        trades = batch.trades.len(),
    )
}

/// A root span for a sampled Postgres write of ingested trades, else none.
pub fn store_span(trades: usize) -> tracing::Span {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    if !sampled(&WRITES) {
        return tracing::Span::none();
    }
    tracing::info_span!(parent: None, "store trades", trades)
}

pub struct Ingest {
    pub hot: Hot,
    pub writer: Writer,
    pub markets: Arc<Markets>,
    pub draining: CancellationToken,
}

/// One counter per message type, looked up once per stream (not per round).
struct PerType {
    tickers: prometheus::IntCounter,
    orderbooks: prometheus::IntCounter,
    trades: prometheus::IntCounter,
}

impl PerType {
    fn of(vec: &prometheus::IntCounterVec) -> Self {
        Self {
            tickers: vec.with_label_values(&["ticker"]),
            orderbooks: vec.with_label_values(&["orderbook"]),
            trades: vec.with_label_values(&["trade"]),
        }
    }
}

/// Events of one round, reduced to what Redis and Postgres get.
#[derive(Default)]
struct Round {
    batch: Batch,
    /// The batch's trades as rows, in the same order.
    rows: Vec<TradeRow>,
    events: u64,
    tickers: u64,
    orderbooks: u64,
}

impl Round {
    /// Keeps the newest ticker and orderbook per market, and every valid trade.
    fn of(messages: Vec<pb::IngestRequest>) -> Self {
        let mut round = Round::default();
        let batch = &mut round.batch;
        // Index in the batch of each market's ticker and orderbook.
        let (mut ticker_at, mut book_at) = (
            HashMap::<String, usize>::new(),
            HashMap::<String, usize>::new(),
        );
        for event in messages.into_iter().flat_map(|m| m.events) {
            round.events += 1;
            match event.event {
                Some(Event::Ticker(t)) if check_market(&t.market).is_ok() => {
                    round.tickers += 1;
                    match ticker_at.get(t.market.as_str()) {
                        Some(&i)
                            if hot::ticker_version(&batch.tickers[i])
                                <= hot::ticker_version(&t) =>
                        {
                            batch.tickers[i] = t
                        }
                        Some(_) => {}
                        None => {
                            ticker_at.insert(t.market.clone(), batch.tickers.len());
                            batch.tickers.push(t);
                        }
                    }
                }
                Some(Event::Orderbook(o)) if check_market(&o.market).is_ok() => {
                    round.orderbooks += 1;
                    match book_at.get(o.market.as_str()) {
                        Some(&i) if batch.orderbooks[i].timestamp <= o.timestamp => {
                            batch.orderbooks[i] = o
                        }
                        Some(_) => {}
                        None => {
                            book_at.insert(o.market.clone(), batch.orderbooks.len());
                            batch.orderbooks.push(o);
                        }
                    }
                }
                Some(Event::Trade(t)) => match to_trade_row(&t) {
                    Some(row) => {
                        round.rows.push(row);
                        batch.trades.push(t);
                    }
                    None => tracing::debug!(market = %t.market, "skipping an invalid trade"),
                },
                _ => {}
            }
        }
        round
    }
}

impl Ingest {
    /// Reads `stream` until it ends or the server drains.
    pub async fn run(
        &self,
        mut stream: Streaming<pb::IngestRequest>,
    ) -> Result<pb::IngestResponse, MarketDataError> {
        let mut response = pb::IngestResponse::default();
        let (received, published) = (
            PerType::of(&metrics::EVENTS),
            PerType::of(&metrics::PUBLISHED),
        );
        let mut ended = false;
        while !ended {
            let first = tokio::select! {
                m = stream.message() => m,
                _ = self.draining.cancelled() => break,
            };
            let mut messages = match first {
                Ok(Some(m)) => vec![m],
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "ingest stream ended by the client");
                    break;
                }
            };
            ended = coalesce(&mut stream, &mut messages);
            for message in &messages {
                if !message.markets.is_empty() {
                    self.markets.register(message).await?;
                }
            }
            let round = Round::of(messages);
            received.tickers.inc_by(round.tickers);
            received.orderbooks.inc_by(round.orderbooks);
            received.trades.inc_by(round.batch.trades.len() as u64);
            self.apply(round, &published, &mut response).await?;
        }
        Ok(response)
    }

    /// Redis first (which says which trades are new), then every trade to Postgres.
    async fn apply(
        &self,
        round: Round,
        published: &PerType,
        response: &mut pb::IngestResponse,
    ) -> Result<(), MarketDataError> {
        let Round {
            batch,
            rows,
            events,
            ..
        } = round;
        response.events_received += events;
        let started = std::time::Instant::now();
        let span = ingest_span(&batch);
        let applied = self.apply_with_retry(&batch).instrument(span).await?;
        metrics::REDIS_APPLY.observe(started.elapsed().as_secs_f64());
        let now = Utc::now().timestamp_millis();
        let lag = |ts: i64| (now - ts).max(0) as f64 / 1000.0;
        published.tickers.inc_by(applied.tickers as u64);
        published.orderbooks.inc_by(applied.orderbooks as u64);
        for t in &batch.tickers {
            metrics::EVENT_TO_REDIS.observe(lag(t.timestamp));
        }
        let mut fresh_count = 0;
        for (row, fresh) in rows.into_iter().zip(applied.fresh_trades.iter().copied()) {
            if fresh {
                fresh_count += 1;
                metrics::EVENT_TO_REDIS.observe(lag(row.ts.timestamp_millis()));
            } else {
                response.trades_duplicate += 1;
            }
            // Every trade goes to Postgres, even one Redis has seen: Redis
            // decides what is published, but a trade seen by a market-data
            // that stopped before writing it comes back in the ingestor's
            // replay, and only Postgres (ON CONFLICT) knows if it was stored.
            if !self.writer.send(row, fresh).await {
                return Err(MarketDataError::ShuttingDown);
            }
        }
        response.trades_stored += fresh_count;
        published.trades.inc_by(fresh_count);
        Ok(())
    }

    async fn apply_with_retry(&self, batch: &Batch) -> Result<Applied, MarketDataError> {
        const ATTEMPTS: u32 = 5;
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.hot.apply(batch).await {
                Ok(applied) => return Ok(applied),
                Err(err) => {
                    metrics::REDIS_ERRORS.inc();
                    if attempt == ATTEMPTS {
                        return Err(MarketDataError::redis(err));
                    }
                    tracing::warn!(error = %err, ?delay, "applying a batch to Redis failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }
}

/// Under load, merges the messages already waiting into `messages`, for one
/// Redis round trip: batches grow with the load instead of queueing behind
/// each other. Whether the stream ended meanwhile.
fn coalesce(
    stream: &mut Streaming<pb::IngestRequest>,
    messages: &mut Vec<pb::IngestRequest>,
) -> bool {
    let mut waiting: usize = messages.iter().map(|m| m.events.len()).sum();
    while waiting < COALESCE_EVENTS {
        match stream.message().now_or_never() {
            Some(Ok(Some(m))) => {
                waiting += m.events.len();
                messages.push(m);
            }
            Some(Ok(None)) | Some(Err(_)) => return true,
            None => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticker(market: &str, ts: i64) -> pb::MarketEvent {
        pb::MarketEvent {
            event: Some(Event::Ticker(pb::Ticker {
                market: market.into(),
                timestamp: ts,
                trade_timestamp: ts,
                ..Default::default()
            })),
            received_at: 0,
        }
    }

    fn trade(market: &str, price: &str, sid: i64) -> pb::MarketEvent {
        pb::MarketEvent {
            event: Some(Event::Trade(pb::Trade {
                market: market.into(),
                trade_price: price.into(),
                trade_volume: "1".into(),
                trade_timestamp: 1_700_000_000_000,
                sequential_id: sid,
                ..Default::default()
            })),
            received_at: 0,
        }
    }

    #[test]
    fn a_round_keeps_the_newest_ticker_per_market_and_every_valid_trade() {
        let messages = vec![
            pb::IngestRequest {
                events: vec![
                    ticker("KRW-A", 2),
                    trade("KRW-A", "10", 1),
                    ticker("KRW-B", 1),
                ],
                ..Default::default()
            },
            pb::IngestRequest {
                events: vec![
                    ticker("KRW-A", 1),
                    ticker("KRW-A", 3),
                    trade("KRW-A", "0", 2),
                    trade("bad", "10", 3),
                    ticker("bad", 9),
                ],
                ..Default::default()
            },
        ];
        let round = Round::of(messages);
        let kept: Vec<(&str, i64)> = round
            .batch
            .tickers
            .iter()
            .map(|t| (t.market.as_str(), t.timestamp))
            .collect();
        assert_eq!(kept, [("KRW-A", 3), ("KRW-B", 1)]);
        assert_eq!((round.events, round.tickers), (8, 4));
        // A price of 0 and a bad code are not trades.
        assert_eq!(round.rows.len(), 1);
        assert_eq!(round.batch.trades.len(), 1);
        assert_eq!(round.rows[0].sequential_id, 1);
    }
}
