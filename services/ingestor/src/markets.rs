//! Which markets to follow: `UPBIT_MARKETS` entries are market codes (KRW-BTC) or
//! quote currencies (KRW = every KRW market), resolved against `/v1/market/all`.

use std::time::Duration;

use exchange_proto::marketdata::v1 as pb;
use serde::Deserialize;
use service_kit::retry::Backoff;
use tokio_util::sync::CancellationToken;

#[derive(Deserialize)]
struct MarketEvent {
    #[serde(default)]
    warning: bool,
}

#[derive(Deserialize)]
struct Listed {
    market: String,
    #[serde(default)]
    korean_name: String,
    #[serde(default)]
    english_name: String,
    #[serde(default)]
    market_event: Option<MarketEvent>,
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

/// Fetches the market list, retrying until it works or `stop`.
pub async fn fetch(rest_url: &str, stop: &CancellationToken) -> anyhow::Result<Vec<pb::Market>> {
    let url = format!(
        "{}/v1/market/all?is_details=true",
        rest_url.trim_end_matches('/')
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    loop {
        let attempt = async {
            let resp = http.get(&url).send().await?.error_for_status()?;
            anyhow::Ok(resp.json::<Vec<Listed>>().await?)
        };
        match attempt.await {
            Ok(list) => {
                return Ok(list
                    .into_iter()
                    .filter(|m| upbit::market::MarketCode::parse(&m.market).is_ok())
                    .map(|m| pb::Market {
                        market: m.market,
                        korean_name: m.korean_name,
                        english_name: m.english_name,
                        warning: m.market_event.is_some_and(|e| e.warning),
                    })
                    .collect());
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(%url, error = %err, ?delay, "fetching the market list failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => anyhow::bail!("stopped before the market list was fetched"),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
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
}
