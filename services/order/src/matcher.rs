//! Fills open limit orders when live trades cross their price, and runs
//! recovery. Exactly one replica does this at a time: the one holding a
//! Postgres advisory lock on its own connection (if that connection dies,
//! another replica takes over).
//!
//! The leader keeps the open limit orders in memory (loaded at start, kept
//! current through `order_events` notifications), follows market-data's trade
//! stream (all markets, one subscription), and on each trade fills, in
//! price then time priority, the bids priced at or above it and the asks at or
//! below it, up to the trade's volume, at each order's own limit price.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use exchange_proto::marketdata::v1 as md;
use futures_util::FutureExt;
use rust_decimal::Decimal;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::{self, Exec, Side};
use crate::metrics;
use crate::service::Orders;
use crate::store::{self, OrderRow};

/// The advisory lock key of the matcher.
const LEADER_LOCK: i64 = 0x004D_4154_4348_4552; // "MATCHER"

#[derive(Clone, Debug)]
struct Open {
    id: Uuid,
    side: Side,
    price: Decimal,
    remaining: Decimal,
    trades_count: i32,
    fee_rate: Decimal,
    created_ms: i64,
}

impl Open {
    fn from_row(row: &OrderRow) -> Option<Self> {
        if row.state != "wait" || row.ord_type != "limit" {
            return None;
        }
        Some(Self {
            id: row.id,
            side: store::side_of(row),
            price: row.price?,
            remaining: row.volume? - row.executed_volume,
            trades_count: row.trades_count,
            fee_rate: row.fee_rate,
            created_ms: row.created_at.timestamp_millis(),
        })
    }
}

/// Open limit orders by market.
#[derive(Default)]
struct Book {
    by_market: HashMap<String, Vec<Open>>,
}

impl Book {
    fn upsert(&mut self, market: &str, order: Option<Open>, id: Uuid) {
        let list = self.by_market.entry(market.to_owned()).or_default();
        list.retain(|o| o.id != id);
        if let Some(o) = order {
            list.push(o);
        }
        if list.is_empty() {
            self.by_market.remove(market);
        }
    }

    /// Orders a trade at `price` fills, in priority order.
    fn crossing(&self, market: &str, price: Decimal, trade_ms: i64) -> Vec<Open> {
        let Some(list) = self.by_market.get(market) else {
            return Vec::new();
        };
        let mut bids: Vec<Open> = list
            .iter()
            .filter(|o| o.side == Side::Bid && o.price >= price && o.created_ms <= trade_ms)
            .cloned()
            .collect();
        let mut asks: Vec<Open> = list
            .iter()
            .filter(|o| o.side == Side::Ask && o.price <= price && o.created_ms <= trade_ms)
            .cloned()
            .collect();
        bids.sort_by(|a, b| b.price.cmp(&a.price).then(a.created_ms.cmp(&b.created_ms)));
        asks.sort_by(|a, b| a.price.cmp(&b.price).then(a.created_ms.cmp(&b.created_ms)));
        bids.into_iter().chain(asks).collect()
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
                &orders,
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

async fn lead(
    orders: &Orders,
    database_url: &sqlx::postgres::PgConnectOptions,
    lock: &mut PgConnection,
    recovery_every: Duration,
    recovery_min_age: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut listener =
        PgListener::connect_with(&sqlx::PgPool::connect_lazy_with(database_url.clone())).await?;
    listener.listen("order_events").await?;
    if let Err(e) = orders.recover(recovery_min_age).await {
        tracing::warn!(error = %e, "recovery pass failed; will retry");
    }
    let mut book = Book::default();
    for row in store::waiting(orders.pool()).await? {
        let open = Open::from_row(&row);
        book.upsert(&row.market, open, row.id);
    }
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
        // Notifications first: an order placed before a trade must be in the
        // book when that trade is matched.
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            notification = listener.recv() => {
                let notification = notification?;
                if let Some(id) = notification.payload().split(' ').next().and_then(|s| Uuid::parse_str(s).ok())
                    && let Some(row) = store::get(orders.pool(), id).await?
                {
                    book.upsert(&row.market, Open::from_row(&row), row.id);
                }
            }
            trade = next_trade => match trade {
                Ok(Some(message)) => {
                    if let Some(t) = message.trade {
                        on_trade(orders, &mut book, &t).await;
                    }
                }
                _ => {
                    trades = None;
                    metrics::MATCHER_LEADING.set(0);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            _ = tick.tick() => {
                // Still holding the lock (the connection is alive)?
                sqlx::query("SELECT 1").execute(&mut *lock).await?;
                if let Err(e) = orders.recover(recovery_min_age).await {
                    tracing::warn!(error = %e, "recovery pass failed; will retry");
                }
                // Drain notifications that piled up, then resync the book.
                while let Some(Ok(Some(_))) = listener.try_recv().now_or_never() {}
                book = Book::default();
                for row in store::waiting(orders.pool()).await? {
                    let open = Open::from_row(&row);
                    book.upsert(&row.market, open, row.id);
                }
            }
        }
    }
}

async fn on_trade(orders: &Orders, book: &mut Book, trade: &md::Trade) {
    let (Ok(price), Ok(volume)) = (
        trade.trade_price.parse::<Decimal>(),
        trade.trade_volume.parse::<Decimal>(),
    ) else {
        return;
    };
    let mut left_bid = volume;
    let mut left_ask = volume;
    for open in book.crossing(&trade.market, price, trade.trade_timestamp) {
        let left = match open.side {
            Side::Bid => &mut left_bid,
            Side::Ask => &mut left_ask,
        };
        let take = open.remaining.min(*left);
        if take <= Decimal::ZERO {
            continue;
        }
        let funds = open.price * take;
        let exec = Exec {
            price: open.price,
            volume: take,
            funds,
            fee: domain::fee(funds, open.fee_rate),
        };
        match orders.fill(open.id, open.trades_count, &exec).await {
            Ok(Some(row)) => {
                *left -= take;
                metrics::LIMIT_FILLS
                    .with_label_values(&[open.side.as_str()])
                    .inc();
                tracing::info!(order = %open.id, price = %open.price, volume = %take, state = %row.state, "limit order filled");
                book.upsert(&trade.market, Open::from_row(&row), open.id);
            }
            Ok(None) => {
                // Cancelled or changed meanwhile: refresh from the database.
                if let Ok(Some(row)) = store::get(orders.pool(), open.id).await {
                    book.upsert(&trade.market, Open::from_row(&row), open.id);
                }
            }
            Err(e) => tracing::warn!(order = %open.id, error = %e, "filling a limit order failed"),
        }
    }
}
