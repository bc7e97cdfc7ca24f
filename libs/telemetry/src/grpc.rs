//! Tower layers for gRPC (tonic) servers and clients: a span per call with the remote
//! parent, RED metrics, header forwarding and the `x-served-by` chain.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounterVec;
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

/// The gRPC status these headers or trailers carry, if any.
fn status_in(headers: &HeaderMap) -> Option<&'static str> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(code_name(code))
}

/// A call to count in `grpc_{server,client}_handled_total` once its status is
/// known. A response whose headers carry it (trailers-only: an error before any
/// message) is counted at once; any other when its body ends, from the trailers,
/// so a stream that ends with an error counts as that error, not as OK.
struct Tally {
    handled: &'static IntCounterVec,
    service: String,
    method: String,
    /// The code of a body that fails (the server's `Unknown`; for a client,
    /// the connection broke: `Unavailable`).
    broken: &'static str,
}

impl Tally {
    fn count(self, code: &'static str) {
        self.handled
            .with_label_values(&[self.service.as_str(), self.method.as_str(), code])
            .inc();
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call ([`Tally`]) when it ends: with the
    /// trailers' status; `Unknown` when it ends without one; `Tally::broken`
    /// when it fails; `Canceled` when it is dropped before its end (the caller
    /// went away).
    pub struct Counted<B> {
        #[pin]
        inner: B,
        tally: Option<Tally>,
    }

    impl<B> PinnedDrop for Counted<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(tally) = this.project().tally.take() {
                tally.count("Canceled");
            }
        }
    }
}

impl<B> Counted<B> {
    /// Counts now if the headers carried the status (`known`), else at the end.
    fn new(inner: B, tally: Option<Tally>, known: Option<&'static str>) -> Self {
        let tally = match (tally, known) {
            (Some(tally), Some(code)) => {
                tally.count(code);
                None
            }
            (tally, _) => tally,
        };
        Self { inner, tally }
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| Ok(status_in(t).unwrap_or("Unknown"))),
            Poll::Ready(Some(Err(_))) => Some(Err(())),
            Poll::Ready(None) => Some(Ok("Unknown")),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(tally) = this.tally.take()
        {
            let code = code.unwrap_or(tally.broken);
            tally.count(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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
    type Response = Response<Counted<RB>>;
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
                // The span ends with the response's headers: a status that
                // comes later, in the trailers, is counted but not on it.
                let known = status_in(resp.headers());
                tracing::Span::current().record("rpc.grpc.status_code", known.unwrap_or("OK"));
                let tally = (!is_probe).then(|| {
                    GRPC_SERVER_SECONDS
                        .with_label_values(&[service.as_str(), method.as_str()])
                        .observe(started.elapsed().as_secs_f64());
                    Tally {
                        handled: &GRPC_SERVER_HANDLED,
                        service,
                        method,
                        broken: "Unknown",
                    }
                });
                if let Ok(v) = HeaderValue::from_str(&propagation::served_by_chain(&own, &scope)) {
                    resp.headers_mut().insert(propagation::SERVED_BY, v);
                }
                Ok(resp.map(|body| Counted::new(body, tally, known)))
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
    type Response = Response<Counted<RB>>;
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
                GRPC_CLIENT_SECONDS
                    .with_label_values(&[service.as_str(), method.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                let tally = Tally {
                    handled: &GRPC_CLIENT_HANDLED,
                    service,
                    method,
                    broken: "Unavailable",
                };
                let resp = match result {
                    Ok(resp) => resp,
                    Err(e) => {
                        tracing::Span::current().record("rpc.grpc.status_code", "Unavailable");
                        tally.count("Unavailable");
                        return Err(e);
                    }
                };
                propagation::record_served_by(resp.headers());
                let known = status_in(resp.headers());
                tracing::Span::current().record("rpc.grpc.status_code", known.unwrap_or("OK"));
                Ok(resp.map(|body| Counted::new(body, Some(tally), known)))
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use tower::ServiceExt;

    type Frames = StreamBody<
        futures_util::stream::Iter<
            std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>,
        >,
    >;

    /// A gRPC response: `status` in its headers (trailers-only), or a message
    /// then `status` in the trailers.
    fn response(trailers_only: Option<&str>, trailer: Option<&str>) -> Response<Frames> {
        let mut frames = vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))];
        if let Some(code) = trailer {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_str(code).unwrap());
            frames.push(Ok(Frame::trailers(t)));
        }
        let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
        if let Some(code) = trailers_only {
            resp.headers_mut()
                .insert("grpc-status", HeaderValue::from_str(code).unwrap());
        }
        resp
    }

    fn handled(counter: &IntCounterVec, service: &str, code: &str) -> u64 {
        counter.with_label_values(&[service, "Watch", code]).get()
    }

    async fn serve(service: &str, resp: Response<Frames>) -> Response<Counted<Frames>> {
        // The layer needs a Clone service; it is called once.
        let resp = std::sync::Arc::new(std::sync::Mutex::new(Some(resp)));
        let inner = tower::service_fn(move |_req: Request<()>| {
            let resp = resp.lock().unwrap().take().expect("called once");
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        let req = Request::builder()
            .uri(format!("http://x/{service}/Watch"))
            .body(())
            .unwrap();
        ServerLayer::new("test/v1/pod".into())
            .layer(inner)
            .oneshot(req)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_stream_that_ends_with_an_error_counts_as_that_error() {
        let svc = "t.Ends";
        let resp = serve(svc, response(None, Some("8"))).await;
        assert_eq!(
            handled(&GRPC_SERVER_HANDLED, svc, "OK"),
            0,
            "not known before the trailers"
        );
        resp.into_body().collect().await.unwrap();
        assert_eq!(handled(&GRPC_SERVER_HANDLED, svc, "ResourceExhausted"), 1);
        assert_eq!(handled(&GRPC_SERVER_HANDLED, svc, "OK"), 0);

        let svc = "t.Fine";
        serve(svc, response(None, Some("0")))
            .await
            .into_body()
            .collect()
            .await
            .unwrap();
        assert_eq!(handled(&GRPC_SERVER_HANDLED, svc, "OK"), 1);
    }

    #[tokio::test]
    async fn a_trailers_only_error_counts_at_once_and_a_dropped_stream_as_canceled() {
        let svc = "t.Early";
        let resp = serve(svc, response(Some("5"), None)).await;
        assert_eq!(handled(&GRPC_SERVER_HANDLED, svc, "NotFound"), 1);
        drop(resp);
        assert_eq!(
            handled(&GRPC_SERVER_HANDLED, svc, "Canceled"),
            0,
            "counted once"
        );

        let svc = "t.Gone";
        let mut body = serve(svc, response(None, Some("0"))).await.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(handled(&GRPC_SERVER_HANDLED, svc, "Canceled"), 1);
        assert_eq!(handled(&GRPC_SERVER_HANDLED, svc, "OK"), 0);
    }

    #[tokio::test]
    async fn the_client_counts_the_status_its_stream_ends_with() {
        let svc = "t.Client";
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(response(None, Some("14")))
        });
        let req = Request::builder()
            .uri(format!("http://x/{svc}/Watch"))
            .body(())
            .unwrap();
        let resp = ClientLayer.layer(inner).oneshot(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(handled(&GRPC_CLIENT_HANDLED, svc, "Unavailable"), 1);
        assert_eq!(handled(&GRPC_CLIENT_HANDLED, svc, "OK"), 0);
    }
}
