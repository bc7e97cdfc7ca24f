//! Which markets to follow: `UPBIT_MARKETS` entries are market codes (KRW-BTC) or
//! quote currencies (KRW = every KRW market), resolved against `/v1/market/all`.

use std::time::Duration;

use exchange_proto::marketdata::v1 as pb;
use serde::Deserialize;
use service_kit::retry::Backoff;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use upbit::market::MarketEvent;

#[derive(Deserialize)]
struct Listed {
    market: String,
    #[serde(default)]
    korean_name: String,
    #[serde(default)]
    english_name: String,
    #[serde(default)]
    market_event: MarketEvent,
}

/// Picks the markets `spec` asks for out of the exchange's list.
pub fn select(spec: &str, listed: &[pb::Market]) -> Vec<pb::Market> {
    let mut out: Vec<pb::Market> = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let matches: Vec<&pb::Market> = if entry.contains('-') {
            listed.iter().filter(|m| m.market == entry).collect()
        } else {
            listed
                .iter()
                .filter(|m| m.market.split('-').next() == Some(entry))
                .collect()
        };
        if matches.is_empty() {
            tracing::warn!(entry, "UPBIT_MARKETS entry matches no listed market");
        }
        for m in matches {
            if !out.iter().any(|o| o.market == m.market) {
                out.push(m.clone());
            }
        }
    }
    out
}

/// Largest market list read (Upbit's, with details, is about 100 KB).
const MAX_LIST_BYTES: usize = 4 << 20;

/// Reads Upbit's market list, `/v1/market/all?is_details=true`.
pub struct Lister {
    http: reqwest::Client,
    url: String,
    max_bytes: usize,
}

impl Lister {
    pub fn new(rest_url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            url: format!(
                "{}/v1/market/all?is_details=true",
                rest_url.trim_end_matches('/')
            ),
            max_bytes: MAX_LIST_BYTES,
        })
    }

    /// The same, refusing a list larger than `max_bytes`.
    pub fn with_limit(self, max_bytes: usize) -> Self {
        Self { max_bytes, ..self }
    }

    /// The list, once.
    pub async fn fetch(&self) -> anyhow::Result<Vec<pb::Market>> {
        let mut resp = self.http.get(&self.url).send().await?.error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            anyhow::ensure!(
                body.len() + chunk.len() <= self.max_bytes,
                "the market list is larger than {} bytes",
                self.max_bytes
            );
            body.extend_from_slice(&chunk);
        }
        let list: Vec<Listed> = serde_json::from_slice(&body)?;
        Ok(list
            .into_iter()
            .filter(|m| upbit::market::MarketCode::parse(&m.market).is_ok())
            .map(|m| pb::Market {
                market: m.market,
                korean_name: m.korean_name,
                english_name: m.english_name,
                warning: m.market_event.warning,
                caution: Some(m.market_event.caution.into()),
            })
            .collect())
    }

    /// The list, retrying until it comes or `stop`.
    pub async fn fetch_until_listed(
        &self,
        stop: &CancellationToken,
    ) -> anyhow::Result<Vec<pb::Market>> {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            match self.fetch().await {
                Ok(list) => return Ok(list),
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(url = %self.url, error = %err, ?delay, "fetching the market list failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => anyhow::bail!("stopped before the market list was fetched"),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Fetches the list every `every` until `stop`, and publishes the followed
    /// markets (`followed`'s codes, fixed at start) whenever their names or
    /// designations change. A failed fetch waits for the next turn.
    pub async fn follow(
        &self,
        spec: &str,
        every: Duration,
        followed: watch::Sender<Vec<pb::Market>>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let listed = match self.fetch().await {
                Ok(listed) => listed,
                Err(err) => {
                    tracing::warn!(url = %self.url, error = %err, "refreshing the market list failed; trying again in {every:?}");
                    continue;
                }
            };
            let now = refreshed(&followed.borrow(), &listed);
            let unfollowed: Vec<String> = select(spec, &listed)
                .into_iter()
                .filter(|m| !now.iter().any(|n| n.market == m.market))
                .map(|m| m.market)
                .collect();
            if !unfollowed.is_empty() {
                tracing::info!(
                    ?unfollowed,
                    "markets listed since the start are followed after a restart"
                );
            }
            followed.send_if_modified(|current| {
                let changed = *current != now;
                if changed {
                    tracing::info!(
                        markets = now.len(),
                        "the followed markets' names or designations changed"
                    );
                    *current = now;
                }
                changed
            });
        }
    }
}

/// `followed` with what `listed` now says of each; a market no longer listed
/// keeps what was known of it.
pub fn refreshed(followed: &[pb::Market], listed: &[pb::Market]) -> Vec<pb::Market> {
    followed
        .iter()
        .map(|old| match listed.iter().find(|m| m.market == old.market) {
            Some(new) => new.clone(),
            None => {
                tracing::warn!(market = %old.market, "a followed market is no longer listed");
                old.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(code: &str) -> pb::Market {
        pb::Market {
            market: code.into(),
            ..Default::default()
        }
    }

    #[test]
    fn codes_and_quote_currencies_select_markets_once() {
        let listed = vec![m("KRW-BTC"), m("KRW-ETH"), m("BTC-ETH"), m("USDT-BTC")];
        let pick = |spec| {
            select(spec, &listed)
                .into_iter()
                .map(|m| m.market)
                .collect::<Vec<_>>()
        };
        assert_eq!(pick("KRW"), vec!["KRW-BTC", "KRW-ETH"]);
        assert_eq!(
            pick("KRW-ETH, BTC, KRW"),
            vec!["KRW-ETH", "BTC-ETH", "KRW-BTC"]
        );
        assert_eq!(pick("KRW-NOPE"), Vec::<String>::new());
    }

    #[test]
    fn a_refresh_takes_the_new_designations_and_keeps_delisted_markets() {
        let followed = vec![m("KRW-BTC"), m("KRW-ETH")];
        let mut btc = m("KRW-BTC");
        btc.warning = true;
        btc.caution = Some(pb::MarketCaution {
            price_fluctuations: true,
            ..Default::default()
        });
        // KRW-ETH is gone from the list; KRW-XRP is new and not followed.
        let listed = vec![m("KRW-XRP"), btc.clone()];
        assert_eq!(refreshed(&followed, &listed), vec![btc, m("KRW-ETH")]);
    }

    #[test]
    fn upbit_market_list_reads_with_and_without_details() {
        let json = r#"[
            {"market": "KRW-BTC", "korean_name": "비트코인", "english_name": "Bitcoin",
             "market_event": {"warning": true, "caution": {"PRICE_FLUCTUATIONS": false,
               "TRADING_VOLUME_SOARING": true, "DEPOSIT_AMOUNT_SOARING": false,
               "GLOBAL_PRICE_DIFFERENCES": false, "CONCENTRATION_OF_SMALL_ACCOUNTS": false}}},
            {"market": "KRW-ETH", "korean_name": "이더리움", "english_name": "Ethereum"}
        ]"#;
        let list: Vec<Listed> = serde_json::from_str(json).unwrap();
        assert!(list[0].market_event.warning);
        assert!(list[0].market_event.caution.trading_volume_soaring);
        assert_eq!(list[1].market_event, MarketEvent::default());
    }
}
