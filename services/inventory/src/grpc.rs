//! gRPC adapter: parse and validate, call the store, map errors.

use exchange_proto::inventory::v1 as pb;
use exchange_proto::inventory::v1::inventory_service_server::InventoryService;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::domain::{self, Fill, Side};
use crate::error::InventoryError;
use crate::store::{self, BalanceRow};

pub struct Inventory {
    pool: PgPool,
    initial_krw: Decimal,
    deposit_cap: Decimal,
}

impl Inventory {
    pub fn new(pool: PgPool, initial_krw: Decimal, deposit_cap: Decimal) -> Self {
        Self {
            pool,
            initial_krw,
            deposit_cap,
        }
    }
}

fn text(d: Decimal) -> String {
    upbit::write::decimal_string(d)
}

fn balance(row: BalanceRow) -> pb::Balance {
    pb::Balance {
        currency: row.currency,
        balance: text(row.available),
        locked: text(row.locked),
        avg_buy_price: text(row.avg_buy_price),
        unit_currency: "KRW".into(),
    }
}

fn side(v: i32) -> Result<Side, InventoryError> {
    match pb::OrderSide::try_from(v) {
        Ok(pb::OrderSide::Bid) => Ok(Side::Bid),
        Ok(pb::OrderSide::Ask) => Ok(Side::Ask),
        _ => Err(InventoryError::Invalid("side must be BID or ASK".into())),
    }
}

fn fill(f: &pb::Fill) -> Result<Fill, InventoryError> {
    if f.seq == 0 {
        return Err(InventoryError::Invalid("fill seq starts at 1".into()));
    }
    Ok(Fill {
        seq: f.seq,
        price: domain::positive("price", &f.price)?,
        volume: domain::positive("volume", &f.volume)?,
        funds: domain::positive("funds", &f.funds)?,
        fee: domain::amount("fee", &f.fee)?,
    })
}

#[tonic::async_trait]
impl InventoryService for Inventory {
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountResponse>, Status> {
        let user = domain::uuid("user_id", &request.into_inner().user_id)?;
        let created = store::open_account(&self.pool, user, self.initial_krw).await?;
        let balances = store::balances(&self.pool, user)
            .await?
            .into_iter()
            .map(balance)
            .collect();
        Ok(Response::new(pb::OpenAccountResponse { created, balances }))
    }

    async fn get_balances(
        &self,
        request: Request<pb::GetBalancesRequest>,
    ) -> Result<Response<pb::GetBalancesResponse>, Status> {
        let user = domain::uuid("user_id", &request.into_inner().user_id)?;
        let balances = store::balances(&self.pool, user)
            .await?
            .into_iter()
            .map(balance)
            .collect();
        Ok(Response::new(pb::GetBalancesResponse { balances }))
    }

    async fn deposit(
        &self,
        request: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::DepositResponse>, Status> {
        let req = request.into_inner();
        let user = domain::uuid("user_id", &req.user_id)?;
        let currency = domain::currency(&req.currency)?;
        let amount = domain::positive("amount", &req.amount)?;
        if req.idempotency_key.is_empty() || req.idempotency_key.len() > 128 {
            return Err(InventoryError::Invalid(
                "idempotency_key must be 1 to 128 characters".into(),
            )
            .into());
        }
        store::deposit(
            &self.pool,
            user,
            &currency,
            amount,
            &req.idempotency_key,
            self.deposit_cap,
        )
        .await?;
        let row = store::balance(&self.pool, user, &currency).await?;
        Ok(Response::new(pb::DepositResponse {
            balance: row.map(balance),
        }))
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let req = request.into_inner();
        let order = domain::uuid("order_id", &req.order_id)?;
        let user = domain::uuid("user_id", &req.user_id)?;
        let currency = domain::currency(&req.currency)?;
        let amount = domain::positive("amount", &req.amount)?;
        let applied = store::reserve(&self.pool, order, user, &currency, amount).await?;
        let row = store::balance(&self.pool, user, &currency).await?;
        Ok(Response::new(pb::ReserveResponse {
            balance: row.map(balance),
            applied,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let req = request.into_inner();
        let order = domain::uuid("order_id", &req.order_id)?;
        let user = domain::uuid("user_id", &req.user_id)?;
        let Some(reservation) = store::reservation(&self.pool, order).await? else {
            return Err(
                InventoryError::NotFound(format!("no reservation for order {order}")).into(),
            );
        };
        // A release is a settle without fills that finalizes; which side locked
        // what follows from the reserved currency.
        let settled = store::settle(
            &self.pool,
            order,
            user,
            Side::Ask,
            &reservation.currency,
            &reservation.currency,
            &[],
            true,
            None,
        )
        .await?;
        let row = store::balance(&self.pool, user, &reservation.currency).await?;
        Ok(Response::new(pb::ReleaseResponse {
            released: text(settled.released),
            balance: row.map(balance),
        }))
    }

    async fn settle(
        &self,
        request: Request<pb::SettleRequest>,
    ) -> Result<Response<pb::SettleResponse>, Status> {
        let req = request.into_inner();
        let order = domain::uuid("order_id", &req.order_id)?;
        let user = domain::uuid("user_id", &req.user_id)?;
        let side = side(req.side)?;
        let base = domain::currency(&req.base_currency)?;
        let quote = domain::currency(&req.quote_currency)?;
        if base == quote {
            return Err(
                InventoryError::Invalid("base and quote currencies must differ".into()).into(),
            );
        }
        let fills = req.fills.iter().map(fill).collect::<Result<Vec<_>, _>>()?;
        let reserve = if req.reserve_amount.is_empty() {
            None
        } else {
            Some(domain::positive("reserve_amount", &req.reserve_amount)?)
        };
        let settled = store::settle(
            &self.pool,
            order,
            user,
            side,
            &base,
            &quote,
            &fills,
            req.finalize,
            reserve,
        )
        .await?;
        let balances = if req.return_balances {
            store::balances(&self.pool, user)
                .await?
                .into_iter()
                .filter(|b| b.currency == base || b.currency == quote)
                .map(balance)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::SettleResponse {
            fills_applied: settled.fills_applied,
            released: text(settled.released),
            balances,
        }))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::GetReservationResponse>, Status> {
        let order = domain::uuid("order_id", &request.into_inner().order_id)?;
        let response = match store::reservation(&self.pool, order).await? {
            None => pb::GetReservationResponse::default(),
            Some(r) => pb::GetReservationResponse {
                exists: true,
                currency: r.currency,
                reserved: text(r.reserved),
                locked: text(r.locked),
                last_fill_seq: r.last_fill_seq.max(0) as u32,
                released: r.released,
            },
        };
        Ok(Response::new(response))
    }

    async fn list_ledger(
        &self,
        request: Request<pb::ListLedgerRequest>,
    ) -> Result<Response<pb::ListLedgerResponse>, Status> {
        let req = request.into_inner();
        let user = domain::uuid("user_id", &req.user_id)?;
        let currency = if req.currency.is_empty() {
            None
        } else {
            Some(domain::currency(&req.currency)?)
        };
        let limit = match req.limit {
            0 => 100,
            n if n <= 500 => i64::from(n),
            _ => {
                return Err(
                    InventoryError::Invalid("limit must be between 1 and 500".into()).into(),
                );
            }
        };
        let entries = store::ledger(&self.pool, user, currency.as_deref(), limit, req.before_id)
            .await?
            .into_iter()
            .map(|e| pb::LedgerEntry {
                id: e.id,
                currency: e.currency,
                available_delta: text(e.available_delta),
                locked_delta: text(e.locked_delta),
                kind: e.kind,
                order_id: e.order_id.map(|o| o.to_string()).unwrap_or_default(),
                created_at: e.created_at.timestamp_millis(),
            })
            .collect();
        Ok(Response::new(pb::ListLedgerResponse { entries }))
    }
}
