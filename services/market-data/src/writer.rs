//! The batched Postgres writer: trades queue up in memory (bounded) and are
//! written in batches by one task; a failed batch is retried with backoff until
//! it is written, so a database that is briefly away delays trades and candles
//! (visible in `market_data_trade_to_postgres_seconds`) but loses nothing.
//! Writes start at most once per `linger` unless a batch is full, so a slow
//! feed costs a few transactions a second, not one per trade.

use std::time::Duration;

use tokio::time::Instant;

use service_kit::retry::Backoff;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics;
use crate::store::{self, TradeRow};

/// The sending side: `send` waits when the queue is full (backpressure).
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Queued>,
}

/// A trade waiting for Postgres, and whether Redis saw it for the first time.
struct Queued {
    row: TradeRow,
    fresh: bool,
}

impl Writer {
    /// Starts the writer task; it drains the queue and returns after `stop`.
    pub fn spawn(
        pool: PgPool,
        capacity: usize,
        batch: usize,
        linger: Duration,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(run(pool, rx, batch.max(1), linger, stop));
        (Self { tx }, task)
    }

    /// Queues a trade for writing; `fresh`: Redis had not seen it, so it is very
    /// likely not stored yet (written without a conflict check, see
    /// [`store::insert_trades`]).
    pub async fn send(&self, trade: TradeRow, fresh: bool) -> bool {
        let ok = self.tx.send(Queued { row: trade, fresh }).await.is_ok();
        if ok {
            metrics::WRITE_QUEUE.inc();
        }
        ok
    }
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<Queued>,
    batch: usize,
    linger: Duration,
    stop: CancellationToken,
) {
    let mut buf = Vec::with_capacity(batch);
    // (No earlier write: the first batch goes at once. checked_sub: a linger longer
    // than the machine's uptime must not panic.)
    let mut last_write = Instant::now()
        .checked_sub(linger)
        .unwrap_or_else(Instant::now);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut buf, batch) => n,
            _ = stop.cancelled() => {
                // Drain what is queued, then end.
                rx.close();
                rx.recv_many(&mut buf, batch).await
            }
        };
        if received == 0 {
            return;
        }
        // A batch that is not full waits until `linger` after the previous write
        // began, then takes what arrived meanwhile (under load, writes take
        // longer than that and nothing waits).
        let due = last_write + linger;
        if buf.len() < batch && Instant::now() < due && !stop.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.cancelled() => {}
            }
            while buf.len() < batch {
                match rx.try_recv() {
                    Ok(trade) => buf.push(trade),
                    Err(_) => break,
                }
            }
        }
        last_write = Instant::now();
        let queued = buf.len();
        let (fresh, seen): (Vec<_>, Vec<_>) = buf.drain(..).partition(|q| q.fresh);
        let rows = |q: Vec<Queued>| q.into_iter().map(|q| q.row).collect::<Vec<_>>();
        let span = crate::ingest::store_span(queued);
        async {
            write_with_retry(&pool, &rows(fresh), true, &stop).await;
            write_with_retry(&pool, &rows(seen), false, &stop).await;
        }
        .instrument(span)
        .await;
        metrics::WRITE_QUEUE.sub(queued as i64);
    }
}

async fn write_with_retry(
    pool: &PgPool,
    batch: &[TradeRow],
    likely_new: bool,
    stop: &CancellationToken,
) {
    if batch.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let started = std::time::Instant::now();
        match store::insert_trades(pool, batch, likely_new).await {
            Ok(stored) => {
                metrics::WRITE_SECONDS.observe(started.elapsed().as_secs_f64());
                metrics::TRADES_STORED.inc_by(stored);
                metrics::TRADES_DUPLICATE.inc_by(batch.len() as u64 - stored);
                metrics::WRITE_BATCH.observe(batch.len() as f64);
                let now = chrono::Utc::now();
                for t in batch {
                    let lag = (now - t.ts).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics::TRADE_TO_POSTGRES.observe(lag);
                }
                return;
            }
            Err(err) => {
                metrics::WRITE_ERRORS.inc();
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, trades = batch.len(), ?delay, "writing trades failed; retrying");
                // After a stop request keep trying for a while, then give up loudly.
                if stop.is_cancelled() && backoff.attempts() > 10 {
                    tracing::error!(trades = batch.len(), "shutting down with unwritten trades");
                    return;
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
