//! The matcher's book: the open limit orders of every market in price then
//! time priority, so that a trade meets only the orders it crosses. Public for
//! the benchmark `examples/matcher_book.rs`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::domain::{OrdType, Side, State};
use crate::store::OrderRow;

#[derive(Clone, Debug)]
pub struct Resting {
    pub id: Uuid,
    pub side: Side,
    pub price: Decimal,
    pub remaining: Decimal,
    pub trades_count: i32,
    pub fee_rate: Decimal,
    /// Funds it has executed so far: its next fill's fee depends on them.
    pub executed_funds: Decimal,
    /// When the order opened: it takes part in trades from then on.
    pub since_ms: i64,
}

impl Resting {
    pub(crate) fn from_row(row: &OrderRow) -> Option<Self> {
        if row.state != State::Wait || row.ord_type != OrdType::Limit {
            return None;
        }
        Some(Self {
            id: row.id,
            side: row.side,
            price: row.price?,
            remaining: row.volume? - row.executed_volume,
            trades_count: row.trades_count,
            fee_rate: row.fee_rate,
            executed_funds: row.executed_funds,
            since_ms: row.opened_at.unwrap_or(row.created_at).timestamp_millis(),
        })
    }
}

/// One market's resting orders in priority order: bids highest price first,
/// asks lowest first, then oldest first.
#[derive(Default)]
pub(crate) struct MarketBook {
    bids: BTreeMap<(Reverse<Decimal>, i64, Uuid), Resting>,
    asks: BTreeMap<(Decimal, i64, Uuid), Resting>,
}

impl MarketBook {
    fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    pub(crate) fn oldest_ms(&self) -> Option<i64> {
        self.bids
            .values()
            .chain(self.asks.values())
            .map(|o| o.since_ms)
            .min()
    }
}

/// Open limit orders by market, and where each one is.
#[derive(Default)]
pub struct Book {
    pub(crate) markets: HashMap<String, MarketBook>,
    pub(crate) located: HashMap<Uuid, (String, Side, Decimal, i64)>,
}

impl Book {
    pub(crate) fn remove(&mut self, id: Uuid) {
        let Some((market, side, price, created)) = self.located.remove(&id) else {
            return;
        };
        if let Some(book) = self.markets.get_mut(&market) {
            match side {
                Side::Bid => book.bids.remove(&(Reverse(price), created, id)),
                Side::Ask => book.asks.remove(&(price, created, id)),
            };
            if book.is_empty() {
                self.markets.remove(&market);
            }
        }
    }

    pub fn upsert(&mut self, market: &str, order: Option<Resting>, id: Uuid) {
        self.remove(id);
        let Some(o) = order.filter(|o| o.remaining > Decimal::ZERO) else {
            return;
        };
        self.located
            .insert(id, (market.to_owned(), o.side, o.price, o.since_ms));
        let book = self.markets.entry(market.to_owned()).or_default();
        match o.side {
            Side::Bid => book.bids.insert((Reverse(o.price), o.since_ms, id), o),
            Side::Ask => book.asks.insert((o.price, o.since_ms, id), o),
        };
    }

    /// Orders a trade at `price` made at `trade_ms` fills, in priority order:
    /// only those that cross, never one placed after the trade.
    pub fn crossing(&self, market: &str, price: Decimal, trade_ms: i64) -> Vec<Resting> {
        let Some(book) = self.markets.get(market) else {
            return Vec::new();
        };
        let bids = book
            .bids
            .values()
            .take_while(|o| o.price >= price)
            .filter(|o| o.since_ms <= trade_ms);
        let asks = book
            .asks
            .values()
            .take_while(|o| o.price <= price)
            .filter(|o| o.since_ms <= trade_ms);
        bids.chain(asks).cloned().collect()
    }

    /// The order `id` as the book holds it now.
    pub(crate) fn get(&self, market: &str, id: Uuid) -> Option<Resting> {
        let (_, side, price, since) = self.located.get(&id)?;
        let book = self.markets.get(market)?;
        match side {
            Side::Bid => book.bids.get(&(Reverse(*price), *since, id)).cloned(),
            Side::Ask => book.asks.get(&(*price, *since, id)).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn resting(side: Side, price: &str, since_ms: i64) -> Resting {
        Resting {
            id: Uuid::new_v4(),
            side,
            price: Decimal::from_str(price).unwrap(),
            remaining: Decimal::ONE,
            trades_count: 0,
            fee_rate: Decimal::ZERO,
            executed_funds: Decimal::ZERO,
            since_ms,
        }
    }

    #[test]
    fn a_trade_meets_only_the_orders_it_crosses_best_price_then_oldest_first() {
        let mut book = Book::default();
        let orders = [
            resting(Side::Bid, "100", 5),
            resting(Side::Bid, "102", 9),
            resting(Side::Bid, "102", 3),
            resting(Side::Bid, "99", 1),
            resting(Side::Ask, "98", 2),
            resting(Side::Ask, "101", 1),
            resting(Side::Ask, "97", 4),
            resting(Side::Bid, "103", 50),
        ];
        for o in &orders {
            book.upsert("KRW-X", Some(o.clone()), o.id);
        }
        let ids = |v: Vec<Resting>| v.into_iter().map(|o| o.id).collect::<Vec<_>>();
        let crossing = book.crossing("KRW-X", Decimal::from(100), 10);
        assert_eq!(
            ids(crossing),
            [
                orders[2].id,
                orders[1].id,
                orders[0].id,
                orders[6].id,
                orders[4].id
            ],
            "bids at or above 100 by price then age, asks at or below; the bid placed after the trade waits"
        );
        assert!(book.crossing("KRW-Y", Decimal::from(100), 10).is_empty());
        // Filled or cancelled orders leave the book; so does a market's last one.
        for o in &orders {
            book.upsert("KRW-X", None, o.id);
        }
        assert!(book.markets.is_empty() && book.located.is_empty());
    }
}
