//! The inventory's own metrics (gRPC request metrics come from telemetry).

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, Opts};

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    prometheus::register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

/// Fills refused because their order's terms do not allow them.
pub static FILLS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "inventory_fills_refused_total",
            "Fills refused because the order's terms do not allow them (a caller's bug or worse).",
        )
        .expect("valid"),
    )
});

/// Faults injected on purpose (`FAULT_UNAVAILABLE_AFTER_COMMIT`), by RPC.
pub static FAULTS_INJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "inventory_faults_injected_total",
                "Calls answered UNAVAILABLE on purpose after their change was committed.",
            ),
            &["rpc"],
        )
        .expect("valid"),
    )
});
