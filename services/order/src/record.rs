//! An order's record: the order as this service writes it once placed, which
//! inventory keeps beside the order's reservation (same transaction) until the
//! order is stored and confirmed. It is what makes placement two commits
//! (inventory's, then the order's) without losing an order to a crash in
//! between: recovery writes an order inventory executed but this service never
//! stored from its record. See [`crate::service`].

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Exec, State};
use crate::error::OrderError;
use crate::store::OrderRow;

/// Order ids are derived in this namespace from the request key (or the
/// identifier), so that every attempt of one request names the same order.
const ORDER_IDS: Uuid = Uuid::from_u128(0x6f72_6465_7273_4000_8000_7570_6269_7421);

/// The id every attempt of a request shares: derived from its key (or,
/// without one, its identifier, which is unique per user for good). `None`
/// for a request with neither: its order gets a new id.
pub fn shared_id(user: Uuid, request_key: Option<&str>, identifier: Option<&str>) -> Option<Uuid> {
    let name = match (request_key, identifier) {
        (Some(key), _) => format!("{user}/key/{key}"),
        (None, Some(identifier)) => format!("{user}/identifier/{identifier}"),
        (None, None) => return None,
    };
    Some(Uuid::new_v5(&ORDER_IDS, name.as_bytes()))
}

/// Everything needed to write the order as placed (its id, user and time come
/// with the reservation). Deterministic: two attempts that plan the same
/// fills make the same record, and inventory takes the second as a repeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub market: String,
    pub side: String,
    pub ord_type: String,
    pub price: Option<Decimal>,
    pub volume: Option<Decimal>,
    pub identifier: Option<String>,
    pub request_key: Option<String>,
    pub time_in_force: Option<String>,
    pub smp_type: Option<String>,
    pub reserved_currency: String,
    pub reserved_amount: Decimal,
    pub fee_rate: Decimal,
    /// WAIT, DONE or CANCEL: where the order went once placed.
    pub state: String,
    /// The executions it made at once, in order.
    pub plan: Vec<Exec>,
}

impl Record {
    /// The record of a PENDING order once `plan` executes, leaving it `state`.
    pub fn new(row: &OrderRow, plan: &[Exec], state: State) -> Self {
        Self {
            market: row.market.clone(),
            side: row.side.as_str().to_owned(),
            ord_type: row.ord_type.as_str().to_owned(),
            price: row.price,
            volume: row.volume,
            identifier: row.identifier.clone(),
            request_key: row.request_key.clone(),
            time_in_force: row.time_in_force.clone(),
            smp_type: row.smp_type.clone(),
            reserved_currency: row.reserved_currency.clone(),
            reserved_amount: row.reserved_amount,
            fee_rate: row.fee_rate,
            state: state.as_str().to_owned(),
            plan: plan.to_vec(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A record as inventory returns it; `None` when it is not one this
    /// service could have written.
    pub fn parse(text: &str) -> Option<Self> {
        let record: Self = serde_json::from_str(text).ok()?;
        let placed = matches!(
            State::parse(&record.state),
            Some(State::Wait | State::Done | State::Cancel)
        );
        (placed && record.plan.len() <= 1000).then_some(record)
    }

    /// The record inventory holds of `order` (`text`, empty for none); an
    /// error when it is not one this service could have written.
    pub fn held(text: &str, order: Uuid) -> Result<Option<Self>, OrderError> {
        if text.is_empty() {
            return Ok(None);
        }
        Self::parse(text).map(Some).ok_or_else(|| {
            OrderError::Internal(format!(
                "inventory holds a malformed record of order {order}"
            ))
        })
    }

    pub fn finalized(&self) -> bool {
        self.state != State::Wait.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_of_one_request_name_one_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let id = shared_id(a, Some("k1"), Some("i1"));
        assert!(id.is_some());
        assert_eq!(id, shared_id(a, Some("k1"), Some("i2")), "the key decides");
        assert_ne!(id, shared_id(b, Some("k1"), Some("i1")), "per user");
        assert_ne!(id, shared_id(a, Some("k2"), None));
        assert_eq!(
            shared_id(a, None, Some("i1")),
            shared_id(a, None, Some("i1"))
        );
        assert_ne!(
            shared_id(a, None, Some("i1")),
            shared_id(a, Some("i1"), None)
        );
        assert_eq!(shared_id(a, None, None), None, "nothing to share");
    }

    #[test]
    fn records_round_trip_and_refuse_what_was_never_placed() {
        let record = Record {
            market: "KRW-BTC".into(),
            side: "bid".into(),
            ord_type: "price".into(),
            price: Some(Decimal::new(10_000, 0)),
            volume: None,
            identifier: Some("x".into()),
            request_key: Some("idem:1".into()),
            time_in_force: None,
            smp_type: Some("cancel_maker".into()),
            reserved_currency: "KRW".into(),
            reserved_amount: Decimal::new(1_000_500_000, 5),
            fee_rate: Decimal::new(5, 4),
            state: "done".into(),
            plan: vec![Exec {
                price: Decimal::new(148_000_000, 0),
                volume: Decimal::new(6756, 8),
                funds: Decimal::new(99_988_800, 4),
                fee: Decimal::new(49_994_400, 10),
            }],
        };
        let text = record.to_json();
        assert_eq!(Record::parse(&text), Some(record.clone()));
        assert_eq!(
            text,
            Record::parse(&text).unwrap().to_json(),
            "deterministic"
        );
        assert!(
            text.contains(r#""reserved_amount":"10005.00000""#),
            "{text}"
        );
        let pending = Record {
            state: "pending".into(),
            ..record
        };
        assert_eq!(Record::parse(&pending.to_json()), None);
        assert_eq!(Record::parse("{}"), None);
        assert_eq!(Record::parse("[1]"), None);
        assert_eq!(Record::held("", Uuid::nil()).unwrap(), None);
        assert!(Record::held("{}", Uuid::nil()).is_err());
    }
}
