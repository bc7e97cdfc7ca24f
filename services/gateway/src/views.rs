//! JSON views of orders and balances: Upbit's shapes for `/v1`, the native ones
//! for `/api/v1`. Decimals are strings in both.

use chrono::{DateTime, FixedOffset};
use exchange_proto::inventory::v1 as inv;
use exchange_proto::order::v1 as pb;
use serde_json::{Value, json};

pub fn kst(ms: i64) -> String {
    let offset = FixedOffset::east_opt(9 * 3600).expect("+09:00 is a valid offset");
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&offset)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::from(s)
    }
}

pub fn side(v: i32) -> &'static str {
    if v == pb::Side::Ask as i32 {
        "ask"
    } else {
        "bid"
    }
}

pub fn ord_type(v: i32) -> &'static str {
    match pb::OrderType::try_from(v) {
        Ok(pb::OrderType::Limit) => "limit",
        Ok(pb::OrderType::Price) => "price",
        Ok(pb::OrderType::Best) => "best",
        _ => "market",
    }
}

/// Native state names (Upbit's plus `pending` and `rejected`).
pub fn state(v: i32) -> &'static str {
    match pb::OrderState::try_from(v) {
        Ok(pb::OrderState::Pending) => "pending",
        Ok(pb::OrderState::Wait) => "wait",
        Ok(pb::OrderState::Done) => "done",
        Ok(pb::OrderState::Cancel) => "cancel",
        Ok(pb::OrderState::Rejected) => "rejected",
        _ => "unknown",
    }
}

/// An order as Upbit writes it (`trades` only for `GET /v1/order`).
pub fn upbit_order(o: &pb::Order, with_trades: bool) -> Value {
    let mut v = json!({
        "uuid": o.uuid,
        "side": side(o.side),
        "ord_type": ord_type(o.ord_type),
        "price": opt(&o.price),
        // Upbit has no pending state: an order not yet open is still "wait".
        "state": match state(o.state) { "pending" => "wait", "rejected" => "cancel", s => s },
        "market": o.market,
        "created_at": kst(o.created_at),
        "volume": opt(&o.volume),
        "remaining_volume": opt(&o.remaining_volume),
        "reserved_fee": o.reserved_fee,
        "remaining_fee": o.remaining_fee,
        "paid_fee": o.paid_fee,
        "locked": o.locked,
        "executed_volume": o.executed_volume,
        "executed_funds": o.executed_funds,
        "trades_count": o.trades_count,
        "smp_type": smp_type(o),
        // Paper orders fill against the market's trades, never against each
        // other: self-match prevention never has anything to prevent.
        "prevented_volume": "0",
        "prevented_locked": "0",
    });
    if let Some(tif) = time_in_force(o.time_in_force) {
        v["time_in_force"] = Value::from(tif);
    }
    if !o.identifier.is_empty() {
        v["identifier"] = Value::from(o.identifier.as_str());
    }
    if with_trades {
        v["trades"] = o
            .trades
            .iter()
            .map(|t| {
                json!({
                    "market": o.market,
                    "uuid": trade_uuid(&o.uuid, t.seq),
                    "price": t.price,
                    "volume": t.volume,
                    "funds": t.funds,
                    // Who took: a buyer ("up") or a seller ("down").
                    "trend": if side(t.trend) == "bid" { "up" } else { "down" },
                    "created_at": kst(t.created_at),
                    "side": side(o.side),
                    "fee": t.fee,
                })
            })
            .collect();
    }
    v
}

/// The uuid of an order's `seq`th fill, as Upbit gives each trade one: a UUID
/// derived from the order's (v5), so the same fill has the same uuid on every
/// read, on REST and on the private WebSocket.
pub fn trade_uuid(order_uuid: &str, seq: u32) -> String {
    match uuid::Uuid::parse_str(order_uuid) {
        Ok(order) => uuid::Uuid::new_v5(&order, &seq.to_be_bytes()).to_string(),
        Err(_) => format!("{order_uuid}-{seq}"),
    }
}

/// Upbit's `time_in_force` name, if the order has one.
pub fn time_in_force(v: i32) -> Option<&'static str> {
    match pb::TimeInForce::try_from(v) {
        Ok(pb::TimeInForce::Ioc) => Some("ioc"),
        Ok(pb::TimeInForce::Fok) => Some("fok"),
        Ok(pb::TimeInForce::PostOnly) => Some("post_only"),
        _ => None,
    }
}

/// The order's self-match prevention: as stored, or Upbit's default for an
/// order from before it was stored.
pub fn smp_type(o: &pb::Order) -> &str {
    match (o.smp_type.as_str(), time_in_force(o.time_in_force)) {
        ("", Some("post_only")) => "none",
        ("", _) => "cancel_maker",
        (given, _) => given,
    }
}

/// An order in the native API.
pub fn native_order(o: &pb::Order) -> Value {
    json!({
        "uuid": o.uuid,
        "market": o.market,
        "side": side(o.side),
        "ord_type": ord_type(o.ord_type),
        "price": opt(&o.price),
        "volume": opt(&o.volume),
        "remaining_volume": opt(&o.remaining_volume),
        "state": state(o.state),
        "executed_volume": o.executed_volume,
        "executed_funds": o.executed_funds,
        "paid_fee": o.paid_fee,
        "locked": o.locked,
        "trades_count": o.trades_count,
        "identifier": opt(&o.identifier),
        "time_in_force": time_in_force(o.time_in_force),
        "smp_type": smp_type(o),
        "reject_reason": opt(&o.reject_reason),
        "created_at": o.created_at,
        "trades": o.trades.iter().map(|t| json!({
            "seq": t.seq, "price": t.price, "volume": t.volume, "funds": t.funds, "fee": t.fee, "created_at": t.created_at,
        })).collect::<Vec<_>>(),
    })
}

/// A balance as Upbit's `/v1/accounts` writes it.
pub fn upbit_account(b: &inv::Balance) -> Value {
    json!({
        "currency": b.currency,
        "balance": b.balance,
        "locked": b.locked,
        "avg_buy_price": b.avg_buy_price,
        "avg_buy_price_modified": false,
        "unit_currency": b.unit_currency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upbit_times_are_kst() {
        assert_eq!(kst(1_735_792_085_824), "2025-01-02T13:28:05+09:00");
    }
}
