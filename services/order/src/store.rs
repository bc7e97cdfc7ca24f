//! SQL for orders and their executions. Every state change notifies
//! `order_events` (payload `<order id> <user id>`) in the same statement.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Exec, Side};

/// Columns of an order, as selected everywhere.
const COLUMNS: &str = "id, user_id, identifier, market, side, ord_type, price, volume, state, \
     reserved_currency, reserved_amount, executed_volume, executed_funds, paid_fee, trades_count, \
     reject_reason, created_at, updated_at, fee_rate, plan, finalized";

const NOTIFY: &str = "pg_notify('order_events', id::text || ' ' || user_id::text) AS notified";

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub identifier: Option<String>,
    pub market: String,
    pub side: String,
    pub ord_type: String,
    pub price: Option<Decimal>,
    pub volume: Option<Decimal>,
    pub state: String,
    pub reserved_currency: String,
    pub reserved_amount: Decimal,
    pub executed_volume: Decimal,
    pub executed_funds: Decimal,
    pub paid_fee: Decimal,
    pub trades_count: i32,
    pub reject_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub fee_rate: Decimal,
    pub plan: serde_json::Value,
    pub finalized: bool,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ExecRow {
    pub seq: i32,
    pub price: Decimal,
    pub volume: Decimal,
    pub funds: Decimal,
    pub fee: Decimal,
    pub trend: String,
    pub created_at: DateTime<Utc>,
}

/// A new order as it is first written.
pub struct NewOrder<'a> {
    pub id: Uuid,
    pub user: Uuid,
    pub identifier: Option<&'a str>,
    pub market: &'a str,
    pub side: &'a str,
    pub ord_type: &'a str,
    pub price: Option<Decimal>,
    pub volume: Option<Decimal>,
    pub reserved_currency: &'a str,
    pub reserved_amount: Decimal,
    pub fee_rate: Decimal,
    pub plan: &'a [Exec],
}

/// Executions as JSON (decimals as strings, exact).
pub fn plan_json(execs: &[Exec]) -> serde_json::Value {
    serde_json::Value::Array(
        execs
            .iter()
            .map(|e| {
                serde_json::json!({
                    "price": e.price.to_string(), "volume": e.volume.to_string(),
                    "funds": e.funds.to_string(), "fee": e.fee.to_string(),
                })
            })
            .collect(),
    )
}

/// Executions back from [`plan_json`].
pub fn plan_from_json(value: &serde_json::Value) -> Vec<Exec> {
    let field = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .and_then(|s| s.parse::<Decimal>().ok())
    };
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| {
                    Some(Exec {
                        price: field(v, "price")?,
                        volume: field(v, "volume")?,
                        funds: field(v, "funds")?,
                        fee: field(v, "fee")?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes the order PENDING; `None` when the user already has an order with
/// this identifier.
pub async fn insert_pending(
    pool: &PgPool,
    o: &NewOrder<'_>,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO orders (id, user_id, identifier, market, side, ord_type, price, volume, state,
                             reserved_currency, reserved_amount, fee_rate, plan)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11, $12)
         ON CONFLICT ON CONSTRAINT orders_identifier_unique DO NOTHING
         RETURNING {COLUMNS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(o.id)
        .bind(o.user)
        .bind(o.identifier)
        .bind(o.market)
        .bind(o.side)
        .bind(o.ord_type)
        .bind(o.price)
        .bind(o.volume)
        .bind(o.reserved_currency)
        .bind(o.reserved_amount)
        .bind(o.fee_rate)
        .bind(plan_json(o.plan))
        .fetch_optional(pool)
        .await
}

/// Moves a PENDING order on once inventory has its funds: records the
/// executions it filled at once and its new state, in one statement.
pub async fn finish_pending(
    pool: &PgPool,
    id: Uuid,
    state: &str,
    execs: &[Exec],
    finalized: bool,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let volume: Decimal = execs.iter().map(|e| e.volume).sum();
    let funds: Decimal = execs.iter().map(|e| e.funds).sum();
    let fee: Decimal = execs.iter().map(|e| e.fee).sum();
    let sql = format!(
        "WITH o AS (
            UPDATE orders SET state = $2, executed_volume = $3, executed_funds = $4, paid_fee = $5,
                              trades_count = $6, finalized = $7, updated_at = now()
            WHERE id = $1 AND state = 'pending'
            RETURNING {COLUMNS}, {NOTIFY}
         ),
         e AS (
            INSERT INTO executions (order_id, seq, price, volume, funds, fee, trend)
            SELECT $1, x.ordinality::int, (x.value ->> 'price')::numeric, (x.value ->> 'volume')::numeric,
                   (x.value ->> 'funds')::numeric, (x.value ->> 'fee')::numeric, o.side
            FROM o, jsonb_array_elements($8) WITH ORDINALITY AS x(value, ordinality)
         )
         SELECT * FROM o"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(state)
        .bind(volume)
        .bind(funds)
        .bind(fee)
        .bind(execs.len() as i32)
        .bind(finalized)
        .bind(plan_json(execs))
        .fetch_optional(pool)
        .await
}

/// Refuses a PENDING order (its funds could not be reserved).
pub async fn reject(
    pool: &PgPool,
    id: Uuid,
    reason: &str,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE orders SET state = 'rejected', reject_reason = $2, finalized = true, updated_at = now()
         WHERE id = $1 AND state = 'pending'
         RETURNING {COLUMNS}, {NOTIFY}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(reason)
        .fetch_optional(pool)
        .await
}

/// Records one more execution of an open order, if it is still open and has
/// exactly `trades_count` executions (so a fill never races a cancel or another
/// fill). The order is DONE once its volume is filled.
pub async fn record_fill(
    pool: &PgPool,
    id: Uuid,
    trades_count: i32,
    e: &Exec,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let sql = format!(
        "WITH o AS (
            UPDATE orders SET executed_volume = executed_volume + $3, executed_funds = executed_funds + $4,
                              paid_fee = paid_fee + $5, trades_count = trades_count + 1,
                              state = CASE WHEN executed_volume + $3 >= volume THEN 'done' ELSE 'wait' END,
                              updated_at = now()
            WHERE id = $1 AND state = 'wait' AND trades_count = $2
            RETURNING {COLUMNS}, {NOTIFY}
         ),
         e AS (
            INSERT INTO executions (order_id, seq, price, volume, funds, fee, trend)
            SELECT $1, $2 + 1, $6, $3, $4, $5, o.side FROM o
         )
         SELECT * FROM o"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(trades_count)
        .bind(e.volume)
        .bind(e.funds)
        .bind(e.fee)
        .bind(e.price)
        .fetch_optional(pool)
        .await
}

/// Cancels a WAIT order of `user`.
pub async fn cancel(pool: &PgPool, id: Uuid, user: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE orders SET state = 'cancel', updated_at = now()
         WHERE id = $1 AND user_id = $2 AND state = 'wait'
         RETURNING {COLUMNS}, {NOTIFY}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(user)
        .fetch_optional(pool)
        .await
}

pub async fn mark_finalized(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET finalized = true WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn get_for_user(
    pool: &PgPool,
    user: Uuid,
    id: Option<Uuid>,
    identifier: Option<&str>,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE user_id = $1
           AND ($2::uuid IS NULL OR id = $2) AND ($3::text IS NULL OR identifier = $3)
         LIMIT 1"
    )))
    .bind(user)
    .bind(id)
    .bind(identifier)
    .fetch_optional(pool)
    .await
}

pub async fn executions(pool: &PgPool, id: Uuid) -> Result<Vec<ExecRow>, sqlx::Error> {
    sqlx::query_as("SELECT seq, price, volume, funds, fee, trend, created_at FROM executions WHERE order_id = $1 ORDER BY seq")
        .bind(id)
        .fetch_all(pool)
        .await
}

/// Orders of a user in `states` (all when empty), newest first unless `ascending`.
#[allow(clippy::too_many_arguments)]
pub async fn list(
    pool: &PgPool,
    user: Uuid,
    market: Option<&str>,
    states: &[&str],
    ids: &[Uuid],
    limit: i64,
    offset: i64,
    ascending: bool,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    let order = if ascending { "ASC" } else { "DESC" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders
         WHERE user_id = $1 AND ($2::text IS NULL OR market = $2)
           AND (cardinality($3::text[]) = 0 OR state = ANY($3))
           AND (cardinality($4::uuid[]) = 0 OR id = ANY($4))
         ORDER BY created_at {order}, id {order} LIMIT $5 OFFSET $6"
    )))
    .bind(user)
    .bind(market)
    .bind(states)
    .bind(ids)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
}

/// Every open limit order (for the matcher).
pub async fn waiting(pool: &PgPool) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE state = 'wait' ORDER BY created_at"
    )))
    .fetch_all(pool)
    .await
}

/// Orders a crash may have left half done: PENDING, or DONE/CANCEL not yet
/// finalized, last changed before `older_than`.
pub async fn unfinished(
    pool: &PgPool,
    older_than: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders
         WHERE (state = 'pending' OR (NOT finalized AND state IN ('done', 'cancel'))) AND updated_at < $1
         ORDER BY created_at LIMIT $2"
    )))
    .bind(older_than)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Open orders with executions, last changed before `older_than` (their fills
/// may not all be settled).
pub async fn waiting_with_fills(
    pool: &PgPool,
    older_than: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE state = 'wait' AND trades_count > 0 AND updated_at < $1
         ORDER BY updated_at LIMIT $2"
    )))
    .bind(older_than)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The side an order row is on.
pub fn side_of(row: &OrderRow) -> Side {
    if row.side == "bid" {
        Side::Bid
    } else {
        Side::Ask
    }
}
