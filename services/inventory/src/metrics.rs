//! The inventory's own metrics (gRPC request metrics come from telemetry).

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, Opts};
use telemetry::metrics::register;

use crate::error::InventoryError;
use crate::store::Settled;

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

/// Reservations asked for (an order's first settle, with its terms), by result:
/// `ok`, `insufficient_funds`, `expired` (its plan's time passed), `refused`
/// (invalid or against the terms) or `unavailable`.
pub static RESERVATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "inventory_reservations_total",
                "Reservations asked for, by result (ok, insufficient_funds, expired, refused, unavailable).",
            ),
            &["result"],
        )
        .expect("valid"),
    )
});

/// Fills applied to balances (each moves the base and the quote, with its fee).
pub static FILLS_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "inventory_fills_applied_total",
            "Fills applied to balances.",
        )
        .expect("valid"),
    )
});

/// Orders finished: what was left of their reservation released.
pub static RELEASES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "inventory_releases_total",
            "Orders finished and the rest of their reservation released.",
        )
        .expect("valid"),
    )
});

/// Counts what a settle did (or why it was refused) and hands the result on.
pub fn count_settle(
    reserving: bool,
    finalize: bool,
    settled: Result<Settled, InventoryError>,
) -> Result<Settled, InventoryError> {
    if reserving {
        let result = match &settled {
            Ok(_) => "ok",
            Err(InventoryError::InsufficientFunds) => "insufficient_funds",
            Err(InventoryError::PlanExpired(_)) => "expired",
            Err(InventoryError::Database(_)) => "unavailable",
            Err(_) => "refused",
        };
        RESERVATIONS.with_label_values(&[result]).inc();
    }
    if let Ok(s) = &settled {
        FILLS_APPLIED.inc_by(u64::from(s.fills_applied));
        if finalize {
            RELEASES.inc();
        }
    }
    settled
}

/// Registers every series at start, at zero where its labels are known, so
/// dashboards and alerts see 0 instead of no data until the first event.
pub fn init() {
    for rpc in ["OpenAccount", "Deposit", "Settle"] {
        FAULTS_INJECTED.with_label_values(&[rpc]);
    }
    for result in [
        "ok",
        "insufficient_funds",
        "expired",
        "refused",
        "unavailable",
    ] {
        RESERVATIONS.with_label_values(&[result]);
    }
    for counter in [&FILLS_REFUSED, &FILLS_APPLIED, &RELEASES] {
        LazyLock::force(counter);
    }
}
