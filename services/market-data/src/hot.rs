//! Hot state in Redis: the latest ticker and orderbook of each market, and pub/sub
//! fan-out of everything new.
//!
//! Keys (all under the configured prefix):
//! - `md:ticker:<market>`, `md:orderbook:<market>` — protobuf of the latest message
//! - `md:ver:ticker`, `md:ver:orderbook` — hashes of the stored messages' versions
//!   ([`ticker_version`], [`orderbook_version`]: strings that sort like the messages)
//! - `md:seen:<market>:<minute>` — trade ids seen recently (dedupe across ingestors)
//! - channels `md:ch:ticker`, `md:ch:trade`, `md:ch:orderbook` — each message is a
//!   batch of protobuf messages, each prefixed by its 4-byte big-endian length
//!
//! One Lua script applies a whole batch atomically: a ticker or orderbook replaces
//! the stored one only when its version is strictly greater (so a second
//! ingestor's copy is a no-op, and a ticker from the same millisecond but after
//! another trade is not),
//! a trade is published only the first time its (market, sequential_id) is seen.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use exchange_proto::marketdata::v1::{Orderbook, Ticker, Trade};
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
use fred::types::scripts::Script;
use prost::Message as _;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The order of tickers of one market, as a string that sorts the same way
/// (fixed width, so the Lua script compares it exactly): the timestamp, then
/// the day's accumulated volume, which grows with every trade and restarts only
/// when the day (and so the timestamp) has moved on. Two tickers of the same
/// millisecond are thus ordered, and a copy of the same ticker is equal.
pub fn ticker_version(t: &Ticker) -> String {
    let acc = t
        .acc_trade_volume
        .parse::<rust_decimal::Decimal>()
        .map(|mut d| {
            d.rescale(12);
            d.mantissa().max(0)
        })
        .unwrap_or(0);
    format!("{:020}:{acc:040}", t.timestamp.max(0))
}

/// The order of orderbooks of one market: their timestamp (Upbit's orderbook
/// carries no counter, so of two in the same millisecond the first is kept).
pub fn orderbook_version(o: &Orderbook) -> String {
    format!("{:020}", o.timestamp.max(0))
}

/// Seconds a trade id is remembered for deduplication.
pub const DEDUPE_TTL_SECS: u64 = 600;

/// Trade ids of one (market, minute) looked up and added per call: bounded so
/// the ids of a group stay well under Lua's limit on unpacked values.
const GROUP_MAX: usize = 1000;

// ARGV: prefix, ttl, then tickers and orderbooks as a count and per item
// (market, version, 4-byte length, payload), then trades as a count of groups
// and per group (market, minute, n, n ids, n framed payloads). The caller
// frames payloads and groups trades, so the script does no string building
// per trade and one SMISMEMBER and one SADD per group instead of one call per
// trade. Returns [tickers published, orderbooks published, '1'/'0' per trade
// in group order].
const APPLY: &str = r#"
local p = ARGV[1]
local ttl = tonumber(ARGV[2])
local i = 3
local out = {}
local function latest(kind)
  local n = tonumber(ARGV[i]); i = i + 1
  local verkey = p .. 'md:ver:' .. kind
  local frames = {}
  for _ = 1, n do
    local market, version, len, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    i = i + 4
    local current = redis.call('HGET', verkey, market) or ''
    if version > current then
      redis.call('HSET', verkey, market, version)
      redis.call('SET', p .. 'md:' .. kind .. ':' .. market, payload)
      frames[#frames + 1] = len
      frames[#frames + 1] = payload
    end
  end
  if #frames > 0 then
    redis.call('PUBLISH', p .. 'md:ch:' .. kind, table.concat(frames))
  end
  out[#out + 1] = #frames / 2
end
latest('ticker')
latest('orderbook')
local groups = tonumber(ARGV[i]); i = i + 1
local frames = {}
local fresh = {}
for _ = 1, groups do
  local market, minute, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local key = p .. 'md:seen:' .. market .. ':' .. minute
  local ids = {}
  for k = 1, n do ids[k] = ARGV[i + k - 1] end
  local known = redis.call('SMISMEMBER', key, unpack(ids))
  redis.call('SADD', key, unpack(ids))
  redis.call('EXPIRE', key, ttl)
  local now = {}
  for k = 1, n do
    local id = ids[k]
    if known[k] == 0 and not now[id] then
      now[id] = true
      frames[#frames + 1] = ARGV[i + n + k - 1]
      fresh[#fresh + 1] = '1'
    else
      fresh[#fresh + 1] = '0'
    end
  end
  i = i + 2 * n
end
if #frames > 0 then
  redis.call('PUBLISH', p .. 'md:ch:trade', table.concat(frames))
end
out[#out + 1] = table.concat(fresh)
return out
"#;

/// A batch to apply: latest tickers and orderbooks, and trades.
#[derive(Default)]
pub struct Batch {
    pub tickers: Vec<Ticker>,
    pub orderbooks: Vec<Orderbook>,
    pub trades: Vec<Trade>,
}

/// What applying a batch changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub tickers: usize,
    pub orderbooks: usize,
    /// Per input trade: whether it was new.
    pub fresh_trades: Vec<bool>,
}

/// A live message fanned out to stream consumers.
#[derive(Clone, Debug)]
pub enum Live {
    Ticker(Arc<Ticker>),
    Trade(Arc<Trade>),
    Orderbook(Arc<Orderbook>),
}

impl Live {
    pub fn market(&self) -> &str {
        match self {
            Self::Ticker(t) => &t.market,
            Self::Trade(t) => &t.market,
            Self::Orderbook(o) => &o.market,
        }
    }
}

#[derive(Clone)]
pub struct Hot {
    client: Client,
    prefix: String,
    script: Arc<Script>,
}

fn frame_payloads(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let payload = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(payload)
    })
}

impl Hot {
    pub fn new(client: Client, prefix: String) -> Self {
        Self {
            client,
            prefix,
            script: Arc::new(Script::from_lua(APPLY)),
        }
    }

    fn key(&self, kind: &str, market: &str) -> String {
        format!("{}md:{kind}:{market}", self.prefix)
    }

    pub fn channel(&self, kind: &str) -> String {
        format!("{}md:ch:{kind}", self.prefix)
    }

    /// Applies a batch in one round trip.
    pub async fn apply(&self, batch: &Batch) -> Result<Applied, fred::error::Error> {
        let snapshots = batch.tickers.len() + batch.orderbooks.len();
        let mut args: Vec<Bytes> =
            Vec::with_capacity(6 + 4 * snapshots + 2 * batch.trades.len() + 60);
        args.push(Bytes::from(self.prefix.clone()));
        args.push(Bytes::from(DEDUPE_TTL_SECS.to_string()));
        let snapshot = |args: &mut Vec<Bytes>, market: &str, version: String, payload: Vec<u8>| {
            args.push(Bytes::copy_from_slice(market.as_bytes()));
            args.push(Bytes::from(version));
            args.push(Bytes::copy_from_slice(
                &(payload.len() as u32).to_be_bytes(),
            ));
            args.push(Bytes::from(payload));
        };
        args.push(Bytes::from(batch.tickers.len().to_string()));
        for t in &batch.tickers {
            snapshot(&mut args, &t.market, ticker_version(t), t.encode_to_vec());
        }
        args.push(Bytes::from(batch.orderbooks.len().to_string()));
        for o in &batch.orderbooks {
            snapshot(
                &mut args,
                &o.market,
                orderbook_version(o),
                o.encode_to_vec(),
            );
        }
        // Trades grouped by their dedupe set, in order of first appearance.
        let mut groups: Vec<((&str, i64), Vec<usize>)> = Vec::new();
        let mut open: std::collections::HashMap<(&str, i64), usize> = Default::default();
        for (n, t) in batch.trades.iter().enumerate() {
            let key = (t.market.as_str(), t.trade_timestamp.div_euclid(60_000));
            match open.get(&key) {
                Some(&g) if groups[g].1.len() < GROUP_MAX => groups[g].1.push(n),
                _ => {
                    open.insert(key, groups.len());
                    groups.push((key, vec![n]));
                }
            }
        }
        args.push(Bytes::from(groups.len().to_string()));
        let mut order = Vec::with_capacity(batch.trades.len());
        for ((market, minute), members) in &groups {
            args.push(Bytes::copy_from_slice(market.as_bytes()));
            args.push(Bytes::from(minute.to_string()));
            args.push(Bytes::from(members.len().to_string()));
            for &n in members {
                args.push(Bytes::from(batch.trades[n].sequential_id.to_string()));
            }
            for &n in members {
                let t = &batch.trades[n];
                let mut framed = Vec::with_capacity(4 + t.encoded_len());
                framed.extend_from_slice(&(t.encoded_len() as u32).to_be_bytes());
                t.encode_raw(&mut framed);
                args.push(Bytes::from(framed));
            }
            order.extend_from_slice(members);
        }
        let (tickers, orderbooks, fresh): (i64, i64, String) = telemetry::db::redis(
            "EVALSHA",
            self.script
                .evalsha_with_reload(&self.client, Vec::<String>::new(), args),
        )
        .await?;
        // Back from group order to the batch's order.
        let mut fresh_trades = vec![false; batch.trades.len()];
        for (&n, flag) in order.iter().zip(fresh.bytes()) {
            fresh_trades[n] = flag == b'1';
        }
        Ok(Applied {
            tickers: tickers as usize,
            orderbooks: orderbooks as usize,
            fresh_trades,
        })
    }

    async fn get_many<M: prost::Message + Default>(
        &self,
        kind: &str,
        markets: &[String],
    ) -> Result<Vec<Option<M>>, fred::error::Error> {
        if markets.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = markets.iter().map(|m| self.key(kind, m)).collect();
        let values: Vec<Option<Bytes>> = if keys.len() == 1 {
            vec![telemetry::db::redis("GET", self.client.get(keys[0].clone())).await?]
        } else {
            telemetry::db::redis("MGET", self.client.mget(keys)).await?
        };
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|b| M::decode(b.as_ref()).ok()))
            .collect())
    }

    /// Latest tickers of `markets` (None where none is stored yet).
    pub async fn tickers(
        &self,
        markets: &[String],
    ) -> Result<Vec<Option<Ticker>>, fred::error::Error> {
        self.get_many("ticker", markets).await
    }

    /// Latest orderbooks of `markets`.
    pub async fn orderbooks(
        &self,
        markets: &[String],
    ) -> Result<Vec<Option<Orderbook>>, fred::error::Error> {
        self.get_many("orderbook", markets).await
    }

    /// Subscribes to the three channels and forwards every message into `tx` until
    /// `stop`. Reconnects and resubscribes on its own.
    pub async fn fan_out(
        &self,
        subscriber: SubscriberClient,
        tx: broadcast::Sender<Live>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut messages = subscriber.message_rx();
        let _connection = subscriber.connect();
        let _resubscribe = subscriber.manage_subscriptions();
        let (ticker, trade, orderbook) = (
            self.channel("ticker"),
            self.channel("trade"),
            self.channel("orderbook"),
        );
        // Subscribe once connected; manage_subscriptions repeats it after reconnects.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                connected = subscriber.wait_for_connect() => {
                    if connected.is_ok()
                        && subscriber.subscribe(vec![ticker.clone(), trade.clone(), orderbook.clone()]).await.is_ok()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => break,
                m = messages.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    crate::metrics::FANOUT_LAGGED.inc_by(n);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            // Nobody streaming: nothing to decode (every published batch comes
            // back here, and decoding it all is a good part of the service's work).
            if tx.receiver_count() == 0 {
                continue;
            }
            let Some(data) = message.value.as_bytes() else {
                continue;
            };
            let channel: &str = &message.channel;
            for payload in frame_payloads(data) {
                let live = if channel == ticker {
                    Ticker::decode(payload)
                        .ok()
                        .map(|t| Live::Ticker(Arc::new(t)))
                } else if channel == trade {
                    Trade::decode(payload)
                        .ok()
                        .map(|t| Live::Trade(Arc::new(t)))
                } else if channel == orderbook {
                    Orderbook::decode(payload)
                        .ok()
                        .map(|o| Live::Orderbook(Arc::new(o)))
                } else {
                    None
                };
                if let Some(live) = live {
                    // No stream consumers is fine.
                    let _ = tx.send(live);
                }
            }
        }
        let _ = subscriber.quit().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticker_versions_sort_by_time_then_accumulated_volume() {
        let t = |ts: i64, acc: &str| Ticker {
            timestamp: ts,
            acc_trade_volume: acc.into(),
            ..Default::default()
        };
        let v = |ts, acc| ticker_version(&t(ts, acc));
        assert!(v(1_000, "5") > v(999, "900"), "time first");
        assert!(
            v(1_000, "5.00000001") > v(1_000, "5"),
            "same ms, one more trade"
        );
        assert!(v(1_000, "10") > v(1_000, "9.5"), "numerically, not as text");
        assert_eq!(v(1_000, "5"), v(1_000, "5.000"), "a copy is equal");
        assert!(
            v(86_400_000, "0.1") > v(86_399_999, "123456789.12345678"),
            "a new day"
        );
        assert!(v(1_000, "1") > v(1_000, "not a number"));
        let o = |ts: i64| {
            orderbook_version(&Orderbook {
                timestamp: ts,
                ..Default::default()
            })
        };
        assert!(o(10_000) > o(9_999));
    }

    #[test]
    fn frames_split_and_stop_at_truncation() {
        let mut data = Vec::new();
        for p in [&b"abc"[..], b"", b"hello"] {
            data.extend_from_slice(&(p.len() as u32).to_be_bytes());
            data.extend_from_slice(p);
        }
        let parts: Vec<&[u8]> = frame_payloads(&data).collect();
        assert_eq!(parts, vec![&b"abc"[..], b"", b"hello"]);
        let truncated = &data[..data.len() - 2];
        assert_eq!(frame_payloads(truncated).count(), 2);
    }
}
