//! SQL: each call is one statement (one transaction) invoking the functions of
//! migrations 0002–0004. Deadlocks and serialization failures are retried here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Fill, Side};
use crate::error::InventoryError;

/// One balance row.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct BalanceRow {
    pub currency: String,
    pub available: Decimal,
    pub locked: Decimal,
    pub avg_buy_price: Decimal,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ReservationRow {
    pub currency: String,
    pub reserved: Decimal,
    pub locked: Decimal,
    pub last_fill_seq: i32,
    pub released: bool,
    pub created_at: DateTime<Utc>,
    /// The caller's record of the order, until it confirms it.
    pub record: Option<serde_json::Value>,
}

/// A reservation made with a record its caller has not confirmed.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct UnconfirmedRow {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub record: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct LedgerRow {
    pub id: i64,
    pub currency: String,
    pub available_delta: Decimal,
    pub locked_delta: Decimal,
    pub kind: String,
    pub order_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// SQLSTATEs the money functions raise (see the migrations' headers).
mod sqlstate {
    pub const CHECK_VIOLATION: &str = "23514";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const NO_DATA_FOUND: &str = "P0002";
    pub const INVALID_PARAMETER: &str = "22023";
    pub const DEADLOCK: &str = "40P01";
    pub const SERIALIZATION: &str = "40001";
    pub const FILL_REFUSED: &str = "EX001";
    pub const PLAN_EXPIRED: &str = "EX002";
    pub const DEPOSIT_LIMIT: &str = "EX003";
    pub const ORDER_CONFLICT: &str = "EX004";
}

fn map(err: sqlx::Error) -> InventoryError {
    use sqlstate::*;
    telemetry::db::failed(&err);
    if let Some(db) = err.as_database_error() {
        let message = || db.message().to_owned();
        match (db.code().as_deref(), db.constraint()) {
            (Some(CHECK_VIOLATION), Some("balances_available_non_negative")) => {
                return InventoryError::InsufficientFunds;
            }
            (Some(CHECK_VIOLATION), _) => {
                return InventoryError::Inconsistent("a balance would go negative".into());
            }
            (Some(NO_DATA_FOUND), _) => return InventoryError::NotFound(message()),
            (Some(FOREIGN_KEY_VIOLATION), _) => {
                return InventoryError::NotFound("the user has no account".into());
            }
            (Some(INVALID_PARAMETER), _) => return InventoryError::Invalid(message()),
            (Some(FILL_REFUSED), _) => return InventoryError::FillRefused(message()),
            (Some(PLAN_EXPIRED), _) => return InventoryError::PlanExpired(message()),
            (Some(DEPOSIT_LIMIT), _) => return InventoryError::DepositLimit(message()),
            (Some(ORDER_CONFLICT), _) => return InventoryError::OrderConflict(message()),
            _ => {}
        }
    }
    InventoryError::Database(err)
}

fn retryable(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|c| c == sqlstate::DEADLOCK || c == sqlstate::SERIALIZATION)
}

/// Runs `op` and retries it a few times on deadlock or serialization failure
/// (every function here is idempotent, so a retry is safe).
async fn with_retry<T, F, Fut>(mut op: F) -> Result<T, InventoryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut delay = Duration::from_millis(5);
    for _ in 0..5 {
        match op().await {
            Err(e) if retryable(&e) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other.map_err(map),
        }
    }
    op().await.map_err(map)
}

pub async fn open_account(
    pool: &PgPool,
    user: Uuid,
    initial: Decimal,
) -> Result<bool, InventoryError> {
    with_retry(|| {
        sqlx::query_scalar("SELECT open_account($1, $2)")
            .bind(user)
            .bind(initial)
            .fetch_one(pool)
    })
    .await
}

pub async fn balances(pool: &PgPool, user: Uuid) -> Result<Vec<BalanceRow>, InventoryError> {
    sqlx::query_as(
        "SELECT currency, available, locked, avg_buy_price FROM balances
         WHERE user_id = $1 AND (available > 0 OR locked > 0 OR currency = 'KRW')
         ORDER BY currency <> 'KRW', currency",
    )
    .bind(user)
    .fetch_all(pool)
    .await
    .map_err(map)
}

pub async fn balance(
    pool: &PgPool,
    user: Uuid,
    currency: &str,
) -> Result<Option<BalanceRow>, InventoryError> {
    sqlx::query_as("SELECT currency, available, locked, avg_buy_price FROM balances WHERE user_id = $1 AND currency = $2")
        .bind(user)
        .bind(currency)
        .fetch_optional(pool)
        .await
        .map_err(map)
}

pub async fn deposit(
    pool: &PgPool,
    user: Uuid,
    currency: &str,
    amount: Decimal,
    key: &str,
    cap: Decimal,
) -> Result<bool, InventoryError> {
    with_retry(|| {
        sqlx::query_scalar("SELECT deposit($1, $2, $3, $4, $5)")
            .bind(user)
            .bind(currency)
            .bind(amount)
            .bind(key)
            .bind(cap)
            .fetch_one(pool)
    })
    .await
}

/// What a settle call did.
#[derive(Debug, PartialEq, Eq)]
pub struct Settled {
    pub fills_applied: u32,
    pub released: Decimal,
}

/// One settle call: an order's fills, and its terms when it may have no
/// reservation yet.
pub struct Settle<'a> {
    pub order: Uuid,
    pub user: Uuid,
    pub side: Side,
    pub base: &'a str,
    pub quote: &'a str,
    pub fills: &'a [Fill],
    pub finalize: bool,
    /// The terms as `settle` takes them ([`crate::domain::Terms::to_json`]).
    pub terms: Option<serde_json::Value>,
    /// The caller's record of the order, kept until it confirms it (with `terms`).
    pub record: Option<serde_json::Value>,
}

pub async fn settle(pool: &PgPool, s: &Settle<'_>) -> Result<Settled, InventoryError> {
    let fills_json = serde_json::Value::Array(
        s.fills
            .iter()
            .map(|f| {
                serde_json::json!({
                    "seq": f.seq,
                    "price": f.price.to_string(),
                    "volume": f.volume.to_string(),
                    "funds": f.funds.to_string(),
                    "fee": f.fee.to_string(),
                })
            })
            .collect(),
    );
    let (applied, released): (i32, Decimal) = with_retry(|| {
        sqlx::query_as(
            "SELECT fills_applied, released FROM settle($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(s.order)
        .bind(s.user)
        .bind(s.side.as_str())
        .bind(s.base)
        .bind(s.quote)
        .bind(&fills_json)
        .bind(s.finalize)
        .bind(&s.terms)
        .bind(&s.record)
        .fetch_one(pool)
    })
    .await?;
    Ok(Settled {
        fills_applied: applied.max(0) as u32,
        released,
    })
}

pub async fn reservation(
    pool: &PgPool,
    order: Uuid,
) -> Result<Option<ReservationRow>, InventoryError> {
    sqlx::query_as(
        "SELECT r.currency, r.reserved, r.locked, r.last_fill_seq, r.released, r.created_at, u.record
         FROM reservations r LEFT JOIN unconfirmed_orders u USING (order_id) WHERE r.order_id = $1",
    )
    .bind(order)
    .fetch_optional(pool)
    .await
    .map_err(map)
}

/// Reservations with a record not confirmed, made at least `min_age` ago, oldest first.
pub async fn unconfirmed(
    pool: &PgPool,
    min_age: Duration,
    limit: i64,
) -> Result<Vec<UnconfirmedRow>, InventoryError> {
    sqlx::query_as(
        "SELECT order_id, user_id, record, created_at FROM unconfirmed_orders
         WHERE created_at < now() - $1 * interval '1 millisecond'
         ORDER BY created_at LIMIT $2",
    )
    .bind(min_age.as_millis() as i64)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(map)
}

/// Drops the records of orders their caller stored; how many there were.
pub async fn confirm(pool: &PgPool, orders: &[Uuid]) -> Result<u64, InventoryError> {
    let done = sqlx::query("DELETE FROM unconfirmed_orders WHERE order_id = ANY($1)")
        .bind(orders)
        .execute(pool)
        .await
        .map_err(map)?;
    Ok(done.rows_affected())
}

pub async fn ledger(
    pool: &PgPool,
    user: Uuid,
    currency: Option<&str>,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<LedgerRow>, InventoryError> {
    sqlx::query_as(
        "SELECT id, currency, available_delta, locked_delta, kind, order_id, created_at FROM ledger
         WHERE user_id = $1 AND ($2::text IS NULL OR currency = $2) AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(user)
    .bind(currency)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(map)
}
