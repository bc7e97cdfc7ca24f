//! Tickers from memory: each gateway follows market-data's ticker stream for
//! every market and answers `/v1/ticker` and `/v1/ticker/all` from what it
//! holds, instead of a gRPC call and a Redis read per request.
//!
//! When the memory may be answered from: the stream is open and, after it
//! opened, every ticker market-data had was loaded (`GetTickers`), so the board
//! holds every ticker there is and every later one arrives on the stream. Its
//! staleness is the stream's delay: market-data drops a consumer that falls
//! behind (`STREAM_SLOW_AFTER`), the board is then emptied and the gateway asks
//! market-data again until the stream is back. So a reply is either as current
//! as a gRPC read or it is a gRPC read: a market the board does not hold (an
//! unknown code, a market without trades yet), a request with a routing header
//! (`x-canary`, `x-preview`: it is meant for a particular version of
//! market-data), or a board not live all take the gRPC path, as before.
//!
//! Each ticker is rendered in Upbit's REST shape at most once per update, when
//! it is first read, so a busy feed costs no rendering while nobody asks.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::time::Duration;

use exchange_proto::marketdata::v1 as pb;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use prometheus::{IntCounterVec, IntGauge};
use service_kit::grpc::Channel;
use service_kit::retry::Backoff;
use tokio_util::sync::CancellationToken;
use upbit::write::rest;

use crate::convert;

/// Where ticker reads were answered from.
static READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "gateway_ticker_reads_total",
            "Ticker requests by where they were answered from: memory (the followed \
             stream) or market-data (gRPC).",
        ),
        &["source"],
    )
    .expect("valid metric definition");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

/// 1 while reads may be answered from memory.
static LIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::new(
        "gateway_ticker_board_live",
        "1 while the followed ticker stream is open and loaded (ticker reads from memory).",
    )
    .expect("valid metric definition");
    prometheus::register(Box::new(g.clone())).expect("metric registered once");
    g
});

/// Registers this module's series at start.
pub(crate) fn init_metrics() {
    LazyLock::force(&LIVE);
    for source in ["memory", "market-data"] {
        READS.with_label_values(&[source]);
    }
}

/// Counts a ticker read answered by market-data.
pub(crate) fn count_fallback() {
    READS.with_label_values(&["market-data"]).inc();
}

struct Entry {
    ticker: pb::Ticker,
    /// The REST element, rendered on first read (`None`: the ticker does not
    /// convert, and is skipped as the gRPC path skips it).
    json: OnceLock<Option<String>>,
}

impl Entry {
    fn json(&self) -> Option<&str> {
        self.json
            .get_or_init(|| {
                convert::skipped(
                    convert::ticker(&self.ticker, false),
                    "ticker",
                    &self.ticker.market,
                )
                .map(|t| rest::ticker(&t))
            })
            .as_deref()
    }
}

#[derive(Default)]
struct Board {
    live: bool,
    /// `x-served-by` of the market-data instance whose stream feeds the board.
    served_by: Option<String>,
    tickers: HashMap<String, Arc<Entry>>,
}

/// The tickers a gateway holds. See the module documentation.
#[derive(Default)]
pub struct TickerBoard {
    board: RwLock<Board>,
    enabled: bool,
}

/// A reply from memory: the REST body and who fed it.
pub struct FromMemory {
    pub body: String,
    pub served_by: Option<String>,
}

impl TickerBoard {
    pub fn new(enabled: bool) -> Self {
        Self {
            board: RwLock::default(),
            enabled,
        }
    }

    /// The `/v1/ticker` body for `markets`, in that order, when the board is
    /// live and holds every one of them.
    pub fn tickers<'a>(&self, markets: impl IntoIterator<Item = &'a str>) -> Option<FromMemory> {
        self.reply(|held| markets.into_iter().map(|m| held.get(m).cloned()).collect())
    }

    /// The `/v1/ticker/all` body: of `listed` (the market list, in its
    /// order), those with a ticker, when the board is live.
    pub fn listed<'a>(&self, listed: impl IntoIterator<Item = &'a str>) -> Option<FromMemory> {
        self.reply(|held| {
            Some(
                listed
                    .into_iter()
                    .filter_map(|m| held.get(m).cloned())
                    .collect(),
            )
        })
    }

    /// A reply of the entries `pick` chooses (`None`: not from memory), when
    /// the board is live; rendered after the lock is released.
    fn reply(
        &self,
        pick: impl FnOnce(&HashMap<String, Arc<Entry>>) -> Option<Vec<Arc<Entry>>>,
    ) -> Option<FromMemory> {
        let (entries, served_by) = self.read(pick)?;
        Some(FromMemory {
            body: rest::array(entries.iter().filter_map(|e| e.json()).map(str::to_owned)),
            served_by,
        })
    }

    /// The held tickers of `markets`, in that order, when the board is live
    /// and holds every one of them (a WebSocket subscription's snapshot).
    pub fn current(&self, markets: &[String]) -> Option<Vec<pb::Ticker>> {
        let (held, _) = self.read(|held| {
            markets
                .iter()
                .map(|m| held.get(m).map(|e| e.ticker.clone()))
                .collect()
        })?;
        Some(held)
    }

    /// What `pick` takes from the held tickers and who fed them, when the
    /// board is live (`None` from `pick`: not from memory); counted as a
    /// read from memory.
    fn read<T>(
        &self,
        pick: impl FnOnce(&HashMap<String, Arc<Entry>>) -> Option<T>,
    ) -> Option<(T, Option<String>)> {
        let board = self.board.read().ok()?;
        if !board.live {
            return None;
        }
        let picked = pick(&board.tickers)?;
        let served_by = board.served_by.clone();
        drop(board);
        READS.with_label_values(&["memory"]).inc();
        Some((picked, served_by))
    }

    /// Whether reads may come from memory now.
    pub fn is_live(&self) -> bool {
        self.board.read().is_ok_and(|b| b.live)
    }

    /// Keeps the newer of the held ticker and `ticker` (by exchange time: a
    /// stream message read before the load must not undo it).
    fn put(board: &mut Board, ticker: pb::Ticker) {
        if let Some(held) = board.tickers.get(&ticker.market)
            && held.ticker.timestamp > ticker.timestamp
        {
            return;
        }
        board.tickers.insert(
            ticker.market.clone(),
            Arc::new(Entry {
                ticker,
                json: OnceLock::new(),
            }),
        );
    }

    fn update(&self, ticker: pb::Ticker) {
        if let Ok(mut board) = self.board.write() {
            Self::put(&mut board, ticker);
        }
    }

    /// Everything market-data held once the stream opened: from now on the
    /// board is complete.
    fn load(&self, tickers: Vec<pb::Ticker>, served_by: Option<String>) {
        if let Ok(mut board) = self.board.write() {
            for t in tickers {
                Self::put(&mut board, t);
            }
            board.served_by = served_by;
            board.live = true;
        }
        LIVE.set(1);
    }

    /// The stream is gone: nothing held can be vouched for.
    fn clear(&self) {
        if let Ok(mut board) = self.board.write() {
            *board = Board::default();
        }
        LIVE.set(0);
    }

    /// Follows market-data's ticker stream until `stop`, reopening it with
    /// backoff whenever it ends. Does nothing when disabled
    /// (`TICKERS_FROM_MEMORY=false`).
    pub async fn follow(
        self: Arc<Self>,
        md: MarketDataServiceClient<Channel>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !stop.is_cancelled() {
            match self.follow_once(md.clone(), &stop).await {
                Ok(()) => {
                    backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ticker stream unavailable; reads go to market-data")
                }
            }
            self.clear();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        Ok(())
    }

    /// One stream's life: open, load, follow. `Ok` when it ended after being
    /// live (reopen at once), `Err` when it could not get there.
    async fn follow_once(
        &self,
        mut md: MarketDataServiceClient<Channel>,
        stop: &CancellationToken,
    ) -> Result<(), tonic::Status> {
        // Subscribed before the load: nothing published in between is missed.
        let response = md
            .stream_tickers(pb::StreamTickersRequest {
                markets: vec![],
                snapshot: false,
            })
            .await?;
        let served_by = response
            .metadata()
            .get(telemetry::propagation::SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut stream = response.into_inner();
        let all = md
            .get_tickers(pb::GetTickersRequest::default())
            .await?
            .into_inner()
            .tickers;
        self.load(all, served_by);
        tracing::debug!("ticker board live");
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                m = stream.message() => m,
            };
            match message {
                Ok(Some(m)) => {
                    if let Some(t) = m.ticker {
                        self.update(t);
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::info!(error = %e, "ticker stream ended; reads go to market-data until it is back");
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticker(market: &str, price: &str, ts: i64) -> pb::Ticker {
        pb::Ticker {
            market: market.into(),
            trade_price: price.into(),
            timestamp: ts,
            ..Default::default()
        }
    }

    #[test]
    fn answers_only_when_live_and_complete_and_keeps_the_newer() {
        let board = TickerBoard::new(true);
        assert!(board.tickers(["KRW-BTC"]).is_none(), "not live yet");
        board.load(
            vec![ticker("KRW-BTC", "100", 10)],
            Some("market-data/v1/p".into()),
        );
        let got = board.tickers(["KRW-BTC"]).unwrap();
        assert!(got.body.contains(r#""trade_price":100"#), "{}", got.body);
        assert_eq!(got.served_by.as_deref(), Some("market-data/v1/p"));
        assert!(
            board.tickers(["KRW-BTC", "KRW-ETH"]).is_none(),
            "one not held"
        );
        // An older message (read before the load) does not undo a newer one.
        board.update(ticker("KRW-BTC", "90", 9));
        board.update(ticker("KRW-ETH", "5", 11));
        let got = board.tickers(["KRW-ETH", "KRW-BTC"]).unwrap();
        let eth = got.body.find("KRW-ETH").unwrap();
        assert!(
            eth < got.body.find("KRW-BTC").unwrap(),
            "in the order asked"
        );
        assert!(got.body.contains(r#""trade_price":100"#), "{}", got.body);
        assert!(
            board
                .listed(["KRW-XRP", "KRW-BTC"])
                .unwrap()
                .body
                .contains("KRW-BTC")
        );
        board.clear();
        assert!(board.tickers(["KRW-BTC"]).is_none(), "gone with the stream");
    }
}
