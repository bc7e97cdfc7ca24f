//! The shared runtime of every exchange service binary.
//!
//! - [`config`]: runtime settings common to all services (version, pod name, drain
//!   timings), parsed by clap from flags or environment variables.
//! - [`lifecycle`]: SIGTERM/SIGINT → health NOT_SERVING → drain delay → servers stop
//!   accepting and finish in-flight work → exit, bounded by a deadline.
//! - [`health`]: gRPC `grpc.health.v1` statuses and HTTP readiness from one switch.
//! - [`grpc`]: serve tonic routes with health, reflection, tracing, RED metrics and
//!   `x-served-by`; build instrumented client channels.
//! - [`http`]: serve an axum router with a header-read timeout and graceful drain.
//! - [`admin`]: the admin HTTP port: `/metrics`, `/healthz`, `/readyz`.
//! - [`postgres`]: per-service schema and role bootstrap, pools pinned to the
//!   service's schema, migrations under the migrator's advisory lock.
//! - [`server`]: one service process: listeners + health + lifecycle.
//! - [`retry`]: exponential backoff with jitter for startup dependencies.
//! - [`text`]: bounds on caller-chosen keys and identifiers.

pub mod admin;
pub mod config;
pub mod grpc;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod postgres;
pub mod ratelimit;
pub mod retry;
pub mod server;
pub mod text;
pub mod ws;

pub use telemetry::Identity;
