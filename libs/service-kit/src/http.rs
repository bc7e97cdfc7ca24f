//! Serving an axum router to the internet: `axum::serve` with the bounds it
//! does not have. A client gets [`Limits::header_read`] to send a request's
//! headers (a slow-loris client that drips them holds a connection for that
//! long, never forever), and each connection is served with upgrades
//! (WebSocket) and the peer's address as `ConnectInfo<SocketAddr>`. On
//! shutdown the listener closes, idle connections close, and requests in
//! flight finish.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Per-connection bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to send a request's headers (HTTP/1). hyper starts the clock when
    /// the connection starts waiting for a request, so an idle kept-alive
    /// connection is closed after this long too.
    pub header_read: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let app = app.clone();
                async move {
                    Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|e| match e {}))
                }
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a timeout, bad HTTP).
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(
        header_read: Duration,
    ) -> (
        SocketAddr,
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let cancelled = stop.clone();
        let task = tokio::spawn(serve(listener, app, Limits { header_read }, async move {
            cancelled.cancelled().await
        }));
        (addr, stop, task)
    }

    async fn answer(stream: &mut TcpStream) -> String {
        let mut buf = vec![0; 4096];
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"127.0.0.1") {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn a_client_dripping_its_headers_is_cut_off_while_others_are_served() {
        let (addr, stop, task) = start(Duration::from_millis(500)).await;
        // One byte of headers every 100 ms: never a whole request in time.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        let request = b"GET /peer HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut cut = false;
        for byte in request {
            if slow.write_all(&[*byte]).await.is_err() {
                cut = true;
                break;
            }
            // Meanwhile a normal client is answered, with its address.
            if started.elapsed() < Duration::from_millis(150) {
                let mut quick = TcpStream::connect(addr).await.unwrap();
                quick
                    .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let got = answer(&mut quick).await;
                assert!(
                    got.starts_with("HTTP/1.1 200") && got.ends_with("127.0.0.1"),
                    "{got}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !cut {
            // The server closed its side; reading shows it.
            let mut rest = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(2), slow.read_to_end(&mut rest)).await;
            assert!(read.is_ok(), "the connection is still open");
            let rest = String::from_utf8_lossy(&rest);
            assert!(
                !rest.starts_with("HTTP/1.1 200"),
                "answered a request that took too long: {rest}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cut off after {:?}",
            started.elapsed()
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_within_the_bound_is_served_and_shutdown_closes_the_listener() {
        let (addr, stop, task) = start(Duration::from_secs(5)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(answer(&mut client).await.starts_with("HTTP/1.1 200"));
        drop(client);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
