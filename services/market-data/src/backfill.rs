//! `market-data backfill`: the trades Upbit reports for a recent window, stored
//! the way live trades are, so the 1-minute candles of a downtime are complete.
//!
//! Why trades and not Upbit's candles: a candle written from outside could
//! never be reconciled with the trades of the same minute that arrive later (a
//! replay after a reconnect, a second backfill), and would count them twice.
//! A trade has a key (market, time, sequential id): stored through the same
//! statement as live trades, a trade already there is skipped, and only the
//! trades actually inserted are folded into their candles. So a backfill can
//! run at any time, beside live ingest, as often as wanted: it only ever adds
//! what is missing.
//!
//! The window is bounded: at most Upbit's seven days of `/v1/trades/ticks`, and
//! shorter than the trade retention (a trade retention already deleted would
//! otherwise be inserted, and counted, again).

use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use service_kit::retry::Backoff;
use sqlx::PgPool;
use upbit::AskBid;
use upbit::parse::RestTrade;

use crate::store::{self, TradeRow};

/// Upbit's page size limit for `/v1/trades/ticks`.
pub const PAGE: u32 = 500;
/// Upbit serves trades this many days back at most (`days_ago` 1..=7).
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Pages per market a run may read (500 trades each): a bound on a run, far
/// above a busy market's week.
const MAX_PAGES: u32 = 20_000;
/// Attempts per page before the market is given up for this run.
const ATTEMPTS: u32 = 6;

/// What to backfill.
#[derive(Clone, Debug)]
pub struct Backfill {
    /// Upbit's REST base URL (or upbit-sim's).
    pub upbit_url: String,
    /// How far back from now.
    pub since: Duration,
    /// Markets; empty = every market stored (the ingestor's list).
    pub markets: Vec<String>,
    /// Requests per second at most (Upbit allows 10 per second per IP for trades).
    pub rate: u32,
    /// The trade retention: `since` must be shorter.
    pub keep: Duration,
    /// Trades per request, 1..=[`PAGE`].
    pub page: u32,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backfilled {
    pub markets: usize,
    pub pages: u64,
    /// Trades Upbit listed inside the window.
    pub fetched: u64,
    /// Of those, the ones that were missing and are now stored.
    pub stored: u64,
    /// Markets given up (Upbit kept failing); the others were done.
    pub failed: Vec<String>,
}

impl Backfill {
    fn check(&self) -> anyhow::Result<()> {
        if self.since.is_zero() || self.since > MAX_WINDOW {
            bail!("--since must be more than 0 and at most 7d (Upbit serves a week of trades)");
        }
        if self.since >= self.keep {
            bail!(
                "--since ({:?}) must be shorter than the trade retention TRADE_RETENTION ({:?}): \
                 trades retention deleted would be stored and counted in their candles again",
                self.since,
                self.keep
            );
        }
        if self.page == 0 || self.page > PAGE {
            bail!("page size must be 1..={PAGE}");
        }
        if self.rate == 0 || self.rate > 10 {
            bail!("--rate must be 1..=10 requests per second (Upbit's limit for trades)");
        }
        Ok(())
    }
}

/// Runs a backfill against `pool`. Errors only on a bad setting or when the
/// database fails; a market Upbit keeps refusing is listed in `failed`.
pub async fn run(pool: &PgPool, job: &Backfill) -> anyhow::Result<Backfilled> {
    job.check()?;
    let markets = if job.markets.is_empty() {
        store::list_markets(pool)
            .await?
            .into_iter()
            .map(|m| m.market)
            .collect()
    } else {
        job.markets.clone()
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("exchange-market-data/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut pace = tokio::time::interval(Duration::from_secs(1) / job.rate);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let since =
        Utc::now() - chrono::Duration::from_std(job.since).context("--since is out of range")?;
    let mut report = Backfilled {
        markets: markets.len(),
        ..Backfilled::default()
    };
    for market in markets {
        let mut walk = Walk {
            http: &http,
            pace: &mut pace,
            base: job.upbit_url.trim_end_matches('/'),
            page_size: job.page,
            market: &market,
            since,
        };
        match walk.market(pool, &mut report).await {
            Ok(()) => {}
            Err(Failure::Database(e)) => return Err(e.into()),
            Err(Failure::Upbit(e)) => {
                tracing::warn!(%market, error = %e, "backfill of this market given up for this run");
                report.failed.push(market);
            }
        }
    }
    Ok(report)
}

enum Failure {
    Upbit(anyhow::Error),
    Database(sqlx::Error),
}

struct Walk<'a> {
    http: &'a reqwest::Client,
    pace: &'a mut tokio::time::Interval,
    base: &'a str,
    market: &'a str,
    since: DateTime<Utc>,
    page_size: u32,
}

impl Walk<'_> {
    /// Pages back from the newest trade, day by day (Upbit's `days_ago`), to
    /// the start of the window, storing each page's trades as it goes.
    async fn market(&mut self, pool: &PgPool, report: &mut Backfilled) -> Result<(), Failure> {
        let days = (Utc::now() - self.since).num_days().clamp(0, 7) as u32;
        let mut pages = 0;
        for days_ago in 0..=days {
            let mut cursor: Option<i64> = None;
            loop {
                pages += 1;
                if pages > MAX_PAGES {
                    return Err(Failure::Upbit(anyhow::anyhow!(
                        "more than {MAX_PAGES} pages: stopped"
                    )));
                }
                let page = self.page(days_ago, cursor).await.map_err(Failure::Upbit)?;
                report.pages += 1;
                let Some(last) = page.last() else { break };
                let (last_id, last_ts) = (last.sequential_id, last.timestamp);
                let rows: Vec<TradeRow> = page
                    .iter()
                    .filter_map(|t| row(self.market, t))
                    .filter(|r| r.ts >= self.since)
                    .collect();
                report.fetched += rows.len() as u64;
                report.stored += store::insert_trades(pool, &rows, false)
                    .await
                    .map_err(Failure::Database)?;
                let reached_start =
                    DateTime::from_timestamp_millis(last_ts).is_none_or(|ts| ts < self.since);
                if reached_start {
                    return Ok(());
                }
                // A server that ignores the cursor would hand the same page
                // forever: the cursor must move back.
                if cursor.is_some_and(|c| last_id >= c) || page.len() < self.page_size as usize {
                    break;
                }
                cursor = Some(last_id);
            }
        }
        Ok(())
    }

    /// One page, paced, retried with backoff on transport errors, 429 and 5xx.
    async fn page(&mut self, days_ago: u32, cursor: Option<i64>) -> anyhow::Result<Vec<RestTrade>> {
        let mut url = format!(
            "{}/v1/trades/ticks?market={}&count={}",
            self.base, self.market, self.page_size
        );
        if days_ago > 0 {
            url.push_str(&format!("&days_ago={days_ago}"));
        }
        if let Some(c) = cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            self.pace.tick().await;
            let attempt = async {
                let resp = self.http.get(&url).send().await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                anyhow::Ok((status, body))
            };
            let retry = match attempt.await {
                Ok((status, body)) if status.is_success() => {
                    return upbit::parse::parse_rest_trades(&body)
                        .with_context(|| format!("{url}: not a list of trades"));
                }
                Ok((status, body)) if status.as_u16() == 429 || status.is_server_error() => {
                    format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )
                }
                Ok((status, body)) => bail!(
                    "{url}: {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
                Err(e) => e.to_string(),
            };
            if backoff.attempts() + 1 >= ATTEMPTS {
                bail!("{url}: {retry} ({ATTEMPTS} attempts)");
            }
            let delay = backoff.next_delay();
            tracing::debug!(%url, %retry, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// A listed trade as a stored row; `None` for one of another market or with
/// a price or volume that is not positive.
fn row(market: &str, t: &RestTrade) -> Option<TradeRow> {
    if t.market != market || t.trade_price <= Decimal::ZERO || t.trade_volume <= Decimal::ZERO {
        return None;
    }
    Some(TradeRow {
        market: t.market.clone(),
        ts: DateTime::from_timestamp_millis(t.timestamp)?,
        sequential_id: t.sequential_id,
        price: t.trade_price,
        volume: t.trade_volume,
        ask_bid: match t.ask_bid {
            AskBid::Ask => "ASK",
            AskBid::Bid => "BID",
        },
        prev_closing_price: t.prev_closing_price.unwrap_or_default(),
        change_price: t.change_price.unwrap_or_default(),
    })
}
