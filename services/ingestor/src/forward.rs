//! The market-data side: one client-streaming `Ingest` call at a time, fed from
//! the buffer. When the call fails (market-data restarting, Redis away) it
//! reconnects with backoff and first re-sends the last few batches, which
//! market-data deduplicates, so a broken stream loses nothing it had in flight.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use exchange_proto::marketdata::v1 as pb;
use exchange_proto::marketdata::v1::market_data_service_client::MarketDataServiceClient;
use service_kit::grpc::Channel;
use service_kit::retry::Backoff;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;
use crate::metrics;

/// Batches re-sent after a reconnect.
const REPLAY_BATCHES: usize = 8;

pub struct ForwardConfig {
    pub source: String,
    pub markets: Vec<pb::Market>,
    pub batch_max: usize,
    pub batch_linger: Duration,
}

/// Runs until `stop`, then ends the stream cleanly after sending what is buffered.
pub async fn run(
    client: MarketDataServiceClient<Channel>,
    config: ForwardConfig,
    buffer: Arc<Buffer>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut recent: VecDeque<Arc<Vec<pb::MarketEvent>>> = VecDeque::with_capacity(REPLAY_BATCHES);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let (tx, rx) = mpsc::channel::<pb::IngestRequest>(4);
        let mut call = {
            let mut client = client.clone();
            tokio::spawn(async move { client.ingest(ReceiverStream::new(rx)).await })
        };
        let first = pb::IngestRequest {
            events: Vec::new(),
            source: config.source.clone(),
            markets: config.markets.clone(),
        };
        let mut open = tx.send(first).await.is_ok();
        for batch in &recent {
            if !open {
                break;
            }
            open = tx.send(request(&config.source, batch)).await.is_ok();
        }
        if open {
            metrics::UPSTREAM_CONNECTED.set(1);
        }
        let mut ended = None;
        while open {
            let batch = tokio::select! {
                b = buffer.next_batch(config.batch_max, config.batch_linger, &stop) => b,
                r = &mut call => { ended = Some(r); break; }
            };
            if batch.is_empty() {
                // Stopping: finish the call so market-data gets everything sent.
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_secs(5), call).await;
                metrics::UPSTREAM_CONNECTED.set(0);
                return Ok(());
            }
            metrics::BATCH.observe(batch.len() as f64);
            let n = batch.len() as u64;
            let batch = Arc::new(batch);
            if recent.len() == REPLAY_BATCHES {
                recent.pop_front();
            }
            recent.push_back(batch.clone());
            match tx.send(request(&config.source, &batch)).await {
                Ok(()) => {
                    metrics::SENT.inc_by(n);
                    backoff.reset();
                }
                Err(_) => open = false,
            }
        }
        metrics::UPSTREAM_CONNECTED.set(0);
        let ended = match ended {
            Some(r) => Some(r),
            None => {
                drop(tx);
                tokio::time::timeout(Duration::from_millis(200), &mut call)
                    .await
                    .ok()
            }
        };
        call.abort();
        if let Some(Ok(Err(status))) = ended {
            tracing::warn!(code = ?status.code(), message = status.message(), "ingest stream to market-data ended");
        }
        let delay = backoff.next_delay();
        tracing::warn!(?delay, "reconnecting to market-data");
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn request(source: &str, batch: &[pb::MarketEvent]) -> pb::IngestRequest {
    pb::IngestRequest {
        events: batch.to_vec(),
        source: source.to_owned(),
        markets: Vec::new(),
    }
}
