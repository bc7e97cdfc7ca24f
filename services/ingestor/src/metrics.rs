//! The ingestor's metrics.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};
use telemetry::metrics::register;

const LAG_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0,
    2.0, 5.0, 10.0, 30.0,
];

pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "ingestor_events_total",
                "Events received from the feed, by type and market.",
            ),
            &["type", "market"],
        )
        .expect("valid"),
    )
});

pub static LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "ingestor_event_lag_seconds",
                "Now minus the exchange timestamp of each event, on receipt.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
            &["type"],
        )
        .expect("valid"),
    )
});

pub static RECONNECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "ingestor_reconnects_total",
                "Feed reconnections, by reason (closed, error, stale, connect_failed).",
            ),
            &["reason"],
        )
        .expect("valid"),
    )
});

pub static PARSE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "ingestor_parse_errors_total",
            "Feed frames that did not parse (skipped).",
        )
        .expect("valid"),
    )
});

pub static BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "ingestor_batch_events",
                "Events per batch sent to market-data.",
            )
            .buckets(vec![
                1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
            ]),
        )
        .expect("valid"),
    )
});

pub static CONFLATED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "ingestor_conflated_total",
                "Tickers/orderbooks replaced by a newer one of the same market before being sent.",
            ),
            &["type"],
        )
        .expect("valid"),
    )
});

pub static DROPPED_TRADES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "ingestor_dropped_trades_total",
            "Oldest trades dropped because the buffer was full.",
        )
        .expect("valid"),
    )
});

pub static BUFFERED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "ingestor_buffered_events",
            "Events waiting to be sent to market-data.",
        )
        .expect("valid"),
    )
});

pub static FEED_CONNECTED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new("ingestor_feed_connected", "1 while subscribed to the feed.").expect("valid"),
    )
});

pub static UPSTREAM_CONNECTED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "ingestor_market_data_connected",
            "1 while an ingest stream to market-data is open.",
        )
        .expect("valid"),
    )
});

pub static SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new("ingestor_sent_events_total", "Events sent to market-data.")
            .expect("valid"),
    )
});

/// The three event types, as labelled.
pub const TYPES: [&str; 3] = ["ticker", "trade", "orderbook"];

/// The lag histogram of each type, resolved once.
pub static LAG_BY_TYPE: LazyLock<[Histogram; 3]> =
    LazyLock::new(|| TYPES.map(|t| LAG.with_label_values(&[t])));

/// The conflation counter of tickers and orderbooks, resolved once.
pub static CONFLATED_TICKERS: LazyLock<IntCounter> =
    LazyLock::new(|| CONFLATED.with_label_values(&["ticker"]));
pub static CONFLATED_ORDERBOOKS: LazyLock<IntCounter> =
    LazyLock::new(|| CONFLATED.with_label_values(&["orderbook"]));

thread_local! {
    /// `EVENTS` counters by market and type, so counting an event is not a
    /// label lookup under the registry's lock (there is one per event).
    static EVENT_COUNTERS: std::cell::RefCell<std::collections::HashMap<String, [IntCounter; 3]>> =
        Default::default();
}

/// Counts one event of `TYPES[kind]` in `market`.
pub fn count_event(kind: usize, market: &str) {
    EVENT_COUNTERS.with_borrow_mut(|counters| {
        if let Some(c) = counters.get(market) {
            c[kind].inc();
            return;
        }
        let c = TYPES.map(|t| EVENTS.with_label_values(&[t, market]));
        c[kind].inc();
        counters.insert(market.to_owned(), c);
    });
}

/// Registers every series at start, at zero where its labels are known, so
/// dashboards and alerts see 0 instead of no data until the first event.
pub fn init() {
    for reason in ["closed", "error", "stale", "connect_failed"] {
        RECONNECTS.with_label_values(&[reason]);
    }
    for counter in [&PARSE_ERRORS, &DROPPED_TRADES, &SENT] {
        LazyLock::force(counter);
    }
    for gauge in [&BUFFERED, &FEED_CONNECTED, &UPSTREAM_CONNECTED] {
        LazyLock::force(gauge);
    }
    LazyLock::force(&BATCH);
}
