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
/// The forwarded headers the mesh routes on (to a canary, to a preview). Every
/// server span records them (`rpc.grpc.request.metadata.<name>`), so a trace
/// shows which calls were pinned and whether the pin reached every hop.
pub const ROUTING_HEADERS: &[&str] = &["x-canary", "x-preview"];

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

/// Joins `span` (not yet entered) to the trace of the caller's `traceparent`.
///
/// From a trusted hop (another service of ours) the caller's context becomes
/// the parent. From the internet it must not: a client would choose trace ids
/// (splicing its requests into other traces) and the sampled flag (a parent-based
/// sampler then records every request it sends, whatever the ratio). Untrusted,
/// `span` starts a trace of its own, sampled by our sampler, and links the
/// caller's context so a client's trace can still be found from it.
pub fn join_caller_trace(span: &tracing::Span, headers: &HeaderMap, trust: bool) {
    let remote = extract(headers);
    if trust {
        let _ = span.set_parent(remote);
        return;
    }
    use opentelemetry::trace::TraceContextExt as _;
    let caller = remote.span().span_context().clone();
    if caller.is_valid() {
        span.add_link(caller);
    }
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

    /// Whether the request carries a routing header (`x-canary`,
    /// `x-preview`): it is meant for particular versions downstream.
    pub fn routed(&self) -> bool {
        self.forwarded
            .iter()
            .any(|(name, _)| ROUTING_HEADERS.contains(&name.as_str()))
    }

    /// This scope's routing headers alone (no request id, no trace
    /// headers): the scope of work shared by every request routed alike, such
    /// as one upstream stream serving many WebSocket sessions.
    pub fn routing_only(&self) -> Self {
        let forwarded = self
            .forwarded
            .iter()
            .filter(|(name, _)| ROUTING_HEADERS.contains(&name.as_str()))
            .cloned()
            .collect();
        Self {
            forwarded: Arc::new(forwarded),
            served_by: Arc::default(),
        }
    }

    /// The routing headers as one text (empty when none): requests with equal
    /// texts are routed to the same versions downstream.
    pub fn routing_key(&self) -> String {
        let mut key = String::new();
        for (name, value) in self.forwarded.iter() {
            if ROUTING_HEADERS.contains(&name.as_str()) {
                key.push_str(name.as_str());
                key.push('=');
                key.push_str(&String::from_utf8_lossy(value.as_bytes()));
                key.push('\n');
            }
        }
        key
    }

    /// Runs `fut` with this scope current.
    pub async fn run<F: Future>(self, fut: F) -> F::Output {
        SCOPE.scope(self, fut).await
    }

    /// The scope of the request being served (an empty one outside any), to
    /// carry into work that outlives it, such as a WebSocket's streams.
    pub fn current() -> Self {
        SCOPE.try_with(Clone::clone).unwrap_or_default()
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
        record_served_by_value(value);
    }
}

/// Records `value` (an `x-served-by` chain) in the current request scope, for
/// an answer made from what a service sent earlier (a followed stream).
pub fn record_served_by_value(value: &str) {
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

/// `own` followed by the downstream chain of the current scope, comma separated.
pub fn served_by_chain(own: &str, scope: &RequestScope) -> String {
    let mut parts = vec![own.to_owned()];
    parts.extend(scope.downstream());
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::testing::Collected;

    #[test]
    fn routing_headers_alone_key_and_scope_shared_work() {
        let mut canary = HeaderMap::new();
        canary.insert("x-canary", HeaderValue::from_static("1"));
        canary.insert("x-request-id", HeaderValue::from_static("first"));
        let mut other = canary.clone();
        other.insert("x-request-id", HeaderValue::from_static("second"));
        let (a, b) = (
            RequestScope::from_headers(&canary),
            RequestScope::from_headers(&other),
        );
        assert_eq!(a.routing_key(), b.routing_key(), "request ids do not count");
        assert_ne!(a.routing_key(), RequestScope::default().routing_key());
        let shared = a.routing_only();
        assert!(shared.routed());
        assert!(
            shared
                .forwarded
                .iter()
                .all(|(n, _)| n.as_str() != "x-request-id"),
            "one request's id is not carried into shared work"
        );
        assert_eq!(RequestScope::default().routing_key(), "");
    }

    /// The span a server records for a request carrying `traceparent`, if
    /// sampled (every root span is, with the default sampler).
    fn served(traceparent: &str, trust: bool) -> Option<SpanData> {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let spans = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", HeaderValue::from_str(traceparent).unwrap());
            let span = tracing::info_span!("http.server");
            join_caller_trace(&span, &headers, trust);
            span.in_scope(|| tracing::info!("handled"));
        });
        let _ = provider.shutdown();
        spans.0.lock().unwrap().pop()
    }

    #[test]
    fn an_untrusted_callers_trace_is_linked_not_adopted() {
        let id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

        let trusted = served(sampled, true).expect("sampled");
        assert_eq!(trusted.span_context.trace_id(), id);
        assert_eq!(
            trusted.parent_span_id,
            SpanId::from_hex("b7ad6b7169203331").unwrap()
        );
        assert!(
            served(unsampled, true).is_none(),
            "a trusted caller's sampling decision holds"
        );

        let untrusted = served(sampled, false).expect("sampled by our sampler");
        assert_ne!(untrusted.span_context.trace_id(), id, "a trace of its own");
        assert_eq!(untrusted.parent_span_id, SpanId::INVALID);
        assert_eq!(
            untrusted
                .links
                .iter()
                .map(|l| l.span_context.trace_id())
                .collect::<Vec<_>>(),
            vec![id],
            "the caller's trace is linked"
        );
        assert!(
            served(unsampled, false).is_some(),
            "the caller's flag does not decide what we record"
        );
    }
}
