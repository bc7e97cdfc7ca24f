//! Serving and calling gRPC the same way in every service.

use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tower::Layer;

use crate::health::HealthService;

/// An instrumented client channel: a span per call, `traceparent` and forwarded
/// headers injected, `x-served-by` collected, client RED metrics.
pub type Channel = telemetry::grpc::Client<tonic::transport::Channel>;

/// A lazily connecting channel to `url` (e.g. `http://127.0.0.1:50053`); calls
/// fail with UNAVAILABLE while the peer is down and succeed once it is back.
///
/// `url` may list several peers separated by commas (two versions of a
/// service side by side, the local stand-in for a mesh's traffic split): calls
/// are then spread over those that answer, and wait (up to the call timeout)
/// while none does.
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    connect(url, |e| e.timeout(CALL_TIMEOUT))
}

/// How long a call may take to be answered (its response headers: a server
/// stream's messages may flow for as long as they like after that).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A channel without the call timeout, for client streams (whose answer comes
/// only when the stream ends, e.g. market-data's `Ingest`).
pub fn streaming_channel(url: &str) -> anyhow::Result<Channel> {
    connect(url, |e| e)
}

fn connect(url: &str, configure: impl Fn(Endpoint) -> Endpoint) -> anyhow::Result<Channel> {
    let endpoints = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| endpoint(u).map(&configure))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let channel = match <[Endpoint; 1]>::try_from(endpoints) {
        Ok([one]) => one.connect_lazy(),
        Err(many) if many.is_empty() => anyhow::bail!("no gRPC URL given"),
        Err(many) => tonic::transport::Channel::balance_list(many.into_iter()),
    };
    Ok(telemetry::grpc::ClientLayer.layer(channel))
}

fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid gRPC URL `{url}`"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Serves `routes` plus gRPC health and, when `reflection` names the encoded
/// file descriptor sets, server reflection, on `listener` until `draining` is
/// cancelled; then stops accepting and waits for open calls (bounded by the
/// lifecycle's deadline).
pub async fn serve(
    listener: TcpListener,
    served_by: String,
    routes: Routes,
    health: HealthService,
    reflection: Option<&[&'static [u8]]>,
    draining: CancellationToken,
) -> anyhow::Result<()> {
    let mut routes = routes.add_service(health);
    if let Some(descriptors) = reflection {
        // Both reflection versions: grpcurl < 1.9 and many tools speak only v1alpha.
        let builder = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            for descriptor in descriptors {
                builder = builder.register_encoded_file_descriptor_set(descriptor);
            }
            builder
        };
        routes = routes
            .add_service(builder().build_v1()?)
            .add_service(builder().build_v1alpha()?);
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(telemetry::grpc::ServerLayer::new(served_by))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, draining.cancelled_owned())
        .await
        .context("gRPC server failed")
}

/// Metadata key naming an error for clients (Upbit's error `name`, e.g.
/// `insufficient_funds_bid`); the gateway passes it through.
pub const ERROR_NAME: &str = "x-error-name";

/// Longest status message sent, in bytes. Messages may quote a caller's input,
/// and the message travels in an HTTP/2 header: an unbounded one would make the
/// whole answer too big for the peer and turn a 4xx into a transport error.
pub const MAX_MESSAGE: usize = 256;

/// `message` cut to [`MAX_MESSAGE`] bytes (at a character boundary, marked by
/// an ellipsis).
pub fn bounded(message: impl Into<String>) -> String {
    let mut message = message.into();
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// A status whose client-facing name travels in `x-error-name`; its message
/// is [`bounded`].
pub fn named_status(code: tonic::Code, name: &str, message: impl Into<String>) -> tonic::Status {
    let mut status = tonic::Status::new(code, bounded(message));
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(name) {
        status.metadata_mut().insert(ERROR_NAME, v);
    }
    status
}

/// The `x-error-name` of a status, if any.
pub fn error_name(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(ERROR_NAME)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let exact = "x".repeat(MAX_MESSAGE);
        assert_eq!(bounded(exact.clone()), exact);
        let long = format!("`{}` is not a currency", "가".repeat(10_000));
        let cut = bounded(long);
        assert!(cut.len() <= MAX_MESSAGE, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("`가가"));
        let status = named_status(
            tonic::Code::InvalidArgument,
            "validation_error",
            "y".repeat(50_000),
        );
        assert!(status.message().len() <= MAX_MESSAGE);
        assert_eq!(error_name(&status), Some("validation_error"));
    }
}
