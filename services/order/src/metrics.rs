//! The order service's own metrics (gRPC request metrics come from telemetry).

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use telemetry::metrics::register;

use crate::error::OrderError;
use crate::service::View;

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

/// Orders this service made, by type, side and the state they were answered
/// in (`wait`, `done`, `cancel`, or `pending` when inventory's answer was late).
pub static PLACED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "order_placed_total",
                "Orders made, by ord_type, side and the state they were answered in.",
            ),
            &["ord_type", "side", "state"],
        )
        .expect("valid"),
    )
});

/// Placements refused, by the error name the client got.
pub static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "order_rejected_total",
                "Placements refused, by the error name the client got (insufficient_funds_bid, validation_error, market_data_stale, ...).",
            ),
            &["reason"],
        )
        .expect("valid"),
    )
});

/// Orders cancelled by their owner.
pub static CANCELS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new("order_cancels_total", "Orders cancelled by their owner.").expect("valid"),
    )
});

/// Orders written from the record inventory kept of them (two-commit
/// placement): `by="retry"` when a retry of a crashed attempt found it had been
/// executed with another plan, `by="recovery"` when recovery wrote an order
/// whose placement died between inventory's commit and its own, or completed a
/// PENDING one.
pub static FROM_RECORD: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "order_written_from_record_total",
                "Orders written from inventory's record of them, by who wrote them (retry, recovery).",
            ),
            &["by"],
        )
        .expect("valid"),
    )
});

/// Counts a placement's outcome (a retry that found its order is not a new one)
/// and hands it on.
pub fn count_placement(
    ord_type: &str,
    side: &str,
    placed: Result<(View, bool), OrderError>,
) -> Result<(View, bool), OrderError> {
    match &placed {
        Ok((view, true)) => PLACED
            .with_label_values(&[ord_type, side, view.order.state.as_str()])
            .inc(),
        Ok((_, false)) => {}
        Err(e) => REJECTED.with_label_values(&[e.name()]).inc(),
    }
    placed
}

/// Registers every series at start, at zero where its labels are known, so
/// dashboards and alerts see 0 instead of no data until the first event.
pub fn init() {
    for side in ["bid", "ask"] {
        LIMIT_FILLS.with_label_values(&[side]);
    }
    LazyLock::force(&MATCHER_LEADING);
    LazyLock::force(&CAUGHT_UP_TRADES);
    LazyLock::force(&CANCELS);
    for by in ["retry", "recovery"] {
        FROM_RECORD.with_label_values(&[by]);
    }
    LazyLock::force(&PLACED);
    LazyLock::force(&REJECTED);
}
