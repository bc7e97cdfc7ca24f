//! market-data's business metrics.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use telemetry::metrics::register;

/// Latency buckets for pipeline lag (seconds): 0.5 ms .. 60 s.
const LAG_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0,
    2.0, 5.0, 10.0, 30.0, 60.0,
];

pub static REDIS_APPLY: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "market_data_redis_apply_seconds",
                "Time to apply one batch to Redis (one script call, retries included).",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("valid"),
    )
});

pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "market_data_events_total",
                "Events received from ingestors, by type.",
            ),
            &["type"],
        )
        .expect("valid"),
    )
});

pub static PUBLISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "market_data_published_total",
                "Events stored in Redis and published (newer than what was there), by type.",
            ),
            &["type"],
        )
        .expect("valid"),
    )
});

pub static EVENT_TO_REDIS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "market_data_event_to_redis_seconds",
                "Exchange timestamp of an event to its publication in Redis.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("valid"),
    )
});

pub static REDIS_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "market_data_redis_errors_total",
            "Failed Redis batch applications (retried).",
        )
        .expect("valid"),
    )
});

pub static TRADES_STORED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "market_data_trades_stored_total",
            "Trades written to Postgres.",
        )
        .expect("valid"),
    )
});

pub static TRADES_DUPLICATE: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "market_data_trades_duplicate_total",
            "Trades received again (same market and sequential_id) and not stored twice.",
        )
        .expect("valid"),
    )
});

pub static WRITE_QUEUE: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "market_data_write_queue",
            "Trades accepted and not yet written to Postgres (queued or being retried).",
        )
        .expect("valid"),
    )
});

pub static WRITE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "market_data_write_errors_total",
            "Failed Postgres batch writes (retried).",
        )
        .expect("valid"),
    )
});

pub static WRITE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "market_data_write_seconds",
                "Time to write one batch of trades and candles.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("valid"),
    )
});

pub static WRITE_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "market_data_write_batch_trades",
                "Trades per Postgres batch.",
            )
            .buckets(vec![1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0]),
        )
        .expect("valid"),
    )
});

pub static TRADE_TO_POSTGRES: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "market_data_trade_to_postgres_seconds",
                "Exchange timestamp of a trade to its row in Postgres (the write lag).",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("valid"),
    )
});

pub static STREAMS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "market_data_stream_consumers",
                "Open live streams, by type.",
            ),
            &["type"],
        )
        .expect("valid"),
    )
});

pub static STREAMS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "market_data_stream_dropped_total",
                "Live streams ended by the server because the consumer could not keep up.",
            ),
            &["type"],
        )
        .expect("valid"),
    )
});

pub static FANOUT_LAGGED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "market_data_fanout_lagged_total",
            "Pub/sub messages this replica missed because its fan-out fell behind.",
        )
        .expect("valid"),
    )
});

/// Registers every series at start, at zero where its labels are known, so
/// dashboards and alerts see 0 instead of no data until the first event.
pub fn init() {
    for kind in ["ticker", "trade", "orderbook"] {
        EVENTS.with_label_values(&[kind]);
        PUBLISHED.with_label_values(&[kind]);
        STREAMS.with_label_values(&[kind]);
        STREAMS_DROPPED.with_label_values(&[kind]);
    }
    for counter in [
        &REDIS_ERRORS,
        &TRADES_STORED,
        &TRADES_DUPLICATE,
        &WRITE_ERRORS,
        &FANOUT_LAGGED,
    ] {
        LazyLock::force(counter);
    }
    for histogram in [
        &REDIS_APPLY,
        &EVENT_TO_REDIS,
        &WRITE_SECONDS,
        &WRITE_BATCH,
        &TRADE_TO_POSTGRES,
    ] {
        LazyLock::force(histogram);
    }
    LazyLock::force(&WRITE_QUEUE);
}
