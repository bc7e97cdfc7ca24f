//! upbit-sim: a simulated Upbit exchange for offline runs, tests and benchmarks.
//!
//! Serves Upbit's public WebSocket protocol at `/websocket/v1` and the REST
//! quotation subset under `/v1/*` over a set of random-walk markets (seeded), a
//! JSONL replay, or trades injected through `/sim/trade`; fault switches drop,
//! stall or corrupt the feed on demand (`/sim/*`, see [`admin`]).

pub mod admin;
pub mod config;
pub mod engine;
pub mod feed;
pub mod markets;
pub mod rest;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Shared by every handler.
pub struct AppState {
    pub sim: Arc<feed::Sim>,
    pub connects: service_kit::ratelimit::PerSecond<std::net::IpAddr>,
    pub rest_limit: rest::RestLimiter,
    pub idle_timeout: Duration,
    pub stop: CancellationToken,
}

pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    metrics: TcpListener,
    metrics_addr: SocketAddr,
    config: Config,
    state: Arc<AppState>,
}

/// The feed's HTTP router (WebSocket, REST). The controls (`/sim/*`) are on
/// the admin port only (see [`admin`]): whoever reaches the feed must not be
/// able to set its prices.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/websocket/v1", get(ws::upgrade))
        .route("/v1/market/all", get(rest::market_all))
        .route("/v1/ticker", get(rest::ticker))
        .route("/v1/ticker/all", get(rest::ticker_all))
        .route("/v1/orderbook", get(rest::orderbook))
        .route("/v1/trades/ticks", get(rest::trades))
        .route("/v1/candles/minutes/{unit}", get(rest::candles_minutes))
        .route("/v1/candles/days", get(rest::candles_days))
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(upbit::error::ErrorResponse::new("404", "Not found")),
            )
        })
        .with_state(state)
}

impl App {
    pub async fn build(config: Config, stop: CancellationToken) -> anyhow::Result<Self> {
        let specs = match &config.markets {
            Some(spec) => markets::parse(spec).map_err(anyhow::Error::msg)?,
            None => markets::defaults(),
        };
        let mut engine = engine::Engine::new(specs, config.seed);
        let warm = if config.replay.is_none() {
            engine.warm_up(feed::now_ms())
        } else {
            Vec::new()
        };
        let sim = feed::Sim::new(engine, config.rate, config.malformed_every);
        sim.publish(warm);
        let listener = service_kit::server::bind(&config.http_addr, "HTTP_ADDR").await?;
        let addr = listener.local_addr()?;
        let metrics = service_kit::server::bind(&config.metrics_addr, "METRICS_ADDR").await?;
        let metrics_addr = metrics.local_addr()?;
        let state = Arc::new(AppState {
            sim,
            connects: service_kit::ratelimit::PerSecond::new(config.connect_limit),
            rest_limit: rest::RestLimiter::new(config.rest_limit),
            idle_timeout: config.idle_timeout,
            stop,
        });
        Ok(Self {
            listener,
            addr,
            metrics,
            metrics_addr,
            config,
            state,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin port (`/metrics`, `/healthz`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The simulator, for tests that drive it directly.
    pub fn sim(&self) -> Arc<feed::Sim> {
        self.state.sim.clone()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let stop = self.state.stop.clone();
        let mut tasks = JoinSet::new();
        let sim = self.state.sim.clone();
        match self.config.replay.clone() {
            Some(path) => {
                tasks.spawn(feed::run_replay(
                    sim.clone(),
                    path,
                    self.config.replay_speed,
                    self.config.replay_loop,
                    stop.clone(),
                ));
            }
            None => {
                tasks.spawn(feed::run_generator(sim.clone(), stop.clone()));
            }
        }
        if !self.config.drop_every.is_zero() {
            let (sim, stop, every) = (sim.clone(), stop.clone(), self.config.drop_every);
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(every) => sim.drop_connections(),
                    }
                }
            });
        }
        if !self.config.stall_every.is_zero() {
            let (sim, stop) = (sim.clone(), stop.clone());
            let (every, length) = (self.config.stall_every, self.config.stall_for);
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(every) => sim.stall_for(length),
                    }
                }
            });
        }
        let admin_router = admin::router(self.state.clone(), self.config.controls);
        let (admin, stopped) = (admin_router, stop.clone());
        let metrics = self.metrics;
        tasks.spawn(async move {
            axum::serve(metrics, admin)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await?;
            Ok(())
        });
        let app = router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let graceful = stop.clone();
        let serve = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { graceful.cancelled().await });
        let deadline = self.config.shutdown_timeout;
        let result = tokio::select! {
            result = serve => result.map_err(anyhow::Error::from),
            _ = async { stop.cancelled().await; tokio::time::sleep(deadline).await } => Ok(()),
        };
        stop.cancel();
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        result
    }
}
