//! Tower layers for gRPC (tonic) servers and clients: a span per call with the remote
//! parent, RED metrics, header forwarding and the `x-served-by` chain.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{
    GRPC_CLIENT_HANDLED, GRPC_CLIENT_SECONDS, GRPC_SERVER_HANDLED, GRPC_SERVER_SECONDS,
};
use crate::propagation::{self, RequestScope};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((svc, method)) => (svc.to_owned(), method.to_owned()),
        None => (trimmed.to_owned(), String::new()),
    }
}

/// The gRPC status of a response whose headers carry it (trailers-only responses,
/// i.e. errors returned before any message); `OK` otherwise.
fn status_code<B>(resp: &Response<B>) -> &'static str {
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    code_name(code)
}

/// Canonical name of a gRPC status code number.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// Calls that last as long as a connection and trace each message they carry
/// themselves (a span per call would hold hours of work): market-data's
/// `Ingest`, which traces a sample of its batches.
pub const TRACED_PER_MESSAGE: &[&str] = &["/exchange.marketdata.v1.MarketDataService/Ingest"];

/// Server side: wrap a tonic server with `Server::builder().layer(ServerLayer::new(..))`.
#[derive(Clone)]
pub struct ServerLayer {
    served_by: String,
}

impl ServerLayer {
    /// `served_by` is this process's `service/version/pod`.
    pub fn new(served_by: String) -> Self {
        Self { served_by }
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = Server<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Server {
            inner,
            served_by: self.served_by.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Server<S> {
    inner: S,
    served_by: String,
}

impl<S, B, RB> Service<Request<B>> for Server<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Take the service that was driven to readiness; leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (service, method) = split_path(req.uri().path());
        let span = if TRACED_PER_MESSAGE.contains(&req.uri().path()) {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "grpc.server",
                otel.name = %req.uri().path().trim_start_matches('/'),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = tracing::field::Empty,
            )
        };
        let _ = span.set_parent(propagation::extract(req.headers()));
        for name in propagation::ROUTING_HEADERS {
            if let Some(value) = req.headers().get(*name).and_then(|v| v.to_str().ok()) {
                span.set_attribute(
                    format!("rpc.grpc.request.metadata.{name}"),
                    value.chars().take(64).collect::<String>(),
                );
            }
        }
        let scope = RequestScope::from_headers(req.headers());
        let own = self.served_by.clone();
        let started = Instant::now();
        // Health probes are frequent and uninteresting in traces and RED panels.
        let is_probe = service == "grpc.health.v1.Health";
        Box::pin(
            async move {
                let result = scope.clone().run(inner.call(req)).await;
                let mut resp = result?;
                let code = status_code(&resp);
                tracing::Span::current().record("rpc.grpc.status_code", code);
                if !is_probe {
                    GRPC_SERVER_HANDLED
                        .with_label_values(&[service.as_str(), method.as_str(), code])
                        .inc();
                    GRPC_SERVER_SECONDS
                        .with_label_values(&[service.as_str(), method.as_str()])
                        .observe(started.elapsed().as_secs_f64());
                }
                if let Ok(v) = HeaderValue::from_str(&propagation::served_by_chain(&own, &scope)) {
                    resp.headers_mut().insert(propagation::SERVED_BY, v);
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

/// Client side: wrap a tonic `Channel` with `ClientLayer.layer(channel)` (see
/// `service_kit::grpc::channel`).
#[derive(Clone, Copy, Default)]
pub struct ClientLayer;

impl<S> Layer<S> for ClientLayer {
    type Service = Client<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Client { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Client<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Client<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (service, method) = split_path(req.uri().path());
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %req.uri().path().trim_start_matches('/'),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        {
            let _entered = span.enter();
            propagation::inject_current(req.headers_mut());
        }
        let started = Instant::now();
        Box::pin(
            async move {
                let result = inner.call(req).await;
                let code = match &result {
                    Ok(resp) => {
                        propagation::record_served_by(resp.headers());
                        status_code(resp)
                    }
                    Err(_) => "Unavailable",
                };
                tracing::Span::current().record("rpc.grpc.status_code", code);
                GRPC_CLIENT_HANDLED
                    .with_label_values(&[service.as_str(), method.as_str(), code])
                    .inc();
                GRPC_CLIENT_SECONDS
                    .with_label_values(&[service.as_str(), method.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}
