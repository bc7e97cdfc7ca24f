//! The whole exchange for one run: its Postgres and Redis, and the seven
//! services, started in dependency order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::cluster::{Postgres, Redis, Service, free_port};

/// The markets the simulator trades and the users trade in.
pub const MARKETS: [&str; 3] = ["KRW-BTC", "KRW-ETH", "KRW-XRP"];

/// The services, in the order they start (each depends only on earlier ones).
pub const SERVICES: [&str; 7] = [
    "upbit-sim",
    "market-data",
    "inventory",
    "user",
    "order",
    "ingestor",
    "gateway",
];

pub struct Exchange {
    pub dir: PathBuf,
    pub postgres: Postgres,
    pub redis: Redis,
    pub services: Vec<Service>,
    pub gateway: String,
    /// The simulator's admin port (its controls).
    pub sim: String,
    pub database: String,
    pub http: reqwest::Client,
}

/// Settings of a run that the services see.
pub struct Settings {
    /// Simulator messages per second.
    pub sim_rate: u32,
    /// More environment for every service (e.g. `OTEL_*`), over the run's own.
    pub env: Vec<(String, String)>,
}

impl Exchange {
    pub async fn start(dir: &Path, bin: &Path, settings: &Settings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let postgres = Postgres::start(dir, free_port()?).context("starting Postgres")?;
        let redis = Redis::start(dir, free_port()?)?;
        redis.wait_ready(Duration::from_secs(10)).await?;
        let admin = postgres.admin_url("postgres");
        let mut conn = {
            use sqlx::Connection;
            sqlx::PgConnection::connect(&admin).await?
        };
        sqlx::query("CREATE DATABASE exchange")
            .execute(&mut conn)
            .await?;
        let database = postgres.admin_url("exchange");
        let role = |r: &str| format!("postgres://{r}:{r}@127.0.0.1:{}/exchange", postgres.port);

        let port = free_port;
        let (sim, sim_admin) = (port()?, port()?);
        let (md, md_admin) = (port()?, port()?);
        let (inv, inv_admin) = (port()?, port()?);
        let (usr, usr_admin) = (port()?, port()?);
        let (ord, ord_admin) = (port()?, port()?);
        let (ing, ing_admin) = (port()?, port()?);
        let (gw, gw_admin) = (port()?, port()?);
        let local = |p: u16| format!("127.0.0.1:{p}");
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let common = |grpc: u16, admin: u16| {
            vec![
                ("GRPC_ADDR", local(grpc)),
                ("METRICS_ADDR", local(admin)),
                ("RUST_LOG", "info".to_owned()),
            ]
        };
        let with = |mut base: Vec<(&'static str, String)>, more: Vec<(&'static str, String)>| {
            base.extend(more);
            base
        };
        let services = vec![
            Service::new(
                "upbit-sim",
                bin,
                dir,
                sim_admin,
                &[
                    ("HTTP_ADDR", local(sim)),
                    ("METRICS_ADDR", local(sim_admin)),
                    ("SIM_MARKETS", MARKETS.join(",")),
                    ("SIM_RATE", settings.sim_rate.to_string()),
                    ("SIM_CONNECT_LIMIT", "0".into()),
                    ("SIM_REST_LIMIT", "0".into()),
                ],
            ),
            Service::new(
                "market-data",
                bin,
                dir,
                md_admin,
                &with(
                    common(md, md_admin),
                    vec![
                        ("DATABASE_URL", role("market_data")),
                        ("DATABASE_ADMIN_URL", database.clone()),
                        ("REDIS_URL", redis.url()),
                    ],
                ),
            ),
            Service::new(
                "inventory",
                bin,
                dir,
                inv_admin,
                &with(
                    common(inv, inv_admin),
                    vec![
                        ("DATABASE_URL", role("inventory")),
                        ("DATABASE_ADMIN_URL", database.clone()),
                    ],
                ),
            ),
            Service::new(
                "user",
                bin,
                dir,
                usr_admin,
                &with(
                    common(usr, usr_admin),
                    vec![
                        ("DATABASE_URL", role("users")),
                        ("DATABASE_ADMIN_URL", database.clone()),
                        ("INVENTORY_URL", url(inv)),
                        ("JWT_SECRET", "chaos-jwt-secret".into()),
                        ("API_KEY_SECRET", "chaos-api-key-secret".into()),
                    ],
                ),
            ),
            Service::new(
                "order",
                bin,
                dir,
                ord_admin,
                &with(
                    common(ord, ord_admin),
                    vec![
                        ("DATABASE_URL", role("orders")),
                        ("DATABASE_ADMIN_URL", database.clone()),
                        ("INVENTORY_URL", url(inv)),
                        ("MARKET_DATA_URL", url(md)),
                        // Recovery keeps up with the faults of a short run.
                        ("RECOVERY_INTERVAL", "1s".into()),
                        ("RECOVERY_MIN_AGE", "2s".into()),
                        ("PLAN_TTL", "3s".into()),
                        ("PENDING_GIVE_UP", "60s".into()),
                    ],
                ),
            ),
            Service::new(
                "ingestor",
                bin,
                dir,
                ing_admin,
                &with(
                    common(ing, ing_admin),
                    vec![
                        ("MARKET_DATA_URL", url(md)),
                        ("UPBIT_WS_URL", format!("ws://127.0.0.1:{sim}/websocket/v1")),
                        ("UPBIT_REST_URL", url(sim)),
                        ("STALE_AFTER", "5s".into()),
                        ("MAX_CONNECTS_PER_SEC", "20".into()),
                    ],
                ),
            ),
            Service::new(
                "gateway",
                bin,
                dir,
                gw_admin,
                &[
                    ("HTTP_ADDR", local(gw)),
                    ("METRICS_ADDR", local(gw_admin)),
                    ("RUST_LOG", "info".into()),
                    ("MARKET_DATA_URL", url(md)),
                    ("ORDER_URL", url(ord)),
                    ("INVENTORY_URL", url(inv)),
                    ("USER_URL", url(usr)),
                    ("REDIS_URL", redis.url()),
                    // This run is about money, not about limits.
                    ("RATE_LIMIT_QUOTATION", "0".into()),
                    ("RATE_LIMIT_DEFAULT", "0".into()),
                    ("RATE_LIMIT_ORDER", "0".into()),
                    ("RATE_LIMIT_SIGNUP", "0".into()),
                    ("RATE_LIMIT_IP", "0".into()),
                    ("RATE_LIMIT_AUTH", "0".into()),
                    ("LOGIN_FAILURES", "0".into()),
                ],
            ),
        ];
        let mut services = services;
        for svc in &mut services {
            for (key, value) in &settings.env {
                svc.set_env(key, Some(value.clone()));
            }
        }
        let mut exchange = Self {
            dir: dir.to_owned(),
            postgres,
            redis,
            services,
            gateway: url(gw),
            sim: url(sim_admin),
            database,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        for name in SERVICES {
            let http = exchange.http.clone();
            let svc = exchange.service(name);
            svc.start()?;
            svc.wait_ready(&http, Duration::from_secs(120)).await?;
        }
        Ok(exchange)
    }

    pub fn service(&mut self, name: &str) -> &mut Service {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .expect("a known service")
    }

    /// Starts every service that is not running and waits until all are ready.
    pub async fn heal(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = self.http.clone();
        for svc in &mut self.services {
            if !svc.running() {
                svc.start()?;
            }
        }
        for svc in &mut self.services {
            svc.wait_ready(&http, timeout).await?;
        }
        Ok(())
    }

    /// Stops every service (SIGTERM, then SIGKILL after a grace period), then
    /// Redis and Postgres.
    pub async fn stop(&mut self) {
        for svc in &mut self.services {
            let _ = svc.signal("TERM");
        }
        for svc in self.services.iter_mut().rev() {
            let _ = svc.wait_exit(Duration::from_secs(20)).await;
        }
        self.redis.stop().await;
        tokio::task::block_in_place(|| self.postgres.stop());
    }

    /// POSTs to the simulator's controls.
    pub async fn sim(&self, path: &str) -> anyhow::Result<()> {
        let resp = self.http.post(format!("{}{path}", self.sim)).send().await?;
        anyhow::ensure!(resp.status().is_success(), "sim {path}: {}", resp.status());
        Ok(())
    }
}
