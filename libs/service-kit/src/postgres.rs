//! Postgres for a service that owns one schema.
//!
//! Each service connects as its own role (`DATABASE_URL`) whose rights cover only
//! its schema. When `DATABASE_ADMIN_URL` is given (local runs, tests), the service
//! first creates that role (password from `DATABASE_URL`) and its schema; in
//! Kubernetes the database's init script does that and no admin URL is needed.
//! Migrations then run as the service role, recorded in `<schema>._sqlx_migrations`,
//! under sqlx's advisory lock so concurrent replicas apply them once.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions};
use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;

/// Database flags shared by every service that owns a schema.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DbArgs {
    /// Postgres URL of this service's own role, whose rights cover only its schema
    /// [default: postgres://<schema>:<schema>@127.0.0.1:5432/exchange]
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Admin URL used at start to create the service role and schema (local runs,
    /// tests); unset in Kubernetes, where the database init does it.
    #[arg(long, env = "DATABASE_ADMIN_URL", hide_env_values = true)]
    pub database_admin_url: Option<String>,

    /// Maximum connections in the service's pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

impl DbArgs {
    /// The settings for a service owning `schema` (its default role has the same name).
    pub fn pg_config(&self, schema: &'static str) -> PgConfig {
        PgConfig {
            url: self
                .database_url
                .clone()
                .unwrap_or_else(|| format!("postgres://{schema}:{schema}@127.0.0.1:5432/exchange")),
            admin_url: self.database_admin_url.clone(),
            schema,
            max_connections: self.database_max_connections.max(1),
            optional_extensions: &[],
        }
    }
}

/// How a service reaches its schema.
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// The service's own role, e.g. `postgres://orders:secret@db/exchange`.
    pub url: String,
    /// A role allowed to create roles and schemas; bootstrap is skipped without it.
    pub admin_url: Option<String>,
    /// The schema this service owns, e.g. `orders`.
    pub schema: &'static str,
    pub max_connections: u32,
    /// Extensions the admin bootstrap creates when the server has them
    /// (e.g. `timescaledb`); their absence is not an error.
    pub optional_extensions: &'static [&'static str],
}

fn validate_ident(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    anyhow::ensure!(ok, "`{name}` is not a plain lowercase SQL identifier");
    Ok(())
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl PgConfig {
    fn app_options(&self) -> anyhow::Result<PgConnectOptions> {
        let options = PgConnectOptions::from_str(&self.url)
            .context("DATABASE_URL is not a valid postgres:// URL")?;
        Ok(options
            .options([("search_path", self.schema)])
            .log_statements(tracing::log::LevelFilter::Debug)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500)))
    }

    /// Options for a connection of the service's own (outside the pool), e.g. to
    /// hold a session advisory lock.
    pub fn connect_options(&self) -> anyhow::Result<PgConnectOptions> {
        self.app_options()
    }

    /// The role this service runs as (the user of `DATABASE_URL`).
    pub fn role(&self) -> anyhow::Result<String> {
        Ok(PgConnectOptions::from_str(&self.url)?
            .get_username()
            .to_owned())
    }

    /// A pool that connects on first use; queries fail (and are retried by the
    /// caller's policy) while the database is down instead of crashing the service.
    pub fn lazy_pool(&self) -> anyhow::Result<PgPool> {
        let options = self.app_options()?;
        telemetry::db::set_postgres_server(options.get_host(), options.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        PoolMetrics::register(&pool, self.max_connections);
        Ok(pool)
    }

    /// Creates the service role and schema when an admin URL is configured.
    /// Idempotent; safe to race with other replicas and services.
    pub async fn bootstrap(&self) -> anyhow::Result<()> {
        let Some(admin_url) = &self.admin_url else {
            return Ok(());
        };
        let role = self.role()?;
        validate_ident(&role)?;
        validate_ident(self.schema)?;
        let password = url::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
            .map(|p| {
                url::form_urlencoded::parse(format!("p={p}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or(p)
            });
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(admin_url)
            .await
            .context("cannot connect with DATABASE_ADMIN_URL")?;
        let password_clause = match &password {
            Some(p) => format!("PASSWORD {}", quote_literal(p)),
            None => String::new(),
        };
        // Roles are cluster-wide: another database's bootstrap may create it
        // concurrently, which surfaces as duplicate_object or unique_violation.
        let create = format!("CREATE ROLE {role} LOGIN {password_clause}");
        if let Err(err) = sqlx::query(AssertSqlSafe(create)).execute(&admin).await {
            let code = err
                .as_database_error()
                .and_then(|e| e.code().map(|c| c.into_owned()));
            match code.as_deref() {
                Some("42710") | Some("23505") => {
                    if password.is_some() {
                        sqlx::query(AssertSqlSafe(format!(
                            "ALTER ROLE {role} LOGIN {password_clause}"
                        )))
                        .execute(&admin)
                        .await?;
                    }
                }
                _ => return Err(err).context("creating the service role"),
            }
        }
        let schema = self.schema;
        for statement in [
            format!("CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}"),
            format!("ALTER SCHEMA {schema} OWNER TO {role}"),
            format!("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC"),
            format!("REVOKE CREATE ON SCHEMA public FROM {role}"),
        ] {
            if let Err(err) = sqlx::query(AssertSqlSafe(statement.as_str()))
                .execute(&admin)
                .await
            {
                // Concurrent CREATE SCHEMA IF NOT EXISTS can still collide.
                let duplicate = err
                    .as_database_error()
                    .and_then(|e| e.code())
                    .is_some_and(|c| c == "23505" || c == "42P06");
                if !duplicate {
                    return Err(err).with_context(|| format!("bootstrap: {statement}"));
                }
            }
        }
        for ext in self.optional_extensions {
            validate_ident(ext)?;
            let available: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1)",
            )
            .bind(*ext)
            .fetch_one(&admin)
            .await?;
            if !available {
                tracing::info!(
                    extension = ext,
                    "extension not available; using plain tables"
                );
                continue;
            }
            if let Err(err) = sqlx::query(AssertSqlSafe(format!(
                "CREATE EXTENSION IF NOT EXISTS {ext}"
            )))
            .execute(&admin)
            .await
            {
                tracing::warn!(extension = ext, error = %err, "extension could not be created; using plain tables");
            }
        }
        admin.close().await;
        Ok(())
    }

    /// Applies `migrator` as the service role, recording versions in
    /// `<schema>._sqlx_migrations`.
    pub async fn migrate(&self, pool: &PgPool, migrator: &mut Migrator) -> anyhow::Result<()> {
        migrator.dangerous_set_table_name(format!("{}._sqlx_migrations", self.schema));
        migrator.run(pool).await.context("running migrations")?;
        Ok(())
    }

    /// Bootstrap then migrate, retrying with backoff while the database is
    /// unreachable, until it succeeds or `stop` is cancelled.
    pub async fn prepare(
        &self,
        pool: &PgPool,
        mut migrator: Migrator,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let attempt = async {
                self.bootstrap().await?;
                self.migrate(pool, &mut migrator).await
            };
            match attempt.await {
                Ok(()) => {
                    tracing::info!(schema = self.schema, "database schema ready");
                    return Ok(());
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %format!("{err:#}"), ?delay, "database not ready; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => anyhow::bail!("stopped before the database was ready"),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// The pool's connections as Prometheus reads them, at each scrape:
/// `db_client_connection_count{state="idle"|"used"}` and
/// `db_client_connection_max` (OpenTelemetry's names for them). Registered for
/// the first pool a process makes (each service has one).
struct PoolMetrics {
    pool: PgPool,
    count: prometheus::IntGaugeVec,
    max: prometheus::IntGauge,
}

impl PoolMetrics {
    fn register(pool: &PgPool, max: u32) {
        static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        DONE.get_or_init(|| {
            let made = (|| -> prometheus::Result<Self> {
                let count = prometheus::IntGaugeVec::new(
                    prometheus::Opts::new(
                        "db_client_connection_count",
                        "Connections of the service's Postgres pool, by state (idle, used).",
                    ),
                    &["state"],
                )?;
                let max_gauge = prometheus::IntGauge::new(
                    "db_client_connection_max",
                    "Most connections the service's Postgres pool may open.",
                )?;
                max_gauge.set(i64::from(max));
                Ok(Self {
                    pool: pool.clone(),
                    count,
                    max: max_gauge,
                })
            })();
            match made.and_then(|m| prometheus::register(Box::new(m))) {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "pool metrics not registered"),
            }
        });
    }
}

impl prometheus::core::Collector for PoolMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut descs = self.count.desc();
        descs.extend(self.max.desc());
        descs
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let size = i64::from(self.pool.size());
        let idle = i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX);
        self.count.with_label_values(&["idle"]).set(idle);
        self.count
            .with_label_values(&["used"])
            .set((size - idle).max(0));
        let mut families = self.count.collect();
        families.extend(self.max.collect());
        families
    }
}
