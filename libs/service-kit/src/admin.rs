//! The admin HTTP port (`METRICS_ADDR`): `/metrics` (Prometheus), `/healthz`
//! (liveness: the process answers), `/readyz` (readiness: 200 only while SERVING).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// The admin router.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics() -> Response {
    metrics_page(String::new())
}

/// The `/metrics` response: this process's registry, then `extra` (more series
/// in the Prometheus text format, for a server with an admin router of its own).
pub fn metrics_page(extra: String) -> Response {
    let mut page = telemetry::metrics::encode();
    page.push_str(&extra);
    (
        [(header::CONTENT_TYPE, telemetry::metrics::CONTENT_TYPE)],
        page,
    )
        .into_response()
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves the admin port until `draining` is cancelled. It stays up through the
/// drain delay so Prometheus and probes see the shutdown.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    draining: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(health))
        .with_graceful_shutdown(async move { draining.cancelled().await })
        .await?;
    Ok(())
}
