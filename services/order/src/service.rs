//! The order flow, apart from gRPC.
//!
//! Placing: a retried request (same request key) gets the order the first one
//! made → validate → read the live orderbook (refused when older than
//! `MAX_BOOK_AGE`) → plan what fills at once → in one transaction: write the
//! order PENDING with its plan and the time inventory must have reserved its
//! funds by (not committed: it holds the order's id, identifier and request
//! key) → one inventory call reserves the funds for the order's terms, settles
//! the planned fills (finalizing market orders) and keeps the order's
//! [`Record`] → record the executions and the new state (WAIT, DONE or CANCEL)
//! → commit. Two commits: inventory's, then the order's. The records of
//! stored orders are confirmed to inventory in batches, off the request path.
//!
//! An order's id is derived from its request key (or identifier), so every
//! attempt of a request is the same order, and inventory takes a second
//! attempt only if it makes the same record; otherwise ("order_conflict") the
//! first attempt was executed and its record is what is written.
//!
//! When the process dies between the two commits, the order's transaction is
//! rolled back but inventory holds its record: [`Orders::recover`] writes the
//! order from it (a placement still in flight holds the id, so the two never
//! both write). When inventory's answer does not come in time, the order is
//! committed PENDING and the client gets it so: it is never executed twice.
//! Once its plan's deadline has passed, inventory refuses to reserve for it, so
//! recovery knows for certain whether it was: if inventory holds the
//! reservation, what it executed (its record) is written; if not, the order is
//! planned again against the current book (or rejected when there is none fresh
//! enough). A DONE or CANCEL order not yet finalized gets its fills settled and
//! the rest of its reservation released.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use exchange_proto::decimal;
use exchange_proto::inventory::v1 as inv;
use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use exchange_proto::marketdata::v1 as md;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use rust_decimal::Decimal;
use service_kit::grpc::Channel;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{
    self, Amounts, Exec, Level, OrdType, Placement, Side, SmpType, State, TimeInForce, Validated,
};
use crate::error::OrderError;
use crate::record::{self, Record};
use crate::store::{self, ExecRow, NewOrder, OrderRow};

mod recovery;

/// Longest client order identifier, in bytes (Upbit does not say; 100 is ample).
pub const MAX_IDENTIFIER: usize = 100;

/// Where to crash on purpose (`FAULT_AFTER`), to demonstrate and test recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// After writing the order PENDING, before inventory is called (that
    /// write is not committed: nothing happened).
    Persist,
    /// After inventory reserved (and settled) the funds, before the order
    /// is committed.
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
    pub request_key: Option<&'a str>,
    pub time_in_force: Option<TimeInForce>,
    pub smp_type: Option<SmpType>,
}

/// An order with its executions.
pub struct View {
    pub order: OrderRow,
    pub executions: Vec<ExecRow>,
}

/// How orders are placed and kept.
#[derive(Clone, Debug)]
pub struct Rules {
    pub fee_rate: Decimal,
    /// An orderbook older than this fills nothing.
    pub max_book_age: Duration,
    /// How long inventory has to reserve a new order's funds.
    pub plan_ttl: Duration,
    /// Most open (PENDING or WAIT) orders per user.
    pub max_open_orders: i64,
    /// A PENDING order that could not be completed this long after it was
    /// placed is rejected.
    pub pending_give_up: Duration,
    pub fault: Option<Fault>,
}

pub struct Orders {
    pool: PgPool,
    inventory: InventoryServiceClient<Channel>,
    market_data: MarketDataServiceClient<Channel>,
    rules: Rules,
    markets: RwLock<Option<(Instant, Arc<Vec<String>>)>>,
    /// Stored orders whose records inventory may drop ([`confirm_stored`]).
    stored: tokio::sync::mpsc::Sender<Uuid>,
}

fn unavailable(what: &str, status: &tonic::Status) -> OrderError {
    OrderError::Unavailable(format!("{what}: {}", status.message()))
}

fn fill(seq: usize, e: &Exec) -> inv::Fill {
    inv::Fill {
        seq: seq as u32,
        price: decimal::to_wire(e.price),
        volume: decimal::to_wire(e.volume),
        funds: decimal::to_wire(e.funds),
        fee: decimal::to_wire(e.fee),
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

/// Immediate executions as recorded: the order took, so its side is the trend.
fn exec_rows(plan: &[Exec], side: Side, at: chrono::DateTime<Utc>) -> Vec<ExecRow> {
    plan.iter()
        .enumerate()
        .map(|(i, e)| ExecRow {
            seq: i as i32 + 1,
            price: e.price,
            volume: e.volume,
            funds: e.funds,
            fee: e.fee,
            trend: side,
            created_at: at,
        })
        .collect()
}

fn crash(fault: Fault) -> ! {
    tracing::error!(?fault, "FAULT_AFTER: aborting the process on purpose");
    std::process::abort()
}

fn inv_side(side: Side) -> inv::OrderSide {
    match side {
        Side::Bid => inv::OrderSide::Bid,
        Side::Ask => inv::OrderSide::Ask,
    }
}

/// The order's terms as inventory checks them.
fn terms(order: &Validated) -> inv::OrderTerms {
    let text = |d: Option<Decimal>| d.map(decimal::to_wire).unwrap_or_default();
    // A best order is checked as the market order of its side: its fills are
    // bounded by its budget or volume, at whatever the best price was.
    let (kind, price, volume, budget) = match order.amounts {
        Amounts::Limit { price, volume } => {
            (inv::OrderKind::Limit, Some(price), Some(volume), None)
        }
        Amounts::Total(total) => (inv::OrderKind::Price, None, None, Some(total)),
        Amounts::Volume(volume) => (inv::OrderKind::Market, None, Some(volume), None),
    };
    inv::OrderTerms {
        kind: kind as i32,
        price: text(price),
        volume: text(volume),
        budget: text(budget),
        fee_rate: decimal::to_wire(order.fee_rate),
    }
}

/// What became of a PENDING order's inventory call.
enum Outcome {
    /// Reserved and settled; the order moved on (to WAIT, DONE or CANCEL).
    Done(Box<OrderRow>),
    /// An earlier attempt of the order was executed with another plan: the
    /// order is written as that attempt's record says.
    Earlier(Box<OrderRow>),
    /// Not known (inventory slow or away): the order stays PENDING.
    Unknown,
}

/// Most order ids one confirmation call carries.
const CONFIRM_BATCH: usize = 500;

/// Most executions an order is shown with (its last ones; `trades_count`
/// counts them all): an order sliced by tens of thousands of trades would
/// otherwise outgrow a gRPC message.
pub const MAX_VIEW_TRADES: usize = 10_000;

/// Executions an order update on the stream carries: its last ones. Each fill
/// is its own update, so a follower misses none unless it falls this far
/// behind, and an order's updates cost the same at its thousandth fill as at
/// its first.
pub const UPDATE_TRADES: usize = 100;

/// Most fills one Settle call carries: inventory refuses more.
const SETTLE_BATCH: usize = 1000;

/// Confirms stored orders to inventory, in batches as they come (while one call
/// is out, the next batch gathers). An id not confirmed here (inventory away,
/// the queue full, the process stopping) is confirmed by recovery, which finds
/// its record still there.
pub async fn confirm_stored(
    inventory: InventoryServiceClient<Channel>,
    mut stored: tokio::sync::mpsc::Receiver<Uuid>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(CONFIRM_BATCH);
    loop {
        let got = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            got = stored.recv_many(&mut batch, CONFIRM_BATCH) => got,
        };
        if got == 0 {
            return Ok(());
        }
        let order_ids = batch.drain(..).map(|id| id.to_string()).collect();
        let mut client = inventory.clone();
        let call = client.confirm_orders(inv::ConfirmOrdersRequest { order_ids });
        if let Err(status) = call.await {
            tracing::debug!(%status, "confirming stored orders left to recovery");
        }
    }
}

impl Orders {
    /// `stored` takes the ids of orders stored with a record, for
    /// [`confirm_stored`].
    pub fn new(
        pool: PgPool,
        inventory: InventoryServiceClient<Channel>,
        market_data: MarketDataServiceClient<Channel>,
        rules: Rules,
        stored: tokio::sync::mpsc::Sender<Uuid>,
    ) -> Self {
        Self {
            pool,
            inventory,
            market_data,
            rules,
            markets: RwLock::new(None),
            stored,
        }
    }

    /// Queues a stored order's confirmation (recovery confirms it if the
    /// queue is full).
    fn stored(&self, id: Uuid) {
        let _ = self.stored.try_send(id);
    }

    pub fn fee_rate(&self) -> Decimal {
        self.rules.fee_rate
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn market_data(&self) -> MarketDataServiceClient<Channel> {
        self.market_data.clone()
    }

    /// Whether `market` is listed, from a list read at most 30 s ago. A market
    /// missing from it is looked up again (it may be new), but at most once a
    /// second: orders for unlisted codes cannot turn into a market-data call
    /// each.
    async fn known_market(&self, market: &str) -> Result<bool, OrderError> {
        let cached = self.markets.read().ok().and_then(|m| m.clone());
        let list = match cached {
            Some((at, list))
                if at.elapsed() < Duration::from_secs(30)
                    && (at.elapsed() < Duration::from_secs(1)
                        || list.iter().any(|m| m == market)) =>
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

    /// The levels an order on `side` takes from (asks for bids, bids for asks)
    /// in the live orderbook, which must be at most `max_book_age` old.
    async fn levels(&self, market: &str, side: Side) -> Result<Vec<Level>, OrderError> {
        let book = self
            .market_data
            .clone()
            .get_orderbooks(md::GetOrderbooksRequest {
                markets: vec![market.to_owned()],
                depth: 0,
            })
            .await
            .map_err(|s| unavailable("market-data", &s))?
            .into_inner()
            .orderbooks
            .into_iter()
            .next();
        let Some(book) = book else {
            return Err(OrderError::StaleMarket(format!(
                "there is no orderbook of {market} yet; orders are refused until the feed is live"
            )));
        };
        let age_ms = Utc::now().timestamp_millis().saturating_sub(book.timestamp);
        if age_ms > self.rules.max_book_age.as_millis() as i64 {
            return Err(OrderError::StaleMarket(format!(
                "the orderbook of {market} is {} s old; orders are refused until the feed is live again",
                age_ms / 1000
            )));
        }
        let level = |price: &str, size: &str| -> Result<Level, OrderError> {
            let bad = |e: decimal::DecimalError| {
                OrderError::Unavailable(format!("market-data sent a malformed orderbook: {e}"))
            };
            Ok(Level {
                price: decimal::non_negative("price", price).map_err(bad)?,
                size: decimal::non_negative("size", size).map_err(bad)?,
            })
        };
        book.units
            .iter()
            .map(|u| match side {
                Side::Bid => level(&u.ask_price, &u.ask_size),
                Side::Ask => level(&u.bid_price, &u.bid_size),
            })
            .collect()
    }

    pub async fn view(&self, order: OrderRow) -> Result<View, OrderError> {
        self.view_with(order, MAX_VIEW_TRADES).await
    }

    /// The order with its last `trades` executions.
    pub async fn view_with(&self, order: OrderRow, trades: usize) -> Result<View, OrderError> {
        let executions = store::last_executions(&self.pool, order.id, trades).await?;
        Ok(View { order, executions })
    }

    /// The order an earlier request with this request's key made (as
    /// [`Self::place`] would answer a retry), placing nothing: `NotFound` when
    /// there is none.
    pub async fn existing(&self, req: Place<'_>) -> Result<View, OrderError> {
        if req.request_key.is_none() {
            return Err(OrderError::invalid("only_existing needs a request_key"));
        }
        self.retried(&req).await?.ok_or(OrderError::NotFound)
    }

    /// The answer to a request whose key the user sent before: the order it
    /// made, if this request asks for the same order.
    async fn retried(&self, req: &Place<'_>) -> Result<Option<View>, OrderError> {
        let Some(key) = req.request_key else {
            return Ok(None);
        };
        let Some(existing) = store::by_request_key(&self.pool, req.user, key).await? else {
            return Ok(None);
        };
        let same = |given: &str, stored: Option<Decimal>| {
            domain::parse_amount("", given).ok().flatten() == stored
        };
        let same_order = existing.market == req.market
            && existing.side == req.side
            && existing.ord_type == req.ord_type
            && same(req.price, existing.price)
            && same(req.volume, existing.volume)
            && existing.identifier.as_deref() == req.identifier
            && existing.time_in_force.as_deref() == req.time_in_force.map(TimeInForce::as_str)
            && existing.smp_type.as_deref()
                == Some(domain::effective_smp(req.time_in_force, req.smp_type).as_str());
        if !same_order {
            return Err(OrderError::invalid(
                "this request key was used for another order",
            ));
        }
        Ok(Some(self.view(existing).await?))
    }

    /// Refuses the order when its user has as many orders open as allowed.
    async fn within_open_cap(&self, user: Uuid, side: Side) -> Result<(), OrderError> {
        if store::open_count(&self.pool, user).await? < self.rules.max_open_orders {
            return Ok(());
        }
        Err(OrderError::Named(
            domain::create_error(side),
            format!(
                "at most {} orders may be open at once; cancel some first",
                self.rules.max_open_orders
            ),
        ))
    }

    fn duplicate_identifier(side: Side, identifier: &str) -> OrderError {
        OrderError::Named(
            domain::create_error(side),
            format!("identifier `{identifier}` was used by an earlier order"),
        )
    }

    /// Places an order and returns it with whether this call made it (a retry
    /// with the same request key gets the first order, `false`). The order is
    /// PENDING when inventory's answer did not come in time.
    pub async fn place(&self, req: Place<'_>) -> Result<(View, bool), OrderError> {
        if let Some(view) = self.admit(&req).await? {
            return Ok((view, false));
        }
        let (order, placement) = self.plan(&req).await?;
        let plan = match &placement {
            Placement::Fills(fills) => fills.as_slice(),
            Placement::WouldTake => &[],
        };
        let shared = record::shared_id(req.user, req.request_key, req.identifier);
        let new = NewOrder {
            id: shared.unwrap_or_else(Uuid::now_v7),
            user: req.user,
            identifier: req.identifier,
            request_key: req.request_key,
            market: order.market.as_str(),
            side: order.side.as_str(),
            ord_type: order.ord_type.as_str(),
            price: order.amounts.price(),
            volume: order.amounts.volume(),
            reserved_currency: &order.reserve_currency,
            reserved_amount: order.reserve_amount,
            fee_rate: order.fee_rate,
            plan,
            plan_ttl: self.rules.plan_ttl,
            time_in_force: order.time_in_force.map(TimeInForce::as_str),
            smp_type: order.smp_type.map(SmpType::as_str),
            max_open: self.rules.max_open_orders,
        };
        // Uncommitted until inventory answered: a crash rolls it back, and
        // another attempt of this order waits for it.
        let mut tx = self.pool.begin().await?;
        let Some(row) = store::insert_pending(&mut *tx, &new).await? else {
            drop(tx);
            // The same request key or identifier raced us, or the user has
            // as many orders open as allowed.
            if let Some(view) = self.retried(&req).await? {
                return Ok((view, false));
            }
            self.within_open_cap(req.user, req.side).await?;
            return Err(Self::duplicate_identifier(
                req.side,
                req.identifier.unwrap_or_default(),
            ));
        };
        let recorded = placement != Placement::WouldTake;
        let outcome = match placement {
            // A post_only order that would take: cancelled, nothing reserved
            // (unless an earlier attempt of it was executed: that stands).
            Placement::WouldTake => {
                let earlier = match shared {
                    Some(id) => self.earlier(id).await?,
                    None => None,
                };
                match earlier {
                    Some(record) => Self::write_earlier(&mut tx, &row, &record).await?,
                    None => Outcome::Done(Box::new(
                        store::cancel_pending(&mut *tx, row.id)
                            .await?
                            .ok_or(OrderError::NotFound)?,
                    )),
                }
            }
            Placement::Fills(_) => {
                if self.rules.fault == Some(Fault::Persist) {
                    crash(Fault::Persist);
                }
                self.complete_pending(&mut tx, row.clone(), &order, plan)
                    .await?
            }
        };
        tx.commit().await?;
        let (finished, created) = match outcome {
            Outcome::Done(finished) => (*finished, true),
            Outcome::Earlier(finished) => (*finished, false),
            Outcome::Unknown => {
                // Written, outcome not known yet: the client learns the order's
                // uuid and that it is pending, and recovery decides it.
                return Ok((
                    View {
                        order: row,
                        executions: Vec::new(),
                    },
                    true,
                ));
            }
        };
        if recorded || !created {
            self.stored(finished.id);
        }
        // The executions are the plan: no need to read them back.
        let executions = if created && finished.trades_count as usize == plan.len() {
            exec_rows(plan, finished.side, finished.updated_at)
        } else {
            store::executions(&self.pool, finished.id).await?
        };
        Ok((
            View {
                order: finished,
                executions,
            },
            created,
        ))
    }

    /// The record of an earlier attempt of order `id` that inventory executed.
    async fn earlier(&self, id: Uuid) -> Result<Option<Record>, OrderError> {
        Record::held(&self.reservation(id).await?.order_record, id)
    }

    /// Writes the PENDING `row` as an earlier attempt's record says.
    async fn write_earlier(
        db: &mut PgConnection,
        row: &OrderRow,
        record: &Record,
    ) -> Result<Outcome, OrderError> {
        let written = store::write_record(&mut *db, row.id, row.user_id, record, row.created_at)
            .await?
            .ok_or(OrderError::NotFound)?;
        tracing::info!(order = %row.id, "an earlier attempt of this order was executed; written as it was");
        crate::metrics::FROM_RECORD
            .with_label_values(&["retry"])
            .inc();
        Ok(Outcome::Earlier(Box::new(written)))
    }

    /// What placing `req` would make now, planned against the live book,
    /// without writing, reserving or filling anything (Upbit's order test).
    pub async fn test(&self, req: Place<'_>) -> Result<View, OrderError> {
        if let Some(identifier) = req.identifier {
            service_kit::text::key("identifier", identifier, MAX_IDENTIFIER)
                .map_err(OrderError::invalid)?;
            if store::identifier_used(&self.pool, req.user, identifier).await? {
                return Err(Self::duplicate_identifier(req.side, identifier));
            }
        }
        self.within_open_cap(req.user, req.side).await?;
        let (order, placement) = self.plan(&req).await?;
        let (fills, state) = match placement {
            Placement::WouldTake => (Vec::new(), State::Cancel),
            Placement::Fills(fills) => {
                let state = domain::placed_state(&order, &fills);
                (fills, state)
            }
        };
        let now = Utc::now();
        let order = OrderRow {
            id: Uuid::now_v7(),
            user_id: req.user,
            identifier: req.identifier.map(str::to_owned),
            market: order.market.as_str().to_owned(),
            side: order.side,
            ord_type: order.ord_type,
            price: order.amounts.price(),
            volume: order.amounts.volume(),
            state,
            reserved_currency: order.reserve_currency.clone(),
            reserved_amount: order.reserve_amount,
            executed_volume: fills.iter().map(|e| e.volume).sum(),
            executed_funds: fills.iter().map(|e| e.funds).sum(),
            paid_fee: fills.iter().map(|e| e.fee).sum(),
            trades_count: fills.len() as i32,
            reject_reason: None,
            created_at: now,
            updated_at: now,
            fee_rate: order.fee_rate,
            plan: store::plan_json(&fills),
            finalized: state != State::Wait,
            request_key: None,
            plan_deadline: None,
            opened_at: Some(now),
            time_in_force: order.time_in_force.map(|t| t.as_str().to_owned()),
            smp_type: order.smp_type.map(|t| t.as_str().to_owned()),
        };
        let executions = exec_rows(&fills, order.side, now);
        Ok(View { order, executions })
    }

    /// Whether a request may make an order: `Some` with the order a retry of
    /// it made before; an error for a used identifier or a malformed key.
    async fn admit(&self, req: &Place<'_>) -> Result<Option<View>, OrderError> {
        for (field, value, max) in [
            ("identifier", req.identifier, MAX_IDENTIFIER),
            ("request key", req.request_key, 128),
        ] {
            if let Some(v) = value {
                service_kit::text::key(field, v, max).map_err(OrderError::invalid)?;
            }
        }
        if let Some(view) = self.retried(req).await? {
            return Ok(Some(view));
        }
        if let Some(identifier) = req.identifier
            && store::identifier_used(&self.pool, req.user, identifier).await?
        {
            // Used by this very request, if it is a retry racing its original.
            return match self.retried(req).await? {
                Some(view) => Ok(Some(view)),
                None => Err(Self::duplicate_identifier(req.side, identifier)),
            };
        }
        Ok(None)
    }

    /// The order validated as Upbit does (the open-order cap is the caller's),
    /// and what it does at once against the live (fresh) orderbook.
    async fn plan(&self, req: &Place<'_>) -> Result<(Validated, Placement), OrderError> {
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
            self.rules.fee_rate,
            reference,
        )?;
        let order = domain::with_conditions(order, req.time_in_force, req.smp_type)?;
        let placement = domain::place(&order, &levels)?;
        if matches!(order.ord_type, OrdType::Price | OrdType::Market)
            && placement == Placement::Fills(Vec::new())
        {
            return Err(OrderError::invalid(
                "no liquidity in the orderbook for a market order",
            ));
        }
        Ok((order, placement))
    }

    /// Reserves for a PENDING order's terms and settles its planned fills in
    /// inventory (by the plan's deadline, with the order's record), then
    /// records its new state on `db`: the placing transaction, or recovery's
    /// connection. Used by `place` and by recovery.
    async fn complete_pending(
        &self,
        db: &mut PgConnection,
        row: OrderRow,
        order: &Validated,
        plan: &[Exec],
    ) -> Result<Outcome, OrderError> {
        let state = domain::placed_state(order, plan);
        let finalize = state != State::Wait;
        let request = inv::SettleRequest {
            order_id: row.id.to_string(),
            user_id: row.user_id.to_string(),
            side: inv_side(order.side) as i32,
            base_currency: order.market.base().to_owned(),
            quote_currency: order.market.quote().to_owned(),
            fills: plan
                .iter()
                .enumerate()
                .map(|(i, e)| fill(i + 1, e))
                .collect(),
            finalize,
            return_balances: false,
            terms: Some(terms(order)),
            not_after: row
                .plan_deadline
                .map(|t| t.timestamp_millis())
                .unwrap_or_default(),
            order_record: Record::new(&row, plan, state).to_json(),
        };
        let mut call = tonic::Request::new(request);
        call.set_timeout(self.rules.plan_ttl);
        if let Err(status) = self.inventory.clone().settle(call).await {
            return match service_kit::grpc::error_name(&status) {
                Some("insufficient_funds") => {
                    store::reject(&mut *db, row.id, "insufficient funds").await?;
                    Err(OrderError::InsufficientFunds(order.side))
                }
                // Too late for this plan: recovery plans the order again.
                Some("plan_expired") => Ok(Outcome::Unknown),
                // An earlier attempt was executed with another plan.
                Some("order_conflict") => match self.earlier(row.id).await? {
                    Some(record) => Self::write_earlier(db, &row, &record).await,
                    None => Ok(Outcome::Unknown),
                },
                Some(name @ ("fill_refused" | "validation_error" | "not_found")) => {
                    tracing::error!(order = %row.id, name, message = status.message(), "inventory refused an order");
                    store::reject(&mut *db, row.id, "refused by inventory").await?;
                    Err(OrderError::Internal(format!(
                        "inventory refused the order: {}",
                        status.message()
                    )))
                }
                _ => {
                    tracing::warn!(order = %row.id, %status, "inventory's answer did not come; the order stays pending");
                    Ok(Outcome::Unknown)
                }
            };
        }
        if self.rules.fault == Some(Fault::Reserve) {
            crash(Fault::Reserve);
        }
        let updated =
            store::finish_pending(&mut *db, row.id, state.as_str(), plan, finalize).await?;
        match updated {
            Some(updated) => Ok(Outcome::Done(Box::new(updated))),
            // Someone else (recovery) finished it meanwhile.
            None => store::get(&mut *db, row.id)
                .await?
                .map(|row| Outcome::Done(Box::new(row)))
                .ok_or(OrderError::NotFound),
        }
    }

    fn settle_request(
        &self,
        order: &OrderRow,
        fills: Vec<inv::Fill>,
        finalize: bool,
    ) -> Result<inv::SettleRequest, OrderError> {
        let market = upbit::market::MarketCode::parse(&order.market)
            .map_err(|e| OrderError::Internal(e.to_string()))?;
        Ok(inv::SettleRequest {
            order_id: order.id.to_string(),
            user_id: order.user_id.to_string(),
            side: inv_side(order.side) as i32,
            base_currency: market.base().to_owned(),
            quote_currency: market.quote().to_owned(),
            fills,
            finalize,
            return_balances: false,
            terms: None,
            not_after: 0,
            order_record: String::new(),
        })
    }

    /// Settles every recorded execution of an order and, with `finalize`,
    /// releases the rest of its reservation. An order with more executions
    /// than one call carries sends those inventory has not applied yet, in
    /// order, [`SETTLE_BATCH`] at a time, finalizing with the last batch.
    async fn settle_all(&self, order: &OrderRow, finalize: bool) -> Result<(), OrderError> {
        let executions = store::executions(&self.pool, order.id).await?;
        let applied = if executions.len() > SETTLE_BATCH {
            self.reservation(order.id).await?.last_fill_seq
        } else {
            0
        };
        let fills: Vec<inv::Fill> = executions
            .iter()
            .filter(|e| i64::from(e.seq) > i64::from(applied))
            .map(|e| fill(e.seq as usize, &exec_of(e)))
            .collect();
        let mut batches: Vec<Vec<inv::Fill>> =
            fills.chunks(SETTLE_BATCH).map(<[_]>::to_vec).collect();
        if batches.is_empty() {
            // Nothing left to apply: the call still releases, when finalizing.
            batches.push(Vec::new());
        }
        let count = batches.len();
        for (i, batch) in batches.into_iter().enumerate() {
            let request = self.settle_request(order, batch, finalize && i + 1 == count)?;
            self.inventory
                .clone()
                .settle(request)
                .await
                .map_err(|s| unavailable("inventory", &s))?;
        }
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
                return Err(OrderError::NotCancellable(now.state.as_str()));
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

    /// Fills `exec` of an open order that had `trades_count` executions, by the
    /// market trade `trade_id`, and settles just that fill. Returns the order
    /// after the fill, or `None` when it was no longer open as expected or that
    /// trade had filled it already.
    pub async fn fill(
        &self,
        id: Uuid,
        trades_count: i32,
        exec: &Exec,
        trade_id: i64,
    ) -> Result<Option<OrderRow>, OrderError> {
        let Some(row) = store::record_fill(&self.pool, id, trades_count, exec, trade_id).await?
        else {
            return Ok(None);
        };
        let done = row.state == domain::State::Done;
        let request =
            self.settle_request(&row, vec![fill(trades_count as usize + 1, exec)], done)?;
        match self.inventory.clone().settle(request).await {
            Ok(_) if done => store::mark_finalized(&self.pool, id).await?,
            // Recorded, so recovery need not ask inventory about it (if the
            // write fails, recovery asks once).
            Ok(_) => {
                if let Err(e) = store::mark_settled(&self.pool, id, row.trades_count).await {
                    tracing::warn!(order = %id, error = %e, "fill settled; recovery will check it with inventory");
                }
            }
            // An earlier fill not settled yet, or inventory away: recovery
            // settles all of the order's fills in order.
            Err(status) => {
                tracing::warn!(order = %id, %status, "fill recorded; settlement deferred to recovery")
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
        self.get_with(user, id, identifier, MAX_VIEW_TRADES).await
    }

    /// [`Self::get`] with the order's last `trades` executions only.
    pub async fn get_with(
        &self,
        user: Uuid,
        id: Option<Uuid>,
        identifier: Option<&str>,
        trades: usize,
    ) -> Result<View, OrderError> {
        if id.is_none() && identifier.is_none() {
            return Err(OrderError::invalid("uuid or identifier is required"));
        }
        let order = store::get_for_user(&self.pool, user, id, identifier)
            .await?
            .ok_or(OrderError::NotFound)?;
        self.view_with(order, trades).await
    }
}
