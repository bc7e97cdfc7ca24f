//! SQL for orders and their executions. Every state change notifies
//! `order_events` (payload `<order id> <user id>`) in the same statement.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{Exec, OrdType, Side, State};
use crate::record::Record;

/// Columns of an order, as selected everywhere.
const COLUMNS: &str = "id, user_id, identifier, market, side, ord_type, price, volume, state, \
     reserved_currency, reserved_amount, executed_volume, executed_funds, paid_fee, trades_count, \
     reject_reason, created_at, updated_at, fee_rate, plan, finalized, request_key, plan_deadline, \
     opened_at, time_in_force, smp_type";

const NOTIFY: &str = "pg_notify('order_events', id::text || ' ' || user_id::text) AS notified";

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub identifier: Option<String>,
    pub market: String,
    #[sqlx(try_from = "String")]
    pub side: Side,
    #[sqlx(try_from = "String")]
    pub ord_type: OrdType,
    pub price: Option<Decimal>,
    pub volume: Option<Decimal>,
    #[sqlx(try_from = "String")]
    pub state: State,
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
    pub request_key: Option<String>,
    /// When inventory must have reserved the funds for `plan` by.
    pub plan_deadline: Option<DateTime<Utc>>,
    /// When the order was confirmed (left PENDING).
    pub opened_at: Option<DateTime<Utc>>,
    pub time_in_force: Option<String>,
    pub smp_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ExecRow {
    pub seq: i32,
    pub price: Decimal,
    pub volume: Decimal,
    pub funds: Decimal,
    pub fee: Decimal,
    /// The taker's side: the order's own for its immediate fills, the other
    /// side's when a market trade filled it resting.
    #[sqlx(try_from = "String")]
    pub trend: Side,
    pub created_at: DateTime<Utc>,
}

/// A new order as it is first written.
pub struct NewOrder<'a> {
    pub id: Uuid,
    pub user: Uuid,
    pub identifier: Option<&'a str>,
    pub request_key: Option<&'a str>,
    pub market: &'a str,
    pub side: &'a str,
    pub ord_type: &'a str,
    pub price: Option<Decimal>,
    pub volume: Option<Decimal>,
    pub reserved_currency: &'a str,
    pub reserved_amount: Decimal,
    pub fee_rate: Decimal,
    pub plan: &'a [Exec],
    /// How long inventory has to reserve the funds for the plan.
    pub plan_ttl: std::time::Duration,
    pub time_in_force: Option<&'a str>,
    pub smp_type: Option<&'a str>,
    /// Orders the user may have open (PENDING or WAIT), this one included.
    pub max_open: i64,
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

/// Executions back from [`plan_json`]; `None` if the stored plan is not one.
pub fn plan_from_json(value: &serde_json::Value) -> Option<Vec<Exec>> {
    let field =
        |v: &serde_json::Value, k: &str| exchange_proto::decimal::parse(v.get(k)?.as_str()?).ok();
    value
        .as_array()?
        .iter()
        .map(|v| {
            Some(Exec {
                price: field(v, "price")?,
                volume: field(v, "volume")?,
                funds: field(v, "funds")?,
                fee: field(v, "fee")?,
            })
        })
        .collect()
}

/// Writes the order PENDING, its plan due in inventory by now + `plan_ttl`
/// (announced once it leaves PENDING); `None` when the user already has an
/// order with this id, identifier or request key, or `max_open` open orders
/// (one statement: no round trip to count them first). Placing does this in
/// the transaction it commits once inventory answered: until then, another
/// attempt of the same order waits here.
pub async fn insert_pending(
    db: impl PgExecutor<'_>,
    o: &NewOrder<'_>,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO orders (id, user_id, identifier, market, side, ord_type, price, volume, state,
                             reserved_currency, reserved_amount, fee_rate, plan, request_key, plan_deadline,
                             time_in_force, smp_type)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11, $12, $13,
                now() + $14 * interval '1 millisecond', $15, $16
         WHERE (SELECT count(*) FROM orders
                WHERE user_id = $2 AND state IN ('pending', 'wait')) < $17
         ON CONFLICT DO NOTHING
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
        .bind(o.request_key)
        .bind(o.plan_ttl.as_millis() as i64)
        .bind(o.time_in_force)
        .bind(o.smp_type)
        .bind(o.max_open)
        .fetch_optional(db)
        .await
}

/// Writes an order from its record, as inventory executed it: inserts it, or
/// completes it if it is PENDING (an attempt whose answer was not known);
/// `None` when it exists and is not PENDING. With its executions, in one
/// statement. `created_at` is used when inserting.
pub async fn write_record(
    db: impl PgExecutor<'_>,
    id: Uuid,
    user: Uuid,
    r: &Record,
    created_at: DateTime<Utc>,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let volume: Decimal = r.plan.iter().map(|e| e.volume).sum();
    let funds: Decimal = r.plan.iter().map(|e| e.funds).sum();
    let fee: Decimal = r.plan.iter().map(|e| e.fee).sum();
    let sql = format!(
        "WITH o AS (
            INSERT INTO orders (id, user_id, identifier, market, side, ord_type, price, volume, state,
                                reserved_currency, reserved_amount, fee_rate, plan, request_key,
                                time_in_force, smp_type, executed_volume, executed_funds, paid_fee,
                                trades_count, settled_fills, finalized, created_at, opened_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                    $19, $20, $20, $21, $22, now())
            ON CONFLICT (id) DO UPDATE SET
                identifier = excluded.identifier, market = excluded.market, side = excluded.side,
                ord_type = excluded.ord_type, price = excluded.price, volume = excluded.volume,
                state = excluded.state, reserved_currency = excluded.reserved_currency,
                reserved_amount = excluded.reserved_amount, fee_rate = excluded.fee_rate,
                plan = excluded.plan, request_key = excluded.request_key,
                time_in_force = excluded.time_in_force, smp_type = excluded.smp_type,
                executed_volume = excluded.executed_volume, executed_funds = excluded.executed_funds,
                paid_fee = excluded.paid_fee, trades_count = excluded.trades_count,
                settled_fills = excluded.settled_fills, finalized = excluded.finalized,
                plan_deadline = NULL, updated_at = now(), opened_at = now()
            WHERE orders.state = 'pending'
            RETURNING {COLUMNS}, {NOTIFY}
         ),
         e AS (
            INSERT INTO executions (order_id, seq, price, volume, funds, fee, trend)
            SELECT $1, x.ordinality::int, (x.value ->> 'price')::numeric, (x.value ->> 'volume')::numeric,
                   (x.value ->> 'funds')::numeric, (x.value ->> 'fee')::numeric, o.side
            FROM o, jsonb_array_elements($13) WITH ORDINALITY AS x(value, ordinality)
         )
         SELECT * FROM o"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(user)
        .bind(&r.identifier)
        .bind(&r.market)
        .bind(&r.side)
        .bind(&r.ord_type)
        .bind(r.price)
        .bind(r.volume)
        .bind(&r.state)
        .bind(&r.reserved_currency)
        .bind(r.reserved_amount)
        .bind(r.fee_rate)
        .bind(plan_json(&r.plan))
        .bind(&r.request_key)
        .bind(&r.time_in_force)
        .bind(&r.smp_type)
        .bind(volume)
        .bind(funds)
        .bind(fee)
        .bind(r.plan.len() as i32)
        .bind(r.finalized())
        .bind(created_at)
        .fetch_optional(db)
        .await
}

/// The state of each of these orders that exists.
pub async fn states(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, state FROM orders WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
}

/// The order a user's earlier request with this key made.
pub async fn by_request_key(
    pool: &PgPool,
    user: Uuid,
    key: &str,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE user_id = $1 AND request_key = $2"
    )))
    .bind(user)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// Whether the user has an order with this identifier.
pub async fn identifier_used(
    pool: &PgPool,
    user: Uuid,
    identifier: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM orders WHERE user_id = $1 AND identifier = $2)",
    )
    .bind(user)
    .bind(identifier)
    .fetch_one(pool)
    .await
}

/// How many orders of the user are open (PENDING or WAIT).
pub async fn open_count(pool: &PgPool, user: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE user_id = $1 AND state IN ('pending', 'wait')",
    )
    .bind(user)
    .fetch_one(pool)
    .await
}

/// Gives a PENDING order a new plan, due by now + `ttl`, if its plan is still
/// the one due at `deadline` (so two recoveries never both replace it).
pub async fn replan(
    pool: &PgPool,
    id: Uuid,
    deadline: Option<DateTime<Utc>>,
    plan: &[Exec],
    ttl: std::time::Duration,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE orders SET plan = $3, plan_deadline = now() + $4 * interval '1 millisecond',
                           updated_at = now()
         WHERE id = $1 AND state = 'pending' AND plan_deadline IS NOT DISTINCT FROM $2
         RETURNING {COLUMNS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(deadline)
        .bind(plan_json(plan))
        .bind(ttl.as_millis() as i64)
        .fetch_optional(pool)
        .await
}

/// Puts an order recovery could not finish at the back of its queue.
pub async fn touch(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Moves a PENDING order on once inventory has its funds: records the
/// executions it filled at once and its new state, in one statement.
pub async fn finish_pending(
    db: impl PgExecutor<'_>,
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
                              trades_count = $6, settled_fills = $6, finalized = $7,
                              updated_at = now(), opened_at = now()
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
        .fetch_optional(db)
        .await
}

/// Cancels a PENDING order that never reserved anything (a post_only order
/// that would now take).
pub async fn cancel_pending(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<OrderRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE orders SET state = 'cancel', finalized = true, updated_at = now(), opened_at = now()
         WHERE id = $1 AND state = 'pending'
         RETURNING {COLUMNS}, {NOTIFY}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Refuses a PENDING order (its funds could not be reserved).
pub async fn reject(
    db: impl PgExecutor<'_>,
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
        .fetch_optional(db)
        .await
}

/// Records one more execution of an open order by the market trade `trade_id`
/// (its taker was the other side: the execution's `trend`),
/// if the order is still open, has exactly `trades_count` executions (so a fill
/// never races a cancel or another fill) and was not filled by that trade
/// already. The order is DONE once its volume is filled.
pub async fn record_fill(
    pool: &PgPool,
    id: Uuid,
    trades_count: i32,
    e: &Exec,
    trade_id: i64,
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
            INSERT INTO executions (order_id, seq, price, volume, funds, fee, trend, trade_id)
            SELECT $1, $2 + 1, $6, $3, $4, $5, CASE o.side WHEN 'bid' THEN 'ask' ELSE 'bid' END, $7 FROM o
         )
         SELECT * FROM o"
    );
    let filled = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(trades_count)
        .bind(e.volume)
        .bind(e.funds)
        .bind(e.fee)
        .bind(e.price)
        .bind(trade_id)
        .fetch_optional(pool)
        .await;
    match filled {
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("executions_once_per_trade") => {
            Ok(None)
        }
        other => other,
    }
}

/// How much of each of `trades` (sequential ids in `market`) already filled
/// orders, per side of the orders.
pub async fn consumed(
    pool: &PgPool,
    market: &str,
    trades: &[i64],
) -> Result<Vec<Consumed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.trade_id, o.side, sum(e.volume) AS volume
         FROM executions e JOIN orders o ON o.id = e.order_id
         WHERE e.trade_id = ANY($2) AND o.market = $1 GROUP BY 1, 2",
    )
    .bind(market)
    .bind(trades)
    .fetch_all(pool)
    .await
}

/// The volume of a market trade that resting orders of one side took.
#[derive(Debug, sqlx::FromRow)]
pub struct Consumed {
    pub trade_id: i64,
    #[sqlx(try_from = "String")]
    pub side: Side,
    pub volume: Decimal,
}

/// The last trade the matcher processed, per market: (market, trade ms, sequential id).
pub async fn cursors(pool: &PgPool) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT market, trade_ts, sequential_id FROM matcher_cursors")
        .fetch_all(pool)
        .await
}

/// Saves the matcher's cursors (market, trade ms, sequential id).
pub async fn save_cursors(
    pool: &PgPool,
    cursors: &[(String, i64, i64)],
) -> Result<(), sqlx::Error> {
    let markets: Vec<&str> = cursors.iter().map(|c| c.0.as_str()).collect();
    let ts: Vec<i64> = cursors.iter().map(|c| c.1).collect();
    let ids: Vec<i64> = cursors.iter().map(|c| c.2).collect();
    sqlx::query(
        "INSERT INTO matcher_cursors (market, trade_ts, sequential_id)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
         ON CONFLICT (market) DO UPDATE
            SET trade_ts = excluded.trade_ts, sequential_id = excluded.sequential_id, updated_at = now()",
    )
    .bind(&markets)
    .bind(&ts)
    .bind(&ids)
    .execute(pool)
    .await?;
    Ok(())
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

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
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

/// The last `limit` executions of an order, oldest first.
pub async fn last_executions(
    pool: &PgPool,
    id: Uuid,
    limit: usize,
) -> Result<Vec<ExecRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM (SELECT seq, price, volume, funds, fee, trend, created_at FROM executions
                        WHERE order_id = $1 ORDER BY seq DESC LIMIT $2) last ORDER BY seq",
    )
    .bind(id)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
}

pub async fn executions(pool: &PgPool, id: Uuid) -> Result<Vec<ExecRow>, sqlx::Error> {
    sqlx::query_as("SELECT seq, price, volume, funds, fee, trend, created_at FROM executions WHERE order_id = $1 ORDER BY seq")
        .bind(id)
        .fetch_all(pool)
        .await
}

/// Which of a user's orders to list.
pub struct ListFilter<'a> {
    pub user: Uuid,
    pub market: Option<&'a str>,
    /// Empty: any state.
    pub states: &'a [&'a str],
    /// Empty: any (an order matches either list).
    pub ids: &'a [Uuid],
    pub identifiers: &'a [String],
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
    pub ascending: bool,
}

/// A user's orders, newest first (or oldest with `ascending`).
pub async fn list(pool: &PgPool, f: &ListFilter<'_>) -> Result<Vec<OrderRow>, sqlx::Error> {
    let order = if f.ascending { "ASC" } else { "DESC" };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders
         WHERE user_id = $1 AND ($2::text IS NULL OR market = $2)
           AND (cardinality($3::text[]) = 0 OR state = ANY($3))
           AND ((cardinality($4::uuid[]) = 0 AND cardinality($5::text[]) = 0)
                OR id = ANY($4) OR identifier = ANY($5))
           AND ($6::timestamptz IS NULL OR created_at >= $6)
           AND ($7::timestamptz IS NULL OR created_at < $7)
         ORDER BY created_at {order}, id {order} LIMIT $8 OFFSET $9"
    )))
    .bind(f.user)
    .bind(f.market)
    .bind(f.states)
    .bind(f.ids)
    .bind(f.identifiers)
    .bind(f.created_from)
    .bind(f.created_to)
    .bind(f.limit)
    .bind(f.offset)
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

/// Orders a crash or a lost answer may have left half done: PENDING whose plan
/// was due in inventory more than a grace period ago (so no call can still
/// make its reservation), or DONE/CANCEL not yet finalized and last changed
/// before `older_than`. Those waiting longest first (a failed attempt goes to
/// the back, see [`touch`]).
pub async fn unfinished(
    pool: &PgPool,
    older_than: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders
         WHERE (state = 'pending'
                AND coalesce(plan_deadline, created_at + interval '10 seconds') < now() - interval '2 seconds')
            OR (NOT finalized AND state IN ('done', 'cancel') AND updated_at < $1)
         ORDER BY updated_at LIMIT $2"
    )))
    .bind(older_than)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Open orders with fills inventory may not have applied (more than it is
/// known to have), last changed before `older_than`, longest waiting first.
pub async fn unsettled_fills(
    pool: &PgPool,
    older_than: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM orders WHERE state = 'wait' AND trades_count > settled_fills
            AND updated_at < $1
         ORDER BY updated_at LIMIT $2"
    )))
    .bind(older_than)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Records that inventory has applied the first `fills` fills of an order
/// (never lowering what is recorded: a later fill may have been marked first).
pub async fn mark_settled(pool: &PgPool, id: Uuid, fills: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET settled_fills = $2 WHERE id = $1 AND settled_fills < $2")
        .bind(id)
        .bind(fills)
        .execute(pool)
        .await?;
    Ok(())
}
