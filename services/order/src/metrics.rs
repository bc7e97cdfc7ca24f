//! The order service's own metrics (gRPC request metrics come from telemetry).

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGauge, Opts};

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    prometheus::register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

/// 1 while this replica leads matching and follows the live trades.
pub static MATCHER_LEADING: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "order_matcher_leading",
            "1 while this replica holds the matcher lock and follows live trades.",
        )
        .expect("valid"),
    )
});

/// Limit-order fills made by the matcher, by side.
pub static LIMIT_FILLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "order_limit_fills_total",
                "Fills of resting limit orders by live trades.",
            ),
            &["side"],
        )
        .expect("valid"),
    )
});

/// Stored trades the matcher matched while catching up (after it took the lead
/// or its trade stream broke).
pub static CAUGHT_UP_TRADES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "order_matcher_caught_up_trades_total",
            "Stored trades matched while catching up after taking the lead or a broken trade stream.",
        )
        .expect("valid"),
    )
});
