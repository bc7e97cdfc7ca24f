//! gRPC adapter: parse and validate, call the store, map errors.

use exchange_proto::inventory::v1 as pb;
use exchange_proto::inventory::v1::inventory_service_server::InventoryService;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::domain::{self, Fill, Kind, Side, Terms};
use crate::error::InventoryError;
use crate::store::{self, BalanceRow};

/// The inventory's settings.
pub struct Settings {
    pub initial_krw: Decimal,
    /// Most a user may deposit of a currency in 24 hours.
    pub deposit_cap: Decimal,
    pub deposit_currencies: Vec<String>,
    /// Fraction of money-moving calls answered UNAVAILABLE after committing.
    pub fault_after_commit: f64,
}

pub struct Inventory {
    pool: PgPool,
    settings: Settings,
}

impl Inventory {
    pub fn new(pool: PgPool, settings: Settings) -> Self {
        Self { pool, settings }
    }

    /// With `FAULT_UNAVAILABLE_AFTER_COMMIT`, answers some committed calls with
    /// UNAVAILABLE, as if the answer had been lost on its way.
    fn lose_answer(&self, rpc: &str) -> Result<(), Status> {
        let p = self.settings.fault_after_commit;
        if p > 0.0 && rand::random::<f64>() < p {
            crate::metrics::FAULTS_INJECTED
                .with_label_values(&[rpc])
                .inc();
            tracing::warn!(
                rpc,
                "FAULT_UNAVAILABLE_AFTER_COMMIT: answering UNAVAILABLE after committing"
            );
            return Err(Status::unavailable(
                "fault injected after commit (FAULT_UNAVAILABLE_AFTER_COMMIT)",
            ));
        }
        Ok(())
    }
}

fn text(d: Decimal) -> String {
    exchange_proto::decimal::to_wire(d)
}

/// Most fills one Settle call may carry (an order's fills at placement walk at
/// most the 30 levels of a book; recovery re-sends an order's fills).
const MAX_FILLS: usize = 1000;

/// Longest order record a Settle call may carry, in bytes.
const MAX_RECORD: usize = 16 * 1024;

/// Most orders one ListUnconfirmed or ConfirmOrders call covers.
const MAX_BATCH: usize = 500;

/// An order record as given: a JSON object of at most [`MAX_RECORD`] bytes.
fn record(text: &str) -> Result<Option<serde_json::Value>, InventoryError> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_RECORD {
        return Err(InventoryError::Invalid(format!(
            "order_record is longer than {MAX_RECORD} bytes"
        )));
    }
    match serde_json::from_str(text) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(Some(value)),
        _ => Err(InventoryError::Invalid(
            "order_record must be a JSON object".into(),
        )),
    }
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

fn terms(side: Side, t: &pb::OrderTerms) -> Result<Terms, InventoryError> {
    let kind = match pb::OrderKind::try_from(t.kind) {
        Ok(pb::OrderKind::Limit) => Kind::Limit {
            price: domain::positive("terms.price", &t.price)?,
            volume: domain::positive("terms.volume", &t.volume)?,
        },
        Ok(pb::OrderKind::Price) => Kind::Price {
            budget: domain::positive("terms.budget", &t.budget)?,
        },
        Ok(pb::OrderKind::Market) => Kind::Market {
            volume: domain::positive("terms.volume", &t.volume)?,
        },
        _ => {
            return Err(InventoryError::Invalid(
                "terms.kind must be LIMIT, PRICE or MARKET".into(),
            ));
        }
    };
    Terms::new(side, kind, domain::amount("terms.fee_rate", &t.fee_rate)?)
}

#[tonic::async_trait]
impl InventoryService for Inventory {
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountResponse>, Status> {
        let user = domain::uuid("user_id", &request.into_inner().user_id)?;
        let created = store::open_account(&self.pool, user, self.settings.initial_krw).await?;
        self.lose_answer("OpenAccount")?;
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
        if !self.settings.deposit_currencies.contains(&currency) {
            return Err(InventoryError::Invalid(format!(
                "the paper faucet gives {} only",
                self.settings.deposit_currencies.join(", ")
            ))
            .into());
        }
        let amount = domain::positive("amount", &req.amount)?;
        service_kit::text::key("idempotency_key", &req.idempotency_key, 128)
            .map_err(InventoryError::Invalid)?;
        store::deposit(
            &self.pool,
            user,
            &currency,
            amount,
            &req.idempotency_key,
            self.settings.deposit_cap,
        )
        .await?;
        self.lose_answer("Deposit")?;
        let row = store::balance(&self.pool, user, &currency).await?;
        Ok(Response::new(pb::DepositResponse {
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
        if req.fills.len() > MAX_FILLS {
            return Err(
                InventoryError::Invalid(format!("at most {MAX_FILLS} fills per call")).into(),
            );
        }
        let fills = req.fills.iter().map(fill).collect::<Result<Vec<_>, _>>()?;
        let not_after = match req.not_after {
            0 => None,
            ms => Some(
                chrono::DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| InventoryError::Invalid("not_after is not a time".into()))?,
            ),
        };
        let terms = req
            .terms
            .as_ref()
            .map(|t| terms(side, t).and_then(|t| t.to_json(not_after)))
            .transpose()?;
        let reserving = terms.is_some();
        let record = record(&req.order_record)?;
        if record.is_some() && !reserving {
            return Err(InventoryError::Invalid("order_record comes with terms".into()).into());
        }
        let settled = store::settle(
            &self.pool,
            &store::Settle {
                order,
                user,
                side,
                base: &base,
                quote: &quote,
                fills: &fills,
                finalize: req.finalize,
                terms,
                record,
            },
        )
        .await;
        let settled = crate::metrics::count_settle(reserving, req.finalize, settled)?;
        self.lose_answer("Settle")?;
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
                order_record: r.record.map(|v| v.to_string()).unwrap_or_default(),
                created_at: r.created_at.timestamp_millis(),
            },
        };
        Ok(Response::new(response))
    }

    async fn list_unconfirmed(
        &self,
        request: Request<pb::ListUnconfirmedRequest>,
    ) -> Result<Response<pb::ListUnconfirmedResponse>, Status> {
        let req = request.into_inner();
        let limit = match req.limit as usize {
            0 => 100,
            n if n <= MAX_BATCH => n,
            _ => {
                return Err(InventoryError::Invalid(format!(
                    "limit must be between 1 and {MAX_BATCH}"
                ))
                .into());
            }
        };
        let min_age = std::time::Duration::from_millis(req.min_age_ms.max(0) as u64);
        let orders = store::unconfirmed(&self.pool, min_age, limit as i64)
            .await?
            .into_iter()
            .map(|u| pb::UnconfirmedOrder {
                order_id: u.order_id.to_string(),
                user_id: u.user_id.to_string(),
                order_record: u.record.to_string(),
                created_at: u.created_at.timestamp_millis(),
            })
            .collect();
        Ok(Response::new(pb::ListUnconfirmedResponse { orders }))
    }

    async fn confirm_orders(
        &self,
        request: Request<pb::ConfirmOrdersRequest>,
    ) -> Result<Response<pb::ConfirmOrdersResponse>, Status> {
        let req = request.into_inner();
        if req.order_ids.len() > MAX_BATCH {
            return Err(
                InventoryError::Invalid(format!("at most {MAX_BATCH} orders per call")).into(),
            );
        }
        let ids = req
            .order_ids
            .iter()
            .map(|id| domain::uuid("order_ids", id))
            .collect::<Result<Vec<_>, _>>()?;
        let confirmed = store::confirm(&self.pool, &ids).await?;
        Ok(Response::new(pb::ConfirmOrdersResponse {
            confirmed: confirmed as u32,
        }))
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
