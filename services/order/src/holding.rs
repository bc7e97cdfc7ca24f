//! What an order holds of its owner's money, as Upbit shows it on an order:
//! `remaining_volume`, `reserved_fee`, `remaining_fee` and `locked`.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::domain::{Amounts, Side, State};
use crate::store::OrderRow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holding {
    /// What is left of the volume (none for a market buy).
    pub remaining_volume: Option<Decimal>,
    /// The fee reserved on a bid's whole total, rounded up to 8 places (asks
    /// pay their fee out of what they receive, so they reserve none).
    pub reserved_fee: Decimal,
    /// What of the reserved fee an open bid has not paid yet.
    pub remaining_fee: Decimal,
    /// What an open order still locks: a bid's quote, an ask's base.
    pub locked: Decimal,
}

impl Holding {
    pub fn of(o: &OrderRow) -> Self {
        let open = matches!(o.state, State::Wait | State::Pending);
        let bid = o.side == Side::Bid;
        let reserved_fee = if bid {
            let total = Amounts::stored(o.ord_type, o.side, o.price, o.volume)
                .and_then(Amounts::most_spent)
                .unwrap_or_default();
            (total * o.fee_rate).round_dp_with_strategy(8, RoundingStrategy::AwayFromZero)
        } else {
            Decimal::ZERO
        };
        let unless_closed = |d: Decimal| {
            if open {
                d.max(Decimal::ZERO)
            } else {
                Decimal::ZERO
            }
        };
        Self {
            remaining_volume: o.volume.map(|v| (v - o.executed_volume).max(Decimal::ZERO)),
            reserved_fee,
            remaining_fee: if bid {
                unless_closed(reserved_fee - o.paid_fee)
            } else {
                Decimal::ZERO
            },
            locked: unless_closed(if bid {
                o.reserved_amount - o.executed_funds - o.paid_fee
            } else {
                o.reserved_amount - o.executed_volume
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::domain::OrdType;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn row(side: Side, ord_type: OrdType, price: Option<&str>, volume: Option<&str>) -> OrderRow {
        OrderRow {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            identifier: None,
            market: "KRW-BTC".into(),
            side,
            ord_type,
            price: price.map(d),
            volume: volume.map(d),
            state: State::Wait,
            reserved_currency: "KRW".into(),
            reserved_amount: Decimal::ZERO,
            executed_volume: Decimal::ZERO,
            executed_funds: Decimal::ZERO,
            paid_fee: Decimal::ZERO,
            trades_count: 0,
            reject_reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            fee_rate: d("0.0005"),
            plan: serde_json::Value::Null,
            finalized: false,
            request_key: None,
            plan_deadline: None,
            opened_at: None,
            time_in_force: None,
            smp_type: None,
        }
    }

    #[test]
    fn an_open_bid_holds_what_it_has_not_spent_and_its_unpaid_fee() {
        // 0.5 at 5,100,001 KRW: 2,550,000.5 plus a fee of 1,275.00025 rounded up.
        let mut o = row(Side::Bid, OrdType::Limit, Some("5100001"), Some("0.5"));
        o.reserved_amount = d("2551275.50025");
        o.executed_volume = d("0.2");
        o.executed_funds = d("1020000.2");
        o.paid_fee = d("510.0001");
        let h = Holding::of(&o);
        assert_eq!(h.remaining_volume, Some(d("0.3")));
        assert_eq!(h.reserved_fee, d("1275.00025"));
        assert_eq!(h.remaining_fee, d("765.00015"));
        assert_eq!(h.locked, d("1530765.30015"));
        // Closed: nothing held, whatever the arithmetic says.
        o.state = State::Cancel;
        let h = Holding::of(&o);
        assert_eq!((h.remaining_fee, h.locked), (Decimal::ZERO, Decimal::ZERO));
        assert_eq!(h.reserved_fee, d("1275.00025"), "still what was reserved");
    }

    #[test]
    fn market_buys_reserve_a_fee_on_their_total_and_asks_none() {
        let mut buy = row(Side::Bid, OrdType::Price, Some("10000.00001"), None);
        buy.state = State::Done;
        let h = Holding::of(&buy);
        assert_eq!(h.remaining_volume, None);
        assert_eq!(h.reserved_fee, d("5.00000001"), "rounded up");
        let mut ask = row(Side::Ask, OrdType::Limit, Some("5100000"), Some("0.5"));
        ask.reserved_amount = d("0.5");
        ask.executed_volume = d("0.1");
        let h = Holding::of(&ask);
        assert_eq!(
            (h.reserved_fee, h.remaining_fee),
            (Decimal::ZERO, Decimal::ZERO)
        );
        assert_eq!(h.locked, d("0.4"));
        assert_eq!(h.remaining_volume, Some(d("0.4")));
    }
}
