//! Postgres: markets, trades (deduplicated on market + sequential_id) and
//! 1-minute candles; longer intervals aggregated from the 1-minute table.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use upbit::market::Caution;

/// A trade row as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TradeRow {
    pub market: String,
    pub ts: DateTime<Utc>,
    pub sequential_id: i64,
    pub price: Decimal,
    pub volume: Decimal,
    /// `ASK` or `BID`
    pub ask_bid: &'static str,
    pub prev_closing_price: Decimal,
    pub change_price: Decimal,
}

/// A market row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarketRow {
    pub market: String,
    pub korean_name: String,
    pub english_name: String,
    pub warning: bool,
    pub caution: Caution,
}

impl sqlx::FromRow<'_, sqlx::postgres::PgRow> for MarketRow {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row as _;
        Ok(Self {
            market: row.try_get("market")?,
            korean_name: row.try_get("korean_name")?,
            english_name: row.try_get("english_name")?,
            warning: row.try_get("warning")?,
            caution: Caution {
                price_fluctuations: row.try_get("caution_price_fluctuations")?,
                trading_volume_soaring: row.try_get("caution_trading_volume_soaring")?,
                deposit_amount_soaring: row.try_get("caution_deposit_amount_soaring")?,
                global_price_differences: row.try_get("caution_global_price_differences")?,
                concentration_of_small_accounts: row
                    .try_get("caution_concentration_of_small_accounts")?,
            },
        })
    }
}

/// A candle of any interval.
#[derive(Clone, Debug, PartialEq)]
pub struct CandleRow {
    pub start: DateTime<Utc>,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub value: Decimal,
    pub last_trade: DateTime<Utc>,
    /// Close of the previous period (day candles).
    pub prev_close: Option<Decimal>,
}

/// Candle periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Minutes(u32),
    Days,
    Weeks,
    Months,
}

/// Inserts trades (duplicates skipped) and folds the new ones into their 1-minute
/// candles, in one transaction. Returns how many trades were new.
///
/// `likely_new`: the caller believes none is stored yet (Redis had not seen
/// them), so they go in with `COPY`, which has no per-row conflict check, and
/// their candles are folded here ([`fold_candles`]) rather than by Postgres
/// from the inserted rows. If one was stored after all (Redis lost its memory
/// of it), the `COPY` fails as a whole on the primary key, its transaction is
/// rolled back and the batch is inserted again with `ON CONFLICT DO NOTHING`,
/// folded by Postgres from what it actually inserted.
pub async fn insert_trades(
    pool: &PgPool,
    trades: &[TradeRow],
    likely_new: bool,
) -> Result<u64, sqlx::Error> {
    if trades.is_empty() {
        return Ok(0);
    }
    // None: a sum does not fit a decimal exactly; Postgres folds that batch.
    if likely_new && let Some(candles) = fold_candles(trades) {
        match insert_new_trades(pool, trades, &candles).await {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tracing::debug!(
                    trades = trades.len(),
                    "a trade Redis had not seen was stored; skipping duplicates"
                );
            }
            other => return other,
        }
    }
    let stored: i64 = bind_trades(sqlx::query_scalar(INSERT_TRADES.as_str()), trades)
        .fetch_one(pool)
        .await?;
    Ok(stored as u64)
}

/// The trades as the statements' first eight parameters (`UNNEST` arrays).
const TRADES_INPUT: &str = r#"
        WITH input AS (
            SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::bigint[], $4::numeric[],
                                 $5::numeric[], $6::text[], $7::numeric[], $8::numeric[])
                AS t(market, ts, sequential_id, price, volume, ask_bid, prev_closing_price, change_price)
        ),"#;

/// `agg` (one row per market and minute, the columns of `candles_1m`) upserted
/// into `candles_1m`: a candle already stored is widened by the new trades.
const UPSERT_CANDLES: &str = r#"
        upserted AS (
            INSERT INTO candles_1m AS c (market, bucket, open, high, low, close, volume, value,
                                         open_ts, open_sid, close_ts, close_sid, trade_count)
            SELECT market, bucket, open, high, low, close, volume, value,
                   open_ts, open_sid, close_ts, close_sid, n
            FROM agg
            ORDER BY market, bucket
            ON CONFLICT (market, bucket) DO UPDATE SET
                open = CASE WHEN (EXCLUDED.open_ts, EXCLUDED.open_sid) < (c.open_ts, c.open_sid)
                            THEN EXCLUDED.open ELSE c.open END,
                open_sid = CASE WHEN (EXCLUDED.open_ts, EXCLUDED.open_sid) < (c.open_ts, c.open_sid)
                            THEN EXCLUDED.open_sid ELSE c.open_sid END,
                open_ts = LEAST(c.open_ts, EXCLUDED.open_ts),
                close = CASE WHEN (EXCLUDED.close_ts, EXCLUDED.close_sid) > (c.close_ts, c.close_sid)
                            THEN EXCLUDED.close ELSE c.close END,
                close_sid = CASE WHEN (EXCLUDED.close_ts, EXCLUDED.close_sid) > (c.close_ts, c.close_sid)
                            THEN EXCLUDED.close_sid ELSE c.close_sid END,
                close_ts = GREATEST(c.close_ts, EXCLUDED.close_ts),
                high = GREATEST(c.high, EXCLUDED.high),
                low = LEAST(c.low, EXCLUDED.low),
                volume = c.volume + EXCLUDED.volume,
                value = c.value + EXCLUDED.value,
                trade_count = c.trade_count + EXCLUDED.trade_count
            RETURNING 1
        )"#;

/// Any trades: duplicates skipped, and what was inserted folded by Postgres.
static INSERT_TRADES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    TRADES_INPUT.to_owned()
        + r#"
        inserted AS (
            INSERT INTO trades (market, ts, sequential_id, price, volume, ask_bid, prev_closing_price, change_price)
            SELECT * FROM input
            ON CONFLICT DO NOTHING
            RETURNING market, ts, sequential_id, price, volume
        ),
        agg AS (
            SELECT market,
                   date_bin(interval '1 minute', ts, timestamptz 'epoch') AS bucket,
                   (array_agg(price ORDER BY ts, sequential_id))[1] AS open,
                   max(price) AS high,
                   min(price) AS low,
                   (array_agg(price ORDER BY ts DESC, sequential_id DESC))[1] AS close,
                   sum(volume) AS volume,
                   round(sum(price * volume), 8) AS value,
                   min(ts) AS open_ts,
                   (array_agg(sequential_id ORDER BY ts, sequential_id))[1] AS open_sid,
                   max(ts) AS close_ts,
                   (array_agg(sequential_id ORDER BY ts DESC, sequential_id DESC))[1] AS close_sid,
                   count(*)::int AS n
            FROM inserted
            GROUP BY 1, 2
        ),"#
        + UPSERT_CANDLES
        + "
        SELECT count(*) FROM inserted"
});

/// `candles_1m` widened by candles the caller folded, as parameters 1 to 13.
static UPSERT_FOLDED_CANDLES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    r#"
        WITH agg AS (
            SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::numeric[], $4::numeric[],
                                 $5::numeric[], $6::numeric[], $7::numeric[], $8::numeric[],
                                 $9::timestamptz[], $10::bigint[], $11::timestamptz[], $12::bigint[],
                                 $13::int[])
                AS a(market, bucket, open, high, low, close, volume, value,
                     open_ts, open_sid, close_ts, close_sid, n)
        ),"#
    .to_owned()
        + UPSERT_CANDLES
        + "
        SELECT 1"
});

/// The columns `COPY` fills, in the order [`copy_rows`] writes them.
const COPY_TRADES: &str = "COPY trades (market, ts, sequential_id, price, volume, ask_bid, \
                           prev_closing_price, change_price) FROM STDIN (FORMAT BINARY)";

/// Binds the trades as the first eight parameters.
fn bind_trades<'q, O>(
    query: sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    trades: &'q [TradeRow],
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(trades.iter().map(|t| t.market.as_str()).collect::<Vec<_>>())
        .bind(trades.iter().map(|t| t.ts).collect::<Vec<_>>())
        .bind(trades.iter().map(|t| t.sequential_id).collect::<Vec<_>>())
        .bind(trades.iter().map(|t| t.price).collect::<Vec<_>>())
        .bind(trades.iter().map(|t| t.volume).collect::<Vec<_>>())
        .bind(trades.iter().map(|t| t.ask_bid).collect::<Vec<_>>())
        .bind(
            trades
                .iter()
                .map(|t| t.prev_closing_price)
                .collect::<Vec<_>>(),
        )
        .bind(trades.iter().map(|t| t.change_price).collect::<Vec<_>>())
}

/// Trades none of which is stored (else `COPY` fails on the primary key) and
/// their candles, folded by the caller, in one transaction. `COPY` takes the
/// rows without planning or evaluating a statement per row and inserts them
/// in bulk: a third less Postgres CPU for the insert itself than the `INSERT …
/// SELECT FROM UNNEST` the other path uses (docs/BENCHMARKS.md).
async fn insert_new_trades(
    pool: &PgPool,
    trades: &[TradeRow],
    candles: &[CandleFold<'_>],
) -> Result<u64, sqlx::Error> {
    let rows = copy_rows(trades).map_err(sqlx::Error::Encode)?;
    let column = |f: fn(&CandleFold<'_>) -> Decimal| candles.iter().map(f).collect::<Vec<_>>();
    let mut tx = pool.begin().await?;
    let mut copy = tx.copy_in_raw(COPY_TRADES).await?;
    copy.send(rows.as_slice()).await?;
    copy.finish().await?;
    let _: i32 = sqlx::query_scalar(UPSERT_FOLDED_CANDLES.as_str())
        .bind(candles.iter().map(|c| c.market).collect::<Vec<_>>())
        .bind(candles.iter().map(|c| c.bucket).collect::<Vec<_>>())
        .bind(column(|c| c.open))
        .bind(column(|c| c.high))
        .bind(column(|c| c.low))
        .bind(column(|c| c.close))
        .bind(column(|c| c.volume))
        .bind(column(|c| c.value))
        .bind(candles.iter().map(|c| c.open_at.0).collect::<Vec<_>>())
        .bind(candles.iter().map(|c| c.open_at.1).collect::<Vec<_>>())
        .bind(candles.iter().map(|c| c.close_at.0).collect::<Vec<_>>())
        .bind(candles.iter().map(|c| c.close_at.1).collect::<Vec<_>>())
        .bind(candles.iter().map(|c| c.trades).collect::<Vec<_>>())
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(trades.len() as u64)
}

/// Trades in `COPY`'s binary format ([`COPY_TRADES`]'s columns): a header,
/// per row the field count and each field as its length and the value as the
/// Postgres wire encodes it (the same bytes a bound parameter carries), then
/// the trailer.
fn copy_rows(
    trades: &[TradeRow],
) -> Result<sqlx::postgres::PgArgumentBuffer, sqlx::error::BoxDynError> {
    use sqlx::Encode;
    use sqlx::postgres::{PgArgumentBuffer, Postgres};
    fn field<'q, T: Encode<'q, Postgres>>(
        buf: &mut PgArgumentBuffer,
        value: &T,
    ) -> Result<(), sqlx::error::BoxDynError> {
        let at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        let len = match value.encode_by_ref(buf)? {
            sqlx::encode::IsNull::No => i32::try_from(buf.len() - at - 4)?,
            sqlx::encode::IsNull::Yes => -1,
        };
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
    let mut buf = PgArgumentBuffer::default();
    // Signature, flags (no OIDs), no header extension.
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&[0; 8]);
    // A row takes about 130 bytes (eight length words, a short market code,
    // two 8-byte integers and four numerics of a few base-10000 digits).
    buf.reserve(trades.len() * 130);
    for t in trades {
        buf.extend_from_slice(&8i16.to_be_bytes());
        field(&mut buf, &t.market.as_str())?;
        field(&mut buf, &t.ts)?;
        field(&mut buf, &t.sequential_id)?;
        field(&mut buf, &t.price)?;
        field(&mut buf, &t.volume)?;
        field(&mut buf, &t.ask_bid)?;
        field(&mut buf, &t.prev_closing_price)?;
        field(&mut buf, &t.change_price)?;
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(buf)
}

/// The trades of one market and minute folded together, as `candles_1m` stores
/// them: open and close are the prices of the first and last trade by
/// (timestamp, sequential id).
#[derive(Clone, Debug, PartialEq)]
pub struct CandleFold<'a> {
    pub market: &'a str,
    pub bucket: DateTime<Utc>,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    /// Σ price × volume, rounded to 8 places (half away from zero, as Postgres's
    /// `round`, and with 8 places).
    pub value: Decimal,
    pub open_at: (DateTime<Utc>, i64),
    pub close_at: (DateTime<Utc>, i64),
    pub trades: i32,
}

/// Folds trades into their 1-minute candles, the same figures Postgres's
/// `numeric` arithmetic gives; `None` when a product or sum would not fit a
/// `Decimal` exactly (then Postgres must fold them).
pub fn fold_candles(trades: &[TradeRow]) -> Option<Vec<CandleFold<'_>>> {
    const MINUTE_US: i64 = 60_000_000;
    let mut out: Vec<CandleFold<'_>> = Vec::new();
    let mut index: std::collections::HashMap<(&str, i64), usize> = Default::default();
    for t in trades {
        let us = t.ts.timestamp_micros();
        let minute = us - us.rem_euclid(MINUTE_US);
        let at = (t.ts, t.sequential_id);
        let value = exact_mul(t.price, t.volume)?;
        match index.entry((t.market.as_str(), minute)) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let c = &mut out[*e.get()];
                if at < c.open_at {
                    c.open_at = at;
                    c.open = t.price;
                }
                if at > c.close_at {
                    c.close_at = at;
                    c.close = t.price;
                }
                c.high = c.high.max(t.price);
                c.low = c.low.min(t.price);
                c.volume = exact_add(c.volume, t.volume)?;
                c.value = exact_add(c.value, value)?;
                c.trades += 1;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(CandleFold {
                    market: &t.market,
                    bucket: DateTime::from_timestamp_micros(minute)?,
                    open: t.price,
                    high: t.price,
                    low: t.price,
                    close: t.price,
                    volume: t.volume,
                    value,
                    open_at: at,
                    close_at: at,
                    trades: 1,
                });
            }
        }
    }
    for c in &mut out {
        // Postgres's round(v, 8): half away from zero, and always 8 places.
        let mut value = c
            .value
            .round_dp_with_strategy(8, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        value.rescale(8);
        if value.scale() != 8 {
            return None;
        }
        c.value = value;
    }
    Some(out)
}

/// `a × b` when a `Decimal` holds it without rounding (its scale is the sum of
/// theirs, as in Postgres).
fn exact_mul(a: Decimal, b: Decimal) -> Option<Decimal> {
    a.checked_mul(b)
        .filter(|p| p.scale() == a.scale() + b.scale())
}

/// `a + b` when a `Decimal` holds it without rounding.
fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    a.checked_add(b)
        .filter(|s| s.scale() == a.scale().max(b.scale()))
}

/// Inserts markets, or updates their names and designations.
pub async fn upsert_markets(pool: &PgPool, markets: &[MarketRow]) -> Result<(), sqlx::Error> {
    if markets.is_empty() {
        return Ok(());
    }
    let codes: Vec<&str> = markets.iter().map(|m| m.market.as_str()).collect();
    let ko: Vec<&str> = markets.iter().map(|m| m.korean_name.as_str()).collect();
    let en: Vec<&str> = markets.iter().map(|m| m.english_name.as_str()).collect();
    let flag = |f: fn(&MarketRow) -> bool| markets.iter().map(f).collect::<Vec<bool>>();
    sqlx::query(
        r#"
        INSERT INTO markets (market, korean_name, english_name, warning,
            caution_price_fluctuations, caution_trading_volume_soaring,
            caution_deposit_amount_soaring, caution_global_price_differences,
            caution_concentration_of_small_accounts)
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bool[],
            $5::bool[], $6::bool[], $7::bool[], $8::bool[], $9::bool[])
        ORDER BY 1
        ON CONFLICT (market) DO UPDATE SET
            korean_name = EXCLUDED.korean_name,
            english_name = EXCLUDED.english_name,
            warning = EXCLUDED.warning,
            caution_price_fluctuations = EXCLUDED.caution_price_fluctuations,
            caution_trading_volume_soaring = EXCLUDED.caution_trading_volume_soaring,
            caution_deposit_amount_soaring = EXCLUDED.caution_deposit_amount_soaring,
            caution_global_price_differences = EXCLUDED.caution_global_price_differences,
            caution_concentration_of_small_accounts =
                EXCLUDED.caution_concentration_of_small_accounts,
            updated_at = now()
        WHERE (markets.korean_name, markets.english_name, markets.warning,
               markets.caution_price_fluctuations, markets.caution_trading_volume_soaring,
               markets.caution_deposit_amount_soaring, markets.caution_global_price_differences,
               markets.caution_concentration_of_small_accounts)
              IS DISTINCT FROM
              (EXCLUDED.korean_name, EXCLUDED.english_name, EXCLUDED.warning,
               EXCLUDED.caution_price_fluctuations, EXCLUDED.caution_trading_volume_soaring,
               EXCLUDED.caution_deposit_amount_soaring, EXCLUDED.caution_global_price_differences,
               EXCLUDED.caution_concentration_of_small_accounts)
        "#,
    )
    .bind(codes)
    .bind(ko)
    .bind(en)
    .bind(flag(|m| m.warning))
    .bind(flag(|m| m.caution.price_fluctuations))
    .bind(flag(|m| m.caution.trading_volume_soaring))
    .bind(flag(|m| m.caution.deposit_amount_soaring))
    .bind(flag(|m| m.caution.global_price_differences))
    .bind(flag(|m| m.caution.concentration_of_small_accounts))
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes the stored trades older than `before`, market by market and at
/// most `batch` rows per statement (each a short transaction, along the
/// `(market, ts)` index, so ingest never waits long behind it). With
/// TimescaleDB, whole chunks older than `before` are dropped first. The
/// 1-minute candles stay: they are the history; trades older than the
/// retention are only the detail behind them. Returns the trades deleted (not
/// counting dropped chunks).
pub async fn forget_old_trades(
    pool: &PgPool,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let timescale: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
    )
    .fetch_one(pool)
    .await?;
    if timescale {
        sqlx::query("SELECT public.drop_chunks('trades', older_than => $1)")
            .bind(before)
            .execute(pool)
            .await?;
    }
    let markets: Vec<String> = sqlx::query_scalar(
        "SELECT market FROM markets UNION SELECT DISTINCT market FROM candles_1m",
    )
    .fetch_all(pool)
    .await?;
    let mut deleted = 0;
    for market in markets {
        loop {
            let n = sqlx::query(
                "DELETE FROM trades t USING (
                     SELECT market, sequential_id, ts FROM trades
                      WHERE market = $1 AND ts < $2
                      ORDER BY ts LIMIT $3
                 ) old
                 WHERE t.market = old.market AND t.sequential_id = old.sequential_id AND t.ts = old.ts",
            )
            .bind(&market)
            .bind(before)
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
            deleted += n;
            if n < u64::try_from(batch).unwrap_or(0) {
                break;
            }
        }
    }
    Ok(deleted)
}

pub async fn list_markets(pool: &PgPool) -> Result<Vec<MarketRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT market, korean_name, english_name, warning, caution_price_fluctuations,
                caution_trading_volume_soaring, caution_deposit_amount_soaring,
                caution_global_price_differences, caution_concentration_of_small_accounts
         FROM markets ORDER BY market",
    )
    .fetch_all(pool)
    .await
}

#[derive(sqlx::FromRow)]
struct TradeQueryRow {
    market: String,
    ts: DateTime<Utc>,
    sequential_id: i64,
    price: Decimal,
    volume: Decimal,
    ask_bid: String,
    prev_closing_price: Decimal,
    change_price: Decimal,
}

/// Trades of a market, newest first: older than the trade `cursor` (a
/// sequential_id) and before `to` when given.
/// Which trades of a market a page holds.
#[derive(Clone, Copy, Debug)]
pub enum TradePage {
    /// The newest, older than a cursor trade and/or a time when given.
    Newest {
        cursor: Option<i64>,
        to: Option<DateTime<Utc>>,
    },
    /// The oldest after a position (timestamp, sequential id).
    After(DateTime<Utc>, i64),
}

pub async fn list_trades(
    pool: &PgPool,
    market: &str,
    count: u32,
    page: TradePage,
) -> Result<Vec<TradeRow>, sqlx::Error> {
    let (cursor, to) = match page {
        TradePage::Newest { cursor, to } => (cursor, to),
        TradePage::After(ts, sequential_id) => {
            let rows: Vec<TradeQueryRow> = sqlx::query_as(
                "SELECT market, ts, sequential_id, price, volume, ask_bid, prev_closing_price, change_price
                 FROM trades WHERE market = $1 AND (ts, sequential_id) > ($2, $3)
                 ORDER BY ts, sequential_id LIMIT $4",
            )
            .bind(market)
            .bind(ts)
            .bind(sequential_id)
            .bind(i64::from(count))
            .fetch_all(pool)
            .await?;
            return Ok(rows.into_iter().map(TradeRow::from).collect());
        }
    };
    // Only the conditions given, so that each is a condition on the index
    // (market, ts, sequential_id), read backwards from where the page starts.
    let mut sql = String::from(
        "SELECT market, ts, sequential_id, price, volume, ask_bid, prev_closing_price, change_price
         FROM trades WHERE market = $1",
    );
    if to.is_some() {
        sql.push_str(" AND ts < $2");
    }
    if cursor.is_some() {
        // The cursor trade is found by its time. Upbit's sequential ids are the
        // trade's millisecond timestamp × 1000 plus a counter (so are the
        // simulator's), so the index is searched around that time ($5) first;
        // an id of another shape is looked for among all of the market's trades.
        sql.push_str(
            " AND (ts, sequential_id) < ((SELECT COALESCE(
                (SELECT ts FROM trades
                 WHERE market = $1 AND sequential_id = $3
                   AND ts BETWEEN $5::timestamptz - interval '1 second'
                              AND $5::timestamptz + interval '1 second'
                 LIMIT 1),
                (SELECT ts FROM trades WHERE market = $1 AND sequential_id = $3 LIMIT 1))), $3)",
        );
    }
    sql.push_str(" ORDER BY ts DESC, sequential_id DESC LIMIT $4");
    let hint = cursor.and_then(|c| DateTime::from_timestamp_millis(c.div_euclid(1000)));
    let rows: Vec<TradeQueryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(market)
        .bind(to)
        .bind(cursor)
        .bind(i64::from(count))
        .bind(hint)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(TradeRow::from).collect())
}

impl From<TradeQueryRow> for TradeRow {
    fn from(r: TradeQueryRow) -> Self {
        TradeRow {
            market: r.market,
            ts: r.ts,
            sequential_id: r.sequential_id,
            price: r.price,
            volume: r.volume,
            ask_bid: if r.ask_bid == "ASK" { "ASK" } else { "BID" },
            prev_closing_price: r.prev_closing_price,
            change_price: r.change_price,
        }
    }
}

#[derive(sqlx::FromRow)]
struct CandleQueryRow {
    start: DateTime<Utc>,
    open: Decimal,
    high: Decimal,
    low: Decimal,
    close: Decimal,
    volume: Decimal,
    value: Decimal,
    last_trade: DateTime<Utc>,
    prev_close: Option<Decimal>,
}

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// 2000-01-03 was a Monday: weeks are aligned to it.
const MONDAY_MS: i64 = 946_857_600_000;

fn ms(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t).unwrap_or_default()
}

/// `count` periods ending with the one containing the instant just before `to`
/// (exclusive), newest first; periods without trades are absent (gaps).
pub async fn list_candles(
    pool: &PgPool,
    market: &str,
    period: Period,
    to: DateTime<Utc>,
    count: u32,
) -> Result<Vec<CandleRow>, sqlx::Error> {
    let last = to.timestamp_millis() - 1;
    let count = i64::from(count.max(1));
    // The first 1-minute bucket to read, and the SQL that maps a bucket to its period.
    let (from, bin) = match period {
        Period::Minutes(unit) => {
            let len = i64::from(unit) * MINUTE_MS;
            let first = last - last.rem_euclid(len) - (count - 1) * len;
            (
                first,
                format!("date_bin(interval '{unit} minutes', bucket, timestamptz 'epoch')"),
            )
        }
        Period::Days => {
            // One more day for the previous close of the oldest.
            let first = last - last.rem_euclid(DAY_MS) - count * DAY_MS;
            (
                first,
                "date_bin(interval '1 day', bucket, timestamptz 'epoch')".to_owned(),
            )
        }
        Period::Weeks => {
            let len = 7 * DAY_MS;
            let first = last - (last - MONDAY_MS).rem_euclid(len) - (count - 1) * len;
            (
                first,
                "date_bin(interval '7 days', bucket, timestamptz '2000-01-03 00:00:00+00')"
                    .to_owned(),
            )
        }
        Period::Months => {
            let t = ms(last).date_naive();
            let mut y = chrono::Datelike::year(&t);
            let mut m = chrono::Datelike::month(&t) as i32 - (count as i32 - 1);
            while m <= 0 {
                m += 12;
                y -= 1;
            }
            let first = chrono::NaiveDate::from_ymd_opt(y, m as u32, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc().timestamp_millis())
                .unwrap_or(0);
            (first, "date_trunc('month', bucket, 'UTC')".to_owned())
        }
    };
    let sql = format!(
        r#"
        WITH periods AS (
            SELECT {bin} AS start,
                   (array_agg(open ORDER BY open_ts, open_sid))[1] AS open,
                   max(high) AS high,
                   min(low) AS low,
                   (array_agg(close ORDER BY close_ts DESC, close_sid DESC))[1] AS close,
                   sum(volume) AS volume,
                   sum(value) AS value,
                   max(close_ts) AS last_trade
            FROM candles_1m
            WHERE market = $1 AND bucket >= $2 AND bucket < $3
            GROUP BY 1
        )
        SELECT start, open, high, low, close, volume, value, last_trade,
               lag(close) OVER (ORDER BY start) AS prev_close
        FROM periods
        ORDER BY start DESC
        LIMIT $4
        "#
    );
    let rows: Vec<CandleQueryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(market)
        .bind(ms(from))
        .bind(to)
        .bind(count)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| CandleRow {
            start: r.start,
            open: r.open,
            high: r.high,
            low: r.low,
            close: r.close,
            volume: r.volume,
            value: r.value,
            last_trade: r.last_trade,
            prev_close: r.prev_close,
        })
        .collect())
}

/// Parses a decimal string from the wire.
pub fn decimal(s: &str) -> Option<Decimal> {
    if s.is_empty() {
        return Some(Decimal::ZERO);
    }
    Decimal::from_str(s).ok()
}
