//! Fills open limit orders when live trades cross their price, and runs
//! recovery. Exactly one replica does this at a time: the one holding a
//! Postgres advisory lock on its own connection (if that connection dies,
//! another replica takes over).
//!
//! The leader keeps the open limit orders in memory, indexed by price per market
//! and side (loaded at start, kept current through `order_events`
//! notifications), follows market-data's trade stream (all markets, one
//! subscription), and on each trade fills, in price then time priority, the
//! bids priced at or above it and the asks at or below it, up to the trade's
//! volume, at each order's own limit price. An order takes part in the trades
//! from the moment it opened (left PENDING); one that reaches the book a
//! moment after a trade it was open for is matched against the trades of the
//! last seconds kept in memory. Each fill records the trade that made it, so
//! no trade fills an order twice.
//!
//! No trade is missed: the last trade processed per market is kept (and saved
//! in `matcher_cursors` on every recovery tick), and whenever the stream is
//! (re)opened — a new leader, a dropped stream — the matcher catches up with
//! market-data's stored trades from a little before that point, counting how
//! much of each trade earlier fills already used. It catches up again from the
//! same point a few times over the next half minute, for trades that reach
//! Postgres late (market-data writes them behind the live feed, and holds them
//! while Postgres is away), and a trade whose fill failed is matched again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use exchange_proto::decimal;
use exchange_proto::marketdata::v1 as md;
use futures_util::FutureExt;
use rust_decimal::Decimal;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::book::{Book, Resting};
use crate::domain::{self, Exec, Side};
use crate::metrics;
use crate::service::Orders;
use crate::store;

/// The advisory lock key of the matcher.
const LEADER_LOCK: i64 = 0x004D_4154_4348_4552; // "MATCHER"
/// A catch-up starts this long before the last trade processed: trades of a
/// market can reach the exchange slightly out of order.
const CATCH_UP_OVERLAP_MS: i64 = 10_000;
/// Trades per catch-up page.
const PAGE: u32 = 500;
/// Trade ids remembered per market, so a trade seen twice is matched once.
const SEEN: usize = 20_000;
/// Trades kept in memory, with what is left of them, for orders that reach the
/// book a moment after a trade they were open for.
const RECENT_MS: i64 = 5_000;
/// After the stream opened, catch up again from the same point after these
/// delays: trades still on their way to Postgres at the first pass.
const RECHECKS: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

/// A trade from market-data, read.
#[derive(Clone)]
struct Trade {
    market: String,
    price: Decimal,
    volume: Decimal,
    ms: i64,
    id: i64,
}

impl Trade {
    fn read(t: &md::Trade) -> Option<Self> {
        let price = decimal::positive("trade_price", &t.trade_price);
        let volume = decimal::positive("trade_volume", &t.trade_volume);
        match (price, volume) {
            (Ok(price), Ok(volume)) => Some(Self {
                market: t.market.clone(),
                price,
                volume,
                ms: t.trade_timestamp,
                id: t.sequential_id,
            }),
            (p, v) => {
                tracing::warn!(market = %t.market, id = t.sequential_id, price = ?p.err(), volume = ?v.err(), "matcher: skipped a malformed trade");
                None
            }
        }
    }
}

/// Where matching stands per market: the newest trade processed (trade ms,
/// sequential id) and the ids of the trades processed lately.
#[derive(Default)]
struct Progress {
    cursors: HashMap<String, (i64, i64)>,
    seen: HashMap<String, (HashSet<i64>, VecDeque<i64>)>,
    changed: bool,
}

impl Progress {
    fn seen(&self, market: &str, id: i64) -> bool {
        self.seen
            .get(market)
            .is_some_and(|(ids, _)| ids.contains(&id))
    }

    /// Forgets that a trade was processed (a fill it made failed), so that the
    /// next catch-up matches it again.
    fn forget(&mut self, market: &str, id: i64) {
        if let Some((ids, _)) = self.seen.get_mut(market) {
            ids.remove(&id);
        }
    }

    fn mark(&mut self, market: &str, ms: i64, id: i64) {
        let (ids, order) = self.seen.entry(market.to_owned()).or_default();
        if ids.insert(id) {
            order.push_back(id);
            if order.len() > SEEN
                && let Some(old) = order.pop_front()
            {
                ids.remove(&old);
            }
        }
        let cursor = self.cursors.entry(market.to_owned()).or_insert((ms, id));
        if (ms, id) > *cursor {
            *cursor = (ms, id);
        }
        self.changed = true;
    }
}

/// A trade matched lately, with what is left of its volume on each side.
struct Recent {
    trade: Trade,
    left_bid: Decimal,
    left_ask: Decimal,
}

/// The leader's state while it leads.
struct Matcher<'a> {
    orders: &'a Orders,
    book: Book,
    progress: Progress,
    /// Per market, the trades of the last `RECENT_MS`, oldest first.
    recent: HashMap<String, VecDeque<Recent>>,
    /// Where the pending catch-ups start per market (ms), and when they run.
    catch_up_from: HashMap<String, i64>,
    rechecks: VecDeque<Instant>,
}

impl<'a> Matcher<'a> {
    async fn new(orders: &'a Orders) -> anyhow::Result<Self> {
        let mut matcher = Self {
            orders,
            book: Book::default(),
            progress: Progress::default(),
            recent: HashMap::new(),
            catch_up_from: HashMap::new(),
            rechecks: VecDeque::new(),
        };
        for (market, ms, id) in store::cursors(orders.pool()).await? {
            matcher.progress.cursors.insert(market, (ms, id));
        }
        matcher.reload().await?;
        Ok(matcher)
    }

    /// Reloads the resting orders from the database; those new to the book are
    /// matched against the recent trades.
    async fn reload(&mut self) -> anyhow::Result<()> {
        let before = std::mem::take(&mut self.book);
        let mut arrived = Vec::new();
        for row in store::waiting(self.orders.pool()).await? {
            let order = Resting::from_row(&row);
            if !before.located.contains_key(&row.id)
                && let Some(o) = &order
            {
                arrived.push((row.market.clone(), o.clone()));
            }
            self.book.upsert(&row.market, order, row.id);
        }
        for (market, order) in arrived {
            self.replay(&market, order).await;
        }
        Ok(())
    }

    async fn refresh(&mut self, id: Uuid) -> anyhow::Result<()> {
        if let Some(row) = store::get(self.orders.pool(), id).await? {
            let new = !self.book.located.contains_key(&row.id);
            let order = Resting::from_row(&row);
            self.book.upsert(&row.market, order.clone(), row.id);
            if let Some(order) = order.filter(|_| new) {
                self.replay(&row.market, order).await;
            }
        }
        Ok(())
    }

    /// An order just reached the book: the recent trades it was open for, and
    /// that others left volume of, fill it now.
    async fn replay(&mut self, market: &str, order: Resting) {
        let Some(recent) = self.recent.get(market) else {
            return;
        };
        let missed: Vec<(Trade, Decimal, Decimal)> = recent
            .iter()
            .filter(|r| r.trade.ms >= order.since_ms)
            .filter(|r| match order.side {
                Side::Bid => order.price >= r.trade.price && r.left_bid > Decimal::ZERO,
                Side::Ask => order.price <= r.trade.price && r.left_ask > Decimal::ZERO,
            })
            .map(|r| (r.trade.clone(), r.left_bid, r.left_ask))
            .collect();
        for (trade, left_bid, left_ask) in missed {
            let Some(now) = self.book.get(market, order.id) else {
                return;
            };
            let (left_bid, left_ask, failed) = self
                .fill_orders(&trade, vec![now], left_bid, left_ask)
                .await;
            if failed {
                self.retry(&trade);
            }
            if let Some(r) = self
                .recent
                .get_mut(market)
                .and_then(|q| q.iter_mut().find(|r| r.trade.id == trade.id))
            {
                (r.left_bid, r.left_ask) = (left_bid, left_ask);
            }
        }
    }

    /// Saves the cursors if they moved.
    async fn save(&mut self) -> anyhow::Result<()> {
        if !self.progress.changed {
            return Ok(());
        }
        let cursors: Vec<(String, i64, i64)> = self
            .progress
            .cursors
            .iter()
            .map(|(m, (ms, id))| (m.clone(), *ms, *id))
            .collect();
        store::save_cursors(self.orders.pool(), &cursors).await?;
        self.progress.changed = false;
        Ok(())
    }

    /// A live trade: matched unless it was seen already.
    async fn live(&mut self, t: &md::Trade) {
        let Some(trade) = Trade::read(t) else { return };
        if self.progress.seen(&trade.market, trade.id) {
            return;
        }
        self.progress.mark(&trade.market, trade.ms, trade.id);
        self.fill(&trade, Decimal::ZERO, Decimal::ZERO).await;
    }

    /// Matches again, soon, from before `trade`: a fill it made failed.
    fn retry(&mut self, trade: &Trade) {
        self.progress.forget(&trade.market, trade.id);
        let from = trade.ms - CATCH_UP_OVERLAP_MS;
        self.catch_up_from
            .entry(trade.market.clone())
            .and_modify(|ms| *ms = (*ms).min(from))
            .or_insert(from);
        self.rechecks.push_back(Instant::now() + RECHECKS[0]);
    }

    /// Fills the orders `trade` crosses with what is left of its volume after
    /// earlier fills used `used_bid` (by bids) and `used_ask` (by asks), and
    /// keeps it among the recent trades.
    async fn fill(&mut self, trade: &Trade, used_bid: Decimal, used_ask: Decimal) {
        let crossing = self.book.crossing(&trade.market, trade.price, trade.ms);
        let (left_bid, left_ask, failed) = self
            .fill_orders(
                trade,
                crossing,
                trade.volume - used_bid,
                trade.volume - used_ask,
            )
            .await;
        if failed {
            self.retry(trade);
        }
        let recent = self.recent.entry(trade.market.clone()).or_default();
        recent.push_back(Recent {
            trade: trade.clone(),
            left_bid,
            left_ask,
        });
        let newest = recent.iter().map(|r| r.trade.ms).max().unwrap_or(trade.ms);
        while recent
            .front()
            .is_some_and(|r| r.trade.ms < newest - RECENT_MS || recent.len() > SEEN)
        {
            recent.pop_front();
        }
    }

    /// Fills `orders` (in priority order) from `trade`, `left_bid` and
    /// `left_ask` being what is left of it on each side; returns what is left
    /// after, and whether a fill failed.
    async fn fill_orders(
        &mut self,
        trade: &Trade,
        orders: Vec<Resting>,
        mut left_bid: Decimal,
        mut left_ask: Decimal,
    ) -> (Decimal, Decimal, bool) {
        let mut failed = false;
        let mut queue: VecDeque<(Resting, bool)> = orders.into_iter().map(|o| (o, true)).collect();
        while let Some((open, first_try)) = queue.pop_front() {
            if left_bid <= Decimal::ZERO && left_ask <= Decimal::ZERO {
                // The trade's volume is used up on both sides: nothing more fills.
                break;
            }
            let left = match open.side {
                Side::Bid => &mut left_bid,
                Side::Ask => &mut left_ask,
            };
            let take = open.remaining.min(*left);
            if take <= Decimal::ZERO {
                continue;
            }
            let exec = match open
                .price
                .checked_mul(take)
                .ok_or_else(|| crate::error::OrderError::Internal("fill too large".into()))
                .and_then(|funds| {
                    Ok(Exec {
                        price: open.price,
                        volume: take,
                        funds,
                        fee: domain::fee(open.executed_funds, funds, open.fee_rate)?,
                    })
                }) {
                Ok(exec) => exec,
                Err(e) => {
                    tracing::error!(order = %open.id, error = %e, "matcher: cannot price a fill");
                    continue;
                }
            };
            match self
                .orders
                .fill(open.id, open.trades_count, &exec, trade.id)
                .await
            {
                Ok(Some(row)) => {
                    *left -= take;
                    metrics::LIMIT_FILLS
                        .with_label_values(&[open.side.as_str()])
                        .inc();
                    tracing::info!(order = %open.id, price = %open.price, volume = %take, trade = trade.id, state = row.state.as_str(), "limit order filled");
                    self.book
                        .upsert(&trade.market, Resting::from_row(&row), open.id);
                }
                Ok(None) => {
                    // Cancelled, changed or filled by this trade meanwhile:
                    // read it again, and if it is still open, try once more.
                    match store::get(self.orders.pool(), open.id).await {
                        Ok(Some(row)) => {
                            let now = Resting::from_row(&row);
                            self.book.upsert(&row.market, now.clone(), row.id);
                            if let Some(now) = now.filter(|_| first_try) {
                                queue.push_front((now, false));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(order = %open.id, error = %e, "matcher: cannot refresh an order");
                            failed = true;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(order = %open.id, error = %e, "filling a limit order failed; matched again soon");
                    failed = true;
                }
            }
        }
        (left_bid, left_ask, failed)
    }

    /// The stream (re)opened: catches up now and a few times over the next
    /// half minute, each time from a little before the last trade processed
    /// now (or from the market's oldest order).
    async fn opened(&mut self) {
        for (market, book) in &self.book.markets {
            let Some(oldest) = book.oldest_ms() else {
                continue;
            };
            let from = match self.progress.cursors.get(market) {
                Some((ms, _)) => (ms - CATCH_UP_OVERLAP_MS).max(oldest),
                None => oldest,
            };
            self.catch_up_from
                .entry(market.clone())
                .and_modify(|ms| *ms = (*ms).min(from))
                .or_insert(from);
        }
        let now = Instant::now();
        self.rechecks = RECHECKS.iter().map(|d| now + *d).collect();
        self.catch_up().await;
    }

    /// When the next catch-up is due.
    fn next_recheck(&self) -> Option<Instant> {
        self.rechecks.iter().min().copied()
    }

    /// Runs the catch-ups that are due.
    async fn recheck(&mut self) {
        let now = Instant::now();
        self.rechecks.retain(|at| *at > now);
        self.catch_up().await;
        if self.rechecks.is_empty() {
            self.catch_up_from.clear();
        }
    }

    /// Matches the stored trades of the markets waiting to catch up, from
    /// where each catch-up starts, with what earlier fills left of each. The
    /// book is read afresh first: notifications still on their way must not
    /// keep an order out of trades it was open for.
    async fn catch_up(&mut self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %format!("{e:#}"), "matcher: cannot read the open orders; catching up later");
            self.rechecks.push_back(Instant::now() + RECHECKS[0]);
            return;
        }
        // Only what traded before now: later trades come on the live stream
        // (which is open), matched with the book as notifications keep it.
        let until = chrono::Utc::now().timestamp_millis();
        let markets: Vec<(String, i64)> = self
            .catch_up_from
            .iter()
            .filter(|(m, _)| self.book.markets.contains_key(*m))
            .map(|(m, ms)| (m.clone(), *ms))
            .collect();
        for (market, from) in markets {
            if let Err(e) = self.catch_up_market(&market, from, until).await {
                tracing::warn!(%market, error = %format!("{e:#}"), "matcher: catching up failed; tried again later");
                self.rechecks.push_back(Instant::now() + RECHECKS[0]);
            }
        }
    }

    async fn catch_up_market(
        &mut self,
        market: &str,
        from_ms: i64,
        until_ms: i64,
    ) -> anyhow::Result<()> {
        let mut after = md::TradePosition {
            timestamp: from_ms,
            sequential_id: i64::MIN,
        };
        let mut matched = 0;
        loop {
            let page = self
                .orders
                .market_data()
                .list_trades(md::ListTradesRequest {
                    market: market.to_owned(),
                    count: PAGE,
                    after: Some(after),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .trades;
            let Some(last) = page.last() else {
                break;
            };
            after = md::TradePosition {
                timestamp: last.trade_timestamp,
                sequential_id: last.sequential_id,
            };
            let past_until = page.iter().any(|t| t.trade_timestamp > until_ms);
            let fresh: Vec<Trade> = page
                .iter()
                .filter(|t| t.trade_timestamp <= until_ms)
                .filter(|t| !self.progress.seen(market, t.sequential_id))
                .filter_map(Trade::read)
                .collect();
            let ids: Vec<i64> = fresh.iter().map(|t| t.id).collect();
            let mut used: HashMap<(i64, Side), Decimal> = HashMap::new();
            for c in store::consumed(self.orders.pool(), market, &ids).await? {
                used.insert((c.trade_id, c.side), c.volume);
            }
            for trade in &fresh {
                self.progress.mark(market, trade.ms, trade.id);
                let bid = used
                    .get(&(trade.id, Side::Bid))
                    .copied()
                    .unwrap_or_default();
                let ask = used
                    .get(&(trade.id, Side::Ask))
                    .copied()
                    .unwrap_or_default();
                self.fill(trade, bid, ask).await;
                metrics::CAUGHT_UP_TRADES.inc();
                matched += 1;
            }
            if page.len() < PAGE as usize || past_until {
                break;
            }
        }
        if matched > 0 {
            tracing::info!(%market, from_ms, matched, "matcher: caught up with stored trades");
        }
        Ok(())
    }
}

/// Competes for leadership until `stop`; while leader, matches and recovers.
pub async fn run(
    orders: Arc<Orders>,
    database_url: sqlx::postgres::PgConnectOptions,
    recovery_every: Duration,
    recovery_min_age: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let leader = async {
            let mut conn = PgConnection::connect_with(&database_url).await?;
            loop {
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut conn)
                    .await?;
                if got {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => return anyhow::Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            tracing::info!("matcher: this replica leads matching and recovery");
            lead(
                orders.clone(),
                &database_url,
                &mut conn,
                recovery_every,
                recovery_min_age,
                &stop,
            )
            .await
        };
        let led = leader.await;
        metrics::MATCHER_LEADING.set(0);
        match led {
            Ok(()) if stop.is_cancelled() => return Ok(()),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "matcher: lost leadership or its database; retrying")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Aborts a task when dropped.
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn lead(
    orders: Arc<Orders>,
    database_url: &sqlx::postgres::PgConnectOptions,
    lock: &mut PgConnection,
    recovery_every: Duration,
    recovery_min_age: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut listener =
        PgListener::connect_with(&sqlx::PgPool::connect_lazy_with(database_url.clone())).await?;
    listener.listen("order_events").await?;
    // Recovery runs beside matching, never in its way: a long pass (many
    // orders to finish after an outage) must not hold up the trades.
    let _recovery = Background(tokio::spawn({
        let orders = orders.clone();
        async move {
            loop {
                if let Err(e) = orders.recover(recovery_min_age).await {
                    tracing::warn!(error = %e, "recovery pass failed; will retry");
                }
                tokio::time::sleep(recovery_every).await;
            }
        }
    }));
    let orders = &*orders;
    let mut matcher = Matcher::new(orders).await?;
    // One stream of every market's trades, held for the whole leadership:
    // resubscribing as the set of markets with open orders changed would
    // miss the trades that arrive in between.
    let mut trades: Option<tonic::Streaming<md::StreamTradesResponse>> = None;
    let mut tick = tokio::time::interval(recovery_every);
    tick.reset();
    loop {
        if trades.is_none() {
            let request = md::StreamTradesRequest {
                markets: Vec::new(),
                snapshot: false,
            };
            match orders.market_data().stream_trades(request).await {
                Ok(stream) => {
                    trades = Some(stream.into_inner());
                    // The stream is open: whatever traded before it is stored.
                    matcher.opened().await;
                    metrics::MATCHER_LEADING.set(1);
                }
                Err(status) => {
                    tracing::warn!(%status, "matcher: cannot follow trades yet; retrying");
                }
            }
        }
        let next_trade = async {
            match trades.as_mut() {
                Some(s) => s.message().await,
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(None)
                }
            }
        };
        let next_recheck = matcher.next_recheck();
        let rechecked = async {
            match next_recheck {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // Notifications first: an order placed before a trade must be in the
        // book when that trade is matched.
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                matcher.save().await.ok();
                return Ok(());
            }
            notification = listener.recv() => {
                let notification = notification?;
                if let Some(id) = notification.payload().split(' ').next().and_then(|s| Uuid::parse_str(s).ok()) {
                    matcher.refresh(id).await?;
                }
            }
            trade = next_trade => match trade {
                Ok(Some(message)) => {
                    if let Some(t) = message.trade {
                        matcher.live(&t).await;
                    }
                }
                _ => {
                    // Broken or dropped as too slow: reopened (and caught up) above.
                    trades = None;
                    metrics::MATCHER_LEADING.set(0);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            _ = rechecked => matcher.recheck().await,
            _ = tick.tick() => {
                // Still holding the lock (the connection is alive)?
                sqlx::query("SELECT 1").execute(&mut *lock).await?;
                if let Err(e) = matcher.save().await {
                    tracing::warn!(error = %e, "matcher: saving cursors failed; will retry");
                }
                // Drain notifications that piled up, then resync the book.
                while let Some(Ok(Some(_))) = listener.try_recv().now_or_never() {}
                matcher.reload().await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_remembers_trades_and_keeps_the_newest_position() {
        let mut p = Progress::default();
        p.mark("KRW-X", 10, 1000);
        p.mark("KRW-X", 9, 999);
        assert!(p.seen("KRW-X", 999) && p.seen("KRW-X", 1000) && !p.seen("KRW-Y", 1000));
        assert_eq!(
            p.cursors["KRW-X"],
            (10, 1000),
            "a late trade does not move it back"
        );
        for id in 0..(SEEN as i64 + 5) {
            p.mark("KRW-X", 20, 2000 + id);
        }
        assert!(
            !p.seen("KRW-X", 999),
            "the oldest are forgotten past the bound"
        );
    }
}
