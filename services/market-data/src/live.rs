//! Live streams: a snapshot, then every message of the fan-out a consumer
//! wants, each consumer with its own buffer, dropped when it is too slow.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::hot::Live;
use crate::metrics;

/// What the generated server trait expects of a server stream.
pub type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The fan-out of this replica and how its consumers are served.
pub struct LiveStreams {
    pub live: broadcast::Sender<Live>,
    pub draining: CancellationToken,
    /// Messages buffered per consumer.
    pub buffer: usize,
    /// A consumer that accepts nothing for this long is dropped.
    pub slow_after: Duration,
}

impl LiveStreams {
    /// A cursor on the fan-out. Take it before reading a snapshot, so nothing
    /// published in between is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.live.subscribe()
    }

    /// A stream of `snapshot` then the live messages for `markets` (all when
    /// empty) that `pick` converts.
    pub fn stream<T, F>(
        &self,
        kind: &'static str,
        markets: Vec<String>,
        live: broadcast::Receiver<Live>,
        snapshot: Vec<T>,
        pick: F,
    ) -> BoxStream<T>
    where
        T: Send + 'static,
        F: Fn(&Live) -> Option<T> + Send + 'static,
    {
        // One slot more than the messages may fill: the status that ends a
        // stream whose consumer is too slow, which finds the buffer full.
        let (tx, rx) = mpsc::channel(self.buffer.max(snapshot.len() + 1) + 1);
        let draining = self.draining.clone();
        let wanted: HashSet<String> = markets.into_iter().collect();
        let slow_after = self.slow_after;
        tokio::spawn(async move {
            let Ok(last) = tx.clone().reserve_owned().await else {
                return;
            };
            let gauge = metrics::STREAMS.with_label_values(&[kind]);
            gauge.inc();
            let end = forward(snapshot, live, &tx, &wanted, pick, slow_after, &draining).await;
            if end == StreamEnd::TooSlow {
                metrics::STREAMS_DROPPED.with_label_values(&[kind]).inc();
                tracing::info!(kind, "dropped a live stream whose consumer is too slow");
                last.send(Err(Status::resource_exhausted(
                    "consumer too slow; stream dropped",
                )));
            }
            gauge.dec();
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// Why a live stream ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// The consumer went away or the server is draining.
    Closed,
    /// The consumer did not accept messages for `slow_after`, or fell so far
    /// behind that the fan-out overwrote messages it had not read.
    TooSlow,
}

/// Sends `snapshot`, then every live message for `wanted` markets (all when
/// empty) that `pick` converts, until the consumer leaves, the server drains, or
/// the consumer is too slow. Each consumer has its own buffer and fan-out cursor,
/// so a slow one never holds the others back.
async fn forward<T, F>(
    snapshot: Vec<T>,
    mut live: broadcast::Receiver<Live>,
    tx: &mpsc::Sender<Result<T, Status>>,
    wanted: &HashSet<String>,
    pick: F,
    slow_after: Duration,
    draining: &CancellationToken,
) -> StreamEnd
where
    F: Fn(&Live) -> Option<T>,
{
    for item in snapshot {
        if tx.send(Ok(item)).await.is_err() {
            return StreamEnd::Closed;
        }
    }
    loop {
        let received = tokio::select! {
            _ = draining.cancelled() => return StreamEnd::Closed,
            _ = tx.closed() => return StreamEnd::Closed,
            r = live.recv() => r,
        };
        let message = match received {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Closed) => return StreamEnd::Closed,
            Err(broadcast::error::RecvError::Lagged(_)) => return StreamEnd::TooSlow,
        };
        if !wanted.is_empty() && !wanted.contains(message.market()) {
            continue;
        }
        let Some(item) = pick(&message) else { continue };
        match tokio::time::timeout(slow_after, tx.send(Ok(item))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return StreamEnd::Closed,
            Err(_) => return StreamEnd::TooSlow,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use exchange_proto::marketdata::v1 as pb;

    use super::*;

    fn trade(market: &str, sid: i64) -> Live {
        Live::Trade(Arc::new(pb::Trade {
            market: market.into(),
            sequential_id: sid,
            ..Default::default()
        }))
    }

    fn sid(live: &Live) -> Option<i64> {
        match live {
            Live::Trade(t) => Some(t.sequential_id),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_stops_reading_is_dropped_and_others_keep_going() {
        let (fan, _) = broadcast::channel(1024);
        let wanted: HashSet<String> = ["KRW-A".to_string()].into();
        let draining = CancellationToken::new();
        let (slow_tx, _slow_rx) = mpsc::channel(4); // never read
        let (fast_tx, mut fast_rx) = mpsc::channel(4);
        let slow = tokio::spawn({
            let (live, wanted, draining) = (fan.subscribe(), wanted.clone(), draining.clone());
            async move {
                forward(
                    vec![],
                    live,
                    &slow_tx,
                    &wanted,
                    sid,
                    Duration::from_secs(1),
                    &draining,
                )
                .await
            }
        });
        let fast = tokio::spawn({
            let (live, wanted, draining) = (fan.subscribe(), wanted.clone(), draining.clone());
            async move {
                forward(
                    vec![],
                    live,
                    &fast_tx,
                    &wanted,
                    sid,
                    Duration::from_secs(1),
                    &draining,
                )
                .await
            }
        });
        for i in 0..100 {
            fan.send(trade(if i % 2 == 0 { "KRW-A" } else { "KRW-B" }, i))
                .unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 50 {
            got.push(fast_rx.recv().await.unwrap().unwrap());
        }
        assert_eq!(
            got,
            (0..100).step_by(2).collect::<Vec<_>>(),
            "only wanted markets, in order"
        );
        assert_eq!(slow.await.unwrap(), StreamEnd::TooSlow);
        drop(fast_rx);
        fan.send(trade("KRW-A", 100)).unwrap();
        assert_eq!(
            fast.await.unwrap(),
            StreamEnd::Closed,
            "a consumer that leaves ends its stream"
        );
    }

    #[tokio::test]
    async fn a_consumer_that_lags_behind_the_fan_out_is_dropped() {
        let (fan, live) = broadcast::channel(8);
        let (tx, _rx) = mpsc::channel(1000);
        for i in 0..20 {
            fan.send(trade("KRW-A", i)).unwrap();
        }
        let end = forward(
            vec![],
            live,
            &tx,
            &HashSet::new(),
            sid,
            Duration::from_secs(1),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(end, StreamEnd::TooSlow);
    }
}
