//! Telemetry for every exchange service.
//!
//! - **Logs**: one JSON object per line on stdout (for Loki), carrying the current
//!   `trace_id`/`span_id` so a log line leads to its trace in Jaeger.
//! - **Traces**: `tracing` spans bridged to OpenTelemetry. Spans are exported over
//!   OTLP/gRPC only when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise ids are still generated
//!   and propagated, nothing is exported.
//! - **Database spans**: one client span per SQL statement and Redis command
//!   ([`db`]), children of the operation that ran them.
//! - **Propagation**: W3C `traceparent` is extracted from and injected into every
//!   HTTP and gRPC hop; `x-request-id`, B3 and the routing headers Istio matches on
//!   (`x-canary`, `x-preview`) are forwarded unchanged ([`propagation`]).
//! - **Metrics**: Prometheus text from the process registry ([`metrics`]); RED metrics
//!   per RPC are recorded by [`grpc::ServerLayer`] and [`grpc::ClientLayer`].

pub mod db;
pub mod grpc;
mod logs;
pub mod metrics;
pub mod propagation;
#[cfg(test)]
mod testing;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Environment variables read by [`init`], listed in every binary's `--help`.
pub const ENV_HELP: &str = "\
Telemetry environment (read directly, standard OpenTelemetry names):
  RUST_LOG                              log filter [default: info]
  LOG_FORMAT                            json | text [default: json]
  OTEL_EXPORTER_OTLP_ENDPOINT           OTLP/gRPC collector, e.g. http://jaeger:4317 [default: unset = no export]
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT    overrides the endpoint for traces
  OTEL_SERVICE_NAME                     service.name resource attribute [default: the binary's name]
  OTEL_RESOURCE_ATTRIBUTES              extra resource attributes, k=v,k2=v2
  OTEL_TRACES_SAMPLER / _ARG            sampler, e.g. parentbased_traceidratio / 0.1 [default: parentbased_always_on]
  OTEL_SDK_DISABLED                     true disables export

Runtime environment:
  TOKIO_WORKER_THREADS                  async worker threads [default: the CPUs available, which in a
                                        container is its CPU limit rounded up]";

/// Who this process is: used for `service.*` resource attributes, the
/// `x-served-by` header and the `service_info` metric.
#[derive(Clone, Debug)]
pub struct Identity {
    pub service: String,
    pub version: String,
    pub pod: String,
}

impl Identity {
    /// `service/version/pod`, the value of `x-served-by`.
    pub fn served_by(&self) -> String {
        format!("{}/{}/{}", self.service, self.version, self.pod)
    }
}

/// Flushes exported spans when dropped or on [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Whether spans are being exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes pending spans (bounded) without blocking the async runtime.
    pub async fn shutdown(self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        })
        .await;
    }
}

/// Installs the global subscriber (logs + OpenTelemetry bridge), the W3C propagator
/// and the `service_info` metric. `env` looks up a variable (pass `std::env::var`
/// in binaries and a map in tests). Call once, inside a tokio runtime.
pub fn init(
    identity: &Identity,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    metrics::set_service_info(identity);

    let mut resource = Resource::builder().with_attributes([
        KeyValue::new("service.version", identity.version.clone()),
        KeyValue::new("service.instance.id", identity.pod.clone()),
    ]);
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(identity.service.clone());
    }

    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|e| !e.trim().is_empty() && !disabled);

    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if let Some(endpoint) = &endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(identity.service.clone());
    opentelemetry::global::set_tracer_provider(provider.clone());

    // RUST_LOG filters logs and spans; the SQL span layer reads sqlx's
    // statement events whatever it says (only while spans are exported).
    let filter = || {
        EnvFilter::try_new(env("RUST_LOG").unwrap_or_else(|| "info".into()))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter());
    let sql = db::SqlSpans::new(provider.tracer("sqlx"))
        .with_filter(db::SqlSpans::filter(endpoint.is_some()));
    let text = env("LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("text"));
    let registry = tracing_subscriber::registry().with(otel).with(sql);
    if text {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_filter(filter()),
            )
            .try_init()?;
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(logs::JsonWithTrace::new(identity.service.clone()))
                    .with_filter(filter()),
            )
            .try_init()?;
    }
    if let Some(endpoint) = &endpoint {
        tracing::info!(%endpoint, "exporting traces over OTLP/gRPC");
    }
    Ok(Telemetry {
        provider,
        exporting: endpoint.is_some(),
    })
}
