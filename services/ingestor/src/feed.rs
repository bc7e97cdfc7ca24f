//! The WebSocket side: connect, subscribe once with every market and type,
//! read frames into the buffer, ping, detect a stalled feed, and reconnect with
//! exponential backoff and jitter, never more than the allowed connects per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exchange_proto::marketdata::v1 as pb;
use futures_util::{SinkExt, StreamExt};
use pb::market_event::Event;
use service_kit::retry::Backoff;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use upbit::Message;
use upbit::request::{DataType, Subscription, SubscriptionRequest};

use crate::buffer::Buffer;
use crate::{convert, metrics};

/// Settings of the feed loop.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    pub url: String,
    pub markets: Vec<String>,
    pub ping_interval: Duration,
    pub stale_after: Duration,
    pub max_connects_per_sec: u32,
}

/// Why a connection ended.
enum End {
    Stop,
    Reconnect(&'static str),
}

/// The one subscription message: ticker, trade and orderbook for every market.
pub fn subscription(markets: &[String]) -> String {
    let ticket = format!("ingestor-{}", std::process::id());
    SubscriptionRequest {
        ticket,
        subscriptions: vec![
            Subscription::new(DataType::Ticker, markets.to_vec()),
            Subscription::new(DataType::Trade, markets.to_vec()),
            Subscription::new(DataType::Orderbook, markets.to_vec()),
        ],
        format: Some(upbit::write::Format::Default),
    }
    .to_json()
}

/// Spaces connection attempts so at most `per_sec` start in any second.
struct ConnectPacer {
    per_sec: u32,
    recent: std::collections::VecDeque<tokio::time::Instant>,
}

impl ConnectPacer {
    async fn wait(&mut self) {
        let window = Duration::from_secs(1);
        loop {
            let now = tokio::time::Instant::now();
            while self
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                self.recent.pop_front();
            }
            if (self.recent.len() as u32) < self.per_sec.max(1) {
                self.recent.push_back(now);
                return;
            }
            let oldest = *self.recent.front().unwrap_or(&now);
            tokio::time::sleep(window.saturating_sub(now.duration_since(oldest))).await;
        }
    }
}

/// Runs until `stop`: keeps one subscribed connection and feeds `buffer`.
/// `on_subscribed` is called after every successful subscription.
pub async fn run(
    config: FeedConfig,
    buffer: Arc<Buffer>,
    stop: CancellationToken,
    on_subscribed: impl Fn() + Send + Sync,
) -> anyhow::Result<()> {
    let request = subscription(&config.markets);
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut pacer = ConnectPacer {
        per_sec: config.max_connects_per_sec,
        recent: Default::default(),
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = pacer.wait() => {}
        }
        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(config.url.as_str()),
        )
        .await;
        let mut ws = match connected {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(err)) => {
                metrics::RECONNECTS
                    .with_label_values(&["connect_failed"])
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(url = %config.url, error = %err, ?delay, "feed connection failed");
                tokio::select! { _ = stop.cancelled() => return Ok(()), _ = tokio::time::sleep(delay) => {} }
                continue;
            }
            Err(_) => {
                metrics::RECONNECTS
                    .with_label_values(&["connect_failed"])
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(url = %config.url, ?delay, "feed connection timed out");
                tokio::select! { _ = stop.cancelled() => return Ok(()), _ = tokio::time::sleep(delay) => {} }
                continue;
            }
        };
        if let Err(err) = ws.send(WsMessage::Text(request.clone().into())).await {
            metrics::RECONNECTS.with_label_values(&["error"]).inc();
            tracing::warn!(error = %err, "sending the subscription failed");
            continue;
        }
        tracing::info!(url = %config.url, markets = config.markets.len(), "subscribed to the feed");
        metrics::FEED_CONNECTED.set(1);
        on_subscribed();
        let connected_at = Instant::now();
        let end = read(&mut ws, &config, &buffer, &stop).await;
        metrics::FEED_CONNECTED.set(0);
        match end {
            End::Stop => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            End::Reconnect(reason) => {
                metrics::RECONNECTS.with_label_values(&[reason]).inc();
                // A connection that lived a while starts the backoff over.
                if connected_at.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(reason, ?delay, "feed connection lost; reconnecting");
                tokio::select! { _ = stop.cancelled() => return Ok(()), _ = tokio::time::sleep(delay) => {} }
            }
        }
    }
}

async fn read<S>(ws: &mut S, config: &FeedConfig, buffer: &Buffer, stop: &CancellationToken) -> End
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<WsMessage>
        + Unpin,
{
    let mut ping = tokio::time::interval(config.ping_interval);
    ping.reset();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return End::Stop,
            _ = ping.tick() => {
                if ws.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    return End::Reconnect("error");
                }
                continue;
            }
            n = tokio::time::timeout(config.stale_after, ws.next()) => n,
        };
        let frame = match next {
            Err(_) => return End::Reconnect("stale"),
            Ok(None) => return End::Reconnect("closed"),
            Ok(Some(Err(err))) => {
                tracing::debug!(error = %err, "feed read error");
                return End::Reconnect("error");
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let bytes = match frame {
            WsMessage::Binary(b) => b,
            WsMessage::Text(t) => bytes::Bytes::from(t.as_str().to_owned()),
            WsMessage::Close(_) => return End::Reconnect("closed"),
            _ => continue,
        };
        handle(bytes, buffer);
    }
}

/// The type and market of a frame, read without parsing the rest.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(alias = "ty", borrow)]
    r#type: Option<&'a str>,
    #[serde(alias = "cd", borrow)]
    code: Option<&'a str>,
}

/// The value of `"key":"value"` when the frame starts with it (after `{` or
/// `[{`), as Upbit writes `type` then `code` first; None otherwise.
fn leading_str<'a>(frame: &'a [u8], keys: [&str; 2]) -> Option<(&'a str, &'a [u8])> {
    let rest = frame.strip_prefix(b"[").unwrap_or(frame);
    let rest = rest
        .strip_prefix(b"{")
        .or_else(|| rest.strip_prefix(b","))?;
    for key in keys {
        let quoted = [&b"\""[..], key.as_bytes(), &b"\":\""[..]].concat();
        if let Some(after) = rest.strip_prefix(quoted.as_slice()) {
            let end = after.iter().position(|b| *b == b'"')?;
            let value = std::str::from_utf8(&after[..end]).ok()?;
            return Some((value, &after[end + 1..]));
        }
    }
    None
}

/// Type and market from the start of a frame without reading the rest;
/// falls back to a full (allocation-free) scan of the document.
fn head(frame: &[u8]) -> Option<(&str, &str)> {
    if let Some((kind, rest)) = leading_str(frame, ["type", "ty"])
        && let Some((code, _)) = leading_str(rest, ["code", "cd"])
    {
        return Some((kind, code));
    }
    match serde_json::from_slice::<Head<'_>>(frame) {
        Ok(Head {
            r#type: Some(kind),
            code: Some(code),
        }) => Some((kind, code)),
        _ => None,
    }
}

/// Routes one frame into the buffer: trades are parsed now; tickers and
/// orderbooks are kept raw (the newest per market) and parsed when sent.
/// Malformed frames are counted and skipped.
pub fn handle(frame: bytes::Bytes, buffer: &Buffer) {
    let now = chrono::Utc::now().timestamp_millis();
    match head(&frame) {
        // A frame cut short is parsed (and counted as malformed) right away.
        Some((kind @ ("ticker" | "orderbook"), code))
            if upbit::market::MarketCode::parse(code).is_ok()
                && frame
                    .trim_ascii_end()
                    .last()
                    .is_some_and(|b| matches!(b, b'}' | b']')) =>
        {
            metrics::EVENTS.with_label_values(&[kind, code]).inc();
            let code = code.to_owned();
            // Keep a copy, not the frame: the frame shares tungstenite's read
            // buffer, and while any part of it is held the next read cannot
            // reuse that buffer and gets a small fresh one, so the socket is
            // read about one frame per syscall instead of 128 KiB at a time.
            let copy = bytes::Bytes::copy_from_slice(&frame);
            buffer.push_raw(kind == "orderbook", &code, copy, now);
        }
        _ => {
            if let Some(event) = parse_event(&frame, now) {
                buffer.push(event);
            }
        }
    }
}

/// Parses a frame into an event (None for frames that carry none).
pub fn parse_event(bytes: &[u8], received_at: i64) -> Option<pb::MarketEvent> {
    let lag = |ts: i64| (received_at - ts).max(0) as f64 / 1000.0;
    let event = match upbit::parse_message(bytes) {
        Ok(Message::Ticker(t)) => {
            metrics::LAG
                .with_label_values(&["ticker"])
                .observe(lag(t.timestamp));
            Event::Ticker(convert::ticker(&t))
        }
        Ok(Message::Trade(t)) => {
            metrics::EVENTS.with_label_values(&["trade", &t.code]).inc();
            metrics::LAG
                .with_label_values(&["trade"])
                .observe(lag(t.trade_timestamp));
            Event::Trade(convert::trade(&t))
        }
        Ok(Message::Orderbook(o)) => {
            metrics::LAG
                .with_label_values(&["orderbook"])
                .observe(lag(o.timestamp));
            Event::Orderbook(convert::orderbook(&o))
        }
        Ok(Message::Candle(_)) | Ok(Message::Status(_)) => return None,
        Ok(Message::Error(e)) => {
            tracing::warn!(name = %e.name, message = %e.message, "the feed answered an error");
            return None;
        }
        Err(err) => {
            metrics::PARSE_ERRORS.inc();
            tracing::debug!(error = %err, "skipping a malformed frame");
            return None;
        }
    };
    Some(pb::MarketEvent {
        event: Some(event),
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connects_are_paced_under_the_limit() {
        let mut pacer = ConnectPacer {
            per_sec: 4,
            recent: Default::default(),
        };
        let start = tokio::time::Instant::now();
        for _ in 0..12 {
            pacer.wait().await;
        }
        // 12 connects at 4 per second need at least two full seconds.
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn the_head_is_read_from_the_start_or_found_anywhere() {
        let default = br#"{"type":"orderbook","code":"KRW-BTC","total_ask_size":1}"#;
        assert_eq!(head(default), Some(("orderbook", "KRW-BTC")));
        let simple = br#"[{"ty":"ticker","cd":"KRW-ETH","tp":1}]"#;
        assert_eq!(head(simple), Some(("ticker", "KRW-ETH")));
        let reordered = br#"{"code":"KRW-XRP","tp":1,"type":"trade"}"#;
        assert_eq!(head(reordered), Some(("trade", "KRW-XRP")));
        assert_eq!(
            head(br#"{"type":"orderbook","code":"KRW"#),
            None,
            "truncated"
        );
    }

    #[test]
    fn the_subscription_is_one_complete_request() {
        let text = subscription(&["KRW-BTC".into(), "KRW-ETH".into()]);
        let upbit::request::ClientFrame::Subscribe(req) =
            upbit::request::parse_request(&text).unwrap()
        else {
            panic!()
        };
        let types: Vec<_> = req
            .subscriptions
            .iter()
            .map(|s| s.data_type.as_str().to_owned())
            .collect();
        assert_eq!(types, vec!["ticker", "trade", "orderbook"]);
        assert!(
            req.subscriptions
                .iter()
                .all(|s| s.codes == vec!["KRW-BTC", "KRW-ETH"])
        );
    }
}
