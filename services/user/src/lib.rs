//! User service: registration, argon2 password login, access and refresh tokens,
//! Upbit-style API keys and credential verification over gRPC
//! (`exchange.user.v1.UserService`). Owns Postgres schema `users`; calls inventory
//! to open each new user's paper account.

pub mod config;
mod error;
mod grpc;
pub mod jwt;
mod service;
/// SQL (public for the tests' inspection of what is stored).
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;

use exchange_proto::user::v1::user_service_server::{SERVICE_NAME, UserServiceServer};
use service_kit::postgres::PgConfig;
use service_kit::server::Server;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use config::Config;

/// Schema (and default role) owned by this service.
pub const SCHEMA: &str = "users";

/// `user retention`: one pass of the housekeeping that forgets dead nonces,
/// refresh tokens and sessions (for a CronJob, or by hand).
pub async fn retention(config: &Config) -> anyhow::Result<store::Forgotten> {
    let pool = config.db.pg_config(SCHEMA).lazy_pool()?;
    let forgotten = store::forget_dead_records(&pool, config.access_token_ttl).await;
    pool.close().await;
    Ok(forgotten?)
}

/// A built service, listening, not yet serving.
pub struct App {
    server: Server,
    pg: PgConfig,
    pool: sqlx::PgPool,
    config: Config,
    keys: service::Keys,
}

impl App {
    /// Binds the ports (port 0 allowed) and prepares the lazy database pool.
    /// Refuses to start without its secrets (a random key per process would
    /// make tokens and API keys work on one replica only, and die on restart).
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        let keys = service::Keys {
            jwt: service::required_key(config.jwt_secret.as_deref(), "JWT_SECRET")?,
            api_key: service::ApiKeySecrets::new(
                service::required_key(config.api_key_secret.as_deref(), "API_KEY_SECRET")?,
                config.api_key_secret_version,
                config.api_key_retired_secrets.as_deref(),
            )?,
        };
        let server = Server::bind(
            Some((&config.grpc_addr, &config.grpc)),
            &config.metrics_addr,
            "user",
            &config.runtime,
            &[SERVICE_NAME],
            stop,
        )
        .await?;
        let pg = config.db.pg_config(SCHEMA);
        let pool = pg.lazy_pool()?;
        Ok(Self {
            server,
            pg,
            pool,
            config,
            keys,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.server.grpc_addr().expect("user binds a gRPC port")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// Serves until the stop token is cancelled and the drain completes.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let stopping = self.server.stopping();
        let (pg, pool) = (self.pg, self.pool.clone());
        let ready = async move {
            pg.prepare(&pool, sqlx::migrate!("./migrations"), &stopping)
                .await
        };
        let inventory =
            InventoryServiceClient::new(service_kit::grpc::channel(&self.config.inventory_url)?);
        let concurrency = match self.config.hash_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let users = Arc::new(service::Users::new(
            self.pool,
            service::Hasher::new(concurrency, self.config.hash_wait),
            inventory,
            self.keys,
            service::Lifetimes {
                access_token: self.config.access_token_ttl,
                refresh_token: self.config.refresh_token_ttl,
                api_key: self.config.api_key_lifetime,
            },
        ));
        let (housekeeper, draining) = (users.clone(), self.server.draining());
        self.server.spawn("housekeeping", async move {
            housekeeper.housekeeping(draining).await
        });
        let routes = Routes::new(UserServiceServer::new(grpc::User::new(users)));
        self.server
            .serve_grpc(Some(routes), DESCRIPTORS, ready)
            .await
    }
}

const DESCRIPTORS: &[&[u8]] = &[exchange_proto::user::v1::FILE_DESCRIPTOR_SET];
