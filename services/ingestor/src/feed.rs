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
    pub format: upbit::write::Format,
}

/// Why a connection ended.
enum End {
    Stop,
    Reconnect(&'static str),
}

/// The one subscription message: ticker, trade and orderbook for every market.
pub fn subscription(markets: &[String], format: upbit::write::Format) -> String {
    let ticket = format!("ingestor-{}", std::process::id());
    SubscriptionRequest {
        ticket,
        subscriptions: vec![
            Subscription::new(DataType::Ticker, markets.to_vec()),
            Subscription::new(DataType::Trade, markets.to_vec()),
            Subscription::new(DataType::Orderbook, markets.to_vec()),
        ],
        format: Some(format),
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
    let request = subscription(&config.markets, config.format);
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
    // Stale means no data for `stale_after`: pongs keep a dead feed's socket
    // alive, so they do not count.
    let stale = tokio::time::sleep(config.stale_after);
    tokio::pin!(stale);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return End::Stop,
            _ = &mut stale => return End::Reconnect("stale"),
            _ = ping.tick() => {
                if ws.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    return End::Reconnect("error");
                }
                continue;
            }
            n = ws.next() => n,
        };
        let frame = match next {
            None => return End::Reconnect("closed"),
            Some(Err(err)) => {
                tracing::debug!(error = %err, "feed read error");
                return End::Reconnect("error");
            }
            Some(Ok(frame)) => frame,
        };
        let bytes = match frame {
            WsMessage::Binary(b) => b,
            WsMessage::Text(t) => bytes::Bytes::from(t.as_str().to_owned()),
            WsMessage::Close(_) => return End::Reconnect("closed"),
            _ => continue,
        };
        stale
            .as_mut()
            .reset(tokio::time::Instant::now() + config.stale_after);
        handle(bytes, buffer);
    }
}

/// Routes one frame into the buffer: trades are parsed now; tickers and
/// orderbooks are kept raw (the newest per market) and parsed when sent.
/// Malformed frames are counted and skipped.
pub fn handle(frame: bytes::Bytes, buffer: &Buffer) {
    let now = chrono::Utc::now().timestamp_millis();
    match upbit::parse::frame_head(&frame) {
        // A frame cut short is parsed (and counted as malformed) right away.
        Some((kind @ ("ticker" | "orderbook"), code))
            if upbit::market::MarketCode::parse(code).is_ok()
                && frame
                    .trim_ascii_end()
                    .last()
                    .is_some_and(|b| matches!(b, b'}' | b']')) =>
        {
            metrics::count_event(if kind == "ticker" { 0 } else { 2 }, code);
            // Keep a copy, not the frame: the frame shares tungstenite's read
            // buffer, and while any part of it is held the next read cannot
            // reuse that buffer and gets a small fresh one, so the socket is
            // read about one frame per syscall instead of 128 KiB at a time.
            let copy = bytes::Bytes::copy_from_slice(&frame);
            buffer.push_raw(kind == "orderbook", code, copy, now);
        }
        _ => {
            if let Some(event) = parse_event(&frame, now) {
                buffer.push(event);
            }
        }
    }
}

/// Parses a frame into an event (None for frames that carry none): directly
/// into the event when it is a plain ticker, trade or orderbook, through the
/// full Upbit parser otherwise (which also names what is wrong with it).
pub fn parse_event(bytes: &[u8], received_at: i64) -> Option<pb::MarketEvent> {
    let lag = |ts: i64| (received_at - ts).max(0) as f64 / 1000.0;
    let direct =
        upbit::parse::frame_head(bytes).and_then(|(kind, _)| convert::direct::event(kind, bytes));
    let event = match direct {
        Some(event) => event,
        None => match upbit::parse_message(bytes) {
            Ok(Message::Ticker(t)) => Event::Ticker(convert::ticker(&t)),
            Ok(Message::Trade(t)) => Event::Trade(convert::trade(&t)),
            Ok(Message::Orderbook(o)) => Event::Orderbook(convert::orderbook(&o)),
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
        },
    };
    match &event {
        Event::Ticker(t) => metrics::LAG_BY_TYPE[0].observe(lag(t.timestamp)),
        Event::Trade(t) => {
            metrics::count_event(1, &t.market);
            metrics::LAG_BY_TYPE[1].observe(lag(t.trade_timestamp));
        }
        Event::Orderbook(o) => metrics::LAG_BY_TYPE[2].observe(lag(o.timestamp)),
    }
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
    fn the_subscription_is_one_complete_request() {
        let text = subscription(
            &["KRW-BTC".into(), "KRW-ETH".into()],
            upbit::write::Format::Simple,
        );
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
        assert_eq!(req.format, Some(upbit::write::Format::Simple));
        assert!(
            req.subscriptions
                .iter()
                .all(|s| s.codes == vec!["KRW-BTC", "KRW-ETH"])
        );
    }
}
