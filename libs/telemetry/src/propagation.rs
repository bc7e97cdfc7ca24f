//! Context propagation across hops.
//!
//! A server layer extracts the W3C trace context from incoming headers and makes it
//! the parent of its span; a client layer injects the current span's context into
//! outgoing headers. Headers that Envoy/Istio use for tracing or routing and that we
//! do not interpret (`x-request-id`, B3, `x-canary`, `x-preview`, …) are copied from
//! the incoming request of the current task to every outgoing call it makes, so a
//! canary pin or a blue/green preview header holds for the whole call chain.
//!
//! The same task-local scope collects the `x-served-by` values of downstream
//! responses, so each hop can report the whole chain that served a request.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Headers forwarded verbatim from an incoming request to the calls it causes.
pub const FORWARDED_HEADERS: &[&str] = &[
    "x-request-id",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "x-canary",
    "x-preview",
];

/// The header naming which service/version/pod answered.
pub const SERVED_BY: &str = "x-served-by";

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The remote parent context carried by `headers` (empty when there is none).
pub fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes `cx` into `headers` (`traceparent`, `tracestate`).
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeaderInjector(headers))
    });
}

/// Writes the current span's context and the forwarded headers of the current
/// request scope into `headers`. Use for outgoing HTTP calls; gRPC clients get this
/// from [`crate::grpc::ClientLayer`].
pub fn inject_current(headers: &mut HeaderMap) {
    inject(&tracing::Span::current().context(), headers);
    forward_into(headers);
}

/// Per-request scope: the forwarded headers and the served-by chain.
#[derive(Clone, Default)]
pub struct RequestScope {
    forwarded: Arc<Vec<(HeaderName, HeaderValue)>>,
    served_by: Arc<Mutex<Vec<String>>>,
}

impl RequestScope {
    /// Captures the forwardable headers of an incoming request.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let forwarded = FORWARDED_HEADERS
            .iter()
            .filter_map(|name| {
                let value = headers.get(*name)?;
                Some((HeaderName::from_static(name), value.clone()))
            })
            .collect();
        Self {
            forwarded: Arc::new(forwarded),
            served_by: Arc::default(),
        }
    }

    /// Downstream `x-served-by` values recorded so far, in call order.
    pub fn downstream(&self) -> Vec<String> {
        self.served_by.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Runs `fut` with this scope current.
    pub async fn run<F: Future>(self, fut: F) -> F::Output {
        SCOPE.scope(self, fut).await
    }
}

tokio::task_local! {
    static SCOPE: RequestScope;
}

fn forward_into(headers: &mut HeaderMap) {
    let _ = SCOPE.try_with(|scope| {
        for (name, value) in scope.forwarded.iter() {
            headers.entry(name.clone()).or_insert_with(|| value.clone());
        }
    });
}

/// Records a downstream `x-served-by` value in the current request scope.
pub fn record_served_by(headers: &HeaderMap) {
    if let Some(value) = headers.get(SERVED_BY).and_then(|v| v.to_str().ok()) {
        let _ = SCOPE.try_with(|scope| {
            if let Ok(mut chain) = scope.served_by.lock() {
                for part in value.split(',') {
                    let part = part.trim();
                    if !part.is_empty() && !chain.iter().any(|p| p == part) {
                        chain.push(part.to_owned());
                    }
                }
            }
        });
    }
}

/// `own` followed by the downstream chain of the current scope, comma separated.
pub fn served_by_chain(own: &str, scope: &RequestScope) -> String {
    let mut parts = vec![own.to_owned()];
    parts.extend(scope.downstream());
    parts.join(", ")
}
