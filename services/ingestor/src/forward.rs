//! The market-data side: one client-streaming `Ingest` call at a time, fed from
//! the buffer. When the call fails (market-data restarting, Redis away) it
//! reconnects with backoff and first re-sends the last few batches, which
//! market-data deduplicates, so a broken stream loses nothing it had in flight.
//!
//! Each batch is encoded once, and the encoded bytes are both sent and kept for
//! that replay: keeping the messages themselves meant a deep copy of every
//! batch, a good part of the ingestor's work under load.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use exchange_proto::marketdata::v1 as pb;
use prost::Message as _;
use service_kit::grpc::Channel;
use service_kit::retry::Backoff;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, EncodeBuf, Encoder};

use crate::buffer::Buffer;
use crate::metrics;

/// A codec whose requests are already-encoded `IngestRequest` messages.
#[derive(Clone, Copy, Default)]
struct Encoded;

impl Codec for Encoded {
    type Encode = Bytes;
    type Decode = pb::IngestResponse;
    type Encoder = Self;
    type Decoder = tonic_prost::ProstDecoder<pb::IngestResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Default::default()
    }
}

impl Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

/// `MarketDataService/Ingest` with encoded requests.
async fn ingest(
    channel: Channel,
    requests: mpsc::Receiver<Bytes>,
) -> Result<tonic::Response<pb::IngestResponse>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("market-data is not reachable: {e}")))?;
    let mut request = tonic::Request::new(ReceiverStream::new(requests));
    request.extensions_mut().insert(tonic::GrpcMethod::new(
        "exchange.marketdata.v1.MarketDataService",
        "Ingest",
    ));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/exchange.marketdata.v1.MarketDataService/Ingest",
    );
    grpc.client_streaming(request, path, Encoded).await
}

/// Batches re-sent after a reconnect.
const REPLAY_BATCHES: usize = 8;

pub struct ForwardConfig {
    pub source: String,
    /// The followed markets: sent first on every stream, and again when they change.
    pub markets: watch::Receiver<Vec<pb::Market>>,
    pub batch_max: usize,
    pub batch_linger: Duration,
}

/// Runs until `stop`, then ends the stream cleanly after sending what is buffered.
pub async fn run(
    channel: Channel,
    config: ForwardConfig,
    buffer: std::sync::Arc<Buffer>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut markets = config.markets.clone();
    let mut watching = true;
    let mut recent: VecDeque<Bytes> = VecDeque::with_capacity(REPLAY_BATCHES);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let mut call = tokio::spawn(ingest(channel.clone(), rx));
        let first = markets_message(&config.source, &markets.borrow_and_update());
        let mut open = tx.send(first).await.is_ok();
        for batch in &recent {
            if !open {
                break;
            }
            open = tx.send(batch.clone()).await.is_ok();
        }
        if open {
            metrics::UPSTREAM_CONNECTED.set(1);
        }
        let mut ended = None;
        while open {
            let batch = tokio::select! {
                b = buffer.next_batch(config.batch_max, config.batch_linger, &stop) => b,
                r = &mut call => { ended = Some(r); break; }
                changed = markets.changed(), if watching => {
                    // Err: nothing refreshes the list (MARKETS_REFRESH=0s).
                    watching = changed.is_ok();
                    if watching {
                        let update = markets_message(&config.source, &markets.borrow_and_update());
                        open = tx.send(update).await.is_ok();
                    }
                    continue;
                }
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
            let encoded = encode(&config.source, batch);
            if recent.len() == REPLAY_BATCHES {
                recent.pop_front();
            }
            recent.push_back(encoded.clone());
            match tx.send(encoded).await {
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

/// The followed markets as an encoded `IngestRequest`, which market-data
/// registers (names and designations).
fn markets_message(source: &str, markets: &[pb::Market]) -> Bytes {
    pb::IngestRequest {
        events: Vec::new(),
        source: source.to_owned(),
        markets: markets.to_vec(),
    }
    .encode_to_vec()
    .into()
}

/// One batch as an encoded `IngestRequest`.
fn encode(source: &str, events: Vec<pb::MarketEvent>) -> Bytes {
    pb::IngestRequest {
        events,
        source: source.to_owned(),
        markets: Vec::new(),
    }
    .encode_to_vec()
    .into()
}
