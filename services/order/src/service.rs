//! The order flow, apart from gRPC.
//!
//! Placing: validate → read the live orderbook → plan what fills at once →
//! write the order PENDING (with the plan) → one inventory call reserves the
//! funds and settles the planned fills (finalizing market orders) → record the
//! executions and the new state (WAIT, DONE or CANCEL). Three commits.
//!
//! Every step after the first write is idempotent, so [`Orders::recover`] can
//! finish any order a crash left half done: a PENDING order is driven through
//! the same inventory call again (or rejected when the funds are not there); a
//! DONE or CANCEL order not yet finalized gets its fills settled and the rest of
//! its reservation released.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use exchange_proto::inventory::v1 as inv;
use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use exchange_proto::marketdata::v1 as md;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use rust_decimal::Decimal;
use service_kit::grpc::Channel;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{self, Exec, Level, OrdType, Side, Validated};
use crate::error::OrderError;
use crate::store::{self, ExecRow, NewOrder, OrderRow};

/// Where to crash on purpose (`FAULT_AFTER`), to demonstrate and test recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// After writing the order PENDING.
    Persist,
    /// After inventory reserved (and settled) the funds, before the order
    /// becomes WAIT/DONE.
    Reserve,
}

/// A placement request (decimals still as the client wrote them).
pub struct Place<'a> {
    pub user: Uuid,
    pub market: &'a str,
    pub side: Side,
    pub ord_type: OrdType,
    pub price: &'a str,
    pub volume: &'a str,
    pub identifier: Option<&'a str>,
}

/// An order with its executions.
pub struct View {
    pub order: OrderRow,
    pub executions: Vec<ExecRow>,
}

pub struct Orders {
    pool: PgPool,
    inventory: InventoryServiceClient<Channel>,
    market_data: MarketDataServiceClient<Channel>,
    fee_rate: Decimal,
    fault: Option<Fault>,
    markets: RwLock<Option<(Instant, Arc<Vec<String>>)>>,
}

fn unavailable(what: &str, status: &tonic::Status) -> OrderError {
    OrderError::Unavailable(format!("{what}: {}", status.message()))
}

fn fill(seq: usize, e: &Exec) -> inv::Fill {
    inv::Fill {
        seq: seq as u32,
        price: e.price.to_string(),
        volume: e.volume.to_string(),
        funds: e.funds.to_string(),
        fee: e.fee.to_string(),
    }
}

fn exec_of(row: &ExecRow) -> Exec {
    Exec {
        price: row.price,
        volume: row.volume,
        funds: row.funds,
        fee: row.fee,
    }
}

fn crash(fault: Fault) -> ! {
    tracing::error!(?fault, "FAULT_AFTER: aborting the process on purpose");
    std::process::abort()
}

impl Orders {
    pub fn new(
        pool: PgPool,
        inventory: InventoryServiceClient<Channel>,
        market_data: MarketDataServiceClient<Channel>,
        fee_rate: Decimal,
        fault: Option<Fault>,
    ) -> Self {
        Self {
            pool,
            inventory,
            market_data,
            fee_rate,
            fault,
            markets: RwLock::new(None),
        }
    }

    pub fn fee_rate(&self) -> Decimal {
        self.fee_rate
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn market_data(&self) -> MarketDataServiceClient<Channel> {
        self.market_data.clone()
    }

    async fn known_market(&self, market: &str) -> Result<bool, OrderError> {
        let cached = self.markets.read().ok().and_then(|m| m.clone());
        let list = match cached {
            Some((at, list))
                if at.elapsed() < Duration::from_secs(30) && list.iter().any(|m| m == market) =>
            {
                list
            }
            _ => {
                let list: Arc<Vec<String>> = Arc::new(
                    self.market_data
                        .clone()
                        .list_markets(md::ListMarketsRequest::default())
                        .await
                        .map_err(|s| unavailable("market-data", &s))?
                        .into_inner()
                        .markets
                        .into_iter()
                        .map(|m| m.market)
                        .collect(),
                );
                if let Ok(mut cache) = self.markets.write() {
                    *cache = Some((Instant::now(), list.clone()));
                }
                list
            }
        };
        Ok(list.iter().any(|m| m == market))
    }

    /// The levels an order on `side` takes from: asks for bids, bids for asks.
    async fn levels(&self, market: &str, side: Side) -> Result<Vec<Level>, OrderError> {
        let books = self
            .market_data
            .clone()
            .get_orderbooks(md::GetOrderbooksRequest {
                markets: vec![market.to_owned()],
                depth: 0,
            })
            .await
            .map_err(|s| unavailable("market-data", &s))?
            .into_inner()
            .orderbooks;
        let parse = |s: &str| s.parse::<Decimal>().unwrap_or_default();
        Ok(books
            .into_iter()
            .next()
            .map(|book| {
                book.units
                    .iter()
                    .map(|u| match side {
                        Side::Bid => Level {
                            price: parse(&u.ask_price),
                            size: parse(&u.ask_size),
                        },
                        Side::Ask => Level {
                            price: parse(&u.bid_price),
                            size: parse(&u.bid_size),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn view(&self, order: OrderRow) -> Result<View, OrderError> {
        let executions = store::executions(&self.pool, order.id).await?;
        Ok(View { order, executions })
    }

    /// Places an order. With an identifier the user used before, returns that
    /// order instead (`false`): a retried request never makes a second order.
    pub async fn place(&self, req: Place<'_>) -> Result<(View, bool), OrderError> {
        if let Some(identifier) = req.identifier {
            if identifier.is_empty() || identifier.len() > 100 {
                return Err(OrderError::invalid(
                    "identifier must be 1 to 100 characters",
                ));
            }
            if let Some(existing) =
                store::get_for_user(&self.pool, req.user, None, Some(identifier)).await?
            {
                return Ok((self.view(existing).await?, false));
            }
        }
        let price = domain::parse_amount("price", req.price)?;
        let volume = domain::parse_amount("volume", req.volume)?;
        upbit::market::MarketCode::parse(req.market)
            .map_err(|e| OrderError::invalid(e.to_string()))?;
        if !self.known_market(req.market).await? {
            return Err(OrderError::invalid(format!(
                "market {} does not exist",
                req.market
            )));
        }
        let levels = self.levels(req.market, req.side).await?;
        let reference = levels.first().map(|l| l.price);
        let order = domain::validate(
            req.market,
            req.side,
            req.ord_type,
            price,
            volume,
            self.fee_rate,
            reference,
        )?;
        let plan = domain::walk(&order, &levels);
        if order.ord_type != OrdType::Limit && plan.is_empty() {
            return Err(OrderError::invalid(
                "no liquidity in the orderbook for a market order",
            ));
        }
        let id = Uuid::now_v7();
        let new = NewOrder {
            id,
            user: req.user,
            identifier: req.identifier,
            market: order.market.as_str(),
            side: order.side.as_str(),
            ord_type: order.ord_type.as_str(),
            price: order.price,
            volume: order.volume,
            reserved_currency: &order.reserve_currency,
            reserved_amount: order.reserve_amount,
            fee_rate: order.fee_rate,
            plan: &plan,
        };
        let Some(row) = store::insert_pending(&self.pool, &new).await? else {
            // The same identifier raced us: that order is the answer.
            let existing = store::get_for_user(&self.pool, req.user, None, req.identifier)
                .await?
                .ok_or(OrderError::NotFound)?;
            return Ok((self.view(existing).await?, false));
        };
        if self.fault == Some(Fault::Persist) {
            crash(Fault::Persist);
        }
        let finished = self.complete_pending(row, &order, plan.clone()).await?;
        // The executions are the plan: no need to read them back.
        let now = Utc::now();
        let executions = if finished.trades_count as usize == plan.len() {
            plan.iter()
                .enumerate()
                .map(|(i, e)| ExecRow {
                    seq: i as i32 + 1,
                    price: e.price,
                    volume: e.volume,
                    funds: e.funds,
                    fee: e.fee,
                    trend: finished.side.clone(),
                    created_at: now,
                })
                .collect()
        } else {
            store::executions(&self.pool, finished.id).await?
        };
        Ok((
            View {
                order: finished,
                executions,
            },
            true,
        ))
    }

    /// Reserves and settles a PENDING order's planned fills in inventory, then
    /// records its new state. Used by `place` and by recovery.
    async fn complete_pending(
        &self,
        row: OrderRow,
        order: &Validated,
        plan: Vec<Exec>,
    ) -> Result<OrderRow, OrderError> {
        let filled = domain::fully_filled(order, &plan);
        let finalize = order.ord_type != OrdType::Limit || filled;
        let request = inv::SettleRequest {
            order_id: row.id.to_string(),
            user_id: row.user_id.to_string(),
            side: match order.side {
                Side::Bid => inv::OrderSide::Bid,
                Side::Ask => inv::OrderSide::Ask,
            } as i32,
            base_currency: order.market.base().to_owned(),
            quote_currency: order.market.quote().to_owned(),
            fills: plan
                .iter()
                .enumerate()
                .map(|(i, e)| fill(i + 1, e))
                .collect(),
            finalize,
            reserve_amount: order.reserve_amount.to_string(),
            return_balances: false,
        };
        if let Err(status) = self.inventory.clone().settle(request).await {
            if service_kit::grpc::error_name(&status) == Some("insufficient_funds") {
                store::reject(&self.pool, row.id, "insufficient funds").await?;
                return Err(OrderError::InsufficientFunds(order.side));
            }
            // Unknown outcome: the order stays PENDING and recovery finishes it.
            return Err(unavailable("inventory", &status));
        }
        if self.fault == Some(Fault::Reserve) {
            crash(Fault::Reserve);
        }
        let state = match (order.ord_type, filled) {
            (_, true) => "done",
            (OrdType::Limit, false) => "wait",
            (_, false) => "cancel",
        };
        let updated = store::finish_pending(&self.pool, row.id, state, &plan, finalize).await?;
        match updated {
            Some(updated) => Ok(updated),
            // Someone else (recovery) finished it meanwhile.
            None => store::get(&self.pool, row.id)
                .await?
                .ok_or(OrderError::NotFound),
        }
    }

    /// Settles every recorded execution of an order and, with `finalize`,
    /// releases the rest of its reservation.
    async fn settle_all(&self, order: &OrderRow, finalize: bool) -> Result<(), OrderError> {
        let executions = store::executions(&self.pool, order.id).await?;
        let market = upbit::market::MarketCode::parse(&order.market)
            .map_err(|e| OrderError::Internal(e.to_string()))?;
        let request = inv::SettleRequest {
            order_id: order.id.to_string(),
            user_id: order.user_id.to_string(),
            side: if order.side == "bid" {
                inv::OrderSide::Bid
            } else {
                inv::OrderSide::Ask
            } as i32,
            base_currency: market.base().to_owned(),
            quote_currency: market.quote().to_owned(),
            fills: executions
                .iter()
                .map(|e| fill(e.seq as usize, &exec_of(e)))
                .collect(),
            finalize,
            reserve_amount: String::new(),
            return_balances: false,
        };
        self.inventory
            .clone()
            .settle(request)
            .await
            .map_err(|s| unavailable("inventory", &s))?;
        Ok(())
    }

    /// Cancels an open order of `user`: no more fills, the recorded ones
    /// settled, the rest of the funds released.
    pub async fn cancel(
        &self,
        user: Uuid,
        id: Option<Uuid>,
        identifier: Option<&str>,
    ) -> Result<View, OrderError> {
        if id.is_none() && identifier.is_none() {
            return Err(OrderError::invalid("uuid or identifier is required"));
        }
        let order = store::get_for_user(&self.pool, user, id, identifier)
            .await?
            .ok_or(OrderError::NotFound)?;
        let cancelled = match store::cancel(&self.pool, order.id, user).await? {
            Some(c) => c,
            None => {
                let now = store::get(&self.pool, order.id)
                    .await?
                    .ok_or(OrderError::NotFound)?;
                let state = domain::State::parse(&now.state).unwrap_or(domain::State::Done);
                return Err(OrderError::NotCancellable(state.as_str()));
            }
        };
        // If inventory is away, recovery finishes the release later.
        match self.settle_all(&cancelled, true).await {
            Ok(()) => store::mark_finalized(&self.pool, cancelled.id).await?,
            Err(e) => {
                tracing::warn!(order = %cancelled.id, error = %e, "cancel: release deferred to recovery")
            }
        }
        self.view(cancelled).await
    }

    /// Fills `exec` of an open order that had `trades_count` executions.
    /// Returns the order after the fill, or `None` when it was no longer open.
    pub async fn fill(
        &self,
        id: Uuid,
        trades_count: i32,
        exec: &Exec,
    ) -> Result<Option<OrderRow>, OrderError> {
        let Some(row) = store::record_fill(&self.pool, id, trades_count, exec).await? else {
            return Ok(None);
        };
        let done = row.state == "done";
        match self.settle_all(&row, done).await {
            Ok(()) if done => store::mark_finalized(&self.pool, id).await?,
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(order = %id, error = %e, "fill recorded; settlement deferred to recovery")
            }
        }
        Ok(Some(row))
    }

    pub async fn get(
        &self,
        user: Uuid,
        id: Option<Uuid>,
        identifier: Option<&str>,
    ) -> Result<View, OrderError> {
        if id.is_none() && identifier.is_none() {
            return Err(OrderError::invalid("uuid or identifier is required"));
        }
        let order = store::get_for_user(&self.pool, user, id, identifier)
            .await?
            .ok_or(OrderError::NotFound)?;
        self.view(order).await
    }

    /// Finishes orders a crash left half done (see the module docs). Returns how
    /// many it finished.
    pub async fn recover(&self, min_age: Duration) -> Result<usize, OrderError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
        let mut finished = 0;
        for row in store::unfinished(&self.pool, cutoff, 200).await? {
            let id = row.id;
            let result = if row.state == "pending" {
                self.recover_pending(row).await
            } else {
                self.settle_all(&row, true).await.map(|_| ())
            };
            match result {
                Ok(()) => {
                    if let Some(now) = store::get(&self.pool, id).await?
                        && now.state != "pending"
                        && !now.finalized
                        && now.state != "wait"
                    {
                        store::mark_finalized(&self.pool, id).await?;
                    }
                    finished += 1;
                    tracing::info!(order = %id, "recovered an unfinished order");
                }
                Err(OrderError::InsufficientFunds(_)) => {
                    finished += 1;
                    tracing::info!(order = %id, "recovered order rejected: insufficient funds");
                }
                Err(e) => tracing::warn!(order = %id, error = %e, "recovery will retry this order"),
            }
        }
        for row in store::waiting_with_fills(&self.pool, cutoff, 200).await? {
            let reservation = self
                .inventory
                .clone()
                .get_reservation(inv::GetReservationRequest {
                    order_id: row.id.to_string(),
                })
                .await
                .map_err(|s| unavailable("inventory", &s))?
                .into_inner();
            if (reservation.last_fill_seq as i32) < row.trades_count {
                self.settle_all(&row, false).await?;
                finished += 1;
            }
        }
        Ok(finished)
    }

    async fn recover_pending(&self, row: OrderRow) -> Result<(), OrderError> {
        let side = store::side_of(&row);
        let ord_type = OrdType::parse(&row.ord_type)
            .ok_or_else(|| OrderError::Internal("bad ord_type".into()))?;
        let market = upbit::market::MarketCode::parse(&row.market)
            .map_err(|e| OrderError::Internal(e.to_string()))?;
        let order = Validated {
            market,
            side,
            ord_type,
            price: row.price,
            volume: row.volume,
            reserve_currency: row.reserved_currency.clone(),
            reserve_amount: row.reserved_amount,
            fee_rate: row.fee_rate,
        };
        let plan = store::plan_from_json(&row.plan);
        self.complete_pending(row, &order, plan).await.map(|_| ())
    }
}
