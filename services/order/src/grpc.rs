//! gRPC adapter for the order service.

use std::sync::Arc;

use exchange_proto::order::v1 as pb;
use exchange_proto::order::v1::order_service_server::OrderService;
use rust_decimal::Decimal;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{OrdType, Side, SmpType, State, TimeInForce};
use crate::error::OrderError;
use crate::holding::Holding;
use crate::metrics;
use crate::service::{Orders, Place, View};
use crate::store;
use crate::updates::Change;

type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct Order {
    orders: Arc<Orders>,
    changes: broadcast::Sender<Change>,
    /// Ends the update streams once the server drains: a follower reconnects
    /// to another replica rather than hold this one's shutdown open.
    draining: CancellationToken,
}

impl Order {
    pub fn new(
        orders: Arc<Orders>,
        changes: broadcast::Sender<Change>,
        draining: CancellationToken,
    ) -> Self {
        Self {
            orders,
            changes,
            draining,
        }
    }
}

fn text(d: Decimal) -> String {
    exchange_proto::decimal::to_wire(d)
}

fn uuid(field: &str, value: &str) -> Result<Option<Uuid>, OrderError> {
    if value.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(value)
        .map(Some)
        .map_err(|_| OrderError::invalid(format!("{field} must be a UUID")))
}

/// A client's order identifier, if given.
fn identifier(value: &str) -> Result<Option<&str>, OrderError> {
    service_kit::text::optional_key("identifier", value, crate::service::MAX_IDENTIFIER)
        .map_err(OrderError::invalid)
}

fn user(value: &str) -> Result<Uuid, OrderError> {
    uuid("user_id", value)?.ok_or_else(|| OrderError::invalid("user_id is required"))
}

fn state(s: State) -> pb::OrderState {
    match s {
        State::Pending => pb::OrderState::Pending,
        State::Wait => pb::OrderState::Wait,
        State::Done => pb::OrderState::Done,
        State::Cancel => pb::OrderState::Cancel,
        State::Rejected => pb::OrderState::Rejected,
    }
}

fn side(s: Side) -> pb::Side {
    match s {
        Side::Bid => pb::Side::Bid,
        Side::Ask => pb::Side::Ask,
    }
}

fn ord_type(t: OrdType) -> pb::OrderType {
    match t {
        OrdType::Limit => pb::OrderType::Limit,
        OrdType::Price => pb::OrderType::Price,
        OrdType::Market => pb::OrderType::Market,
        OrdType::Best => pb::OrderType::Best,
    }
}

/// The order as clients see it (Upbit's fields).
pub fn order_pb(view: &View) -> pb::Order {
    let o = &view.order;
    let held = Holding::of(o);
    pb::Order {
        uuid: o.id.to_string(),
        user_id: o.user_id.to_string(),
        market: o.market.clone(),
        side: side(o.side) as i32,
        ord_type: ord_type(o.ord_type) as i32,
        price: o.price.map(text).unwrap_or_default(),
        volume: o.volume.map(text).unwrap_or_default(),
        remaining_volume: held.remaining_volume.map(text).unwrap_or_default(),
        reserved_fee: text(held.reserved_fee),
        remaining_fee: text(held.remaining_fee),
        paid_fee: text(o.paid_fee),
        locked: text(held.locked),
        executed_volume: text(o.executed_volume),
        executed_funds: text(o.executed_funds),
        state: state(o.state) as i32,
        created_at: o.created_at.timestamp_millis(),
        trades_count: o.trades_count.max(0) as u32,
        identifier: o.identifier.clone().unwrap_or_default(),
        trades: view
            .executions
            .iter()
            .map(|e| pb::Execution {
                seq: e.seq.max(0) as u32,
                price: text(e.price),
                volume: text(e.volume),
                funds: text(e.funds),
                fee: text(e.fee),
                trend: side(e.trend) as i32,
                created_at: e.created_at.timestamp_millis(),
            })
            .collect(),
        reject_reason: o.reject_reason.clone().unwrap_or_default(),
        time_in_force: match o.time_in_force.as_deref().and_then(TimeInForce::parse) {
            None => pb::TimeInForce::Unspecified,
            Some(TimeInForce::Ioc) => pb::TimeInForce::Ioc,
            Some(TimeInForce::Fok) => pb::TimeInForce::Fok,
            Some(TimeInForce::PostOnly) => pb::TimeInForce::PostOnly,
        } as i32,
        smp_type: o.smp_type.clone().unwrap_or_default(),
    }
}

fn state_name(v: i32) -> Result<&'static str, OrderError> {
    match pb::OrderState::try_from(v) {
        Ok(pb::OrderState::Pending) => Ok("pending"),
        Ok(pb::OrderState::Wait) => Ok("wait"),
        Ok(pb::OrderState::Done) => Ok("done"),
        Ok(pb::OrderState::Cancel) => Ok("cancel"),
        Ok(pb::OrderState::Rejected) => Ok("rejected"),
        _ => Err(OrderError::invalid("unknown order state")),
    }
}

#[tonic::async_trait]
impl OrderService for Order {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let req = request.into_inner();
        let side = match pb::Side::try_from(req.side) {
            Ok(pb::Side::Bid) => Side::Bid,
            Ok(pb::Side::Ask) => Side::Ask,
            _ => return Err(OrderError::invalid("side must be bid or ask").into()),
        };
        let ord_type = match pb::OrderType::try_from(req.ord_type) {
            Ok(pb::OrderType::Limit) => OrdType::Limit,
            Ok(pb::OrderType::Price) => OrdType::Price,
            Ok(pb::OrderType::Market) => OrdType::Market,
            Ok(pb::OrderType::Best) => OrdType::Best,
            _ => {
                return Err(
                    OrderError::invalid("ord_type must be limit, price, market or best").into(),
                );
            }
        };
        let time_in_force = match pb::TimeInForce::try_from(req.time_in_force) {
            Ok(pb::TimeInForce::Unspecified) => None,
            Ok(pb::TimeInForce::Ioc) => Some(TimeInForce::Ioc),
            Ok(pb::TimeInForce::Fok) => Some(TimeInForce::Fok),
            Ok(pb::TimeInForce::PostOnly) => Some(TimeInForce::PostOnly),
            Err(_) => return Err(OrderError::invalid("unknown time_in_force").into()),
        };
        let smp_type = match req.smp_type.as_str() {
            "" => None,
            text => Some(SmpType::parse(text).ok_or_else(|| {
                OrderError::invalid("smp_type must be cancel_maker, cancel_taker, reduce or none")
            })?),
        };
        let place = Place {
            user: user(&req.user_id)?,
            market: &req.market,
            side,
            ord_type,
            price: &req.price,
            volume: &req.volume,
            identifier: (!req.identifier.is_empty()).then_some(req.identifier.as_str()),
            request_key: (!req.request_key.is_empty()).then_some(req.request_key.as_str()),
            time_in_force,
            smp_type,
        };
        if req.only_existing {
            let view = self.orders.existing(place).await?;
            return Ok(Response::new(pb::PlaceOrderResponse {
                order: Some(order_pb(&view)),
                created: false,
            }));
        }
        if req.test {
            let view = self.orders.test(place).await?;
            return Ok(Response::new(pb::PlaceOrderResponse {
                order: Some(order_pb(&view)),
                created: false,
            }));
        }
        let placed = self.orders.place(place).await;
        let (view, created) = metrics::count_placement(ord_type.as_str(), side.as_str(), placed)?;
        Ok(Response::new(pb::PlaceOrderResponse {
            order: Some(order_pb(&view)),
            created,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let req = request.into_inner();
        let identifier = identifier(&req.identifier)?;
        let view = self
            .orders
            .cancel(user(&req.user_id)?, uuid("uuid", &req.uuid)?, identifier)
            .await?;
        metrics::CANCELS.inc();
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order_pb(&view)),
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let req = request.into_inner();
        let identifier = identifier(&req.identifier)?;
        let view = self
            .orders
            .get(user(&req.user_id)?, uuid("uuid", &req.uuid)?, identifier)
            .await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order_pb(&view)),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let req = request.into_inner();
        let user = user(&req.user_id)?;
        let states: Vec<&str> = if req.states.is_empty() {
            vec!["pending", "wait"]
        } else {
            req.states
                .iter()
                .map(|s| state_name(*s))
                .collect::<Result<_, _>>()?
        };
        let limit = match req.limit {
            0 => 100,
            n if n <= 1000 => i64::from(n),
            _ => return Err(OrderError::invalid("limit must be between 1 and 1000").into()),
        };
        let page = i64::from(req.page.max(1));
        if req.uuids.len() + req.identifiers.len() > 100 {
            return Err(OrderError::invalid("at most 100 uuids or identifiers").into());
        }
        let ids = req
            .uuids
            .iter()
            .map(|u| uuid("uuids", u).map(|o| o.unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        for i in &req.identifiers {
            identifier(i)?;
        }
        let market = (!req.market.is_empty()).then_some(req.market.as_str());
        if let Some(m) = market {
            upbit::market::MarketCode::parse(m).map_err(|e| OrderError::invalid(e.to_string()))?;
        }
        let time = |ms: i64, field: &str| match ms {
            0 => Ok(None),
            ms => chrono::DateTime::from_timestamp_millis(ms)
                .map(Some)
                .ok_or_else(|| OrderError::invalid(format!("{field} is out of range"))),
        };
        let filter = store::ListFilter {
            user,
            market,
            states: &states,
            ids: &ids,
            identifiers: &req.identifiers,
            created_from: time(req.created_from, "created_from")?,
            created_to: time(req.created_to, "created_to")?,
            limit,
            offset: (page - 1).saturating_mul(limit),
            ascending: req.ascending,
        };
        let rows = store::list(self.orders.pool(), &filter)
            .await
            .map_err(OrderError::from)?;
        let orders = rows
            .into_iter()
            .map(|order| {
                order_pb(&View {
                    order,
                    executions: Vec::new(),
                })
            })
            .collect();
        Ok(Response::new(pb::ListOrdersResponse { orders }))
    }

    async fn get_order_chance(
        &self,
        request: Request<pb::GetOrderChanceRequest>,
    ) -> Result<Response<pb::GetOrderChanceResponse>, Status> {
        let market = request.into_inner().market;
        let code = upbit::market::MarketCode::parse(&market)
            .map_err(|e| OrderError::invalid(e.to_string()))?;
        let fee = text(self.orders.fee_rate());
        Ok(Response::new(pb::GetOrderChanceResponse {
            market: code.to_string(),
            bid_fee: fee.clone(),
            ask_fee: fee,
            quote_currency: code.quote().to_owned(),
            base_currency: code.base().to_owned(),
            min_total: text(upbit::market::min_order_total(code.quote())),
            max_total: text(crate::domain::max_total()),
        }))
    }

    async fn stream_order_updates(
        &self,
        request: Request<pb::StreamOrderUpdatesRequest>,
    ) -> Result<Response<BoxStream<pb::StreamOrderUpdatesResponse>>, Status> {
        let user = user(&request.into_inner().user_id)?;
        let mut changes = self.changes.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let (orders, draining) = (self.orders.clone(), self.draining.clone());
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = tx.closed() => return,
                    _ = draining.cancelled() => return,
                    c = changes.recv() => c,
                };
                let (order, owner) = match change {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if owner != user {
                    continue;
                }
                let update = match orders
                    .get_with(user, Some(order), None, crate::service::UPDATE_TRADES)
                    .await
                {
                    Ok(view) => Ok(pb::StreamOrderUpdatesResponse {
                        order: Some(order_pb(&view)),
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                if tx.send(update).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
