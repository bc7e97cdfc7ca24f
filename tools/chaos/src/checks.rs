//! The invariants checked after a run, over every service's tables (the run's
//! Postgres superuser reads all schemas). Each check counts what violates it
//! and shows a few examples.

use std::collections::HashSet;

use sqlx::{Connection, PgConnection, Row};

use crate::users::Acked;

pub struct Check {
    pub name: &'static str,
    pub violations: i64,
    pub examples: Vec<String>,
}

/// Counts the rows of `sql` (each a violation, shown as its columns).
async fn rows(conn: &mut PgConnection, name: &'static str, sql: &str) -> anyhow::Result<Check> {
    let found = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| anyhow::anyhow!("check {name}: {e}"))?;
    let examples = found
        .iter()
        .take(5)
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    row.try_get::<String, _>(i)
                        .or_else(|_| {
                            row.try_get::<rust_decimal::Decimal, _>(i)
                                .map(|d| d.to_string())
                        })
                        .or_else(|_| row.try_get::<i64, _>(i).map(|d| d.to_string()))
                        .or_else(|_| row.try_get::<uuid::Uuid, _>(i).map(|d| d.to_string()))
                        .unwrap_or_else(|_| "?".into())
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    Ok(Check {
        name,
        violations: found.len() as i64,
        examples,
    })
}

/// Conditions that must hold once the exchange has settled: a check may wait
/// for them (recovery and the matcher finishing what the faults left).
pub const SETTLED: &str = "SELECT
    (SELECT count(*) FROM orders.orders WHERE state = 'pending')
  + (SELECT count(*) FROM orders.orders WHERE NOT finalized AND state IN ('done', 'cancel', 'rejected'))
  + (SELECT count(*) FROM orders.orders o JOIN inventory.reservations r ON r.order_id = o.id
     WHERE r.last_fill_seq <> o.trades_count)
  + (SELECT count(*) FROM inventory.unconfirmed_orders)";

pub async fn unsettled(url: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar(SETTLED).fetch_one(&mut conn).await?)
}

pub async fn run(url: &str, acked: &[Acked]) -> anyhow::Result<Vec<Check>> {
    let mut conn = PgConnection::connect(url).await?;
    let mut checks = Vec::new();
    checks.push(
        rows(
            &mut conn,
            "every balance equals the sum of its ledger rows",
            "SELECT b.user_id::text, b.currency, b.available, b.locked
             FROM inventory.balances b
             LEFT JOIN inventory.ledger l ON l.user_id = b.user_id AND l.currency = b.currency
             GROUP BY b.user_id, b.currency, b.available, b.locked
             HAVING b.available <> coalesce(sum(l.available_delta), 0)
                 OR b.locked <> coalesce(sum(l.locked_delta), 0)",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "no balance is negative",
            "SELECT user_id::text, currency, available, locked FROM inventory.balances
             WHERE available < 0 OR locked < 0",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "what each order did equals what its user holds (nothing created, lost or settled twice; fees only leave)",
            "WITH moves AS (
                SELECT o.user_id, split_part(o.market, '-', 1) AS currency,
                       CASE o.side WHEN 'bid' THEN -(e.funds + e.fee) ELSE e.funds - e.fee END AS delta
                FROM orders.executions e JOIN orders.orders o ON o.id = e.order_id
                UNION ALL
                SELECT o.user_id, split_part(o.market, '-', 2),
                       CASE o.side WHEN 'bid' THEN e.volume ELSE -e.volume END
                FROM orders.executions e JOIN orders.orders o ON o.id = e.order_id
                UNION ALL
                SELECT user_id, currency, available_delta FROM inventory.ledger
                WHERE kind IN ('open_account', 'deposit')
             ),
             expected AS (SELECT user_id, currency, sum(delta) AS total FROM moves GROUP BY 1, 2)
             SELECT coalesce(b.user_id, x.user_id)::text, coalesce(b.currency, x.currency),
                    coalesce(b.available + b.locked, 0) AS held, coalesce(x.total, 0) AS expected
             FROM inventory.balances b FULL JOIN expected x
               ON x.user_id = b.user_id AND x.currency = b.currency
             WHERE coalesce(b.available + b.locked, 0) <> coalesce(x.total, 0)",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "fees charged equal the fees of the executions",
            "SELECT (SELECT -coalesce(sum(available_delta + locked_delta), 0) FROM inventory.ledger WHERE kind = 'fee'),
                    (SELECT coalesce(sum(fee), 0) FROM orders.executions)
             WHERE (SELECT -coalesce(sum(available_delta + locked_delta), 0) FROM inventory.ledger WHERE kind = 'fee')
                <> (SELECT coalesce(sum(fee), 0) FROM orders.executions)",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "no fill was settled twice",
            "SELECT order_id::text, step, count(*) FROM inventory.ledger
             WHERE kind = 'settle' GROUP BY order_id, step HAVING count(*) <> 2
             UNION ALL
             SELECT order_id::text, step, count(*) FROM inventory.ledger
             WHERE kind = 'fee' GROUP BY order_id, step HAVING count(*) > 1",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "what is locked is what open reservations hold",
            "SELECT b.user_id::text, b.currency, b.locked, coalesce(r.held, 0)
             FROM inventory.balances b
             LEFT JOIN (SELECT user_id, currency, sum(locked) AS held FROM inventory.reservations
                        WHERE NOT released GROUP BY 1, 2) r
               ON r.user_id = b.user_id AND r.currency = b.currency
             WHERE b.locked <> coalesce(r.held, 0)",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "no reservation is left locked without an open order",
            "SELECT r.order_id::text, r.locked, coalesce(o.state, 'no order')
             FROM inventory.reservations r LEFT JOIN orders.orders o ON o.id = r.order_id
             WHERE NOT r.released AND coalesce(o.state, '') NOT IN ('wait', 'pending')",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "orders and inventory agree on every order's fills",
            "SELECT o.id::text, o.state, o.trades_count, r.last_fill_seq, o.executed_volume, r.executed_volume
             FROM orders.orders o JOIN inventory.reservations r ON r.order_id = o.id
             WHERE r.last_fill_seq <> o.trades_count
                OR (r.fee_rate IS NOT NULL AND r.executed_volume <> o.executed_volume)
             UNION ALL
             SELECT o.id::text, o.state, o.trades_count, -1, o.executed_volume, 0
             FROM orders.orders o LEFT JOIN inventory.reservations r ON r.order_id = o.id
             WHERE r.order_id IS NULL AND o.state NOT IN ('pending', 'rejected')
             UNION ALL
             SELECT r.order_id::text, 'never written', -1, r.last_fill_seq, 0, r.executed_volume
             FROM inventory.reservations r LEFT JOIN orders.orders o ON o.id = r.order_id
             WHERE o.id IS NULL",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "no order is stuck PENDING or unfinished after recovery",
            "SELECT id::text, state, finalized::text FROM orders.orders
             WHERE state = 'pending' OR (NOT finalized AND state IN ('done', 'cancel', 'rejected'))",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "no trade filled more than its volume on a side",
            "SELECT e.trade_id, o.market, o.side, sum(e.volume), t.volume
             FROM orders.executions e JOIN orders.orders o ON o.id = e.order_id
             JOIN market_data.trades t ON t.market = o.market AND t.sequential_id = e.trade_id
             WHERE e.trade_id IS NOT NULL
             GROUP BY e.trade_id, o.market, o.side, t.volume HAVING sum(e.volume) > t.volume",
        )
        .await?,
    );
    checks.push(
        rows(
            &mut conn,
            "every resting order that a later trade crossed was filled",
            // A trade more than a second after the order opened, at or through
            // its limit, with volume left on the order's side after the fills
            // it made: the matcher missed it.
            "SELECT o.id::text, o.side, o.price, t.sequential_id, t.price, t.volume, coalesce(used.volume, 0)
             FROM orders.orders o
             JOIN market_data.trades t ON t.market = o.market
                AND t.ts > o.opened_at + interval '1 second'
                AND ((o.side = 'bid' AND t.price <= o.price) OR (o.side = 'ask' AND t.price >= o.price))
             LEFT JOIN LATERAL (
                SELECT sum(e.volume) AS volume FROM orders.executions e
                JOIN orders.orders o2 ON o2.id = e.order_id
                WHERE e.trade_id = t.sequential_id AND o2.market = t.market AND o2.side = o.side
             ) used ON true
             WHERE o.state = 'wait' AND o.ord_type = 'limit' AND o.opened_at IS NOT NULL
               AND coalesce(used.volume, 0) < t.volume",
        )
        .await?,
    );

    // What the users were told, against what exists.
    let stored: HashSet<(String, String)> =
        sqlx::query_as::<_, (String, String)>("SELECT id::text, user_id::text FROM orders.orders")
            .fetch_all(&mut conn)
            .await?
            .into_iter()
            .collect();
    let missing: Vec<String> = acked
        .iter()
        .filter(|a| !stored.contains(&(a.uuid.clone(), a.user.clone())))
        .map(|a| format!("{} (key {})", a.uuid, a.key))
        .collect();
    checks.push(Check {
        name: "every acknowledged order exists, for its user",
        violations: missing.len() as i64,
        examples: missing.into_iter().take(5).collect(),
    });
    let keys: HashSet<String> = acked.iter().map(|a| format!("idem:{}", a.key)).collect();
    let keys: Vec<String> = keys.into_iter().collect();
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT request_key, count(*) FROM orders.orders WHERE request_key = ANY($1)
         GROUP BY request_key HAVING count(*) <> 1",
    )
    .bind(&keys)
    .fetch_all(&mut conn)
    .await?;
    checks.push(Check {
        name: "every acknowledged request made exactly one order",
        violations: twice.len() as i64,
        examples: twice
            .iter()
            .take(5)
            .map(|(k, n)| format!("{k}: {n}"))
            .collect(),
    });
    Ok(checks)
}
