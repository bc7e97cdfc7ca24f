//! One readiness switch behind both probes: gRPC `grpc.health.v1.Health` (per
//! service and the overall "" entry) and the admin port's `/readyz`.
//!
//! Liveness is separate: the gRPC entry [`LIVENESS`] answers SERVING for as long
//! as the server runs, whatever the dependencies (a Kubernetes gRPC liveness
//! probe asks for it, so a database outage makes pods unready, never restarted).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The grpc.health.v1 service name that is SERVING while the process serves.
pub const LIVENESS: &str = "liveness";

/// The health service to add to a gRPC server.
pub type HealthService =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

/// Readiness of this process. Starts NOT_SERVING; the service flips it once its
/// dependencies are ready, and [`crate::lifecycle`] flips it back on shutdown.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<Vec<String>>,
    ready: Arc<AtomicBool>,
}

impl Health {
    /// A health switch for the named gRPC services (their fully qualified names,
    /// e.g. `exchange.order.v1.OrderService`), and the gRPC service to serve it.
    pub async fn new(services: &[&str]) -> (Self, HealthService) {
        let reporter = HealthReporter::new();
        let svc = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        );
        let health = Self {
            reporter,
            services: Arc::new(services.iter().map(|s| (*s).to_owned()).collect()),
            ready: Arc::new(AtomicBool::new(false)),
        };
        health.set(ServingStatus::NotServing).await;
        health
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        (health, svc)
    }

    async fn set(&self, status: ServingStatus) {
        self.ready
            .store(status == ServingStatus::Serving, Ordering::SeqCst);
        self.reporter.set_service_status("", status).await;
        for name in self.services.iter() {
            self.reporter.set_service_status(name, status).await;
        }
    }

    pub async fn set_serving(&self) {
        if !self.is_ready() {
            tracing::info!("ready: SERVING");
        }
        self.set(ServingStatus::Serving).await;
    }

    pub async fn set_not_serving(&self) {
        if self.is_ready() {
            tracing::info!("not ready: NOT_SERVING");
        }
        self.set(ServingStatus::NotServing).await;
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}
