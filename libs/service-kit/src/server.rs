//! A service process: its listeners, health switch and lifecycle in one value, so
//! every service's `lib.rs` reads the same way:
//!
//! ```text
//! let server = Server::bind(Some((grpc_addr, &grpc)), metrics_addr, "order", &runtime, &[NAME], stop).await?;
//! // build state; spawn background work with server.spawn(..)
//! server.serve_grpc(routes, &[DESCRIPTORS], ready_future).await
//! ```

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::config::{GrpcArgs, RuntimeArgs};
use crate::health::{Health, HealthService};
use crate::lifecycle::Lifecycle;

/// Binds `addr`, naming it in the error (port in use is the usual cause).
pub async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what}); is the port in use?"))
}

pub struct Server {
    grpc: Option<TcpListener>,
    grpc_addr: Option<SocketAddr>,
    admin: TcpListener,
    admin_addr: SocketAddr,
    served_by: String,
    reflection: bool,
    health: Health,
    health_service: HealthService,
    lifecycle: Lifecycle,
}

impl Server {
    /// Binds the gRPC port (when `grpc` gives its address and settings) and the
    /// admin port, and sets up health (NOT_SERVING until [`Server::serve_grpc`]'s
    /// ready future resolves) and the shutdown sequence triggered by `stop`.
    pub async fn bind(
        grpc: Option<(&str, &GrpcArgs)>,
        admin_addr: &str,
        service: &str,
        runtime: &RuntimeArgs,
        grpc_services: &[&str],
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let reflection = grpc.is_some_and(|(_, args)| args.grpc_reflection);
        let grpc = match grpc {
            Some((addr, _)) => Some(bind(addr, "GRPC_ADDR").await?),
            None => None,
        };
        let admin = bind(admin_addr, "METRICS_ADDR").await?;
        let (health, health_service) = Health::new(grpc_services).await;
        telemetry::metrics::set_service_info(&runtime.identity(service));
        let lifecycle = Lifecycle::new(stop, health.clone(), runtime);
        Ok(Self {
            grpc_addr: grpc.as_ref().map(TcpListener::local_addr).transpose()?,
            grpc,
            admin_addr: admin.local_addr()?,
            admin,
            served_by: runtime.identity(service).served_by(),
            reflection,
            health,
            health_service,
            lifecycle,
        })
    }

    /// The bound gRPC address (port 0 resolved).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The bound admin address (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// `service/version/pod`.
    pub fn served_by(&self) -> &str {
        &self.served_by
    }

    /// Cancelled when servers stop accepting and streams and loops must end.
    pub fn draining(&self) -> CancellationToken {
        self.lifecycle.draining()
    }

    /// Cancelled as soon as shutdown is requested.
    pub fn stopping(&self) -> CancellationToken {
        self.lifecycle.stopping()
    }

    /// Runs a background task for the life of the process; an error stops it.
    pub fn spawn<F>(&mut self, name: &'static str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.lifecycle.spawn(name, fut);
    }

    /// Serves the admin port, and `routes` (+ health, reflection) on the gRPC port
    /// if one was bound; reports SERVING once `ready` resolves; returns after a
    /// graceful shutdown. The future is boxed: the server it owns is large, and
    /// callers would otherwise carry it inline in their own futures.
    pub fn serve_grpc<R>(
        mut self,
        routes: Option<Routes>,
        descriptors: &'static [&'static [u8]],
        ready: R,
    ) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
    where
        R: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Box::pin(async move {
            let draining = self.lifecycle.draining();
            self.lifecycle.spawn(
                "admin",
                crate::admin::serve(self.admin, self.health.clone(), draining.clone()),
            );
            if let Some(listener) = self.grpc {
                let routes = routes.unwrap_or_default();
                self.lifecycle.spawn(
                    "grpc",
                    crate::grpc::serve(
                        listener,
                        self.served_by.clone(),
                        routes,
                        self.health_service,
                        self.reflection.then_some(descriptors),
                        draining,
                    ),
                );
            }
            let health = self.health.clone();
            let stopping = self.lifecycle.stopping();
            self.lifecycle.spawn("startup", async move {
                tokio::select! {
                    result = ready => {
                        result?;
                        if !stopping.is_cancelled() {
                            health.set_serving().await;
                        }
                    }
                    _ = stopping.cancelled() => {}
                }
                Ok(())
            });
            self.lifecycle.finish().await
        })
    }
}
