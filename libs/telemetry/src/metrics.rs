//! Prometheus metrics in the process-wide registry.
//!
//! Services define their business metrics with the `prometheus` crate's `register_*`
//! macros (which use the same default registry) and the admin HTTP port serves
//! [`encode`]. RED metrics for RPCs and HTTP routes live here so every service names
//! them the same way (Grafana dashboards depend on these names).

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, TextEncoder,
};

use crate::Identity;

/// Latency buckets (seconds) for request durations: 0.5 ms .. 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers `metric` in the process-wide registry and returns it: for a
/// service's `static X: LazyLock<_> = LazyLock::new(|| register(...))`. Each is
/// registered once (a `LazyLock`); a second registration of a name is a bug.
pub fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    prometheus::register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"))
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register(
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )
        .expect("valid metric definition"),
    )
}

/// `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}`
pub static GRPC_SERVER_HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "grpc_server_handled_total",
        "gRPC requests completed by this server, by method and status code.",
        &["grpc_service", "grpc_method", "grpc_code"],
    )
});

/// `grpc_server_handling_seconds{grpc_service, grpc_method}`
pub static GRPC_SERVER_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "grpc_server_handling_seconds",
        "Time to the response headers of gRPC requests served (whole call for unary).",
        &["grpc_service", "grpc_method"],
    )
});

/// `grpc_client_handled_total{grpc_service, grpc_method, grpc_code}`
pub static GRPC_CLIENT_HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "grpc_client_handled_total",
        "gRPC calls made by this process, by method and status code.",
        &["grpc_service", "grpc_method", "grpc_code"],
    )
});

/// `grpc_client_handling_seconds{grpc_service, grpc_method}`
pub static GRPC_CLIENT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "grpc_client_handling_seconds",
        "Time to the response headers of gRPC calls made by this process.",
        &["grpc_service", "grpc_method"],
    )
});

/// `http_requests_total{method, route, status}`
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "http_requests_total",
        "HTTP requests served, by route template and status.",
        &["method", "route", "status"],
    )
});

/// `http_request_duration_seconds{method, route}`
pub static HTTP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "http_request_duration_seconds",
        "HTTP request latency to the response headers, by route template.",
        &["method", "route"],
    )
});

static SERVICE_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let g = IntGaugeVec::new(
        Opts::new("service_info", "Always 1; labels name this process."),
        &["service", "version", "pod"],
    )
    .expect("valid metric definition");
    prometheus::register(Box::new(g.clone())).expect("metric registered once");
    g
});

/// Sets `service_info{service,version,pod} 1`.
pub fn set_service_info(identity: &Identity) {
    SERVICE_INFO
        .with_label_values(&[&identity.service, &identity.version, &identity.pod])
        .set(1);
}

/// The whole registry in the Prometheus text exposition format.
pub fn encode() -> String {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    // Encoding our own well-formed families cannot fail.
    let _ = encoder.encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";
