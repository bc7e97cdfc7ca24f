//! Per-request telemetry for the HTTP API: a server span that links the
//! caller's `traceparent` (or continues it, with `TRUST_TRACEPARENT`), RED metrics by route template, forwarded headers for
//! the gRPC calls the request makes, and `x-served-by` naming this gateway
//! followed by every service that answered those calls.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use telemetry::metrics::{HTTP_REQUESTS, HTTP_SECONDS};
use telemetry::propagation::{self, RequestScope};
use tracing::Instrument;

use crate::state::Shared;

pub async fn observe(
    State(gw): State<Shared>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = matched
        .as_ref()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    if !req.headers().contains_key("x-request-id")
        && let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
    {
        req.headers_mut().insert("x-request-id", v);
    }
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    propagation::join_caller_trace(&span, req.headers(), gw.trust_traceparent);
    let scope = RequestScope::from_headers(req.headers());
    let started = Instant::now();
    let mut resp = scope
        .clone()
        .run(next.run(req))
        .instrument(span.clone())
        .await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    log_request(&span, &method, &route, status, started.elapsed());
    HTTP_REQUESTS
        .with_label_values(&[method.as_str(), route.as_str(), &status.to_string()])
        .inc();
    HTTP_SECONDS
        .with_label_values(&[method.as_str(), route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&propagation::served_by_chain(&gw.served_by, &scope)) {
        resp.headers_mut().insert(propagation::SERVED_BY, v);
    }
    resp
}

/// A request slower than this is logged.
const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_secs(1);

/// One log line, in the request's span (so with its `trace_id`), for each
/// request that failed (warn), was slow (info) or was refused (4xx: debug,
/// since a client sending garbage must not flood the logs).
fn log_request(
    span: &tracing::Span,
    method: &str,
    route: &str,
    status: u16,
    elapsed: std::time::Duration,
) {
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let _in = span.enter();
    if status >= 500 {
        tracing::warn!(method, route, status, ms, "request failed");
    } else if elapsed >= SLOW_REQUEST {
        tracing::info!(method, route, status, ms, "slow request");
    } else if status >= 400 {
        tracing::debug!(method, route, status, ms, "request refused");
    }
}
