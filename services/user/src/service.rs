//! What the user service does, apart from gRPC: registration, login, tokens,
//! API keys and the verification of both kinds of credentials.

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::Utc;
use exchange_proto::inventory::v1::OpenAccountRequest;
use exchange_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use rand::distr::Alphanumeric;
use service_kit::grpc::Channel;
use sha2::{Digest, Sha256, Sha512};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::UserError;
use crate::jwt::{self, Alg};
use crate::store::{self, ApiKeyRow, RefreshUse, UserRow};

/// Most active API keys per user.
const MAX_API_KEYS: i64 = 10;
/// Longest access key looked up (ours are 40 characters).
const MAX_ACCESS_KEY: usize = 64;

/// A refresh token presented again within this time of being spent, while its
/// successor is unused, is a retry (its answer was lost), not a theft.
const REFRESH_RETRY_GRACE: Duration = Duration::from_secs(60);

/// A new access/refresh token pair.
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

/// What an API key may do: Upbit's key permissions for trading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    /// Balances.
    ViewAccounts,
    /// Orders and order chance.
    ViewOrders,
    /// Placing and cancelling orders.
    MakeOrders,
}

impl Permission {
    pub const ALL: [Self; 3] = [Self::ViewAccounts, Self::ViewOrders, Self::MakeOrders];

    /// The name stored with the key.
    pub fn name(self) -> &'static str {
        match self {
            Self::ViewAccounts => "view_accounts",
            Self::ViewOrders => "view_orders",
            Self::MakeOrders => "make_orders",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// How long each kind of credential lives.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    pub access_token: Duration,
    pub refresh_token: Duration,
    pub api_key: Duration,
}

/// Clock difference tolerated on a token's `exp` and `iat`.
const CLOCK_SKEW_SECS: i64 = 300;

/// A verified Upbit-style request: whose key, and what it may do.
#[derive(Debug)]
pub struct KeyUse {
    pub user: Uuid,
    pub access_key: String,
    pub permissions: Vec<Permission>,
}

pub struct Users {
    pool: PgPool,
    hasher: Hasher,
    inventory: InventoryServiceClient<Channel>,
    jwt_key: Vec<u8>,
    api_key_secrets: ApiKeySecrets,
    lifetimes: Lifetimes,
}

fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    rand::rng().fill(&mut key[..]);
    key
}

/// Shortest secret accepted: 16 bytes (128 bits when random).
pub const MIN_SECRET_LEN: usize = 16;

/// The service's keys: signing access tokens, deriving API key secrets.
pub struct Keys {
    pub jwt: Vec<u8>,
    pub api_key: ApiKeySecrets,
}

/// The versions of `API_KEY_SECRET`: the current one, from which new keys'
/// secrets are derived, and retired ones that still verify older keys.
#[derive(Clone, Debug)]
pub struct ApiKeySecrets {
    current: i16,
    by_version: std::collections::BTreeMap<i16, Vec<u8>>,
}

impl ApiKeySecrets {
    /// `current` at `version`, and `retired` as `VERSION:SECRET,...`.
    pub fn new(current: Vec<u8>, version: i16, retired: Option<&str>) -> anyhow::Result<Self> {
        anyhow::ensure!(version >= 1, "API_KEY_SECRET_VERSION must be at least 1");
        let mut by_version = std::collections::BTreeMap::from([(version, current)]);
        for entry in retired
            .unwrap_or_default()
            .split(',')
            .filter(|e| !e.trim().is_empty())
        {
            let (v, secret) = entry.trim().split_once(':').ok_or_else(|| {
                anyhow::anyhow!("API_KEY_RETIRED_SECRETS entries are VERSION:SECRET")
            })?;
            let v: i16 = v
                .parse()
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| anyhow::anyhow!("API_KEY_RETIRED_SECRETS: bad version {v:?}"))?;
            let secret = required_key(Some(secret), &format!("retired API key secret {v}"))?;
            anyhow::ensure!(
                by_version.insert(v, secret).is_none(),
                "API_KEY_RETIRED_SECRETS: version {v} is given twice (or is the current one)"
            );
        }
        Ok(Self {
            current: version,
            by_version,
        })
    }
}

/// The key from configuration: set, and at least [`MIN_SECRET_LEN`] bytes.
pub fn required_key(configured: Option<&str>, what: &str) -> anyhow::Result<Vec<u8>> {
    match configured {
        Some(k) if k.len() >= MIN_SECRET_LEN => Ok(k.as_bytes().to_vec()),
        Some(k) if !k.is_empty() => anyhow::bail!(
            "{what} is {} bytes; it must be at least {MIN_SECRET_LEN} (e.g. `head -c 32 /dev/urandom | base64`)",
            k.len()
        ),
        _ => anyhow::bail!(
            "{what} is not set: every replica must share it, or tokens and API keys would work \
             on one replica only and die on restart (e.g. `head -c 32 /dev/urandom | base64`)"
        ),
    }
}

/// Lowercased, trimmed email if it looks like one.
pub fn normalize_email(email: &str) -> Result<String, UserError> {
    let email = email.trim().to_lowercase();
    let valid = (3..=254).contains(&email.len())
        && !email.contains(char::is_whitespace)
        && !email.contains(char::is_control)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if valid {
        Ok(email)
    } else {
        Err(UserError::Invalid(
            "email must look like name@example.com".into(),
        ))
    }
}

pub fn check_password(password: &str) -> Result<(), UserError> {
    if (8..=128).contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(UserError::Invalid(
            "password must be 8 to 128 characters".into(),
        ))
    }
}

/// Password hashing and checking, at most `permits` at once: an argon2 hash
/// takes 19 MiB and a core for a while, so unbounded hashing is how a burst of
/// logins takes the service down. A caller that gets no turn within `wait` is
/// told the service is busy (RESOURCE_EXHAUSTED) rather than queued forever.
pub struct Hasher {
    permits: tokio::sync::Semaphore,
    wait: Duration,
}

impl Hasher {
    pub fn new(concurrency: usize, wait: Duration) -> Self {
        Self {
            permits: tokio::sync::Semaphore::new(concurrency.max(1)),
            wait,
        }
    }

    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, UserError> {
        match tokio::time::timeout(self.wait, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(UserError::Busy),
        }
    }

    async fn hash(&self, password: String) -> Result<String, UserError> {
        let _turn = self.turn().await?;
        hash_password(password).await
    }

    async fn verify(&self, password: String, hash: String) -> Result<bool, UserError> {
        let _turn = self.turn().await?;
        Ok(verify_password(password, hash).await)
    }
}

async fn hash_password(password: String) -> Result<String, UserError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| UserError::Internal(format!("hashing: {e}")))
    })
    .await
    .map_err(|e| UserError::Internal(e.to_string()))?
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Users {
    pub fn new(
        pool: PgPool,
        hasher: Hasher,
        inventory: InventoryServiceClient<Channel>,
        keys: Keys,
        lifetimes: Lifetimes,
    ) -> Self {
        Self {
            pool,
            hasher,
            inventory,
            jwt_key: keys.jwt,
            api_key_secrets: keys.api_key,
            lifetimes,
        }
    }

    /// Opens the user's paper account (idempotent in inventory) and records it.
    async fn open_account(&self, user: Uuid) -> Result<(), UserError> {
        self.inventory
            .clone()
            .open_account(OpenAccountRequest {
                user_id: user.to_string(),
            })
            .await
            .map_err(|s| UserError::Unavailable(format!("inventory: {}", s.message())))?;
        store::mark_account_opened(&self.pool, user).await?;
        Ok(())
    }

    /// Registers a user and opens their account exactly once. Registering again
    /// with the same email and password (a retry) returns the same user; with
    /// another password, `Conflict`. One password hash either way.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
    ) -> Result<(UserRow, bool), UserError> {
        let email = normalize_email(email)?;
        check_password(password)?;
        let existing = match store::user_by_email(&self.pool, &email).await? {
            Some(existing) => Some(existing),
            None => {
                let hash = self.hasher.hash(password.to_owned()).await?;
                match store::insert_user(&self.pool, Uuid::now_v7(), &email, &hash).await? {
                    Some(user) => {
                        if !user.account_opened {
                            self.open_account(user.id).await?;
                        }
                        return Ok((user, true));
                    }
                    // Registered meanwhile by a racing request.
                    None => store::user_by_email(&self.pool, &email).await?,
                }
            }
        };
        let existing = existing.ok_or(UserError::Conflict)?;
        if !self
            .hasher
            .verify(password.to_owned(), existing.password_hash.clone())
            .await?
        {
            return Err(UserError::Conflict);
        }
        let (user, created) = (existing, false);
        if !user.account_opened {
            self.open_account(user.id).await?;
        }
        Ok((user, created))
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<(Tokens, UserRow), UserError> {
        let email = normalize_email(email).map_err(|_| UserError::BadCredentials)?;
        let user = store::user_by_email(&self.pool, &email).await?;
        // Verify against a dummy hash when the user is unknown, so timing does not
        // tell which emails exist.
        let hash = match &user {
            Some(u) => u.password_hash.clone(),
            None => dummy_hash().await,
        };
        let ok = self.hasher.verify(password.to_owned(), hash).await?;
        let user = user.filter(|_| ok).ok_or(UserError::BadCredentials)?;
        if !user.account_opened {
            self.open_account(user.id).await?;
        }
        Ok((self.issue(user.id).await?, user))
    }

    /// A new access token of `user`'s `session` with `refresh_token` beside it.
    fn tokens(&self, user: Uuid, session: Uuid, refresh_token: String) -> Tokens {
        let now = Utc::now().timestamp();
        let ttl = self.lifetimes.access_token.as_secs() as i64;
        let claims = serde_json::json!({
            "sub": user.to_string(),
            "sid": session.to_string(),
            "typ": "access",
            "iat": now,
            "exp": now + ttl,
            "jti": Uuid::new_v4().to_string(),
        });
        Tokens {
            access_token: jwt::sign(Alg::Hs256, &self.jwt_key, &claims),
            refresh_token,
            expires_in: ttl,
        }
    }

    fn refresh_expiry(&self) -> chrono::DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.lifetimes.refresh_token.as_secs() as i64)
    }

    async fn issue(&self, user: Uuid) -> Result<Tokens, UserError> {
        let refresh_token = B64.encode(random_key());
        let session = Uuid::now_v7();
        store::open_session(
            &self.pool,
            session,
            user,
            &sha256_hex(refresh_token.as_bytes()),
            self.refresh_expiry(),
        )
        .await?;
        Ok(self.tokens(user, session, refresh_token))
    }

    /// The refresh token that replaces `token`: derived from it, so that a
    /// retried refresh is answered with the same one.
    fn successor(&self, token: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.jwt_key)
            .expect("HMAC takes keys of any size");
        mac.update(b"refresh-successor:");
        mac.update(token.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }

    /// Spends a refresh token for a new pair. The same token again within a
    /// minute, while its successor is unused, is a retry and gets the same
    /// successor; otherwise presenting a spent one ends its session (the
    /// chain was copied: whoever holds the live token is cut off too), and
    /// only that one, so an old token cannot sign the user out everywhere.
    pub async fn refresh(&self, token: &str) -> Result<Tokens, UserError> {
        let successor = self.successor(token);
        let used = store::use_refresh(
            &self.pool,
            &sha256_hex(token.as_bytes()),
            &sha256_hex(successor.as_bytes()),
            self.refresh_expiry(),
            REFRESH_RETRY_GRACE,
        )
        .await?;
        match used {
            RefreshUse::Spent(user, session) => Ok(self.tokens(user, session, successor)),
            RefreshUse::Retried(user, session) => {
                tracing::info!(%user, "a refresh was retried; answered with the same successor");
                Ok(self.tokens(user, session, successor))
            }
            RefreshUse::Reused(user, session) => {
                tracing::warn!(%user, %session, "a spent refresh token was presented again; ended its session");
                Err(UserError::Token(
                    "invalid_refresh_token",
                    "refresh token already used".into(),
                ))
            }
            RefreshUse::Invalid => Err(UserError::Token(
                "invalid_refresh_token",
                "unknown or expired refresh token".into(),
            )),
        }
    }

    /// The user and session an access token was issued to, while the session
    /// lasts.
    pub async fn verify_access_token(&self, token: &str) -> Result<(Uuid, Uuid), UserError> {
        let invalid = |m: &str| UserError::Token("invalid_access_token", m.into());
        let claims = jwt::decode(token)
            .and_then(|t| t.verify(&self.jwt_key, &[Alg::Hs256]))
            .map_err(|e| invalid(&e.to_string()))?;
        if claims.get("typ").and_then(|t| t.as_str()) != Some("access") {
            return Err(invalid("not an access token"));
        }
        let exp = claims
            .get("exp")
            .and_then(|e| e.as_i64())
            .ok_or_else(|| invalid("no expiry"))?;
        if exp <= Utc::now().timestamp() {
            return Err(UserError::Token(
                "expired_access_token",
                "the access token has expired".into(),
            ));
        }
        let id = |name: &str| {
            claims
                .get(name)
                .and_then(|s| s.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
        };
        let user = id("sub").ok_or_else(|| invalid("no subject"))?;
        let session = id("sid").ok_or_else(|| invalid("no session"))?;
        if !store::session_live(&self.pool, session, user).await? {
            return Err(UserError::Token(
                "expired_access_token",
                "the session has ended (signed out); sign in again".into(),
            ));
        }
        Ok((user, session))
    }

    /// Ends the session of `access_token`, or every session of its user when
    /// `everywhere`: their access tokens stop verifying, their refresh tokens
    /// stop refreshing. Returns the user and how many sessions ended.
    pub async fn logout(
        &self,
        access_token: &str,
        everywhere: bool,
    ) -> Result<(Uuid, u64), UserError> {
        let (user, session) = self.verify_access_token(access_token).await?;
        let ended = store::end_sessions(&self.pool, user, (!everywhere).then_some(session)).await?;
        tracing::info!(%user, ended, everywhere, "signed out");
        Ok((user, ended))
    }

    /// Checks `user`'s password again (for what a stolen access token alone
    /// must not do, such as making API keys). One bounded hash.
    pub async fn reauthenticate(&self, user: Uuid, password: &str) -> Result<(), UserError> {
        let row = store::user_by_id(&self.pool, user)
            .await?
            .ok_or(UserError::NotFound("user"))?;
        if password.is_empty() || password.chars().count() > 128 {
            return Err(UserError::BadCredentials);
        }
        match self
            .hasher
            .verify(password.to_owned(), row.password_hash)
            .await?
        {
            true => Ok(()),
            false => Err(UserError::BadCredentials),
        }
    }

    /// The secret of an API key: derived, never stored.
    /// The secret of `access_key` under `version` of `API_KEY_SECRET`; `None`
    /// once that version is no longer configured (retired).
    fn secret_of(&self, version: i16, access_key: &str) -> Option<String> {
        let master = self.api_key_secrets.by_version.get(&version)?;
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(master).expect("HMAC takes any key length");
        mac.update(b"upbit-secret:");
        mac.update(access_key.as_bytes());
        let mut secret = B64.encode(mac.finalize().into_bytes());
        secret.truncate(40);
        Some(secret)
    }

    /// A new API key with `permissions` (all when empty), usable for the
    /// configured lifetime.
    pub async fn create_api_key(
        &self,
        user: Uuid,
        label: &str,
        permissions: &[Permission],
    ) -> Result<(ApiKeyRow, String), UserError> {
        if label.chars().count() > 64 || label.chars().any(char::is_control) {
            return Err(UserError::Invalid(
                "label must be at most 64 characters, none of them control characters".into(),
            ));
        }
        let mut permissions = if permissions.is_empty() {
            Permission::ALL.to_vec()
        } else {
            permissions.to_vec()
        };
        permissions.sort();
        permissions.dedup();
        let names: Vec<String> = permissions.iter().map(|p| p.name().to_owned()).collect();
        store::user_by_id(&self.pool, user)
            .await?
            .ok_or(UserError::NotFound("user"))?;
        let access_key: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        let lifetime = chrono::Duration::from_std(self.lifetimes.api_key)
            .map_err(|_| UserError::Internal("API_KEY_LIFETIME is out of range".into()))?;
        let new = store::NewApiKey {
            access_key: &access_key,
            user,
            label,
            permissions: &names,
            expire_at: Utc::now() + lifetime,
            secret_version: self.api_key_secrets.current,
        };
        let row = store::insert_api_key(&self.pool, &new, MAX_API_KEYS)
            .await?
            .ok_or(UserError::Limit)?;
        let secret = self
            .secret_of(self.api_key_secrets.current, &access_key)
            .ok_or_else(|| UserError::Internal("the current API key secret is missing".into()))?;
        Ok((row, secret))
    }

    pub async fn api_keys(&self, user: Uuid) -> Result<Vec<ApiKeyRow>, UserError> {
        Ok(store::api_keys(&self.pool, user).await?)
    }

    pub async fn revoke_api_key(&self, user: Uuid, key: &str) -> Result<ApiKeyRow, UserError> {
        service_kit::text::key("access_key", key, MAX_ACCESS_KEY).map_err(UserError::Invalid)?;
        store::revoke_api_key(&self.pool, user, key)
            .await?
            .ok_or(UserError::NotFound("API key"))
    }

    /// Verifies an Upbit-style request token: HS256/HS512 over the API key's
    /// secret; a `query_hash` of the request's parameters (`query`, or one of
    /// `alternatives`) whenever it has any, and if the token carries one even
    /// when it has none; `exp` and `iat` when given; a `nonce` (string or
    /// number) never used before with this key — nonces are kept until the key
    /// expires or is revoked, so a captured token never replays.
    pub async fn verify_upbit(
        &self,
        token: &str,
        query: &str,
        alternatives: &[String],
    ) -> Result<KeyUse, UserError> {
        let unverified = jwt::decode(token)
            .map_err(|_| UserError::Token("jwt_verification", "malformed JWT".into()))?;
        let access_key = unverified
            .claims
            .get("access_key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| {
                UserError::Token("invalid_access_key", "the token has no access_key".into())
            })?
            .to_owned();
        service_kit::text::key("access_key", &access_key, MAX_ACCESS_KEY)
            .map_err(|m| UserError::Token("invalid_access_key", m))?;
        let key = store::api_key(&self.pool, &access_key)
            .await?
            .filter(|k| k.revoked_at.is_none())
            .ok_or_else(|| {
                UserError::Token("invalid_access_key", "unknown or revoked access key".into())
            })?;
        if key.expire_at <= Utc::now() {
            return Err(UserError::Token(
                "expired_access_key",
                "the API key has expired".into(),
            ));
        }
        let secret = self
            .secret_of(key.secret_version, &access_key)
            .ok_or_else(|| {
                UserError::Token(
                    "invalid_access_key",
                    "this key's secret was retired (the server's key was rotated); make a new key"
                        .into(),
                )
            })?;
        let claims = unverified
            .verify(secret.as_bytes(), &[Alg::Hs256, Alg::Hs512])
            .map_err(|e| {
                UserError::Token("jwt_verification", format!("JWT verification failed: {e}"))
            })?;
        check_query_hash(&claims, query, alternatives)?;
        check_times(&claims, Utc::now().timestamp())?;
        let nonce = nonce(&claims)?;
        if !store::use_nonce(&self.pool, &access_key, &nonce).await? {
            return Err(UserError::Token(
                "nonce_used",
                "this nonce was used before".into(),
            ));
        }
        Ok(KeyUse {
            user: key.user_id,
            permissions: key
                .permissions
                .iter()
                .filter_map(|p| Permission::from_name(p))
                .collect(),
            access_key,
        })
    }

    pub async fn user(&self, id: Uuid) -> Result<UserRow, UserError> {
        store::user_by_id(&self.pool, id)
            .await?
            .ok_or(UserError::NotFound("user"))
    }

    /// Opens the accounts of registrations that were interrupted, and forgets
    /// the nonces of dead keys and long-expired refresh tokens. Runs until
    /// `stop`.
    pub async fn housekeeping(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
            if let Ok(pending) = store::users_without_account(&self.pool, 100).await {
                for user in pending {
                    if let Err(e) = self.open_account(user).await {
                        tracing::warn!(%user, error = %e, "opening a pending account failed; will retry");
                        break;
                    }
                    tracing::info!(%user, "opened the account of an interrupted registration");
                }
            }
            if let Err(e) =
                store::forget_dead_records(&self.pool, self.lifetimes.access_token).await
            {
                tracing::debug!(error = %e, "forgetting dead records failed; will retry");
            }
        }
    }
}

/// The token's `query_hash` must be of the request's parameters whenever it
/// has any; a token that carries one for a request without parameters must
/// have hashed the empty string (a token signed for other parameters is not
/// good for a request that sends none).
fn check_query_hash(
    claims: &serde_json::Value,
    query: &str,
    alternatives: &[String],
) -> Result<(), UserError> {
    let mismatch = || {
        UserError::Token(
            "invalid_query_payload",
            "query_hash does not match the request".into(),
        )
    };
    let Some(given) = claims.get("query_hash") else {
        return if query.is_empty() {
            Ok(())
        } else {
            Err(UserError::Token(
                "invalid_query_payload",
                "the request has parameters but the token no query_hash".into(),
            ))
        };
    };
    let given = given.as_str().ok_or_else(mismatch)?;
    let alg = claims
        .get("query_hash_alg")
        .map(|a| a.as_str().unwrap_or_default())
        .unwrap_or("SHA512");
    let digest = |text: &str| match alg {
        "SHA512" => Ok(hex::encode(Sha512::digest(text.as_bytes()))),
        "SHA256" => Ok(hex::encode(Sha256::digest(text.as_bytes()))),
        _ => Err(UserError::Token(
            "invalid_query_payload",
            "query_hash_alg must be SHA512".into(),
        )),
    };
    for text in std::iter::once(query).chain(alternatives.iter().map(String::as_str)) {
        if digest(text)?.eq_ignore_ascii_case(given) {
            return Ok(());
        }
    }
    Err(mismatch())
}

/// `exp` (not passed) and `iat` (not in the future), when the token has them,
/// in seconds, give or take [`CLOCK_SKEW_SECS`].
fn check_times(claims: &serde_json::Value, now: i64) -> Result<(), UserError> {
    let time = |name: &str| -> Result<Option<i64>, UserError> {
        claims
            .get(name)
            .map(|v| {
                v.as_i64().ok_or_else(|| {
                    UserError::Token(
                        "jwt_verification",
                        format!("{name} must be a number of seconds"),
                    )
                })
            })
            .transpose()
    };
    if time("exp")?.is_some_and(|exp| exp.saturating_add(CLOCK_SKEW_SECS) < now) {
        return Err(UserError::Token(
            "jwt_verification",
            "the token has expired".into(),
        ));
    }
    if time("iat")?.is_some_and(|iat| iat.saturating_sub(CLOCK_SKEW_SECS) > now) {
        return Err(UserError::Token(
            "jwt_verification",
            "the token is issued in the future".into(),
        ));
    }
    Ok(())
}

/// The token's nonce as text: a string (a UUID, usually) or a number (some
/// clients send the time in milliseconds).
fn nonce(claims: &serde_json::Value) -> Result<String, UserError> {
    let text = match claims.get("nonce") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    service_kit::text::key("nonce", &text, 128)
        .map_err(|_| UserError::Token("jwt_verification", "the token has no valid nonce".into()))?;
    Ok(text)
}

/// An argon2 hash of a random password, verified against when a login names an
/// unknown email (made once per process).
async fn dummy_hash() -> String {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_init(|| async {
            hash_password(B64.encode(random_key()))
                .await
                .unwrap_or_default()
        })
        .await
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_times_at_the_ends_of_the_range_are_judged_not_overflowed() {
        let now = 1_700_000_000;
        let at = |claims: serde_json::Value| check_times(&claims, now).is_ok();
        // A token valid forever, and one issued at the dawn of time, pass.
        assert!(at(serde_json::json!({"exp": i64::MAX})));
        assert!(at(serde_json::json!({"iat": i64::MIN})));
        // Expired long ago, or issued in the far future: refused.
        assert!(!at(serde_json::json!({"exp": i64::MIN})));
        assert!(!at(serde_json::json!({"iat": i64::MAX})));
        // Within the allowed skew either way.
        assert!(at(
            serde_json::json!({"exp": now - CLOCK_SKEW_SECS, "iat": now + CLOCK_SKEW_SECS})
        ));
        assert!(!at(serde_json::json!({"exp": now - CLOCK_SKEW_SECS - 1})));
    }
}
