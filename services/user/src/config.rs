//! Configuration from flags or environment variables (`--help` lists them).

use std::time::Duration;

use clap::Parser;
use service_kit::config::{GrpcArgs, RuntimeArgs, parse_duration};
use service_kit::postgres::DbArgs;

#[derive(Parser, Clone, Debug)]
#[command(
    name = "user",
    version,
    about = "User service: accounts, logins, tokens and API keys (gRPC)",
    after_help = telemetry::ENV_HELP
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50054")]
    pub grpc_addr: String,

    /// Admin HTTP address: /metrics, /healthz, /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9104")]
    pub metrics_addr: String,

    #[command(flatten)]
    pub db: DbArgs,

    /// inventory gRPC URL (new users' paper accounts); several URLs separated by commas share the calls.
    #[arg(long, env = "INVENTORY_URL", default_value = "http://127.0.0.1:50053")]
    pub inventory_url: String,

    /// Key signing access tokens (HS256), at least 16 bytes, the same on every
    /// replica. Required: the service refuses to start without it.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Key from which API key secrets are derived (they are never stored), at
    /// least 16 bytes. Required; changing it alone invalidates every API key
    /// (see API_KEY_SECRET_VERSION).
    #[arg(long, env = "API_KEY_SECRET", hide_env_values = true)]
    pub api_key_secret: Option<String>,

    /// The version of API_KEY_SECRET: each key records the version its secret
    /// comes from. To rotate, raise it with a new API_KEY_SECRET and list the
    /// old one in API_KEY_RETIRED_SECRETS until its keys are replaced.
    #[arg(long, env = "API_KEY_SECRET_VERSION", default_value_t = 1)]
    pub api_key_secret_version: i16,

    /// Earlier API_KEY_SECRETs that still verify the keys made under them, as
    /// VERSION:SECRET,...; a key whose version is in neither is refused.
    #[arg(long, env = "API_KEY_RETIRED_SECRETS", hide_env_values = true)]
    pub api_key_retired_secrets: Option<String>,

    /// Lifetime of access tokens.
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,

    /// Lifetime of refresh tokens (each is single use).
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value = "14d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,

    /// Lifetime of API keys (Upbit's last a year). A key's request nonces are
    /// kept until it expires or is revoked, so a shorter lifetime also bounds
    /// that table.
    #[arg(long, env = "API_KEY_LIFETIME", default_value = "365d", value_parser = parse_duration)]
    pub api_key_lifetime: Duration,

    /// Passwords hashed or checked at once (argon2: 19 MiB and a core each);
    /// 0 = the number of cores. Size the pod's memory for it.
    #[arg(long, env = "HASH_CONCURRENCY", default_value_t = 0)]
    pub hash_concurrency: usize,

    /// How long a sign-in may wait for a hashing turn before it is told the
    /// service is busy (429).
    #[arg(long, env = "HASH_WAIT", default_value = "2s", value_parser = parse_duration)]
    pub hash_wait: Duration,

    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(flatten)]
    pub grpc: GrpcArgs,
}

impl Config {
    /// Defaults listening on port 0 with fixed test keys (tests).
    pub fn local(db: DbArgs, inventory: std::net::SocketAddr) -> Self {
        let mut c = Self::parse_from(["user"]);
        c.grpc_addr = "127.0.0.1:0".into();
        c.metrics_addr = "127.0.0.1:0".into();
        c.db = db;
        c.inventory_url = format!("http://{inventory}");
        c.jwt_secret = Some("test-jwt-secret-0123456789".into());
        c.api_key_secret = Some("test-api-key-secret-0123456789".into());
        c
    }
}
