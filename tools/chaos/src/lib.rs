//! The whole exchange as processes on loopback, with a Postgres and a Redis of
//! its own ([`exchange::Exchange`]), and what runs against it: the chaos run
//! (`src/main.rs`: users trading while faults are injected, then every money
//! invariant checked) and the telemetry test (`tests/telemetry.rs`: what the
//! processes export, read by a real OTLP receiver and a scrape).

// The chaos run reports as it goes: its output is its report.
#![allow(clippy::print_stdout)]

pub mod checks;
pub mod cluster;
pub mod exchange;
pub mod faults;
pub mod users;
