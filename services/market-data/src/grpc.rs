//! gRPC adapter: validate, call Redis (hot state) or Postgres (history), map errors.

use std::collections::{HashMap, HashSet};

use futures_util::FutureExt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use exchange_proto::marketdata::v1 as pb;
use exchange_proto::marketdata::v1::market_data_service_server::MarketDataService;
use pb::market_event::Event;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::hot::{self, Batch, Hot, Live};
use crate::metrics;
use crate::store::{self, MarketRow, Period, TradeRow};
use crate::writer::Writer;

/// What the generated server trait expects of a server stream.
type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Largest `count` of ListTrades and ListCandles.
const MAX_TRADES: u32 = 500;
const MAX_CANDLES: u32 = 200;
const MAX_DEPTH: u32 = 30;
/// Largest number of events merged into one Redis round trip.
const COALESCE_EVENTS: usize = 10_000;

/// One ingest batch in this many is traced (its Redis script, as a trace of
/// its own; the first batch always is). The ingest call itself has no span: it
/// lasts as long as the ingestor's connection.
pub const TRACE_BATCH_EVERY: u64 = 100;

fn sampled(counter: &std::sync::atomic::AtomicU64) -> bool {
    counter
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(TRACE_BATCH_EVERY)
}

/// A root span for a sampled ingest batch, else none (nothing inside is traced).
fn ingest_span(batch: &Batch) -> tracing::Span {
    static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
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
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if !sampled(&WRITES) {
        return tracing::Span::none();
    }
    tracing::info_span!(parent: None, "store trades", trades)
}

pub struct MarketData {
    pool: PgPool,
    hot: Hot,
    writer: Writer,
    live: broadcast::Sender<Live>,
    draining: CancellationToken,
    markets: Arc<RwLock<Option<Vec<MarketRow>>>>,
    stream_buffer: usize,
    slow_after: Duration,
}

/// 9999-12-31T23:59:59.999Z, the latest `to` of a candle query.
const LATEST_TO_MS: i64 = 253_402_300_799_999;

fn unavailable(what: &str, err: &dyn std::fmt::Display) -> Status {
    telemetry::db::failed(err);
    tracing::warn!(error = %err, "{what} unavailable");
    Status::unavailable(format!("{what} is temporarily unavailable; retry"))
}

fn check_market(code: &str) -> Result<(), Status> {
    upbit::market::MarketCode::parse(code)
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(service_kit::grpc::bounded(e.to_string())))
}

fn quote_of(market: &str) -> &str {
    market.split('-').next().unwrap_or("")
}

fn count(requested: u32, max: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(1),
        n if n <= max => Ok(n),
        _ => Err(Status::invalid_argument(format!(
            "count must be between 1 and {max}"
        ))),
    }
}

fn depth(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(MAX_DEPTH as usize),
        n if n <= MAX_DEPTH => Ok(n as usize),
        _ => Err(Status::invalid_argument(format!(
            "depth must be between 1 and {MAX_DEPTH}"
        ))),
    }
}

fn truncate(mut book: pb::Orderbook, depth: usize) -> pb::Orderbook {
    if book.units.len() > depth {
        book.units.truncate(depth);
        let sum = |f: fn(&pb::OrderbookUnit) -> &str| -> String {
            book.units
                .iter()
                .filter_map(|u| store::decimal(f(u)))
                .sum::<Decimal>()
                .normalize()
                .to_string()
        };
        book.total_ask_size = sum(|u| &u.ask_size);
        book.total_bid_size = sum(|u| &u.bid_size);
    }
    book
}

fn to_trade_row(t: &pb::Trade) -> Option<TradeRow> {
    check_market(&t.market).ok()?;
    let price = store::decimal(&t.trade_price).filter(|p| *p > Decimal::ZERO)?;
    let volume = store::decimal(&t.trade_volume).filter(|v| *v > Decimal::ZERO)?;
    let ts = DateTime::from_timestamp_millis(t.trade_timestamp)?;
    Some(TradeRow {
        market: t.market.clone(),
        ts,
        sequential_id: t.sequential_id,
        price,
        volume,
        ask_bid: if t.ask_bid == pb::Side::Ask as i32 {
            "ASK"
        } else {
            "BID"
        },
        prev_closing_price: store::decimal(&t.prev_closing_price).unwrap_or_default(),
        change_price: store::decimal(&t.change_price).unwrap_or_default(),
    })
}

fn trade_from_row(r: TradeRow) -> pb::Trade {
    let ts = r.ts.timestamp_millis();
    let change = match r.change_price.cmp(&Decimal::ZERO) {
        std::cmp::Ordering::Equal => pb::Change::Even,
        _ => match r.price.cmp(&r.prev_closing_price) {
            std::cmp::Ordering::Greater => pb::Change::Rise,
            std::cmp::Ordering::Less => pb::Change::Fall,
            std::cmp::Ordering::Equal => pb::Change::Even,
        },
    };
    pb::Trade {
        market: r.market,
        trade_price: r.price.normalize().to_string(),
        trade_volume: r.volume.normalize().to_string(),
        ask_bid: if r.ask_bid == "ASK" {
            pb::Side::Ask
        } else {
            pb::Side::Bid
        } as i32,
        prev_closing_price: r.prev_closing_price.normalize().to_string(),
        change: change as i32,
        change_price: r.change_price.normalize().to_string(),
        trade_timestamp: ts,
        timestamp: ts,
        sequential_id: r.sequential_id,
        ..Default::default()
    }
}

fn market_to_pb(m: &MarketRow) -> pb::Market {
    pb::Market {
        market: m.market.clone(),
        korean_name: m.korean_name.clone(),
        english_name: m.english_name.clone(),
        warning: m.warning,
        caution: Some(m.caution.into()),
    }
}

impl MarketData {
    pub fn new(
        pool: PgPool,
        hot: Hot,
        writer: Writer,
        live: broadcast::Sender<Live>,
        draining: CancellationToken,
        stream_buffer: usize,
        slow_after: Duration,
    ) -> Self {
        Self {
            pool,
            hot,
            writer,
            live,
            draining,
            markets: Arc::default(),
            stream_buffer,
            slow_after,
        }
    }

    async fn known_markets(&self, refresh: bool) -> Result<Vec<MarketRow>, Status> {
        if !refresh && let Some(cached) = self.markets.read().ok().and_then(|c| c.clone()) {
            return Ok(cached);
        }
        let rows = store::list_markets(&self.pool)
            .await
            .map_err(|e| unavailable("the market list", &e))?;
        if let Ok(mut cache) = self.markets.write() {
            *cache = Some(rows.clone());
        }
        Ok(rows)
    }

    /// The requested markets, all checked to exist; all markets (optionally of
    /// some quote currencies) when none are requested.
    async fn resolve(
        &self,
        requested: &[String],
        quotes: &[String],
    ) -> Result<Vec<String>, Status> {
        if requested.is_empty() {
            let all = self.known_markets(false).await?;
            return Ok(all
                .into_iter()
                .map(|m| m.market)
                .filter(|m| quotes.is_empty() || quotes.iter().any(|q| q == quote_of(m)))
                .collect());
        }
        for code in requested {
            check_market(code)?;
        }
        let mut known = self.known_markets(false).await?;
        let missing = |known: &[MarketRow]| {
            requested
                .iter()
                .find(|r| !known.iter().any(|m| &m.market == *r))
                .cloned()
        };
        if missing(&known).is_some() {
            known = self.known_markets(true).await?;
        }
        if let Some(code) = missing(&known) {
            return Err(Status::not_found(format!("Code not found: {code}")));
        }
        Ok(requested.to_vec())
    }

    async fn register_markets(&self, message: &pb::IngestRequest) -> Result<(), Status> {
        let rows: Vec<MarketRow> = message
            .markets
            .iter()
            .filter(|m| check_market(&m.market).is_ok())
            .map(|m| MarketRow {
                market: m.market.clone(),
                korean_name: m.korean_name.clone(),
                english_name: m.english_name.clone(),
                warning: m.warning,
                caution: m.caution(),
            })
            .collect();
        store::upsert_markets(&self.pool, &rows)
            .await
            .map_err(|e| unavailable("the database", &e))?;
        self.known_markets(true).await?;
        tracing::info!(source = %message.source, markets = rows.len(), "markets registered");
        Ok(())
    }

    async fn apply_with_retry(&self, batch: &Batch) -> Result<crate::hot::Applied, Status> {
        let mut delay = Duration::from_millis(50);
        for attempt in 0..5 {
            match self.hot.apply(batch).await {
                Ok(applied) => return Ok(applied),
                Err(err) => {
                    metrics::REDIS_ERRORS.inc();
                    if attempt == 4 {
                        return Err(unavailable("Redis", &err));
                    }
                    tracing::warn!(error = %err, ?delay, "applying a batch to Redis failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        Err(Status::unavailable(
            "Redis is temporarily unavailable; retry",
        ))
    }

    /// A stream of `snapshot` then the live messages `pick` converts. `live`
    /// must be subscribed before the snapshot is read, so nothing published in
    /// between is missed.
    fn live_stream<T, F>(
        &self,
        kind: &'static str,
        markets: Vec<String>,
        live: broadcast::Receiver<Live>,
        snapshot: Vec<T>,
        pick: F,
    ) -> Response<BoxStream<T>>
    where
        T: Send + 'static,
        F: Fn(&Live) -> Option<T> + Send + 'static,
    {
        // One slot more than the messages may fill: the status that ends a
        // stream whose consumer is too slow, which finds the buffer full.
        let (tx, rx) = mpsc::channel(self.stream_buffer.max(snapshot.len() + 1) + 1);
        let draining = self.draining.clone();
        let wanted: HashSet<String> = markets.into_iter().collect();
        let slow_after = self.slow_after;
        tokio::spawn(async move {
            let Ok(last) = tx.clone().reserve_owned().await else {
                return;
            };
            let gauge = metrics::STREAMS.with_label_values(&[kind]);
            gauge.inc();
            let end = forward(snapshot, live, &tx, &wanted, pick, slow_after, &draining).await;
            if end == StreamEnd::TooSlow {
                metrics::STREAMS_DROPPED.with_label_values(&[kind]).inc();
                tracing::info!(kind, "dropped a live stream whose consumer is too slow");
                last.send(Err(Status::resource_exhausted(
                    "consumer too slow; stream dropped",
                )));
            }
            gauge.dec();
        });
        Response::new(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Why a live stream ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// The consumer went away or the server is draining.
    Closed,
    /// The consumer did not accept messages for `slow_after`, or fell so far
    /// behind that the fan-out overwrote messages it had not read.
    TooSlow,
}

/// Sends `snapshot`, then every live message for `wanted` markets (all when
/// empty) that `pick` converts, until the consumer leaves, the server drains, or
/// the consumer is too slow. Each consumer has its own buffer and fan-out cursor,
/// so a slow one never holds the others back.
async fn forward<T, F>(
    snapshot: Vec<T>,
    mut live: broadcast::Receiver<Live>,
    tx: &mpsc::Sender<Result<T, Status>>,
    wanted: &HashSet<String>,
    pick: F,
    slow_after: Duration,
    draining: &CancellationToken,
) -> StreamEnd
where
    F: Fn(&Live) -> Option<T>,
{
    for item in snapshot {
        if tx.send(Ok(item)).await.is_err() {
            return StreamEnd::Closed;
        }
    }
    loop {
        let received = tokio::select! {
            _ = draining.cancelled() => return StreamEnd::Closed,
            _ = tx.closed() => return StreamEnd::Closed,
            r = live.recv() => r,
        };
        let message = match received {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Closed) => return StreamEnd::Closed,
            Err(broadcast::error::RecvError::Lagged(_)) => return StreamEnd::TooSlow,
        };
        if !wanted.is_empty() && !wanted.contains(message.market()) {
            continue;
        }
        let Some(item) = pick(&message) else { continue };
        match tokio::time::timeout(slow_after, tx.send(Ok(item))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return StreamEnd::Closed,
            Err(_) => return StreamEnd::TooSlow,
        }
    }
}

#[tonic::async_trait]
impl MarketDataService for MarketData {
    async fn ingest(
        &self,
        request: Request<Streaming<pb::IngestRequest>>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let mut stream = request.into_inner();
        let mut response = pb::IngestResponse::default();
        let (tickers_in, books_in, trades_in) = (
            metrics::EVENTS.with_label_values(&["ticker"]),
            metrics::EVENTS.with_label_values(&["orderbook"]),
            metrics::EVENTS.with_label_values(&["trade"]),
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
            // Under load, merge the messages already waiting into one Redis round
            // trip: batches grow with the load instead of queueing behind each other.
            let mut waiting = messages[0].events.len();
            while waiting < COALESCE_EVENTS {
                match stream.message().now_or_never() {
                    Some(Ok(Some(m))) => {
                        waiting += m.events.len();
                        messages.push(m);
                    }
                    Some(Ok(None)) | Some(Err(_)) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            for message in &messages {
                if !message.markets.is_empty() {
                    self.register_markets(message).await?;
                }
            }
            let mut batch = Batch::default();
            let mut rows = Vec::new();
            // Index in the batch of each market's ticker and orderbook.
            let (mut ticker_at, mut book_at) = (
                HashMap::<String, usize>::new(),
                HashMap::<String, usize>::new(),
            );
            let (mut n_tickers, mut n_books) = (0u64, 0u64);
            for event in messages.into_iter().flat_map(|m| m.events) {
                response.events_received += 1;
                match event.event {
                    Some(Event::Ticker(t)) if check_market(&t.market).is_ok() => {
                        n_tickers += 1;
                        // Keep only the newest per market within the batch.
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
                        n_books += 1;
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
                            rows.push(row);
                            batch.trades.push(t);
                        }
                        None => tracing::debug!(market = %t.market, "skipping an invalid trade"),
                    },
                    _ => {}
                }
            }
            tickers_in.inc_by(n_tickers);
            books_in.inc_by(n_books);
            trades_in.inc_by(batch.trades.len() as u64);
            let started = std::time::Instant::now();
            let span = ingest_span(&batch);
            let applied = self.apply_with_retry(&batch).instrument(span).await?;
            metrics::REDIS_APPLY.observe(started.elapsed().as_secs_f64());
            let now = Utc::now().timestamp_millis();
            let lag = |ts: i64| (now - ts).max(0) as f64 / 1000.0;
            metrics::PUBLISHED
                .with_label_values(&["ticker"])
                .inc_by(applied.tickers as u64);
            metrics::PUBLISHED
                .with_label_values(&["orderbook"])
                .inc_by(applied.orderbooks as u64);
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
                    return Err(Status::unavailable("shutting down"));
                }
            }
            response.trades_stored += fresh_count;
            metrics::PUBLISHED
                .with_label_values(&["trade"])
                .inc_by(fresh_count);
        }
        Ok(Response::new(response))
    }

    async fn list_markets(
        &self,
        request: Request<pb::ListMarketsRequest>,
    ) -> Result<Response<pb::ListMarketsResponse>, Status> {
        let quotes = request.into_inner().quote_currencies;
        let markets = self
            .known_markets(false)
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
        let markets = self.resolve(&req.markets, &req.quote_currencies).await?;
        let tickers = self
            .hot
            .tickers(&markets)
            .await
            .map_err(|e| unavailable("Redis", &e))?
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
        let markets = self.resolve(&req.markets, &[]).await?;
        let orderbooks = self
            .hot
            .orderbooks(&markets)
            .await
            .map_err(|e| unavailable("Redis", &e))?
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
        self.resolve(std::slice::from_ref(&req.market), &[]).await?;
        let page = match req.after {
            Some(_) if req.cursor.is_some() || req.to.is_some() => {
                return Err(Status::invalid_argument(
                    "after cannot be combined with cursor or to",
                ));
            }
            Some(after) => store::TradePage::After(
                DateTime::from_timestamp_millis(after.timestamp)
                    .ok_or_else(|| Status::invalid_argument("after.timestamp is not a time"))?,
                after.sequential_id,
            ),
            None => store::TradePage::Newest {
                cursor: req.cursor,
                to: req.to.and_then(DateTime::from_timestamp_millis),
            },
        };
        let trades = store::list_trades(&self.pool, &req.market, count, page)
            .await
            .map_err(|e| unavailable("the database", &e))?
            .into_iter()
            .map(trade_from_row)
            .collect();
        Ok(Response::new(pb::ListTradesResponse { trades }))
    }

    async fn list_candles(
        &self,
        request: Request<pb::ListCandlesRequest>,
    ) -> Result<Response<pb::ListCandlesResponse>, Status> {
        use pb::CandleInterval as I;
        let req = request.into_inner();
        let count = count(req.count, MAX_CANDLES)?;
        let interval = I::try_from(req.interval).unwrap_or(I::Unspecified);
        let period = match interval {
            I::Minute1 => Period::Minutes(1),
            I::Minute3 => Period::Minutes(3),
            I::Minute5 => Period::Minutes(5),
            I::Minute10 => Period::Minutes(10),
            I::Minute15 => Period::Minutes(15),
            I::Minute30 => Period::Minutes(30),
            I::Minute60 => Period::Minutes(60),
            I::Minute240 => Period::Minutes(240),
            I::Day1 => Period::Days,
            I::Week1 => Period::Weeks,
            I::Month1 => Period::Months,
            I::Unspecified => return Err(Status::invalid_argument("interval is required")),
        };
        self.resolve(std::slice::from_ref(&req.market), &[]).await?;
        // No candle is older than 1970 or newer than the year 9999; bounding
        // `to` keeps the periods it spans inside what Postgres can represent.
        let to = match req.to {
            Some(ms) if ms <= 0 => {
                return Ok(Response::new(pb::ListCandlesResponse::default()));
            }
            Some(ms) => DateTime::from_timestamp_millis(ms.min(LATEST_TO_MS))
                .ok_or_else(|| Status::invalid_argument("to is out of range"))?,
            None => Utc::now() + chrono::Duration::milliseconds(1),
        };
        let rows = store::list_candles(&self.pool, &req.market, period, to, count)
            .await
            .map_err(|e| unavailable("the database", &e))?;
        let candles = rows
            .into_iter()
            .map(|r| {
                let mut c = pb::Candle {
                    market: req.market.clone(),
                    interval: interval as i32,
                    start_time: r.start.timestamp_millis(),
                    opening_price: r.open.normalize().to_string(),
                    high_price: r.high.normalize().to_string(),
                    low_price: r.low.normalize().to_string(),
                    trade_price: r.close.normalize().to_string(),
                    timestamp: r.last_trade.timestamp_millis(),
                    candle_acc_trade_price: r.value.normalize().to_string(),
                    candle_acc_trade_volume: r.volume.normalize().to_string(),
                    ..Default::default()
                };
                if period == Period::Days {
                    let prev = r.prev_close.unwrap_or(r.open);
                    let change = r.close - prev;
                    c.prev_closing_price = prev.normalize().to_string();
                    c.change_price = change.normalize().to_string();
                    c.change_rate = if prev.is_zero() {
                        "0".into()
                    } else {
                        (change / prev).round_dp(8).normalize().to_string()
                    };
                }
                c
            })
            .collect();
        Ok(Response::new(pb::ListCandlesResponse { candles }))
    }

    async fn stream_tickers(
        &self,
        request: Request<pb::StreamTickersRequest>,
    ) -> Result<Response<BoxStream<pb::StreamTickersResponse>>, Status> {
        let req = request.into_inner();
        // Subscribed first: an update published while the snapshot is read is not lost.
        let live = self.live.subscribe();
        for m in &req.markets {
            check_market(m)?;
        }
        let snapshot = if req.snapshot {
            let markets = self.resolve(&req.markets, &[]).await?;
            self.hot
                .tickers(&markets)
                .await
                .map_err(|e| unavailable("Redis", &e))?
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
        Ok(
            self.live_stream("ticker", req.markets, live, snapshot, |live| match live {
                Live::Ticker(t) => Some(pb::StreamTickersResponse {
                    ticker: Some((**t).clone()),
                    snapshot: false,
                }),
                _ => None,
            }),
        )
    }

    async fn stream_trades(
        &self,
        request: Request<pb::StreamTradesRequest>,
    ) -> Result<Response<BoxStream<pb::StreamTradesResponse>>, Status> {
        let req = request.into_inner();
        // Subscribed first: an update published while the snapshot is read is not lost.
        let live = self.live.subscribe();
        for m in &req.markets {
            check_market(m)?;
        }
        let mut snapshot = Vec::new();
        if req.snapshot {
            for market in self.resolve(&req.markets, &[]).await? {
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
                .map_err(|e| unavailable("the database", &e))?;
                snapshot.extend(last.into_iter().map(|r| pb::StreamTradesResponse {
                    trade: Some(trade_from_row(r)),
                    snapshot: true,
                }));
            }
        }
        Ok(
            self.live_stream("trade", req.markets, live, snapshot, |live| match live {
                Live::Trade(t) => Some(pb::StreamTradesResponse {
                    trade: Some((**t).clone()),
                    snapshot: false,
                }),
                _ => None,
            }),
        )
    }

    async fn stream_orderbooks(
        &self,
        request: Request<pb::StreamOrderbooksRequest>,
    ) -> Result<Response<BoxStream<pb::StreamOrderbooksResponse>>, Status> {
        let req = request.into_inner();
        // Subscribed first: an update published while the snapshot is read is not lost.
        let live = self.live.subscribe();
        for m in &req.markets {
            check_market(m)?;
        }
        let depth = depth(req.depth)?;
        let snapshot = if req.snapshot {
            let markets = self.resolve(&req.markets, &[]).await?;
            self.hot
                .orderbooks(&markets)
                .await
                .map_err(|e| unavailable("Redis", &e))?
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
        Ok(self.live_stream(
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
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(market: &str, sid: i64) -> Live {
        Live::Trade(Arc::new(pb::Trade {
            market: market.into(),
            sequential_id: sid,
            ..Default::default()
        }))
    }

    fn sid(live: &Live) -> Option<i64> {
        match live {
            Live::Trade(t) => Some(t.sequential_id),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_stops_reading_is_dropped_and_others_keep_going() {
        let (fan, _) = broadcast::channel(1024);
        let wanted: HashSet<String> = ["KRW-A".to_string()].into();
        let draining = CancellationToken::new();
        let (slow_tx, _slow_rx) = mpsc::channel(4); // never read
        let (fast_tx, mut fast_rx) = mpsc::channel(4);
        let slow = tokio::spawn({
            let (live, wanted, draining) = (fan.subscribe(), wanted.clone(), draining.clone());
            async move {
                forward(
                    vec![],
                    live,
                    &slow_tx,
                    &wanted,
                    sid,
                    Duration::from_secs(1),
                    &draining,
                )
                .await
            }
        });
        let fast = tokio::spawn({
            let (live, wanted, draining) = (fan.subscribe(), wanted.clone(), draining.clone());
            async move {
                forward(
                    vec![],
                    live,
                    &fast_tx,
                    &wanted,
                    sid,
                    Duration::from_secs(1),
                    &draining,
                )
                .await
            }
        });
        for i in 0..100 {
            fan.send(trade(if i % 2 == 0 { "KRW-A" } else { "KRW-B" }, i))
                .unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 50 {
            got.push(fast_rx.recv().await.unwrap().unwrap());
        }
        assert_eq!(
            got,
            (0..100).step_by(2).collect::<Vec<_>>(),
            "only wanted markets, in order"
        );
        assert_eq!(slow.await.unwrap(), StreamEnd::TooSlow);
        drop(fast_rx);
        fan.send(trade("KRW-A", 100)).unwrap();
        assert_eq!(
            fast.await.unwrap(),
            StreamEnd::Closed,
            "a consumer that leaves ends its stream"
        );
    }

    #[tokio::test]
    async fn a_consumer_that_lags_behind_the_fan_out_is_dropped() {
        let (fan, live) = broadcast::channel(8);
        let (tx, _rx) = mpsc::channel(1000);
        for i in 0..20 {
            fan.send(trade("KRW-A", i)).unwrap();
        }
        let end = forward(
            vec![],
            live,
            &tx,
            &HashSet::new(),
            sid,
            Duration::from_secs(1),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(end, StreamEnd::TooSlow);
    }
}
