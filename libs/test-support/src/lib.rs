//! Helpers for integration tests (dev-dependency only).
//!
//! - [`TestDb`]: a fresh Postgres database per test, dropped afterwards; URLs for
//!   the admin and for each service role.
//! - [`redis_url`] and [`unique_prefix`]: tests share one Redis and isolate by key
//!   prefix.
//! - [`wait_serving`]: poll gRPC health until SERVING (a condition, not a sleep).
//! - [`init_logs`]: test logs on stderr only when `TEST_LOG` is set.
//! - [`otlp::Receiver`]: a real OTLP/gRPC trace receiver the services export to.
//!
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) must
//! name a role that can create databases and roles; `TEST_REDIS_URL` defaults to
//! `redis://127.0.0.1:6379`. `scripts/test` sets both after making sure the servers
//! are up.

pub mod otlp;

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The admin URL tests connect with.
pub fn admin_base_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The Redis tests use.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The address of the Redis tests use.
pub fn redis_addr() -> std::net::SocketAddr {
    let url = url::Url::parse(&redis_url()).expect("TEST_REDIS_URL is a URL");
    let host = url
        .host_str()
        .unwrap_or("127.0.0.1")
        .replace("localhost", "127.0.0.1");
    format!("{host}:{}", url.port().unwrap_or(6379))
        .parse()
        .expect("Redis host is an IP")
}

/// A prefix no other test uses (for Redis keys and channels).
pub fn unique_prefix() -> String {
    format!("t{}:", uuid::Uuid::new_v4().simple())
}

/// Logs to stderr when `TEST_LOG` is set (its value is the filter).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// A database created for one test and dropped (with its connections) on drop.
pub struct TestDb {
    pub name: String,
    base: url::Url,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn create() -> anyhow::Result<Self> {
        let base = url::Url::parse(&admin_base_url())?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(base.as_str()).await?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(Self { name, base })
    }

    /// The admin URL pointed at this database.
    pub fn admin_url(&self) -> String {
        let mut url = self.base.clone();
        url.set_path(&self.name);
        url.to_string()
    }

    /// The admin URL of this database, reached through `addr` (e.g. a [`TcpProxy`]).
    pub fn admin_url_via(&self, addr: std::net::SocketAddr) -> String {
        let mut url = url::Url::parse(&self.admin_url()).expect("valid URL");
        let _ = url.set_ip_host(addr.ip());
        let _ = url.set_port(Some(addr.port()));
        url.to_string()
    }

    /// A URL for `role` (password = role name) on this database.
    pub fn role_url(&self, role: &str) -> String {
        let mut url = self.base.clone();
        url.set_path(&self.name);
        let _ = url.set_username(role);
        let _ = url.set_password(Some(role));
        url.to_string()
    }

    /// A URL for `role` on this database through another address (a [`TcpProxy`]).
    pub fn role_url_via(&self, role: &str, addr: std::net::SocketAddr) -> String {
        let mut url = url::Url::parse(&self.role_url(role)).expect("valid URL");
        let _ = url.set_ip_host(addr.ip());
        let _ = url.set_port(Some(addr.port()));
        url.to_string()
    }

    /// The Postgres server address of this database.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        let host = self.base.host_str().unwrap_or("127.0.0.1");
        let port = self.base.port().unwrap_or(5432);
        format!("{host}:{port}")
            .parse()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// A connection as the admin.
    pub async fn admin(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.admin_url()).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let base = self.base.to_string();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a private one on a thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&base).await {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// One `grpc.health.v1.Health/Check` of `service` ("" = overall) at `addr`:
/// the `ServingStatus` as an integer.
pub async fn health_status(addr: std::net::SocketAddr, service: &str) -> anyhow::Result<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(resp.into_inner().status)
}

/// Polls `grpc.health.v1.Health/Check` for `service` ("" = overall) at `addr` until
/// it reports SERVING, failing after `timeout`.
pub async fn wait_serving(
    addr: std::net::SocketAddr,
    service: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match health_status(addr, service).await {
            Ok(status) if status == ServingStatus::Serving as i32 => return Ok(()),
            Ok(status) => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{addr}: status {status} after {timeout:?}"
                )
            }
            Err(e) => anyhow::ensure!(Instant::now() < deadline, "{addr}: {e} after {timeout:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that a service whose dependencies are away is up but not ready: the
/// overall gRPC health and `/readyz` say not ready, the `liveness` health entry
/// and `/healthz` say alive (so Kubernetes stops routing to it, and does not
/// restart it).
pub async fn assert_alive_not_ready(
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let overall = health_status(grpc, "").await?;
    anyhow::ensure!(
        overall == ServingStatus::NotServing as i32,
        "overall health {overall}, expected NOT_SERVING"
    );
    let live = health_status(grpc, "liveness").await?;
    anyhow::ensure!(
        live == ServingStatus::Serving as i32,
        "liveness health {live}, expected SERVING"
    );
    let (status, _) = http_get(&format!("http://{admin}/readyz")).await?;
    anyhow::ensure!(status == 503, "/readyz answered {status}, expected 503");
    let (status, _) = http_get(&format!("http://{admin}/healthz")).await?;
    anyhow::ensure!(status == 200, "/healthz answered {status}, expected 200");
    Ok(())
}

/// Polls `check` until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The services a server lists through gRPC reflection (`grpcurl list`).
pub async fn reflection_services(addr: std::net::SocketAddr) -> anyhow::Result<Vec<String>> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let response = stream
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no reflection response"))?;
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => anyhow::bail!("unexpected reflection response: {other:?}"),
    }
}

/// GET `url` and return (status, body).
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let resp = reqwest::get(url).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// Checks what every gRPC service promises: overall and per-service health
/// SERVING, reflection listing `service` (plus health and reflection), a
/// Prometheus `/metrics` and a ready `/readyz` on the admin port.
pub async fn assert_grpc_basics(
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    service: &str,
) -> anyhow::Result<()> {
    wait_serving(grpc, "", Duration::from_secs(30)).await?;
    wait_serving(grpc, service, Duration::from_secs(5)).await?;
    wait_serving(grpc, "liveness", Duration::from_secs(5)).await?;
    let listed = reflection_services(grpc).await?;
    for expected in [
        service,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        anyhow::ensure!(
            listed.iter().any(|s| s == expected),
            "{expected} not in {listed:?}"
        );
    }
    let (status, body) = http_get(&format!("http://{admin}/readyz")).await?;
    anyhow::ensure!(status == 200, "/readyz answered {status}: {body}");
    let (status, body) = http_get(&format!("http://{admin}/metrics")).await?;
    anyhow::ensure!(
        status == 200 && body.contains("service_info"),
        "/metrics: {status} {body}"
    );
    Ok(())
}

/// A service running in this test process, stopped through its token.
pub struct Running {
    pub stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Spawns `run` (a service's `App::run()`), stopped by cancelling `stop`.
    pub fn spawn<F>(stop: tokio_util::sync::CancellationToken, run: F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self {
            stop,
            task: tokio::spawn(run),
        }
    }

    /// Requests a graceful stop and asserts the service exits cleanly in time.
    pub async fn stop(self) {
        self.stop.cancel();
        let joined = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("service stops within its shutdown deadline");
        joined
            .expect("service task did not panic")
            .expect("service exited cleanly");
    }
}

/// A service started by a test: its gRPC and admin addresses and its handle.
pub struct Started {
    pub grpc: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub running: Running,
}

/// Starts a service twice on the same database and checks that migrations are
/// recorded once each in `<schema>._sqlx_migrations` and that `table` belongs to
/// the service role `role`.
pub async fn assert_migrations_idempotent<F, Fut>(
    db: &TestDb,
    start: F,
    schema: &str,
    role: &str,
    table: &str,
    migrations_dir: &str,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Started>,
{
    for _ in 0..2 {
        let svc = start().await;
        wait_serving(svc.grpc, "", Duration::from_secs(30)).await?;
        svc.running.stop().await;
    }
    let mut admin = db.admin().await?;
    let applied: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}._sqlx_migrations WHERE success"
    )))
    .fetch_one(&mut admin)
    .await?;
    let files = std::fs::read_dir(migrations_dir)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    anyhow::ensure!(
        applied as usize == files,
        "{applied} migrations recorded, {files} files"
    );
    let owner: String = sqlx::query_scalar(
        "SELECT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_one(&mut admin)
    .await?;
    anyhow::ensure!(
        owner == role,
        "{schema}.{table} is owned by {owner}, not {role}"
    );
    Ok(())
}

/// A TCP proxy to a real server that a test can cut and restore, to see how a
/// service behaves when Postgres or Redis goes away and comes back.
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1:0 and forwards to `target`.
    pub async fn start(target: std::net::SocketAddr) -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (up2, cut2, refused2) = (up.clone(), cut.clone(), refused.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    refused2.fetch_add(1, Ordering::SeqCst);
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            up,
            refused,
            cut,
            task,
        })
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Connections dropped at once while cut: how often a client tried.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sum of the samples of `metric` in a Prometheus text page whose labels contain
/// every `label="value"` pair in `labels` (all samples when empty).
pub fn metric_sum(page: &str, metric: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let (name, rest) = match name_labels.split_once('{') {
                Some((n, r)) => (n, r),
                None => (name_labels, ""),
            };
            (name == metric && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Reads `metric` (summed over matching labels) from an admin port.
pub async fn read_metric(admin: std::net::SocketAddr, metric: &str, labels: &[&str]) -> f64 {
    match http_get(&format!("http://{admin}/metrics")).await {
        Ok((200, page)) => metric_sum(&page, metric, labels),
        _ => 0.0,
    }
}

/// Waits until `metric` (summed over `labels`) on `admin`'s `/metrics` equals `value`.
pub async fn wait_metric(
    admin: std::net::SocketAddr,
    metric: &str,
    labels: &[&str],
    value: f64,
    timeout: Duration,
) -> anyhow::Result<()> {
    eventually(timeout, &format!("{metric} = {value}"), || async {
        (read_metric(admin, metric, labels).await == value).then_some(())
    })
    .await
}
