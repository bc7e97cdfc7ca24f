//! The bounded buffer between the feed and market-data.
//!
//! Tickers and orderbooks are conflated: only the newest per market waits to be
//! sent (a full snapshot replaces an older one). They are kept as the raw frame
//! and parsed only when a batch is taken, so a busy feed does not pay for parsing
//! messages that a newer one replaces. Trades queue in order up to a bound;
//! beyond it the oldest are dropped and counted. So when market-data is slow or
//! away, memory stays bounded and what is sent when it returns is the newest
//! state.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use exchange_proto::marketdata::v1 as pb;
use pb::market_event::Event;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// A conflated message: parsed already, or the raw frame and when it arrived.
enum Latest {
    Parsed(Box<pb::MarketEvent>),
    Raw(bytes::Bytes, i64),
}

#[derive(Default)]
struct Inner {
    tickers: HashMap<String, Latest>,
    orderbooks: HashMap<String, Latest>,
    trades: VecDeque<pb::MarketEvent>,
    /// When the oldest event waiting arrived (None when empty).
    since: Option<tokio::time::Instant>,
}

impl Inner {
    fn len(&self) -> usize {
        self.tickers.len() + self.orderbooks.len() + self.trades.len()
    }

    fn arrived(&mut self) {
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }
}

pub struct Buffer {
    inner: Mutex<Inner>,
    ready: Notify,
    max_trades: usize,
}

impl Buffer {
    pub fn new(max_trades: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            max_trades: max_trades.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the raw frame of a ticker (`orderbook = false`) or orderbook of
    /// `market`, replacing any older one; it is parsed when taken.
    pub fn push_raw(&self, orderbook: bool, market: &str, frame: bytes::Bytes, received_at: i64) {
        let mut inner = self.lock();
        inner.arrived();
        let (map, conflated) = if orderbook {
            (&mut inner.orderbooks, &*metrics::CONFLATED_ORDERBOOKS)
        } else {
            (&mut inner.tickers, &*metrics::CONFLATED_TICKERS)
        };
        let latest = Latest::Raw(frame, received_at);
        match map.get_mut(market) {
            Some(slot) => {
                *slot = latest;
                conflated.inc();
            }
            None => {
                map.insert(market.to_owned(), latest);
            }
        }
        metrics::BUFFERED.set(inner.len() as i64);
        drop(inner);
        self.ready.notify_one();
    }

    /// Adds an event (conflating tickers and orderbooks per market).
    pub fn push(&self, event: pb::MarketEvent) {
        let mut inner = self.lock();
        match &event.event {
            Some(Event::Ticker(t)) => {
                let market = t.market.clone();
                if inner
                    .tickers
                    .insert(market, Latest::Parsed(Box::new(event)))
                    .is_some()
                {
                    metrics::CONFLATED_TICKERS.inc();
                }
            }
            Some(Event::Orderbook(o)) => {
                let market = o.market.clone();
                if inner
                    .orderbooks
                    .insert(market, Latest::Parsed(Box::new(event)))
                    .is_some()
                {
                    metrics::CONFLATED_ORDERBOOKS.inc();
                }
            }
            Some(Event::Trade(_)) => {
                if inner.trades.len() >= self.max_trades {
                    inner.trades.pop_front();
                    metrics::DROPPED_TRADES.inc();
                }
                inner.trades.push_back(event);
            }
            None => return,
        }
        inner.arrived();
        metrics::BUFFERED.set(inner.len() as i64);
        drop(inner);
        self.ready.notify_one();
    }

    /// Takes up to `max` events: every conflated ticker and orderbook, then trades
    /// in arrival order.
    pub fn take(&self, max: usize) -> Vec<pb::MarketEvent> {
        let (trades, tickers, books) = {
            let mut inner = self.lock();
            let books: Vec<_> = inner.orderbooks.drain().map(|(_, e)| e).collect();
            let tickers: Vec<_> = inner.tickers.drain().map(|(_, e)| e).collect();
            let room = max.saturating_sub(books.len() + tickers.len()).max(max / 2);
            let n = inner.trades.len().min(room);
            let trades: Vec<_> = inner.trades.drain(..n).collect();
            if inner.len() == 0 {
                inner.since = None;
            }
            metrics::BUFFERED.set(inner.len() as i64);
            (trades, tickers, books)
        };
        // Parse outside the lock. Trades first keeps their order relative to the
        // snapshots that follow them.
        let mut out = Vec::with_capacity(trades.len() + tickers.len() + books.len());
        out.extend(trades);
        out.extend(
            tickers
                .into_iter()
                .chain(books)
                .filter_map(|latest| match latest {
                    Latest::Parsed(e) => Some(*e),
                    Latest::Raw(frame, received_at) => {
                        crate::feed::parse_event(&frame, received_at)
                    }
                }),
        );
        out
    }

    pub fn is_empty(&self) -> bool {
        self.lock().len() == 0
    }

    /// Waits for events, lets the batch fill until the oldest waiting event is
    /// `linger` old (unless `max` are already waiting), then takes it. Under load
    /// the events have waited that long already and the batch goes at once.
    /// Returns an empty batch when `stop` fires.
    pub async fn next_batch(
        &self,
        max: usize,
        linger: Duration,
        stop: &CancellationToken,
    ) -> Vec<pb::MarketEvent> {
        let since = loop {
            if let Some(since) = self.lock().since {
                break since;
            }
            tokio::select! {
                _ = stop.cancelled() => return Vec::new(),
                _ = self.ready.notified() => {}
            }
        };
        if !linger.is_zero() && self.lock().len() < max {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep_until(since + linger) => {}
            }
        }
        self.take(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticker(m: &str, ts: i64) -> pb::MarketEvent {
        pb::MarketEvent {
            event: Some(Event::Ticker(pb::Ticker {
                market: m.into(),
                timestamp: ts,
                ..Default::default()
            })),
            received_at: 0,
        }
    }

    fn trade(m: &str, sid: i64) -> pb::MarketEvent {
        pb::MarketEvent {
            event: Some(Event::Trade(pb::Trade {
                market: m.into(),
                sequential_id: sid,
                ..Default::default()
            })),
            received_at: 0,
        }
    }

    fn sids(events: &[pb::MarketEvent]) -> Vec<i64> {
        events
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::Trade(t)) => Some(t.sequential_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest_ticker_per_market_and_bounded_trades_in_order() {
        let b = Buffer::new(5);
        for ts in 0..100 {
            b.push(ticker("KRW-A", ts));
            b.push(ticker("KRW-B", ts));
        }
        for sid in 0..12 {
            b.push(trade("KRW-A", sid));
        }
        let batch = b.take(100);
        assert_eq!(
            sids(&batch),
            vec![7, 8, 9, 10, 11],
            "the newest 5 trades, in order"
        );
        let tickers: Vec<_> = batch
            .iter()
            .filter_map(|e| match &e.event {
                Some(Event::Ticker(t)) => Some((t.market.clone(), t.timestamp)),
                _ => None,
            })
            .collect();
        assert_eq!(tickers.len(), 2);
        assert!(
            tickers.iter().all(|(_, ts)| *ts == 99),
            "only the newest per market: {tickers:?}"
        );
        assert!(b.is_empty());
    }

    #[test]
    fn batches_respect_the_maximum_and_leave_the_rest() {
        let b = Buffer::new(1000);
        for sid in 0..250 {
            b.push(trade("KRW-A", sid));
        }
        assert_eq!(sids(&b.take(100)), (0..100).collect::<Vec<_>>());
        assert_eq!(sids(&b.take(1000)), (100..250).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_lingers_from_its_first_event_not_from_the_wakeup() {
        let b = Buffer::new(100);
        let stop = CancellationToken::new();
        let linger = Duration::from_millis(2);
        // A fresh event: the batch waits the whole linger for company.
        b.push(trade("KRW-A", 1));
        let start = tokio::time::Instant::now();
        assert_eq!(sids(&b.next_batch(100, linger, &stop).await), vec![1]);
        assert_eq!(start.elapsed(), linger);
        // Events that already waited (the sender was busy): sent at once.
        b.push(trade("KRW-A", 2));
        tokio::time::advance(Duration::from_millis(5)).await;
        b.push(trade("KRW-A", 3));
        let start = tokio::time::Instant::now();
        assert_eq!(sids(&b.next_batch(100, linger, &stop).await), vec![2, 3]);
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A full batch does not wait either.
        for sid in 10..20 {
            b.push(trade("KRW-A", sid));
        }
        let start = tokio::time::Instant::now();
        assert_eq!(b.next_batch(10, linger, &stop).await.len(), 10);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn next_batch_waits_for_events_and_returns_on_stop() {
        let b = std::sync::Arc::new(Buffer::new(10));
        let stop = CancellationToken::new();
        let waiter = tokio::spawn({
            let (b, stop) = (b.clone(), stop.clone());
            async move { b.next_batch(10, Duration::from_millis(1), &stop).await }
        });
        tokio::task::yield_now().await;
        b.push(trade("KRW-A", 1));
        assert_eq!(sids(&waiter.await.unwrap()), vec![1]);
        stop.cancel();
        assert!(b.next_batch(10, Duration::ZERO, &stop).await.is_empty());
    }
}
